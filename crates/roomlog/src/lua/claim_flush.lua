#!lua flags=allow-oom
-- Claims the range a FlushRoom master task should split into chunks: everything above
-- both the watermark and what earlier masters already queued.
-- Allowed at maxmemory: it writes a few bytes, and a full Redis must stay drainable by
-- the persister.
-- A claim ends two ways, so a range whose chunk tasks were lost or dead-lettered is
-- queued again: the claim expires when no flush renews it for ARGV[1] ms (an idle room),
-- and it is dropped when the watermark has not moved for ARGV[1] ms although the claim
-- is above it (a busy room, whose flushes keep renewing it, must not hide a stuck range).
-- KEYS[1] seq counter, KEYS[2] persisted watermark, KEYS[3] claim (hash: upto, wm, since)
-- ARGV[1] claim lifetime in ms, ARGV[2] now (ms)
-- Returns {from, to, reclaimed (0/1)}; from = 0 when there is nothing to claim.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {0, 0, 0}
end
local seq = tonumber(redis.call('GET', KEYS[1]))
local watermark = tonumber(redis.call('GET', KEYS[2]) or '0')
local now = tonumber(ARGV[2])
local claim = redis.call('HMGET', KEYS[3], 'upto', 'wm', 'since')
local upto = tonumber(claim[1] or '0')
local since = tonumber(claim[3] or ARGV[2])
if tonumber(claim[2] or '-1') ~= watermark or upto <= watermark then
  since = now -- the watermark moved (progress), or nothing is claimed above it yet
end
local reclaimed = 0
if upto > watermark and now - since >= tonumber(ARGV[1]) then
  upto = watermark
  since = now
  reclaimed = 1
end
local from = math.max(watermark, upto) + 1
if from <= seq then
  upto = seq
end
redis.call('HSET', KEYS[3], 'upto', upto, 'wm', watermark, 'since', since)
redis.call('PEXPIRE', KEYS[3], ARGV[1])
if from > seq then
  return {0, 0, reclaimed}
end
return {from, seq, reclaimed}
