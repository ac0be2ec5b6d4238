"""The four sources behind one face, so one contract suite runs against each.

A `Harness` publishes numbered messages as one identity and makes source instances on one
session (MQTT client id, Kafka consumer group, memory broker), so that what one instance leaves
unacknowledged is what the next one receives. `crash` runs an instance that dies without a word
to the broker: for the real transports a child process killed with SIGKILL, for the memory
source an instance simply abandoned while the next takes its session over.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from gateway.config import KafkaSourceConfig, MqttSourceConfig, Secret
from gateway.metrics import Metrics
from gateway.services.kafka import Kafka
from gateway.services.mosquitto import Mosquitto, MqttUser
from gateway.sources.kafka import KafkaSource
from gateway.sources.memory import MemoryBroker, MemorySource
from gateway.sources.mqtt import mqtt_source

__all__ = ["BOUND", "SOURCES", "STREAM", "WAIT", "Harness", "number"]

BOUND = 10
"""Unacknowledged messages an MQTT or memory session may hold; records per Kafka fetch."""
STREAM = "telemetry"
WAIT = 60  # a generous bound for a loaded machine, never a performance claim
SOURCES = ["memory", "mqtt-v5", "mqtt-v311", "kafka"]
MQTT_PASSWORD_ENV = "GATEWAY_TEST_CONTRACT_MQTT_PASSWORD"
ROOT = Path(__file__).parents[2]


def payload(n: int) -> bytes:
    return orjson.dumps({"n": n})


def number(message: Any) -> int:
    """The number a message was published with."""
    value: int = orjson.loads(message.payload)["n"]
    return value


class Harness:
    """One session on one kind of source; see the module docstring."""

    name: str
    identity: str

    def source(self) -> Any:
        """A new, unstarted instance on the harness's session."""
        raise NotImplementedError

    async def publish(self, numbers: Iterable[int]) -> None:
        """Publish in order; when this returns the broker holds every message."""
        raise NotImplementedError

    async def open_session(self) -> None:
        """Make the broker keep messages for the session from now on, before any is published."""
        source = self.source()
        await source.start()
        await source.close()

    async def crash(self, count: int) -> list[int]:
        """Run an instance that receives `count` messages, acknowledges none and dies."""
        raise NotImplementedError


class MemoryHarness(Harness):
    name = "memory"

    def __init__(self) -> None:
        self.identity = f"mem-{secrets.token_hex(3)}"
        self.broker = MemoryBroker()
        self._abandoned: list[MemorySource] = []

    def source(self) -> MemorySource:
        return MemorySource(broker=self.broker, max_inflight=BOUND)

    async def publish(self, numbers: Iterable[int]) -> None:
        self.broker.publish((f"devices/{self.identity}/{STREAM}", payload(n)) for n in numbers)

    async def crash(self, count: int) -> list[int]:
        source = self.source()
        received: list[int] = []
        async with asyncio.timeout(WAIT):
            while len(received) < count:
                received += [number(m) for m in await source.receive()]
        self._abandoned.append(source)  # never closed: the next instance takes the session
        return received


