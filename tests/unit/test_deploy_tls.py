"""The shipped deployments speak verified TLS to Mosquitto and PostgreSQL.

Every shipped gateway.toml loads (the configuration refuses a password to an unverified server
off loopback) with its MQTT sessions and broker administration on Mosquitto's TLS listener and a
CA to verify it, and PostgreSQL verified (verify-full); the CA is mounted where the files say;
mosquitto.conf has one listener, TLS on 8883, reading its certificate where compose and
Kubernetes mount it. That the generated certificates and the shipped listener lines work
together is proven against a real Mosquitto in tests/integration/test_shipped_tls.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from gateway.config import GatewayConfig, MqttConnection
from gateway.db import dsn_exposure
from gateway.tls import postgres_sslmode
from tests.unit.test_deploy import (
    DEPLOY,
    compose,
    compose_config,
    compose_secrets,
    container,
    k8s_config,
    manifests,
    pod_spec,
    readable,
    secret_mounts,
)
from tests.unit.test_deploy_lockdown import run_generate

MOSQUITTO_CONF = DEPLOY / "mosquitto" / "mosquitto.conf"
TLS_PORT = 8883
CERTS = PurePosixPath("/mosquitto/certs")
# The keys cert-manager writes into a Certificate's Secret.
CERT_MANAGER_KEYS = {"tls.crt", "tls.key", "ca.crt"}


def shipped_configs() -> dict[str, GatewayConfig]:
    return {"compose": compose_config(), "kubernetes": k8s_config()}


def assert_verified_mqtt(where: str, connection: MqttConnection) -> None:
    assert connection.port == TLS_PORT, f"{where}: the broker's TLS listener"
    assert connection.uses_tls and connection.ca_file is not None, f"{where}: verified TLS"
    assert not connection.allow_plaintext_password, where


@pytest.mark.parametrize("where", ["compose", "kubernetes"])
def test_every_shipped_config_verifies_mosquitto_and_postgres(where: str) -> None:
    config = shipped_configs()[where]
    assert config.sources.mqtt, f"{where}: an MQTT source"
    for source in config.sources.mqtt:
        assert_verified_mqtt(f"{where} sources.mqtt {source.name}", source)
    if config.brokers.mosquitto is not None:
        assert_verified_mqtt(f"{where} brokers.mosquitto", config.brokers.mosquitto)
    database = config.database
    assert database.ca_file is not None
    assert postgres_sslmode(database.sslmode, database.ca_file) == "verify-full"
    assert not database.allow_unverified_password, f"{where}: no exception needed"


def test_the_compose_admin_dsn_verifies_postgres(tmp_path: Path) -> None:
    run_generate(tmp_path / "secrets")
    dsn = (tmp_path / "secrets" / "admin_dsn").read_text()
    assert dsn_exposure(dsn) is None
    ca = re.search(r"[?&]sslrootcert=([^&]+)", dsn)
    assert ca
    for name in ("migrate", "admin"):
        mounted = compose_secrets(compose()["services"][name])
        assert mounted[PurePosixPath(ca[1])] == "ca.crt", f"{name} cannot read the CA"


def test_compose_mounts_each_ca_file_where_the_config_reads_it() -> None:
    config = compose_config()
    services = compose()["services"]
    brokers = config.brokers.mosquitto
    assert brokers is not None and brokers.ca_file is not None
    reads: dict[str, list[Path | None]] = {
        "gateway": [config.database.ca_file, *(s.ca_file for s in config.sources.mqtt)],
        "migrate": [brokers.ca_file],
    }
    for name, files in reads.items():
        mounted = compose_secrets(services[name])
        for file in files:
            assert mounted.get(PurePosixPath(str(file))) == "ca.crt", f"{name}: {file}"


def listeners(text: str) -> dict[str, dict[str, str]]:
    """Each `listener` line of a mosquitto.conf -> the options of the lines right below it, up
    to the first blank line: the shipped file keeps a listener's own options together there."""
    found: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        if not line.strip():
            current = None
            continue
        if line.startswith("#"):
            continue
        name, _, value = line.partition(" ")
        if name == "listener":
            current = found.setdefault(value, {})
        elif current is not None:
            current[name] = value
    return found


def test_mosquitto_listens_on_8883_with_tls_only() -> None:
    conf = MOSQUITTO_CONF.read_text()
    (port,) = listeners(conf)
    assert port == str(TLS_PORT), "one listener: TLS (no password in clear text)"
    options = listeners(conf)[port]
    for option, file in [("certfile", "tls.crt"), ("keyfile", "tls.key"), ("cafile", "ca.crt")]:
        assert PurePosixPath(options[option]) == CERTS / file, option
    assert options["tls_version"] in {"tlsv1.2", "tlsv1.3"}, "TLS 1.2 or newer"
    assert "require_certificate" not in options, "clients log in with passwords"
    assert not re.search(r"^per_listener_settings true", conf, re.M)


