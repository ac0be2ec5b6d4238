-- The ingestion schema: insert-only telemetry, transactional device state, and rejects.
CREATE SCHEMA IF NOT EXISTS ingest;

-- No index by default: each one costs COPY throughput (measured: one btree on (identity, ts)
-- makes COPY 2.7x slower). Add the ones your readers need, deliberately.
CREATE TABLE ingest.telemetry (
    ts          timestamptz NOT NULL,
    identity    text NOT NULL,
    metric      text NOT NULL,
    value       double precision,
    tags        jsonb,
    received_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ingest.device_state (
    identity   text PRIMARY KEY,
    state      jsonb NOT NULL DEFAULT '{}',
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Messages that can never succeed, with why, from whom (when known) and how they began.
CREATE TABLE ingest.rejects (
    at             timestamptz NOT NULL DEFAULT now(),
    source         text NOT NULL,
    reason         text NOT NULL,
    identity       text,
    topic          text,
    payload_prefix bytea,
    detail         text
);
