"""The gateway on Mosquitto's TLS listener: it reads only from a broker whose certificate and
name it verified; a wrong CA or a certificate for another name ends start with a clear error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.bootstrap import bootstrap
from gateway.config import GatewayConfig, SourcesConfig
from gateway.errors import GatewayError
from gateway.services.certificates import CertificateAuthority
from gateway.services.mosquitto import Mosquitto

from .databases import Server, fresh_database
from .stack import Stack, publish, reading

DEVICE = "sensor-tls"
FAIL_FAST = 30  # seconds: a bound for a loaded machine, never a performance claim


@pytest.fixture(scope="module")
async def env(postgres: Server, role_passwords: dict[str, str]) -> AsyncIterator[Stack]:
    async with fresh_database(postgres) as database, Mosquitto(tls=True) as broker:
        await bootstrap(database.dsn, actor="tests")
        stack = Stack(postgres, database, broker)
        await stack.add_devices([DEVICE])
        yield stack


def over_tls(env: Stack, **tls: Any) -> GatewayConfig:
    """The stack's configuration with its MQTT source on the broker's TLS listener."""
    config = env.config()
    (source,) = config.sources.mqtt
    assert env.broker.tls_port is not None
    tls_source = source.model_validate(source.model_dump() | {"port": env.broker.tls_port, **tls})
    return config.model_copy(update={"sources": SourcesConfig(mqtt=[tls_source])})


async def refused(config: GatewayConfig) -> GatewayError:
    gateway = Gateway(config)
    with pytest.raises(GatewayError) as raised:
        async with asyncio.timeout(FAIL_FAST):
            await gateway.start()
    await gateway.stop()
    return raised.value


async def test_rows_arrive_over_a_verified_tls_session(env: Stack) -> None:
    config = over_tls(env, ca_file=env.broker.ca_file)
    assert config.sources.mqtt[0].uses_tls
    gateway = Gateway(config)
    await gateway.start()
    try:
        async with env.device(DEVICE) as device:
            await publish(
                device, f"devices/{DEVICE}/telemetry", [reading(value=n) for n in range(20)]
            )
        await env.wait_rows(20)
    finally:
        await gateway.stop()


async def test_a_broker_signed_by_another_ca_is_refused(env: Stack, tmp_path: Path) -> None:
    stranger = CertificateAuthority(tmp_path / "other").create()
    error = await refused(over_tls(env, ca_file=stranger.cert))
    assert "certificate verify failed" in str(error)


async def test_a_certificate_for_another_name_is_refused(env: Stack) -> None:
    config = over_tls(env, ca_file=env.broker.ca_file, server_name="mqtt.example.org")
    error = await refused(config)
    assert "mqtt.example.org" in str(error)
    assert "mismatch" in str(error).lower()
