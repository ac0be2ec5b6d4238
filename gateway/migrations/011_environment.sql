-- A wide table, for devices that publish their own shape (`kind = "table"` routes): one row per
-- message, each column taken from the payload by the route's declared path and type. The shipped
-- configuration routes environment sensors here; a fleet declares its own tables the same way.
CREATE TABLE ingest.environment (
    ts          timestamptz NOT NULL,
    identity    text NOT NULL,
    received_at timestamptz NOT NULL,
    temperature double precision,
    humidity    double precision,
    pressure    double precision,
    battery_mv  integer,
    uptime_s    bigint,
    rssi        integer,
    firmware    text,
    door_open   boolean,
    reading_id  uuid,
    extra       jsonb
);
