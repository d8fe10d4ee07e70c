-- Hands back a claimed range whose chunk tasks could not be queued, so the next flush
-- claims it at once instead of after the claim's lifetime. Only while no later flush has
-- claimed past it: a claim that moved on is left alone (its range is queued).
-- KEYS[1] claim (hash: upto, wm, since)
-- ARGV[1] first seq of the claimed range, ARGV[2] last seq of the claimed range
-- Returns 1 when the range was handed back, else 0.
if tonumber(redis.call('HGET', KEYS[1], 'upto') or '-1') ~= tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[1], 'upto', tonumber(ARGV[1]) - 1)
return 1
