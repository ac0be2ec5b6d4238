-- The write log becomes hash chains too, one per (role, table): each batch's entry carries the
-- hash of the entry before it in its chain, so an entry edited, deleted or inserted out of band
-- is named by `gateway audit verify`. One chain per (role, table), not one for all: writers of
-- different routes never wait for each other, and a route's writers wait only for the entry and
-- the commit of the batch ahead of them (the entry is a batch's last statement).
--
-- Entries go through `gateway.append_write_log`, which stamps the login role, the server time
-- and the chain itself, and accepts an entry only from a login that may write the table and is a
-- member of the role it names: an ingest login can no longer insert entries of its choosing.

ALTER TABLE gateway.write_log
    ADD COLUMN chain text,
    ADD COLUMN prev_hash bytea,
    ADD COLUMN hash bytea;

-- Numbers are drawn after the chain's lock, so number order is chain order (as in 009).
ALTER TABLE gateway.write_log ALTER COLUMN id DROP IDENTITY;
CREATE SEQUENCE gateway.write_log_id_seq OWNED BY gateway.write_log.id;
SELECT setval('gateway.write_log_id_seq', coalesce(max(id), 0) + 1, false) FROM gateway.write_log;
REVOKE ALL ON SEQUENCE gateway.write_log_id_seq FROM PUBLIC;

CREATE FUNCTION gateway.write_log_text(w gateway.write_log) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT jsonb_build_array(w.id, extract(epoch FROM w.at), w.db_user, w.role, w.target, w.rows,
                             w.identities, w.positions, extract(epoch FROM w.first_ts),
                             extract(epoch FROM w.last_ts), w.checksum, w.chain)::text;
$$;

CREATE FUNCTION gateway.chain_write_log() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    NEW.chain := NEW.role || ' ' || NEW.target;
    PERFORM pg_advisory_xact_lock(hashtext('gateway.write_log'), hashtext(NEW.chain));
    NEW.id := nextval('gateway.write_log_id_seq');
    NEW.at := now();
    NEW.db_user := session_user;
    NEW.prev_hash := coalesce(
        (SELECT hash FROM gateway.write_log WHERE chain = NEW.chain ORDER BY id DESC LIMIT 1),
        ''::bytea);
    NEW.hash := gateway.chain_hash(NEW.prev_hash, gateway.write_log_text(NEW));
    RETURN NEW;
END $$;
CREATE TRIGGER chain BEFORE INSERT ON gateway.write_log
    FOR EACH ROW EXECUTE FUNCTION gateway.chain_write_log();
REVOKE ALL ON FUNCTION gateway.chain_write_log() FROM PUBLIC;

-- The one way in for a batch's entry. Checked against session_user, the role that logged in:
-- it must be a member of the role the entry names and may INSERT into the table it names.
-- Arguments: role, target, rows, identities, positions, first_ts, last_ts, checksum.
CREATE FUNCTION gateway.append_write_log(
    text, text, integer, integer, jsonb, timestamptz, timestamptz, text
) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    entry bigint;
BEGIN
    IF NOT (pg_has_role(session_user, $1, 'MEMBER')
            AND has_table_privilege(session_user, $2, 'INSERT')) THEN
        RAISE EXCEPTION 'permission denied to log a write to % as %', $2, $1
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO gateway.write_log (role, target, rows, identities, positions, first_ts, last_ts,
                                   checksum)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
    RETURNING id INTO entry;
    RETURN entry;
END $$;
GRANT EXECUTE ON FUNCTION gateway.append_write_log(
    text, text, integer, integer, jsonb, timestamptz, timestamptz, text) TO PUBLIC;

CREATE INDEX write_log_chain ON gateway.write_log (chain, id);

-- The entries written before this migration join their chains in number order.
ALTER TABLE gateway.write_log DISABLE TRIGGER append_only;
DO $$
DECLARE
    heads jsonb := '{}'::jsonb;
    prev bytea;
    w gateway.write_log;
BEGIN
    FOR w IN SELECT * FROM gateway.write_log ORDER BY id LOOP
        w.chain := w.role || ' ' || w.target;
        prev := coalesce(decode(heads ->> w.chain, 'hex'), ''::bytea);
        w.prev_hash := prev;
        w.hash := gateway.chain_hash(prev, gateway.write_log_text(w));
        heads := heads || jsonb_build_object(w.chain, encode(w.hash, 'hex'));
        UPDATE gateway.write_log SET chain = w.chain, prev_hash = w.prev_hash, hash = w.hash
         WHERE id = w.id;
    END LOOP;
END $$;
ALTER TABLE gateway.write_log ENABLE TRIGGER append_only;
ALTER TABLE gateway.write_log
    ALTER COLUMN chain SET NOT NULL,
    ALTER COLUMN prev_hash SET NOT NULL,
    ALTER COLUMN hash SET NOT NULL;
