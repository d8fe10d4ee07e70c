#!lua flags=allow-oom
-- A failed login of one account: count it, and past the free attempts lock the account
-- for a doubling time, so guessing a password costs exponentially more per attempt.
-- KEYS[1] failure count, KEYS[2] lock
-- ARGV[1] free failures, ARGV[2] first lock in ms, ARGV[3] longest lock in ms,
-- ARGV[4] how long the count is remembered after the last failure, in ms
-- Returns the lock in ms now in force (0: none).
local failures = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]))
local over = failures - tonumber(ARGV[1])
if over <= 0 then
  return 0
end
local lock = tonumber(ARGV[2]) * 2 ^ math.min(over - 1, 30)
lock = math.min(lock, tonumber(ARGV[3]))
redis.call('SET', KEYS[2], failures, 'PX', lock)
return lock
