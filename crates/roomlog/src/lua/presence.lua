-- Presence of sockets in a room: a sorted set of "<socket>|<user id>|<user name>" scored by
-- when the entry expires, so sockets of a crashed gateway disappear on their own.
-- KEYS[1] online set
-- ARGV[1] now (ms), ARGV[2] "join" | "refresh" | "leave", ARGV[3] member, ARGV[4] expiry (ms),
-- ARGV[5] "|<user id>|" (to count the user's other sockets)
-- Returns {this user's sockets after (-1 on a refresh of a socket the set still held: not
-- counted; a refresh that had to re-add the socket, lost with Redis, counts), live sockets in the room,
-- n, the "<user id>|<user name>" of n users whose last socket expired just now, then on
-- join every live member (the joiner's snapshot)}. Nothing here walks the whole set
-- unless a join or leave needs it, so a heartbeat costs O(log N).
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
end
local readded = false
if ARGV[2] == 'leave' then
  redis.call('ZREM', KEYS[1], ARGV[3])
else
  readded = redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3]) == 1 and ARGV[2] == 'refresh'
  redis.call('PEXPIREAT', KEYS[1], ARGV[4])
end
local counted = ARGV[2] ~= 'refresh' or readded
local members = {}
if counted or #expired > 0 then
  members = redis.call('ZRANGE', KEYS[1], 0, -1)
end
local mine = -1
if counted then
  mine = 0
  for _, member in ipairs(members) do
    if string.find(member, ARGV[5], 1, true) then mine = mine + 1 end
  end
end
-- A user is gone when an entry of theirs expired and no live entry of theirs is left (the
-- calling user is not: their own change announces them).
local gone = {}
if #expired > 0 then
  local live = {}
  for _, member in ipairs(members) do
    local user = string.match(member, '^[^|]*|([^|]*)|')
    if user then live[user] = true end
  end
  local seen = {}
  for _, member in ipairs(expired) do
    local user, name = string.match(member, '^[^|]*|([^|]*)|(.*)$')
    if user and not live[user] and not seen[user] and '|' .. user .. '|' ~= ARGV[5] then
      seen[user] = true
      gone[#gone + 1] = user .. '|' .. name
    end
  end
end
local reply = {mine, redis.call('ZCARD', KEYS[1]), #gone}
for _, user in ipairs(gone) do reply[#reply + 1] = user end
if ARGV[2] == 'join' then
  for _, member in ipairs(members) do reply[#reply + 1] = member end
end
return reply
