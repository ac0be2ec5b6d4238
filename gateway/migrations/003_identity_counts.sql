-- Identities: per-role counts kept by triggers, an index of retired names, and narrower,
-- always-deliverable notifications.

-- "How many identities has role X" must answer in milliseconds for a million identities;
-- count(*) over half a million index entries takes tens of milliseconds, so statement-level
-- triggers keep the numbers per (role, status) instead.
CREATE TABLE gateway.identity_counts (
    role_id text NOT NULL,
    status  text NOT NULL,
    n       bigint NOT NULL,
    PRIMARY KEY (role_id, status)
);

-- SECURITY DEFINER: whoever may change identities keeps the counts right without a grant on
-- the counts table. Upserting in key order makes concurrent transactions lock the count rows in
-- the same order, so they queue instead of deadlocking.
CREATE FUNCTION gateway.count_identities() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        DELETE FROM gateway.identity_counts;
    ELSIF TG_OP = 'INSERT' THEN
        INSERT INTO gateway.identity_counts AS c (role_id, status, n)
        SELECT role_id, status, count(*) FROM new_rows
         GROUP BY role_id, status ORDER BY role_id, status
        ON CONFLICT (role_id, status) DO UPDATE SET n = c.n + excluded.n;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO gateway.identity_counts AS c (role_id, status, n)
        SELECT role_id, status, -count(*) FROM old_rows
         GROUP BY role_id, status ORDER BY role_id, status
        ON CONFLICT (role_id, status) DO UPDATE SET n = c.n + excluded.n;
    ELSE
        INSERT INTO gateway.identity_counts AS c (role_id, status, n)
        SELECT role_id, status, sum(delta) FROM (
            SELECT role_id, status, 1 AS delta FROM new_rows
            UNION ALL
            SELECT role_id, status, -1 FROM old_rows
        ) AS moves
         GROUP BY role_id, status HAVING sum(delta) <> 0 ORDER BY role_id, status
        ON CONFLICT (role_id, status) DO UPDATE SET n = c.n + excluded.n;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER count_insert AFTER INSERT ON gateway.identities
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION gateway.count_identities();
CREATE TRIGGER count_update AFTER UPDATE ON gateway.identities
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION gateway.count_identities();
CREATE TRIGGER count_delete AFTER DELETE ON gateway.identities
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION gateway.count_identities();
CREATE TRIGGER count_truncate AFTER TRUNCATE ON gateway.identities
    FOR EACH STATEMENT EXECUTE FUNCTION gateway.count_identities();

-- The triggers above hold a lock on gateway.identities until this migration commits, so no
-- write can slip between them and this first count.
INSERT INTO gateway.identity_counts (role_id, status, n)
SELECT role_id, status, count(*) FROM gateway.identities GROUP BY role_id, status;

-- `identities list --status retired` across roles: the primary key would be read past every
-- active name to find the few retired ones. Partial, so active identities cost it nothing.
CREATE INDEX identities_retired_name ON gateway.identities (name) WHERE status = 'retired';

-- Notifications, revised:
-- * an UPDATE notifies only the names whose role or status changed (or that were renamed):
--   the caches hold nothing else, and last_seen or attribute updates must not make every
--   gateway re-read those rows;
-- * a NOTIFY payload must stay under 8000 bytes, or the notifying transaction fails: 200 names
--   of up to 128 characters can exceed it, so a long list becomes '*' too.
CREATE OR REPLACE FUNCTION gateway.notify_identities() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    names text;
    n bigint;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        n := 201;
    ELSIF TG_OP = 'UPDATE' THEN
        SELECT count(*), string_agg(name, ' ') INTO n, names FROM (
            SELECT name FROM (
                SELECT name, role_id, status FROM new_rows
                EXCEPT
                SELECT name, role_id, status FROM old_rows
            ) AS moved
            UNION
            (SELECT name FROM old_rows EXCEPT SELECT name FROM new_rows)
        ) AS changed_names;
    ELSE
        SELECT count(*), string_agg(name, ' ') INTO n, names FROM changed;
    END IF;
    IF n > 200 OR octet_length(names) >= 8000 THEN
        names := '*';
    END IF;
    IF names IS NOT NULL THEN
        PERFORM pg_notify('gateway_identities', names);
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER notify_update ON gateway.identities;
CREATE TRIGGER notify_update AFTER UPDATE ON gateway.identities
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION gateway.notify_identities();
CREATE TRIGGER notify_truncate AFTER TRUNCATE ON gateway.identities
    FOR EACH STATEMENT EXECUTE FUNCTION gateway.notify_identities();
