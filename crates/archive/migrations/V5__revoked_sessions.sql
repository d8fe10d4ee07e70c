-- Sessions ended before their token expired (logout, revocation). Redis caches them for
-- every request; this table is what survives a Redis loss, so no revoked token comes
-- back to life. Rows are useless once the token has expired and are deleted then.
CREATE TABLE revoked_sessions (
    jti        TEXT PRIMARY KEY,
    user_id    BIGINT NOT NULL REFERENCES users (id),
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX revoked_sessions_expires_at ON revoked_sessions (expires_at);
