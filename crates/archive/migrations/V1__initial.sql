-- Accounts. Usernames are unique ignoring case; the chosen spelling is kept.
CREATE TABLE users (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username      TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_username_ci ON users (lower(username));

-- Rooms, created on first join. persisted_seq is the watermark: every message of the
-- room with seq <= persisted_seq is in `messages`.
CREATE TABLE rooms (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    persisted_seq BIGINT NOT NULL DEFAULT 0,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The archive. (room_id, seq) is the identity of a message: a chunk written twice
-- leaves one copy. user_name is the sender's name at send time.
CREATE TABLE messages (
    room_id   BIGINT NOT NULL REFERENCES rooms (id),
    seq       BIGINT NOT NULL CHECK (seq > 0),
    user_id   BIGINT NOT NULL REFERENCES users (id),
    user_name TEXT NOT NULL,
    body      TEXT NOT NULL,
    client_id TEXT NOT NULL DEFAULT '',
    sent_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (room_id, seq)
);
