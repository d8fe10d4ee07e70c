-- Initialises a room from the archive, unless Redis already holds it.
-- KEYS[1] seq counter, KEYS[2] log stream, KEYS[3] persisted watermark, KEYS[4] epoch,
-- KEYS[5] run_id the room was checked on, KEYS[6..] client_id markers of restored messages
-- ARGV[1] archived last seq, ARGV[2] client_id marker TTL (s), ARGV[3] pub/sub channel,
-- ARGV[4] the room's epoch in the archive, ARGV[5] this Redis process's run_id (filled in by the
-- connection), ARGV[6] the publish command (PUBLISH or SPUBLISH), then triplets of
-- (seq, entry JSON, index in KEYS of its client_id marker or 0) in ascending seq order. Restoring the client_id markers
-- keeps a resend of a recent message from becoming a duplicate after Redis was lost.
-- Returns {initialised (0/1), seq counter}.
if redis.call('EXISTS', KEYS[1]) == 1 then
  -- Another hydrator initialised the room after this one re-opened the archive (a lock
  -- that expired mid-load lets two re-open it): the archive's epoch is now this call's,
  -- so the copy adopts it, or every chunk would be refused as stale, forever.
  if tonumber(redis.call('GET', KEYS[4]) or '0') < tonumber(ARGV[4]) then
    redis.call('SET', KEYS[4], ARGV[4])
  end
  return {0, tonumber(redis.call('GET', KEYS[1]))}
end
local archived = tonumber(ARGV[1])
local seq = archived
-- A log without a counter (partial key loss) may hold acked, unpersisted entries:
-- keep it and continue after its last entry instead of reloading older ones.
local tail = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if #tail > 0 then
  local last = tonumber(string.match(tail[1][1], '^(%d+)'))
  if last > seq then seq = last end
else
  for i = 7, #ARGV, 3 do
    redis.call('XADD', KEYS[2], ARGV[i] .. '-0', 'm', ARGV[i + 1])
    local marker = tonumber(ARGV[i + 2])
    if marker > 0 then
      redis.call('SET', KEYS[marker], ARGV[i], 'EX', ARGV[2])
    end
  end
end
redis.call('SET', KEYS[3], archived)
redis.call('SET', KEYS[4], ARGV[4])
redis.call('SET', KEYS[5], ARGV[5])
redis.call('SET', KEYS[1], seq)
-- Sockets still open on the room may have seen seqs above this (acked messages that
-- Redis lost): "R <seq>" tells every gateway to reload them from here.
redis.call(ARGV[6], ARGV[3], 'R ' .. seq)
return {1, seq}
