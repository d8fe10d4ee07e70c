#!lua flags=allow-oom
-- Drops a room from the dirty index when everything Redis holds of it is persisted, in
-- the same atomic step as the check: an append between a check and a removal could
-- otherwise leave an unpersisted room outside the index, where no sweep would find it.
-- Allowed at maxmemory (it only removes), so a full Redis can be drained.
-- KEYS[1] seq counter, KEYS[2] persisted watermark, KEYS[3] the dirty-room index that lists the room
-- ARGV[1] room name
-- Returns 1 when the room left the index, 0 otherwise.
local seq = redis.call('GET', KEYS[1])
if not seq or tonumber(seq) > tonumber(redis.call('GET', KEYS[2]) or '0') then
  return 0
end
return redis.call('ZREM', KEYS[3], ARGV[1])
