"""A whole deployment for end-to-end tests: a database with the example roles applied, Mosquitto,
registered devices, and a gateway configuration pointing at both.

The database is a fresh one on the server it is given: the session's (conftest's `deployment`
fixture), or a cluster of the test's own when the test stops the server.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiomqtt
import asyncpg
import orjson

from gateway.bootstrap import EXAMPLE_ROLES, bootstrap
from gateway.config import (
    BatchingConfig,
    BrokersConfig,
    DatabaseConfig,
    GatewayConfig,
    HttpConfig,
    MqttSourceConfig,
    Secret,
    SourcesConfig,
)
from gateway.identities.reconcile import sync_accounts
from gateway.identities.registry import Registry
from gateway.services._process import free_port
from gateway.services.mosquitto import Mosquitto, MqttUser
from gateway.services.postgres import PostgresAddress

from .databases import Server, fresh_database

__all__ = [
    "EXAMPLE_ROLES",
    "GatewayProcess",
    "Publisher",
    "Stack",
    "config_environment",
    "publish",
    "reading",
    "stack",
]

MQTT_PASSWORD_ENV = "GATEWAY_TEST_MQTT_PASSWORD"


@dataclass
class Stack:
    postgres: Server
    """The server; stop and start it only when it is a cluster of the test's own."""
    database: PostgresAddress
    """This stack's database on it, as its superuser."""
    broker: Mosquitto
    devices: dict[str, MqttUser] = field(default_factory=dict)

    def config(self, **overrides: Any) -> GatewayConfig:
        """A gateway configuration for this stack; keyword arguments replace whole sections.

        Its MQTT account is the pod's own, bound to its client id, as in production; every pod
        account of the stack shares the launcher's gateway password.
        """
        os.environ[MQTT_PASSWORD_ENV] = self.broker.gateway.password
        client_id = overrides.pop("client_id", f"gw-{secrets.token_hex(3)}")
        pod = self.broker.add_gateway(client_id, self.broker.gateway.password)
        source = MqttSourceConfig(
            name="mosquitto",
            host=self.broker.host,
            port=self.broker.port,
            username=pod.username,
            password=Secret(env=MQTT_PASSWORD_ENV),
            client_id=client_id,
            share_group=overrides.pop("share_group", None),
            receive_maximum=overrides.pop("receive_maximum", 10_000),
        )
        values: dict[str, Any] = {
            "database": DatabaseConfig(
                host=self.database.host,
                port=self.database.port,
                dbname=self.database.database,
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
        conn: asyncpg.Connection = await asyncpg.connect(self.database.dsn)
        return conn

    async def add_devices(self, names: Sequence[str], role: str = "telemetry_ingest") -> None:
        """Register devices and give them broker accounts the way `gateway identities add`
        does: through the registry, which makes each one's account bound to its name."""
        passwords = {name: secrets.token_urlsafe(12) for name in names}
        conn = await self.admin()
        try:
            registry = Registry(conn, "tests")
            for name in names:
                await registry.add(name, role)
            await sync_accounts(
                conn,
                BrokersConfig(mosquitto=self.broker.accounts_config()),
                "tests",
                names=list(names),
                supplied=passwords,
                credentials_out=None,
            )
        finally:
            await conn.close()
        for name in names:
            self.devices[name] = MqttUser(name, passwords[name])

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
            identifier=name,
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
async def stack(server: Server) -> AsyncIterator[Stack]:
    """A bootstrapped database on `server` and a Mosquitto; the role passwords must be exported
    (the `role_passwords` fixture)."""
    async with fresh_database(server) as database, Mosquitto() as broker:
        await bootstrap(database.dsn, actor="tests")
        yield Stack(server, database, broker)


def config_environment(config: GatewayConfig) -> dict[str, str]:
    """The configuration as `GATEWAY_*` variables, the way a container would be configured."""
    return {
        f"GATEWAY_{key.upper()}": orjson.dumps(value).decode()
        for key, value in config.model_dump(mode="json").items()
    }


class GatewayProcess:
    """`gateway run` in a child process, configured through its environment."""

    def __init__(self, config: GatewayConfig) -> None:
        self.port = free_port()
        self.config = config.model_copy(
            update={"http": HttpConfig(host="127.0.0.1", port=self.port)}
        )
        self.process: asyncio.subprocess.Process | None = None
        self.log = b""

    async def start(self) -> None:
        env = {**os.environ, **config_environment(self.config)}
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.cli",
            "run",
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read_log())
        deadline = time.monotonic() + 60
        while not await asyncio.to_thread(self.ready):
            if self.process.returncode is not None or time.monotonic() > deadline:
                raise AssertionError(f"gateway did not become ready:\n{self.log.decode()[-3000:]}")
            await asyncio.sleep(0.1)

    async def _read_log(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        async for line in self.process.stderr:
            self.log += line

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as r:
                return bool(r.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    async def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    async def wait(self, timeout: float = 60) -> int:
        assert self.process is not None
        code = await asyncio.wait_for(self.process.wait(), timeout)
        await self._reader
        return code

    async def kill(self) -> None:
        await self.signal(signal.SIGKILL)
        await self.wait()


class Publisher:
    """A device publishing numbered readings at a steady pace until stopped; counts the acked."""

    def __init__(self, stack: Stack, device: str, rate: float = 500) -> None:
        self.stack, self.device, self.rate = stack, device, rate
        self.acked = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        topic = f"devices/{self.device}/telemetry"
        async with self.stack.device(self.device) as client:
            n = 0
            while not self._stop.is_set():
                burst = [reading(value=n + i, id=f"{self.device}-{n + i}") for i in range(50)]
                await publish(client, topic, burst)
                n += len(burst)
                self.acked = n
                await asyncio.sleep(len(burst) / self.rate)

    async def stop(self) -> int:
        self._stop.set()
        assert self._task is not None
        await self._task
        return self.acked
