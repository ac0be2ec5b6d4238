-- The audit trail and the role history become hash chains: each row carries the hash of the row
-- before it and its own, hash = sha256(prev_hash || the row's canonical text), so a row edited,
-- deleted or inserted out of band (by a superuser, with triggers disabled) breaks the chain where
-- it happened and `gateway audit verify` names it. The caller states only what happened (actor,
-- action, subject, before, after); who wrote it, when, its number and its hashes are stamped
-- here, by the server, whatever the caller sent.

ALTER TABLE gateway.audit_log ADD COLUMN prev_hash bytea, ADD COLUMN hash bytea;
ALTER TABLE gateway.role_changes
    ADD COLUMN db_user text,  -- unknown for versions applied before this migration
    ADD COLUMN prev_hash bytea,
    ADD COLUMN hash bytea;

-- Numbers are drawn after the chain's lock is taken (below), so number order is chain order even
-- when writers race: an identity default would be drawn before the lock.
ALTER TABLE gateway.audit_log ALTER COLUMN id DROP IDENTITY;
CREATE SEQUENCE gateway.audit_log_id_seq OWNED BY gateway.audit_log.id;
SELECT setval('gateway.audit_log_id_seq', coalesce(max(id), 0) + 1, false) FROM gateway.audit_log;
ALTER TABLE gateway.role_changes ALTER COLUMN version DROP IDENTITY;
CREATE SEQUENCE gateway.role_changes_version_seq OWNED BY gateway.role_changes.version;
SELECT setval('gateway.role_changes_version_seq', coalesce(max(version), 0) + 1, false)
  FROM gateway.role_changes;
REVOKE ALL ON SEQUENCE gateway.audit_log_id_seq, gateway.role_changes_version_seq FROM PUBLIC;

-- The canonical text of a row: a JSON array in column order. jsonb prints one way whatever the
-- input was, and the time as epoch seconds does not depend on the session's time zone.
CREATE FUNCTION gateway.audit_entry_text(e gateway.audit_log) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT jsonb_build_array(e.id, extract(epoch FROM e.at), e.actor, e.db_user, e.action,
                             e.subject, e.before, e.after)::text;
$$;
CREATE FUNCTION gateway.role_change_text(c gateway.role_changes) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT jsonb_build_array(c.version, extract(epoch FROM c.applied_at), c.document_hash,
                             c.diff, to_jsonb(c.statements), c.applied_by, c.db_user)::text;
$$;

CREATE FUNCTION gateway.chain_hash(prev_hash bytea, row_text text) RETURNS bytea
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT sha256(prev_hash || convert_to(row_text, 'UTF8'));
$$;

-- Every insert, whatever its path, is stamped and chained. The transaction-scoped lock
-- serializes writers of one chain until commit, so the last row read here is the last one
-- committed: audit entries are per change, never per message.
CREATE FUNCTION gateway.chain_audit_entry() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('gateway.audit_log'));
    NEW.id := nextval('gateway.audit_log_id_seq');
    NEW.at := now();
    NEW.db_user := session_user;
    NEW.prev_hash := coalesce(
        (SELECT hash FROM gateway.audit_log ORDER BY id DESC LIMIT 1), ''::bytea);
    NEW.hash := gateway.chain_hash(NEW.prev_hash, gateway.audit_entry_text(NEW));
    RETURN NEW;
END $$;
CREATE TRIGGER chain BEFORE INSERT ON gateway.audit_log
    FOR EACH ROW EXECUTE FUNCTION gateway.chain_audit_entry();

CREATE FUNCTION gateway.chain_role_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('gateway.role_changes'));
    NEW.version := nextval('gateway.role_changes_version_seq');
    NEW.applied_at := now();
    NEW.db_user := session_user;
    NEW.prev_hash := coalesce(
        (SELECT hash FROM gateway.role_changes ORDER BY version DESC LIMIT 1), ''::bytea);
    NEW.hash := gateway.chain_hash(NEW.prev_hash, gateway.role_change_text(NEW));
    RETURN NEW;
END $$;
CREATE TRIGGER chain BEFORE INSERT ON gateway.role_changes
    FOR EACH ROW EXECUTE FUNCTION gateway.chain_role_change();

-- The way to append to the trail. Whoever may change the registry (INSERT or UPDATE on
-- gateway.identities) must record what it did, and nobody else writes here: ingest, reader and
-- auditor roles are refused. Checked against session_user, the role that logged in.
CREATE FUNCTION gateway.append_audit(text, text, text, jsonb, jsonb) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    entry bigint;
BEGIN
    IF NOT (has_table_privilege(session_user, 'gateway.identities', 'INSERT')
            OR has_table_privilege(session_user, 'gateway.identities', 'UPDATE')) THEN
        RAISE EXCEPTION 'permission denied to append to gateway.audit_log'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO gateway.audit_log (actor, action, subject, before, after)
    VALUES ($1, $2, $3, $4, $5) RETURNING id INTO entry;
    RETURN entry;
END $$;
-- The roles are created by `gateway roles apply`, after this migration, and the declaration
-- grants tables only: the function's own check above decides who may append.
GRANT EXECUTE ON FUNCTION gateway.append_audit(text, text, text, jsonb, jsonb) TO PUBLIC;

-- Applying roles needs the owner (it creates and alters roles), and so does its history.
CREATE FUNCTION gateway.append_role_change(text, jsonb, text[], text) RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO gateway.role_changes (document_hash, diff, statements, applied_by)
    VALUES ($1, $2, $3, $4) RETURNING version;
$$;
REVOKE ALL ON FUNCTION gateway.append_role_change(text, jsonb, text[], text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gateway.chain_audit_entry(), gateway.chain_role_change() FROM PUBLIC;

-- The rows written before this migration join the chain in number order.
ALTER TABLE gateway.audit_log DISABLE TRIGGER append_only;
ALTER TABLE gateway.role_changes DISABLE TRIGGER append_only;
DO $$
DECLARE
    prev bytea := ''::bytea;
    e gateway.audit_log;
    c gateway.role_changes;
BEGIN
    FOR e IN SELECT * FROM gateway.audit_log ORDER BY id LOOP
        e.prev_hash := prev;
        prev := gateway.chain_hash(prev, gateway.audit_entry_text(e));
        UPDATE gateway.audit_log SET prev_hash = e.prev_hash, hash = prev WHERE id = e.id;
    END LOOP;
    prev := ''::bytea;
    FOR c IN SELECT * FROM gateway.role_changes ORDER BY version LOOP
        c.prev_hash := prev;
        prev := gateway.chain_hash(prev, gateway.role_change_text(c));
        UPDATE gateway.role_changes SET prev_hash = c.prev_hash, hash = prev
         WHERE version = c.version;
    END LOOP;
END $$;
ALTER TABLE gateway.audit_log ENABLE TRIGGER append_only;
ALTER TABLE gateway.role_changes ENABLE TRIGGER append_only;
ALTER TABLE gateway.audit_log ALTER COLUMN prev_hash SET NOT NULL, ALTER COLUMN hash SET NOT NULL;
ALTER TABLE gateway.role_changes
    ALTER COLUMN prev_hash SET NOT NULL, ALTER COLUMN hash SET NOT NULL;
