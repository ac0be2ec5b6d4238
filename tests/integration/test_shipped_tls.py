"""The shipped TLS listener and the certificates generate.sh makes work together.

Debian's Mosquitto runs the TLS listener lines of deploy/mosquitto/mosquitto.conf as shipped,
with only the port and the certificate directory moved to a temporary one holding what
deploy/secrets/generate.sh made; the gateway's verifying context then connects under the name
compose's gateway.toml dials (`mosquitto`) and gets a CONNACK, while a context that trusts
another CA, or expects another name, is refused before a byte of MQTT is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import ssl
import subprocess
import tempfile
import time
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.services._process import (
    LOOPBACK,
    ServiceProcess,
    free_port,
    hand_over,
    service_user,
    wait_for_port,
)
from gateway.services.certificates import CertificateAuthority
from gateway.services.mosquitto import mosquitto_binary
from gateway.tls import client_context
from tests.unit.test_deploy import compose_config
from tests.unit.test_deploy_lockdown import run_generate
from tests.unit.test_deploy_tls import CERTS, MOSQUITTO_CONF, TLS_PORT, listeners

START_TIMEOUT = 20  # seconds: a bound for a loaded machine, never a performance claim
# CONNECT, MQTT 3.1.1, clean session, keep alive 60 s, client id "t"; the broker's CONNACK 0.
CONNECT = bytes([0x10, 13, 0, 4, *b"MQTT", 4, 0x02, 0, 60, 0, 1, *b"t"])
CONNACK_ACCEPTED = bytes([0x20, 2, 0, 0])


@dataclass(frozen=True)
class Broker:
    port: int
    secrets: Path


def shipped_tls_lines(directory: Path, port: int) -> str:
    """The shipped TLS listener and its options, on `port` of loopback, files in `directory`."""
    (shipped_port, options) = next(iter(listeners(MOSQUITTO_CONF.read_text()).items()))
    assert shipped_port == str(TLS_PORT)
    lines = [f"listener {port} {LOOPBACK}"]
    for name, value in options.items():
        if value.startswith(f"{CERTS}/"):
            value = str(directory / Path(value).name)
        lines.append(f"{name} {value}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
async def broker(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Broker]:
    binary = mosquitto_binary()
    assert binary, "Debian's mosquitto is not installed (apt-get install -y mosquitto)"
    secrets = tmp_path_factory.mktemp("shipped-tls") / "secrets"
    run_generate(secrets)
    # A directory of the broker's own (pytest's is root's alone when we are root), with the files
    # named as the broker's Secret mounts them (tls.crt, tls.key, ca.crt).
    directory = Path(tempfile.mkdtemp(prefix="gateway-shipped-tls-"))
    try:
        certs = directory / "certs"
        certs.mkdir()
        shutil.copy(secrets / "mosquitto.crt", certs / "tls.crt")
        shutil.copy(secrets / "mosquitto.key", certs / "tls.key")
        shutil.copy(secrets / "ca.crt", certs / "ca.crt")
        port = free_port()
        config = directory / "mosquitto.conf"
        config.write_text("allow_anonymous true\n" + shipped_tls_lines(certs, port))
        user = service_user("mosquitto")
        hand_over(directory, user)
        process = await ServiceProcess.spawn(
            "mosquitto", [binary, "-c", str(config)], secrets.parent / "mosquitto.log", user=user
        )
        try:
            await wait_for_port(port, deadline=time.monotonic() + START_TIMEOUT, alive=process)
            yield Broker(port, secrets)
        finally:
            await process.stop()
    finally:
        shutil.rmtree(directory)


async def mqtt_connect(port: int, context: ssl.SSLContext) -> tuple[str | None, bytes]:
    """The TLS version and the broker's answer to a CONNECT over `context`."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(LOOPBACK, port, ssl=context, server_hostname="mosquitto"),
        START_TIMEOUT,
    )
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        writer.write(CONNECT)
        await writer.drain()
        return ssl_object.version(), await asyncio.wait_for(reader.readexactly(4), START_TIMEOUT)
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


def test_generated_certificates_verify_against_the_generated_ca(broker: Broker) -> None:
    for server in ("mosquitto", "postgres"):
        verified = subprocess.run(
            ["openssl", "verify", "-CAfile", "ca.crt", f"{server}.crt"],
            cwd=broker.secrets,
            capture_output=True,
            text=True,
            check=False,
        )
        assert verified.returncode == 0, verified.stdout + verified.stderr
        names = subprocess.run(
            ["openssl", "x509", "-in", f"{server}.crt", "-noout", "-ext", "subjectAltName"],
            cwd=broker.secrets,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert {f"DNS:{server}", "DNS:localhost"} <= set(re.split(r"[\s,]+", names)), names
        key = subprocess.run(
            ["openssl", "pkey", "-in", f"{server}.key", "-noout", "-text"],
            cwd=broker.secrets,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "prime256v1" in key, "EC P-256"


async def test_the_gateway_verifies_the_shipped_listener_under_its_compose_name(
    broker: Broker,
) -> None:
    (source,) = compose_config().sources.mqtt
    name = source.server_name or source.host
    assert name == "mosquitto"
    context = client_context(broker.secrets / "ca.crt", server_name=name)
    version, answer = await mqtt_connect(broker.port, context)
    assert version in {"TLSv1.2", "TLSv1.3"}
    assert answer == CONNACK_ACCEPTED


async def test_another_ca_or_another_name_is_refused(broker: Broker, tmp_path: Path) -> None:
    stranger = CertificateAuthority(tmp_path / "other").create()
    for context in [
        client_context(stranger.cert, server_name="mosquitto"),
        client_context(broker.secrets / "ca.crt", server_name="postgres"),
    ]:
        with pytest.raises(ssl.SSLCertVerificationError):
            await mqtt_connect(broker.port, context)


async def test_tls_older_than_1_2_is_refused(broker: Broker) -> None:
    context = client_context(broker.secrets / "ca.crt", server_name="mosquitto")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 is: that is the point
        context.minimum_version = ssl.TLSVersion.TLSv1_1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    # OpenSSL's default security level refuses TLS 1.1 on our side; let the broker refuse it.
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError) as refused:
        await mqtt_connect(broker.port, context)
    # The broker's alert, not our own refusal to offer TLS 1.1.
    assert refused.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION"
