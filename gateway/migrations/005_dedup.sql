-- Optional per-route deduplication: rows carry a message id, unique per identity.
-- NULL for routes without dedup, so the partial index costs them nothing but a predicate check.
-- On a table partitioned by time, make the index (identity, message_id, ts) instead: a unique
-- index there must include the partition key.
ALTER TABLE ingest.telemetry ADD COLUMN message_id text;
CREATE UNIQUE INDEX telemetry_message_id ON ingest.telemetry (identity, message_id)
    WHERE message_id IS NOT NULL;
