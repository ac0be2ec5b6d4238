-- A change feed of identities. Every gateway's cache reads what changed from here, in order,
-- and takes a notification only as a hint to look: any role may NOTIFY any channel (PostgreSQL
-- cannot forbid it), so a payload is never trusted. Only the functions below write the feed.
CREATE TABLE gateway.identity_changes (
    seq  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,  -- an identity's name, or '*': reload everything (a role renamed or removed)
    at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX identity_changes_at ON gateway.identity_changes (at);
REVOKE ALL ON gateway.identity_changes FROM PUBLIC;

-- Appends names to the feed. The transaction-scoped lock makes sequence order commit order, so
-- a reader that has seen sequence N has seen every change committed before it: changes are
-- rare (provisioning, assigning, retiring), never per message. A day of history is kept, more
-- than any gateway is away without reloading everything anyway.
CREATE FUNCTION gateway.append_identity_changes(names text[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF coalesce(array_length(names, 1), 0) = 0 THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('gateway.identity_changes'));
    INSERT INTO gateway.identity_changes (name) SELECT unnest(names);
    DELETE FROM gateway.identity_changes WHERE at < now() - interval '1 day';
    PERFORM pg_notify('gateway_identities', '');
END $$;
REVOKE ALL ON FUNCTION gateway.append_identity_changes(text[]) FROM PUBLIC;

-- What `roles apply` calls after renaming or removing a role: identity caches hold role names,
-- and no identity row changed to tell them.
CREATE FUNCTION gateway.identity_roles_changed() RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT gateway.append_identity_changes(ARRAY['*']);
$$;
REVOKE ALL ON FUNCTION gateway.identity_roles_changed() FROM PUBLIC;

-- The triggers now write the feed. An UPDATE records only the names whose role or status
-- changed (or that were renamed): last_seen or attribute updates must not make every gateway
-- re-read rows. A statement of any size is recorded whole: the reader decides when a reload is
-- cheaper than reading names.
CREATE OR REPLACE FUNCTION gateway.notify_identities() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    names text[];
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        names := ARRAY['*'];
    ELSIF TG_OP = 'UPDATE' THEN
        SELECT array_agg(name) INTO names FROM (
            SELECT name FROM (
                SELECT name, role_id, status FROM new_rows
                EXCEPT
                SELECT name, role_id, status FROM old_rows
            ) AS moved
            UNION
            (SELECT name FROM old_rows EXCEPT SELECT name FROM new_rows)
        ) AS changed_names;
    ELSE
        SELECT array_agg(name) INTO names FROM changed;
    END IF;
    PERFORM gateway.append_identity_changes(names);
    RETURN NULL;
END $$;
