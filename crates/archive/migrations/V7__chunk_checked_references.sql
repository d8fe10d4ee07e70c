-- The references of `messages` are checked once per chunk instead of once per row.
-- A foreign key runs an RI trigger for every inserted row (a look-up and a FOR KEY SHARE
-- row lock on the room and on the sender): most of a chunk's COPY time (100,000 rows:
-- 305 ms into a plain table of this shape, 1,112 ms into `messages`). The only writer of
-- `messages` is the archive's chunk write (`store_chunk`), which holds the room row's
-- lock for its transaction (FOR NO KEY UPDATE: the room cannot be deleted under it) and
-- checks the chunk's distinct senders once (SELECT … FROM users WHERE id = ANY(…) FOR KEY
-- SHARE); a row whose sender does not exist is quarantined with SQLSTATE 23503, as the
-- foreign key refused it before.
ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_room_id_fkey;
ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_user_id_fkey;

-- The other half of what the foreign keys guaranteed: a user or room that messages refer
-- to cannot be deleted. Nothing in Huddle deletes either; these triggers fire only then,
-- never on the write path, and refuse with the SQLSTATE the foreign keys used (23503).
CREATE FUNCTION refuse_delete_referenced_by_messages() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'users' AND EXISTS (SELECT 1 FROM messages WHERE user_id = OLD.id) THEN
        RAISE EXCEPTION 'user % is still the sender of messages', OLD.id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF TG_TABLE_NAME = 'rooms' AND EXISTS (SELECT 1 FROM messages WHERE room_id = OLD.id) THEN
        RAISE EXCEPTION 'room % still has messages', OLD.id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN OLD;
END;
$$;
CREATE TRIGGER users_referenced_by_messages BEFORE DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION refuse_delete_referenced_by_messages();
CREATE TRIGGER rooms_referenced_by_messages BEFORE DELETE ON rooms
    FOR EACH ROW EXECUTE FUNCTION refuse_delete_referenced_by_messages();
