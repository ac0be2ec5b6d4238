-- A batch's write-log entry is accepted from a login that may INSERT into the table it names,
-- table-wide or into some of its columns (a route writing only the columns it declares needs no
-- more), and that is a member of the role it names.
CREATE OR REPLACE FUNCTION gateway.append_write_log(
    text, text, integer, integer, jsonb, timestamptz, timestamptz, text
) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    entry bigint;
BEGIN
    IF NOT (pg_has_role(session_user, $1, 'MEMBER')
            AND has_any_column_privilege(session_user, $2, 'INSERT')) THEN
        RAISE EXCEPTION 'permission denied to log a write to % as %', $2, $1
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO gateway.write_log (role, target, rows, identities, positions, first_ts, last_ts,
                                   checksum)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
    RETURNING id INTO entry;
    RETURN entry;
END $$;
