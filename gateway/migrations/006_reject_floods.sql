-- Reject records hold up under floods and redelivery.
-- `message_key` identifies the message a record is about (its source, position, topic, the
-- payload's first 256 bytes and its length, hashed): a message delivered again after its record
-- was committed, but before its acknowledgement reached the broker, adds no second record. NULL where no message is behind the
-- record (rows the database refused after their message was acknowledged).
-- `count` is 1 for a record of one message; a summary row (payload empty) counts the rejects of
-- one sender and reason in one minute beyond `limits.rejects_per_minute`, which were not stored.
ALTER TABLE ingest.rejects ADD COLUMN message_key bytea;
ALTER TABLE ingest.rejects ADD COLUMN count integer NOT NULL DEFAULT 1;
CREATE UNIQUE INDEX rejects_message_key ON ingest.rejects (message_key)
    WHERE message_key IS NOT NULL;
