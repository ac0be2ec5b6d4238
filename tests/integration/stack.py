"""A whole deployment for end-to-end tests: PostgreSQL with the example roles applied, Mosquitto,
registered devices, and a gateway configuration pointing at both."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import asyncpg
import orjson

from gateway.config import (
    BatchingConfig,
    DatabaseConfig,
    GatewayConfig,
    HttpConfig,
    MqttSourceConfig,
    Secret,
    SourcesConfig,
)
from gateway.migrate import migrate
from gateway.registry import Registry
from gateway.roles.apply import apply_roles
from gateway.roles.declaration import load_declaration
from gateway.services.mosquitto import Mosquitto, MqttUser
from gateway.services.postgres import Postgres

EXAMPLE_ROLES = Path(__file__).parents[2] / "config" / "roles.toml"
MQTT_PASSWORD_ENV = "GATEWAY_TEST_MQTT_PASSWORD"


@dataclass
class Stack:
    postgres: Postgres
    broker: Mosquitto
    devices: dict[str, MqttUser] = field(default_factory=dict)

    def config(self, **overrides: Any) -> GatewayConfig:
        """A gateway configuration for this stack; keyword arguments replace whole sections."""
        os.environ[MQTT_PASSWORD_ENV] = self.broker.gateway.password
        source = MqttSourceConfig(
            name="mosquitto",
            host=self.broker.host,
            port=self.broker.port,
            username=self.broker.gateway.username,
            password=Secret(env=MQTT_PASSWORD_ENV),
            client_id=overrides.pop("client_id", f"gw-{secrets.token_hex(3)}"),
            share_group=overrides.pop("share_group", None),
            receive_maximum=overrides.pop("receive_maximum", 10_000),
        )
        values: dict[str, Any] = {
            "database": DatabaseConfig(
                host=self.postgres.address.host,
                port=self.postgres.address.port,
                dbname="postgres",
                roles_file=EXAMPLE_ROLES,
            ),
            "sources": SourcesConfig(mqtt=[source]),
            "http": HttpConfig(host="127.0.0.1", port=0),
            "batching": BatchingConfig(max_delay_ms=20),
            "activity_interval": 0.5,
            "shutdown_timeout": 20,
        }
        values.update(overrides)
        return GatewayConfig(**values)

    async def admin(self) -> asyncpg.Connection:
        conn: asyncpg.Connection = await asyncpg.connect(self.postgres.dsn)
        return conn

    async def add_devices(self, names: Sequence[str], role: str = "telemetry_ingest") -> None:
        conn = await self.admin()
        try:
            registry = Registry(conn, "tests")
            for name in names:
                await registry.add(name, role)
        finally:
            await conn.close()
        for name in names:
            self.devices[name] = self.broker.add_user(name)

    async def count(self, sql: str = "SELECT count(*) FROM ingest.telemetry", *args: Any) -> int:
        conn = await self.admin()
        try:
            value: int = await conn.fetchval(sql, *args)
            return value
        finally:
            await conn.close()

    async def wait_for(
        self, predicate: Callable[[], Awaitable[bool]], timeout: float = 30, what: str = ""
    ) -> float:
        """Poll until predicate() holds; returns the seconds it took."""
        started = time.monotonic()
        while not await predicate():
            if time.monotonic() - started > timeout:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            await asyncio.sleep(0.05)
        return time.monotonic() - started

    async def wait_rows(self, expected: int, timeout: float = 30) -> None:
        async def enough() -> bool:
            return await self.count() >= expected

        await self.wait_for(enough, timeout, f"{expected} telemetry rows")

    @asynccontextmanager
    async def device(self, name: str) -> AsyncIterator[aiomqtt.Client]:
        user = self.devices[name]
        async with aiomqtt.Client(
            self.broker.host,
            self.broker.port,
            username=user.username,
            password=user.password,
            identifier=f"{name}-{secrets.token_hex(3)}",
            protocol=aiomqtt.ProtocolVersion.V5,
            max_queued_outgoing_messages=100_000,
        ) as client:
            yield client


def reading(metric: str = "temp", value: float = 21.5, **extra: Any) -> bytes:
    body = {"ts": int(datetime.now(UTC).timestamp() * 1000), "metric": metric, "value": value}
    body.update(extra)
    return orjson.dumps(body)


async def publish(client: aiomqtt.Client, topic: str, payloads: Sequence[bytes]) -> None:
    """QoS 1, each waited for: when this returns the broker holds every message."""
    await asyncio.gather(*(client.publish(topic, payload, qos=1) for payload in payloads))


@asynccontextmanager
async def stack(passwords: dict[str, str]) -> AsyncIterator[Stack]:
    del passwords  # the fixture exported them for the roles declaration
    async with Postgres() as postgres, Mosquitto() as broker:
        conn = await asyncpg.connect(postgres.dsn)
        try:
            await migrate(conn)
            await apply_roles(conn, load_declaration(EXAMPLE_ROLES), actor="tests")
        finally:
            await conn.close()
        yield Stack(postgres, broker)
