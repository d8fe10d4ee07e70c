#!lua flags=no-writes
-- Reads what a chunk task copies: the room's epoch and its log entries in a seq range,
-- in one atomic step. Flagged no-writes, so it runs even when Redis is at maxmemory:
-- a full Redis must always be drainable by the persister.
-- KEYS[1] epoch, KEYS[2] log stream
-- ARGV[1] first entry id, ARGV[2] last entry id
-- Returns {epoch or nil, entries}.
return {redis.call('GET', KEYS[1]) or false, redis.call('XRANGE', KEYS[2], ARGV[1], ARGV[2])}
