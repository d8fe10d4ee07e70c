#!lua flags=allow-oom
-- Records that every seq <= ARGV[1] is in PostgreSQL, then trims the log to its window.
-- A room with nothing left unpersisted leaves the dirty index in the same step (what
-- clear_dirty.lua does), so a chunk costs one round trip here instead of two.
-- Allowed at maxmemory: it frees memory (trimming) and writes a few bytes; without it a
-- full Redis could never be drained.
-- Entries above the persisted watermark are never trimmed.
-- A room still dirty after its watermark moved is re-scored in the dirty index with the
-- time of that progress: its score says how long it has waited for persistence to move,
-- which is what the persist-lag gauge reports and the sweep orders by.
-- KEYS[1] seq counter, KEYS[2] log stream, KEYS[3] persisted watermark, KEYS[4] the
-- dirty-room index that lists the room
-- ARGV[1] persisted seq, ARGV[2] window (entries to keep), ARGV[3] room name, ARGV[4] now (ms)
-- Returns {seq counter, watermark}; {-1, -1} when the room is not in Redis.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {-1, -1}
end
local watermark = tonumber(redis.call('GET', KEYS[3]) or '0')
local upto = tonumber(ARGV[1])
local seq = tonumber(redis.call('GET', KEYS[1]))
if upto > watermark then
  redis.call('SET', KEYS[3], upto)
  watermark = upto
  if seq > watermark then
    redis.call('ZADD', KEYS[4], 'XX', ARGV[4], ARGV[3])
  end
end
if seq <= watermark then
  redis.call('ZREM', KEYS[4], ARGV[3])
end
local keep_from = math.min(watermark + 1, seq - tonumber(ARGV[2]) + 1)
if keep_from > 1 then
  redis.call('XTRIM', KEYS[2], 'MINID', keep_from .. '-0')
end
return {seq, watermark}
