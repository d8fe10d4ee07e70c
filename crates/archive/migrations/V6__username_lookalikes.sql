-- What each username looks like (its confusable skeleton, lowercased; computed by the
-- domain crate): a name that looks like a registered one is refused. Accounts made
-- before this column existed get their key when the archive migrates; if two of them
-- already look alike, the later one keeps NULL, which the unique index allows.
ALTER TABLE users ADD COLUMN lookalike_key TEXT;
CREATE UNIQUE INDEX users_lookalike_key ON users (lookalike_key);
