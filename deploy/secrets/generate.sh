#!/bin/sh
# Random passwords for deploy/compose.yaml, one file per compose secret (and the admin DSN made
# from the superuser's), in this directory or the one given; existing files are kept, so running
# it again changes nothing. Compose bind-mounts them as they are (outside swarm it sets no owner
# or mode), so each file is mode 0600 and the services that read them run as its owner:
# GATEWAY_UID and GATEWAY_GID, written to the .env file beside the secrets directory
# (deploy/.env, which compose reads). Run as root, it gives the files to uid 10001 (or
# GATEWAY_UID), so that no container needs to be root to read them.
set -eu
dir=${1:-$(dirname "$0")}
mkdir -p "$dir"
cd "$dir"
umask 077
chmod 700 .
if [ "$(id -u)" -eq 0 ]; then
    uid=${GATEWAY_UID:-10001} gid=${GATEWAY_GID:-10001}
else
    uid=$(id -u) gid=$(id -g)
fi
for name in postgres_password \
    db_telemetry_ingest db_state_writer db_rejects_writer db_analytics_reader db_auditor \
    db_gateway_control db_gateway_admin \
    mqtt_admin mqtt_gateway mqtt_sensor_0001; do
    if [ ! -s "$name" ]; then
        # Letters and digits only: the admin password goes into a DSN unescaped.
        LC_ALL=C tr -dc 'A-Za-z0-9' </dev/urandom | head -c 32 >"$name"
    fi
    chmod 600 "$name"
    if [ "$(id -u)" -eq 0 ]; then
        chown "$uid:$gid" "$name"
    fi
done
# The admin DSN of `migrate` and `admin` (GATEWAY_ADMIN_DSN_FILE), made again from the superuser's
# password each time, so it follows a password replaced by deleting its file.
printf 'postgresql://postgres:%s@postgres:5432/gateway' "$(cat postgres_password)" >admin_dsn
chmod 600 admin_dsn
if [ "$(id -u)" -eq 0 ]; then
    chown "$uid:$gid" admin_dsn
fi
# Keep whatever else .env says (e.g. GATEWAY_BIND); replace the owner's lines.
env_file=../.env
touch "$env_file"
grep -v '^GATEWAY_[UG]ID=' "$env_file" >"$env_file.new" || true
printf 'GATEWAY_UID=%s\nGATEWAY_GID=%s\n' "$uid" "$gid" >>"$env_file.new"
mv "$env_file.new" "$env_file"
echo "passwords in $(pwd), owned by $uid:$gid"
