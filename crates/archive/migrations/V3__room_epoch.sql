-- Incremented each time a room is re-opened into Redis from the archive. Chunk tasks
-- carry the epoch they read Redis under; a chunk from before a re-open is stale (Redis
-- lost its entries, and their seqs are being reused) and must not be written.
ALTER TABLE rooms ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;
