#!/bin/sh
# Random passwords for deploy/compose.yaml, one file per compose secret (and the admin DSN made
# from the superuser's), and a throwaway CA with a TLS certificate for Mosquitto and one for
# PostgreSQL, in this directory or the one given; existing files are kept, so running it again
# changes nothing. Compose bind-mounts them as they are (outside swarm it sets no owner or mode),
# so each file is mode 0600 (ca.crt, which every client needs, 0644) and the services that read
# them run as its owner: GATEWAY_UID and GATEWAY_GID, written to the .env file beside the secrets
# directory (deploy/.env, which compose reads). Run as root, it gives the files to uid 10001 (or
# GATEWAY_UID), so that no container needs to be root to read them; ca.key, which no container
# mounts, stays the caller's.
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
give() {
    chmod "$1" "$2"
    if [ "$(id -u)" -eq 0 ]; then
        chown "$uid:$gid" "$2"
    fi
}
for name in postgres_password \
    db_telemetry_ingest db_state_writer db_rejects_writer db_analytics_reader db_auditor \
    db_gateway_control db_gateway_admin \
    mqtt_admin mqtt_gateway mqtt_sensor_0001; do
    if [ ! -s "$name" ]; then
        # Letters and digits only: the admin password goes into a DSN unescaped.
        LC_ALL=C tr -dc 'A-Za-z0-9' </dev/urandom | head -c 32 >"$name"
    fi
    give 600 "$name"
done
# The admin DSN of `migrate` and `admin` (GATEWAY_ADMIN_DSN_FILE), made again from the superuser's
# password each time, so it follows a password replaced by deleting its file. TLS, verified
# against the CA below as compose mounts it: the superuser's password and every role password
# `roles apply` sets go to the real server only.
printf 'postgresql://postgres:%s@postgres:5432/gateway?sslmode=verify-full&sslrootcert=%s' \
    "$(cat postgres_password)" /run/secrets/gateway/tls/ca.crt >admin_dsn
give 600 admin_dsn

# TLS: a CA of this deployment alone (EC P-256), and a server certificate per service whose names
# are what clients dial: the compose service name, and localhost for the published ports and the
# broker's health check. A certificate is issued again when it is missing or no longer verifies
# (expired, or the CA was replaced by deleting ca.key); delete a file to replace it.
if [ ! -s ca.key ] || [ ! -s ca.crt ] || ! openssl x509 -in ca.crt -noout -checkend 86400 >/dev/null; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
        -subj "/CN=m2m-gateway compose CA" -keyout ca.key -out ca.crt \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        2>/dev/null
    rm -f mosquitto.crt mosquitto.key postgres.crt postgres.key
fi
chmod 600 ca.key
give 644 ca.crt
for service in mosquitto postgres; do
    if [ ! -s "$service.key" ] || [ ! -s "$service.crt" ] \
        || ! openssl verify -CAfile ca.crt "$service.crt" >/dev/null 2>&1 \
        || ! openssl x509 -in "$service.crt" -noout -checkend 86400 >/dev/null; then
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -subj "/CN=$service" -keyout "$service.key" -out "$service.csr" 2>/dev/null
        printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
            "extendedKeyUsage=serverAuth" "subjectAltName=DNS:$service,DNS:localhost" \
            "authorityKeyIdentifier=keyid" "subjectKeyIdentifier=hash" >"$service.ext"
        openssl x509 -req -in "$service.csr" -days 825 -CA ca.crt -CAkey ca.key \
            -set_serial "0x$(openssl rand -hex 16)" -extfile "$service.ext" -out "$service.crt" \
            2>/dev/null
        rm -f "$service.csr" "$service.ext"
    fi
    # PostgreSQL refuses a key its user does not own or that others may read.
    give 600 "$service.key"
    give 600 "$service.crt"
done

# Keep whatever else .env says (e.g. GATEWAY_BIND); replace the owner's lines.
env_file=../.env
touch "$env_file"
grep -v '^GATEWAY_[UG]ID=' "$env_file" >"$env_file.new" || true
printf 'GATEWAY_UID=%s\nGATEWAY_GID=%s\n' "$uid" "$gid" >>"$env_file.new"
mv "$env_file.new" "$env_file"
echo "passwords and certificates in $(pwd), owned by $uid:$gid"
