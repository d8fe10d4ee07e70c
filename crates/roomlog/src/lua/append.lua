-- Appends one message to a room: the write path's single atomic round-trip.
-- KEYS[1] seq counter, KEYS[2] log stream, KEYS[3] persisted watermark, KEYS[4] client_id marker,
-- KEYS[5] the dirty-room index that lists the room (in the room's hash slot on a cluster),
-- KEYS[6] run_id of the Redis process the room was last checked on
-- ARGV[1] pub/sub channel, ARGV[2] entry JSON, ARGV[3] client_id marker TTL in seconds ("0": no client_id),
-- ARGV[4] room name, ARGV[5] now (ms), ARGV[6] run_id of this Redis process (filled in by the connection),
-- ARGV[7] the publish command (PUBLISH or SPUBLISH)
-- The room enters the dirty index in the same atomic step as its first unpersisted
-- message, so no crash can leave an unpersisted message that the sweep never sees.
-- A room not checked on this process may have gone back to an older state (Redis
-- restarted from a snapshot or a lagging replica): its counter could hand out a seq the
-- archive already holds, so it takes no write until the hydrator has re-checked it.
-- Returns {seq, duplicate (0/1), unpersisted}; seq = -1 when the room is not initialised
-- or not checked on this process.
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('GET', KEYS[6]) ~= ARGV[6] then
  return {-1, 0, 0}
end
local dedupe = ARGV[3] ~= '0'
if dedupe then
  local prior = redis.call('GET', KEYS[4])
  if prior then
    return {tonumber(prior), 1, 0}
  end
end
local seq = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], seq .. '-0', 'm', ARGV[2])
if dedupe then
  redis.call('SET', KEYS[4], seq, 'EX', ARGV[3])
end
redis.call(ARGV[7], ARGV[1], seq .. ' ' .. ARGV[2])
local persisted = tonumber(redis.call('GET', KEYS[3]) or '0')
redis.call('ZADD', KEYS[5], 'NX', ARGV[5], ARGV[4])
return {seq, 0, seq - persisted}
