-- Log entries PostgreSQL refused (a data or constraint error) or that could not be read
-- at all. Each is kept with its raw bytes (the Redis log entry as stored) and the reason,
-- and counts as "present" for the watermark, so one bad row never stops a room.
CREATE TABLE quarantined_messages (
    room_id        BIGINT NOT NULL REFERENCES rooms (id),
    seq            BIGINT NOT NULL,
    raw            BYTEA NOT NULL,
    reason         TEXT NOT NULL,
    sqlstate       TEXT NOT NULL DEFAULT '',
    quarantined_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (room_id, seq)
);
