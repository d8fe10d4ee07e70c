-- Brings a room Redis holds back in line with the archive, on a Redis process the room
-- was not checked on (Redis restarted, maybe from an older state).
-- KEYS[1] seq counter, KEYS[2] log stream, KEYS[3] persisted watermark, KEYS[4] epoch,
-- KEYS[5] run_id the room was checked on, KEYS[6..] client_id markers of restored messages
-- ARGV[1] this Redis process's run_id (filled in by the connection), ARGV[2] the counter the caller saw (and the archive
-- was compared with), ARGV[3] archived last seq, ARGV[4] archived watermark,
-- ARGV[5] the room's new epoch, ARGV[6] client_id marker TTL (s), ARGV[7] pub/sub channel,
-- ARGV[8] the publish command (PUBLISH or SPUBLISH),
-- then triplets of (seq, entry JSON, index in KEYS of its client_id marker or 0) of archived messages above
-- ARGV[2], in ascending seq order.
-- Returns the counter afterwards, or -1 when Redis no longer holds the room.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
local seq = tonumber(redis.call('GET', KEYS[1]))
-- Archived messages the log lost go back in, above whatever it still holds.
local top = 0
local tail = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if #tail > 0 then
  top = tonumber(string.match(tail[1][1], '^(%d+)'))
end
for i = 9, #ARGV, 3 do
  local restored = tonumber(ARGV[i])
  if restored > top then
    redis.call('XADD', KEYS[2], ARGV[i] .. '-0', 'm', ARGV[i + 1])
    top = restored
    local marker = tonumber(ARGV[i + 2])
    if marker > 0 then
      redis.call('SET', KEYS[marker], ARGV[i], 'EX', ARGV[6])
    end
  end
end
-- Never hand out a seq the archive already holds.
local archived = tonumber(ARGV[3])
if archived > seq then seq = archived end
redis.call('SET', KEYS[1], seq)
local watermark = tonumber(redis.call('GET', KEYS[3]) or '0')
local archived_watermark = math.min(tonumber(ARGV[4]), seq)
if archived_watermark > watermark then
  redis.call('SET', KEYS[3], archived_watermark)
end
redis.call('SET', KEYS[4], ARGV[5])
redis.call('SET', KEYS[5], ARGV[1])
-- Sockets may have seen seqs above the counter this Redis came back with (acked
-- messages it lost): "R <seq>" tells every gateway to reload their view from there.
redis.call(ARGV[8], ARGV[7], 'R ' .. ARGV[2])
return seq