def test_compose_mosquitto_mounts_its_certificate_and_checks_tls() -> None:
    mosquitto = compose()["services"]["mosquitto"]
    mounted = compose_secrets(mosquitto)
    assert {mounted[CERTS / key] for key in CERT_MANAGER_KEYS} == {
        "mosquitto.crt",
        "mosquitto.key",
        "ca.crt",
    }
    assert mosquitto["ports"] == [f"${{MQTT_BIND:-127.0.0.1}}:{TLS_PORT}:{TLS_PORT}"]
    check = mosquitto["healthcheck"]["test"][-1]
    assert f"-p {TLS_PORT} --cafile {CERTS / 'ca.crt'}" in check
    # The certificate names localhost (generate.sh): the check verifies it, no --insecure.
    assert "-h localhost" in check and "--insecure" not in check


def test_compose_postgres_takes_tls_with_its_mounted_certificate() -> None:
    postgres = compose()["services"]["postgres"]
    command = postgres["command"]
    assert command[0] == "postgres"
    settings = dict(arg.split("=", 1) for arg in command[2::2])
    assert command[1::2] == ["-c"] * len(settings)
    assert settings["ssl"] == "on"
    mounted = compose_secrets(postgres)
    assert mounted[PurePosixPath(settings["ssl_cert_file"])] == "postgres.crt"
    assert mounted[PurePosixPath(settings["ssl_key_file"])] == "postgres.key"


def test_kubernetes_mosquitto_mounts_the_cert_manager_secret() -> None:
    spec = manifests()[("StatefulSet", "mosquitto")]["spec"]["template"]["spec"]
    broker = container(spec, "mosquitto")
    (mount,) = [m for m in broker["volumeMounts"] if m["mountPath"] == str(CERTS)]
    assert mount["readOnly"] is True and "subPath" not in mount
    (secret,) = [v["secret"] for v in spec["volumes"] if v["name"] == mount["name"]]
    assert secret["secretName"] == "mosquitto-tls"
    assert {item["key"] for item in secret["items"]} == CERT_MANAGER_KEYS
    assert all(item["key"] == item["path"] for item in secret["items"])
    (port,) = broker["ports"]
    assert port["containerPort"] == TLS_PORT
    (service_port,) = manifests()[("Service", "mosquitto")]["spec"]["ports"]
    assert service_port["port"] == TLS_PORT


def test_kubernetes_gateway_reads_the_mosquitto_ca_alone() -> None:
    spec = pod_spec()
    mounts = secret_mounts(spec, "gateway")
    (source,) = k8s_config().sources.mqtt
    assert source.ca_file is not None
    ca = PurePosixPath(str(source.ca_file))
    assert readable(ca, mounts)
    assert mounts[ca.parent] == {"ca.crt"}, "the broker's CA, never its key"
    volumes: dict[str, Any] = {v["name"]: v for v in spec["volumes"]}
    (mount,) = [
        m for m in container(spec, "gateway")["volumeMounts"] if m["mountPath"] == str(ca.parent)
    ]
    assert volumes[mount["name"]]["secret"]["secretName"] == "mosquitto-ca"
    assert mount["readOnly"] is True


def test_no_shipped_config_opts_out_of_verification() -> None:
    for path in [
        DEPLOY / "compose" / "gateway.toml",
        DEPLOY / "kubernetes" / "config" / "gateway.toml",
    ]:
        text = path.read_text()
        assert not re.search(r"^\s*allow_(unverified|plaintext)_password\b", text, re.M), path
        assert not re.search(r"^\s*sslmode\b", text, re.M), f"{path}: verify-full, the default"
    statefulset = json.dumps(manifests()[("StatefulSet", "gateway")])
    assert "allow_plaintext_password" not in statefulset


def test_kubernetes_migration_job_can_verify_postgres_as_the_pods_do() -> None:
    # The admin DSN is refused off loopback unless it verifies the server: the Job needs the CA.
    ca = k8s_config().database.ca_file
    assert ca is not None
    spec = manifests()[("Job", "gateway-migrate")]["spec"]["template"]["spec"]
    assert readable(PurePosixPath(str(ca)), secret_mounts(spec, "migrate"))
    dsn = f"postgresql://postgres:x@postgres:5432/gateway?sslmode=verify-full&sslrootcert={ca}"
    assert dsn_exposure(dsn) is None
    assert f"sslrootcert={ca}" in (DEPLOY / "README.md").read_text(), "documented as such"
