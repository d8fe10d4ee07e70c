-- Whether a room can take writes on the Redis process that runs this script.
-- KEYS[1] seq counter, KEYS[2] run_id of the Redis process the room was last checked on
-- ARGV[1] run_id of this Redis process (filled in by the connection)
-- Returns {seq counter or -1 when the room is not in Redis, checked here (0/1)}.
local seq = redis.call('GET', KEYS[1])
if not seq then
  return {-1, 0}
end
return {tonumber(seq), redis.call('GET', KEYS[2]) == ARGV[1] and 1 or 0}
