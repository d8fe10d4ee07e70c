-- Presence of sockets in a room: a sorted set of "<socket>|<user id>|<user name>" scored by
-- when the entry expires, so sockets of a crashed gateway disappear on their own.
-- KEYS[1] online set
-- ARGV[1] now (ms), ARGV[2] "join" | "refresh" | "leave", ARGV[3] member, ARGV[4] expiry (ms),
-- ARGV[5] "|<user id>|" (to count the user's other sockets)
-- Returns {this user's sockets after, every live member...}.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if ARGV[2] == 'leave' then
  redis.call('ZREM', KEYS[1], ARGV[3])
else
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
  redis.call('PEXPIREAT', KEYS[1], ARGV[4])
end
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
local mine = 0
for _, member in ipairs(members) do
  if string.find(member, ARGV[5], 1, true) then mine = mine + 1 end
end
local reply = {mine}
for _, member in ipairs(members) do reply[#reply + 1] = member end
return reply
