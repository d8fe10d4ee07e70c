#!lua flags=allow-oom
-- Takes a lock if nobody holds it. Allowed at maxmemory (a few bytes): the sweep and the
-- hydrator must keep working while a full Redis is being drained.
-- KEYS[1] lock, ARGV[1] owner token, ARGV[2] lifetime (ms)
-- Returns 1 when taken, 0 when someone else holds it.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
