#!/bin/sh
# Random passwords for deploy/compose.yaml, one file per compose secret; existing files are kept,
# so running it again changes nothing. Compose mounts them as they are (outside swarm it cannot
# set their owner or mode), so the files are readable by the containers' users and the directory
# is closed to everyone but you.
set -eu
cd "$(dirname "$0")"
umask 022
chmod 700 .
for name in postgres_password \
    db_telemetry_ingest db_state_writer db_rejects_writer db_analytics_reader db_auditor \
    db_gateway_control db_gateway_admin \
    mqtt_admin mqtt_gateway mqtt_sensor_0001; do
    if [ ! -s "$name" ]; then
        # Letters and digits only: the admin password goes into a DSN unescaped.
        LC_ALL=C tr -dc 'A-Za-z0-9' </dev/urandom | head -c 32 >"$name"
    fi
    chmod 644 "$name"
done
echo "passwords in $(pwd)"