async def crash_child(
    kind: str, config: MqttSourceConfig | KafkaSourceConfig, count: int
) -> list[int]:
    """Run `source_child` until it has received `count` messages, then SIGKILL it."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.source_child",
        kind,
        config.model_dump_json(),
        str(count),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None and child.stderr is not None
    try:
        async with asyncio.timeout(WAIT):
            line = await child.stdout.readline()
    finally:
        if child.returncode is None:
            child.send_signal(signal.SIGKILL)
        await child.wait()
    if not line:
        raise AssertionError(
            f"the {kind} child received nothing:\n{(await child.stderr.read()).decode()}"
        )
    received: list[int] = orjson.loads(line)
    return received


class MqttHarness(Harness):
    def __init__(self, broker: Mosquitto, device: MqttUser, protocol: str) -> None:
        self.name = f"mqtt-v{protocol.replace('.', '')}"
        self.broker, self.device, self.identity = broker, device, device.username
        os.environ[MQTT_PASSWORD_ENV] = broker.gateway.password
        self.config = MqttSourceConfig(
            name="mqtt",
            host=broker.host,
            port=broker.port,
            protocol="3.1.1" if protocol == "3.1.1" else "5",
            username=broker.gateway.username,
            password=Secret(env=MQTT_PASSWORD_ENV),
            client_id=f"contract-{secrets.token_hex(4)}",
            receive_maximum=BOUND,
        )

    def source(self) -> Any:
        return mqtt_source(self.config)

    async def publish(self, numbers: Iterable[int]) -> None:
        async with device_client(self.broker, self.device) as client:
            for n in numbers:
                await client.publish(f"devices/{self.identity}/{STREAM}", payload(n), qos=1)

    async def crash(self, count: int) -> list[int]:
        return await crash_child("mqtt", self.config, count)


def device_client(broker: Mosquitto, device: MqttUser) -> aiomqtt.Client:
    return aiomqtt.Client(
        broker.host,
        broker.port,
        username=device.username,
        password=device.password,
        identifier=device.username,  # the broker binds the account to it
        protocol=aiomqtt.ProtocolVersion.V5,
    )


class KafkaHarness(Harness):
    name = "kafka"

    def __init__(self, kafka: Kafka, topic: str) -> None:
        self.kafka, self.topic = kafka, topic
        self.identity = f"kafka-{secrets.token_hex(3)}"
        self.config = KafkaSourceConfig(
            name="kafka",
            bootstrap_servers=kafka.bootstrap,
            group_id=f"contract-{secrets.token_hex(4)}",
            client_id="contract",
            topics=[topic],
            identity_from="key",
            stream=STREAM,
            max_poll_records=BOUND,
            # The broker's smallest: a crashed member's partition moves on after this.
            session_timeout_ms=6000,
        )

    def source(self) -> KafkaSource:
        async def flush() -> None:
            pass

        return KafkaSource(self.config, metrics=Metrics(), flush=flush)

    async def publish(self, numbers: Iterable[int]) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.kafka.bootstrap, acks="all")
        await producer.start()
        try:
            for n in numbers:
                await producer.send_and_wait(self.topic, payload(n), key=self.identity.encode())
        finally:
            await producer.stop()

    async def crash(self, count: int) -> list[int]:
        return await crash_child("kafka", self.config, count)


@pytest.fixture(scope="module")
async def contract_mosquitto() -> AsyncIterator[tuple[Mosquitto, dict[str, MqttUser]]]:
    """A broker of the suite's own: its in-flight limit is the bound MQTT 3.1.1 sessions get."""
    async with Mosquitto(max_inflight_messages=BOUND) as broker:
        devices = {protocol: broker.add_user(f"contract-{protocol}") for protocol in ("5", "3.1.1")}
        for device in devices.values():
            await until_accepted(broker, device)
        yield broker, devices


async def until_accepted(broker: Mosquitto, device: MqttUser) -> None:
    """The broker reloads its password file on a signal: wait until the new login works."""
    async with asyncio.timeout(WAIT):
        while True:
            try:
                async with device_client(broker, device):
                    return
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
async def contract_kafka() -> AsyncIterator[Kafka]:
    async with Kafka() as kafka:
        yield kafka


@pytest.fixture(params=SOURCES)
def source_kind(request: pytest.FixtureRequest) -> tuple[str, Any]:
    """Which source, and its broker: started only for the kinds that run."""
    kind: str = request.param
    if kind.startswith("mqtt"):
        return kind, request.getfixturevalue("contract_mosquitto")
    if kind == "kafka":
        return kind, request.getfixturevalue("contract_kafka")
    return kind, None


@pytest.fixture
async def harness(source_kind: tuple[str, Any]) -> Harness:
    """A fresh session on each kind of source."""
    kind, service = source_kind
    if kind == "memory":
        return MemoryHarness()
    if kind.startswith("mqtt"):
        broker, devices = service
        protocol = "3.1.1" if kind == "mqtt-v311" else "5"
        return MqttHarness(broker, devices[protocol], protocol)
    topic = f"contract-{secrets.token_hex(4)}"
    await service.create_topic(topic, 1)
    return KafkaHarness(service, topic)
