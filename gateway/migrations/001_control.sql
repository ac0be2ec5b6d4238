-- The control schema: machine identities, the roles they map to, and the audit trail.
CREATE SCHEMA IF NOT EXISTS gateway;

-- One row per declared role, kept in step with config/roles.toml by `gateway roles apply`.
-- The id never changes, so a renamed role keeps its identities.
CREATE TABLE gateway.roles (
    id          text PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    tier        text NOT NULL CHECK (tier IN ('ingest', 'transactional', 'reader', 'auditor', 'admin')),
    login_role  text NOT NULL,
    declared_at timestamptz NOT NULL DEFAULT now(),
    removed_at  timestamptz
);

CREATE TABLE gateway.identities (
    name        text PRIMARY KEY
                CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._:@=-]{0,127}$'),
    kind        text NOT NULL DEFAULT 'device' CHECK (kind IN ('device', 'service')),
    role_id     text NOT NULL REFERENCES gateway.roles (id),
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'retired')),
    attributes  jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    retired_at  timestamptz,
    last_seen   timestamptz,
    CHECK ((status = 'retired') = (retired_at IS NOT NULL))
);
-- "All identities of role X" pages through this index, for a million identities too.
CREATE INDEX identities_role_name ON gateway.identities (role_id, status, name);

-- Every applied roles plan: the declaration's hash, the diff and the statements run.
CREATE TABLE gateway.role_changes (
    version       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    document_hash text NOT NULL,
    diff          jsonb NOT NULL,
    statements    text[] NOT NULL,
    applied_by    text NOT NULL,
    applied_at    timestamptz NOT NULL DEFAULT now()
);

-- Every lifecycle and role change: who, what, before, after.
CREATE TABLE gateway.audit_log (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT now(),
    actor    text NOT NULL,
    db_user  text NOT NULL DEFAULT session_user,
    action   text NOT NULL,
    subject  text NOT NULL,
    before   jsonb,
    after    jsonb
);
CREATE INDEX audit_log_subject ON gateway.audit_log (subject, at);

-- The audit trail is append-only even for its owner: privileges keep the gateway's roles to
-- INSERT, and these triggers refuse UPDATE, DELETE and TRUNCATE from anyone.
CREATE FUNCTION gateway.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%.% is append-only', TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON gateway.audit_log
    FOR EACH ROW EXECUTE FUNCTION gateway.refuse_change();
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON gateway.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION gateway.refuse_change();
CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON gateway.role_changes
    FOR EACH ROW EXECUTE FUNCTION gateway.refuse_change();
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON gateway.role_changes
    FOR EACH STATEMENT EXECUTE FUNCTION gateway.refuse_change();

-- Every change to identities reaches running gateways through NOTIFY: the names changed, or
-- '*' (reload everything) when a statement changed too many rows for one notification.
CREATE FUNCTION gateway.notify_identities() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    names text;
BEGIN
    SELECT CASE WHEN count(*) > 200 THEN '*' ELSE string_agg(name, ' ') END
      INTO names FROM changed;
    IF names IS NOT NULL THEN
        PERFORM pg_notify('gateway_identities', names);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER notify_insert AFTER INSERT ON gateway.identities
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION gateway.notify_identities();
CREATE TRIGGER notify_update AFTER UPDATE ON gateway.identities
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION gateway.notify_identities();
CREATE TRIGGER notify_delete AFTER DELETE ON gateway.identities
    REFERENCING OLD TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION gateway.notify_identities();
