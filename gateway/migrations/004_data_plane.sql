-- What the data plane writes beside the telemetry: the write audit and per-identity activity.

-- One row per committed batch, written in the same transaction as the batch by the role that
-- wrote it: which role wrote how many rows where, from which source positions, covering which
-- time range, and a checksum of exactly those rows. Append-only like the rest of the trail.
CREATE TABLE gateway.write_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    db_user     text NOT NULL DEFAULT current_user,
    role        text NOT NULL,
    target      text NOT NULL,
    rows        integer NOT NULL,
    identities  integer NOT NULL,
    positions   jsonb NOT NULL,
    first_ts    timestamptz,
    last_ts     timestamptz,
    checksum    text NOT NULL
);
CREATE INDEX write_log_at ON gateway.write_log (at);

CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON gateway.write_log
    FOR EACH ROW EXECUTE FUNCTION gateway.refuse_change();
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON gateway.write_log
    FOR EACH STATEMENT EXECUTE FUNCTION gateway.refuse_change();

-- Rows and rejects per identity per minute, aggregated in memory by each gateway and upserted
-- every few seconds by its control role: never one write per message.
CREATE TABLE gateway.identity_activity (
    identity   text NOT NULL,
    minute     timestamptz NOT NULL,
    rows       bigint NOT NULL DEFAULT 0,
    rejects    bigint NOT NULL DEFAULT 0,
    last_seen  timestamptz NOT NULL,
    PRIMARY KEY (identity, minute)
);
