"""No queued message can stop the gateway, and no message over the limit reaches its memory.

A poison waiting in the gateway's MQTT session (v5 and 3.1.1) or in its Kafka topic before the
gateway starts: the gateway starts, records it in ingest.rejects with its reason, ingests what
is queued behind it, and stays up and ready. A payload over the MQTT v5 packet limit never
leaves the broker (Mosquitto drops it as delivered) and the good messages behind it arrive.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import signal
from collections.abc import AsyncIterator

import aiomqtt
import pytest
from aiokafka import AIOKafkaProducer

from gateway.config import GatewayConfig, KafkaSourceConfig, Secret, SourcesConfig
from gateway.services.kafka import Kafka
from gateway.services.mosquitto import Mosquitto
from gateway.sources.mqtt import Message, Mqtt311Source, MqttClient, MqttOptions
from gateway.sources.mqtt.protocol import MqttProtocol

from .stack import GatewayProcess, Stack, publish, reading

PROTOCOLS = {"5": "v5", "3.1.1": "v311"}
KAFKA_USERS = {user: secrets.token_urlsafe(12) for user in ("gateway", "bridge")}
KAFKA_TOPIC = "poison"
GOOD = 5
WAIT = 60


def poisons() -> dict[str, bytes]:
    """The two inputs that once could take a decoder down, by the reject reason each must get."""
    head = reading(metric="m", value=1)[:-1] + b',"tags":'
    return {
        "too_deeply_nested": head + b'{"a":' * 5000 + b"1" + b"}" * 5001,
        "invalid_text": head + b'{"a":"\xff"}}',
    }


@pytest.fixture(scope="module")
async def env(deployment: Stack) -> Stack:
    await deployment.add_devices([f"poison-{slug}" for slug in (*PROTOCOLS.values(), "kafka")])
    return deployment


async def rejects_of(env: Stack, device: str) -> dict[str, int]:
    conn = await env.admin()
    try:
        rows = await conn.fetch(
            "SELECT reason, count(*) AS n FROM ingest.rejects WHERE identity = $1 GROUP BY reason",
            device,
        )
    finally:
        await conn.close()
    return {row["reason"]: row["n"] for row in rows}


async def assert_poison_rejected_and_good_landed(
    env: Stack, gateway: GatewayProcess, device: str
) -> None:
    async def settled() -> bool:
        rows = await env.count("SELECT count(*) FROM ingest.telemetry WHERE identity = $1", device)
        return rows >= GOOD and len(await rejects_of(env, device)) >= len(poisons())

    await env.wait_for(settled, WAIT, f"{GOOD} rows and the rejects of {device}")
    assert await rejects_of(env, device) == {reason: 1 for reason in poisons()}
    assert (
        await env.count("SELECT count(*) FROM ingest.telemetry WHERE identity = $1", device) == GOOD
    )
    assert gateway.process is not None and gateway.process.returncode is None, gateway.log
    assert await asyncio.to_thread(gateway.ready)
    assert b"gateway started" in gateway.log
    assert gateway.log.count(b"gateway started") == 1  # never restarted in between


async def stop(gateway: GatewayProcess) -> None:
    await gateway.signal(signal.SIGTERM)
    assert await gateway.wait() == 0, gateway.log.decode()[-2000:]


@pytest.mark.parametrize("protocol", list(PROTOCOLS), ids=list(PROTOCOLS.values()))
async def test_poison_queued_in_the_mqtt_session_before_start(env: Stack, protocol: str) -> None:
    device = f"poison-{PROTOCOLS[protocol]}"
    config = env.config(client_id=f"gw-poison-{PROTOCOLS[protocol]}")
    (source,) = config.sources.mqtt
    source = source.model_copy(update={"protocol": protocol})
    config = config.model_copy(update={"sources": SourcesConfig(mqtt=[source])})
    # The gateway's first start creates its persistent session; the broker then queues for it.
    first = GatewayProcess(config)
    await first.start()
    await stop(first)
    async with env.device(device) as client:
        topic = f"devices/{device}/telemetry"
        await publish(client, topic, list(poisons().values()))
        await publish(client, topic, [reading(value=n) for n in range(GOOD)])
    gateway = GatewayProcess(config)
    await gateway.start()
    try:
        await assert_poison_rejected_and_good_landed(env, gateway, device)
    finally:
        await stop(gateway)


async def test_poison_queued_in_the_kafka_topic_before_start(env: Stack) -> None:
    device = "poison-kafka"
    async with Kafka(users=KAFKA_USERS) as kafka:
        await kafka.create_topic(KAFKA_TOPIC, 2)
        await kafka.allow("bridge", ["Write", "Describe"], topic=KAFKA_TOPIC)
        await kafka.allow("gateway", ["Read", "Describe"], topic=KAFKA_TOPIC)
        await kafka.allow("gateway", ["Read"], group="poison")
        await kafka.allow("gateway", ["Describe"], cluster=True)  # to read the ACLs
        producer = AIOKafkaProducer(**kafka.client_kwargs("bridge"), acks="all")
        await producer.start()
        try:
            # One key: one partition, so the good records queue behind the poison.
            for payload in [*poisons().values(), *(reading(value=n) for n in range(GOOD))]:
                await producer.send_and_wait(KAFKA_TOPIC, payload, key=device.encode())
        finally:
            await producer.stop()
        env_name = "TEST_KAFKA_POISON_PASSWORD"
        os.environ[env_name] = KAFKA_USERS["gateway"]
        source = KafkaSourceConfig(
            name="kafka",
            bootstrap_servers=kafka.sasl_bootstrap,
            security_protocol="SASL_PLAINTEXT",
            username="gateway",
            password=Secret(env=env_name),
            group_id="poison",
            topics=[KAFKA_TOPIC],
            trusted_producers=["User:bridge"],
        )
        config: GatewayConfig = env.config(sources=SourcesConfig(kafka=[source]))
        gateway = GatewayProcess(config)
        await gateway.start()
        try:
            await assert_poison_rejected_and_good_landed(env, gateway, device)
        finally:
            await stop(gateway)


@pytest.fixture
async def unlimited_broker() -> AsyncIterator[Mosquitto]:
    """A broker that takes packets of any size, as Mosquitto does unless configured."""
    async with Mosquitto(max_packet_size=0) as broker:
        yield broker


async def test_a_message_over_the_packet_limit_never_reaches_the_v5_client(
    unlimited_broker: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = unlimited_broker
    device = broker.add_user("sensor-big")
    limit = 64 * 1024
    big = 200_000  # accepted by the broker, over what the client asked for
    options = MqttOptions(
        client_id="gw-oversize",
        host=broker.host,
        port=broker.port,
        username=broker.gateway.username,
        password=broker.gateway.password,
        subscriptions=[("devices/#", 1)],
        max_packet_size=limit,
    )
    largest: list[int] = [0]
    received = MqttProtocol.data_received

    def data_received(self: MqttProtocol, data: bytes) -> None:
        # What the socket handed us, plus anything held from earlier reads.
        largest[0] = max(largest[0], len(data) + len(self._rest))
        received(self, data)

    monkeypatch.setattr(MqttProtocol, "data_received", data_received)

    async def send(*payloads: bytes) -> None:
        async with aiomqtt.Client(
            broker.host,
            broker.port,
            username=device.username,
            password=device.password,
            identifier="sensor-big",
            protocol=aiomqtt.ProtocolVersion.V5,
        ) as client:
            await publish(client, "devices/sensor-big/telemetry", [payloads[0]])
            await publish(client, "devices/sensor-big/telemetry", list(payloads[1:]))

    async def take(client: MqttClient, count: int) -> list[Message]:
        got: list[Message] = []
        async with asyncio.timeout(WAIT):
            while len(got) < count:
                got += await client.receive()
        client.ack_many(got)
        return got

    async with MqttClient(options):
        pass  # the persistent session now exists: what follows is queued for it
    await send(b"x" * big, *(b"queued-%d" % n for n in range(GOOD)))
    async with MqttClient(options) as client:
        queued = await take(client, GOOD)
        assert [m.payload for m in queued] == [b"queued-%d" % n for n in range(GOOD)]
        await send(b"y" * big, b"live")
        (live,) = await take(client, 1)
        assert live.payload == b"live"
        assert client.generation == 1  # no disconnect: the broker never tried to send it
    # Dropped as if delivered: a later session with room for it does not get it either.
    async with MqttClient(dataclasses.replace(options, max_packet_size=1024 * 1024)) as client:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(2):
                await client.receive()
    assert largest[0] < limit
    log = broker.log_path.read_text()
    assert log.count("Dropping too large outgoing PUBLISH for gw-oversize") == 2


async def test_the_311_transport_is_bounded_by_the_brokers_packet_limit(env: Stack) -> None:
    """MQTT 3.1.1 cannot ask for a limit: the broker's `max_packet_size` (the shipped one) is it."""
    device = env.broker.add_user("sensor-big-311")
    config = env.config(client_id="gw-oversize-311")
    (source_config,) = config.sources.mqtt
    source = Mqtt311Source(source_config.model_copy(update={"protocol": "3.1.1"}))
    await source.start()
    try:

        def client() -> aiomqtt.Client:
            return aiomqtt.Client(
                env.broker.host,
                env.broker.port,
                username=device.username,
                password=device.password,
                identifier="sensor-big-311",
                protocol=aiomqtt.ProtocolVersion.V311,
            )

        over = env.broker.limits["max_packet_size"] + 1
        # The broker drops the connection; paho may notice only when its wait for PUBACK ends.
        with pytest.raises(aiomqtt.MqttError):
            async with client() as publisher:
                await publisher.publish(
                    "devices/sensor-big-311/telemetry", b"x" * over, qos=1, timeout=5
                )
        async with client() as publisher:
            await publish(publisher, "devices/sensor-big-311/telemetry", [b"good"] * GOOD)
        got: list[Message] = []
        async with asyncio.timeout(WAIT):
            while len(got) < GOOD:
                got += await source.receive()
        assert [m.payload for m in got] == [b"good"] * GOOD
        source.ack(got)
    finally:
        await source.close()
    assert "Client sensor-big-311 disconnected due to oversize packet." in (
        env.broker.log_path.read_text()
    )
