-- When the newest persisted message of a room was sent: lets an operator re-warm the
-- recently active rooms after a Redis loss.
ALTER TABLE rooms ADD COLUMN last_message_at TIMESTAMPTZ;
CREATE INDEX rooms_last_message_at ON rooms (last_message_at) WHERE last_message_at IS NOT NULL;
