-- Claims the range a FlushRoom master task should split into chunks: everything above
-- both the watermark and what earlier masters already queued. The claim expires, so a
-- range whose chunk tasks were lost is claimed again by a later flush.
-- KEYS[1] seq counter, KEYS[2] persisted watermark, KEYS[3] queued-up-to marker
-- ARGV[1] claim lifetime in ms
-- Returns {from, to}; {0, 0} when there is nothing to claim.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {0, 0}
end
local seq = tonumber(redis.call('GET', KEYS[1]))
local watermark = tonumber(redis.call('GET', KEYS[2]) or '0')
local queued = tonumber(redis.call('GET', KEYS[3]) or '0')
local from = math.max(watermark, queued) + 1
if from > seq then
  return {0, 0}
end
redis.call('SET', KEYS[3], seq, 'PX', ARGV[1])
return {from, seq}
