"""Both MQTT transports pass the same tests: our MQTT v5 client and the 3.1.1 one over aiomqtt.

Each case runs a real gateway (in process) against real Mosquitto and PostgreSQL, once per
`protocol`. Every test has its own devices per protocol, so counts never mix; waits are generous
bounds for a loaded 2-core machine, never performance claims.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import orjson
import pytest

from gateway.app import Gateway
from gateway.config import GatewayConfig, MqttSourceConfig, Secret, SourcesConfig
from gateway.errors import MqttConnectError
from gateway.sources.mqtt import AnyMqttSource, Message, Mqtt311Source, MqttSource, mqtt_source

from .stack import Stack, publish, reading

PROTOCOLS = {"5": "v5", "3.1.1": "v311"}
TESTS = ["land", "commit", "restart", "share", "bad", "generation", "takeover", "retained"]
BROKER_PROTOCOL_LOG = {"5": "p5", "3.1.1": "p2"}  # Mosquitto logs MQTT 3.1.1 as p2
WAIT = 60


@pytest.fixture(scope="module")
async def env(deployment: Stack) -> Stack:
    await deployment.add_devices(
        [f"{test}-{slug}" for test in TESTS for slug in PROTOCOLS.values()]
    )
    return deployment


@pytest.fixture(params=list(PROTOCOLS), ids=list(PROTOCOLS.values()))
def protocol(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


def device(test: str, protocol: str) -> str:
    return f"{test}-{PROTOCOLS[protocol]}"


def gateway_config(env: Stack, protocol: str, **overrides: Any) -> GatewayConfig:
    config = env.config(**overrides)
    (source,) = config.sources.mqtt
    source = source.model_copy(update={"protocol": protocol})
    return config.model_copy(update={"sources": SourcesConfig(mqtt=[source])})


async def rows_of(env: Stack, name: str) -> int:
    return await env.count("SELECT count(*) FROM ingest.telemetry WHERE identity = $1", name)


async def wait_rows_of(env: Stack, name: str, expected: int) -> None:
    async def enough() -> bool:
        return await rows_of(env, name) >= expected

    await env.wait_for(enough, WAIT, f"{expected} rows of {name}")


def received(gateway: Gateway) -> float:
    value: float = gateway.metrics.messages_received.labels("mosquitto")._value.get()
    return value


async def publish_readings(env: Stack, name: str, count: int, start: int = 0) -> None:
    """Numbered readings, a thousand in flight at most: the broker holds each when this returns."""
    async with env.device(name) as client:
        for first in range(start, start + count, 1000):
            last = min(first + 1000, start + count)
            await publish(
                client, f"devices/{name}/telemetry", [reading(value=n) for n in range(first, last)]
            )


async def test_readings_land_as_their_role(env: Stack, protocol: str) -> None:
    name = device("land", protocol)
    config = gateway_config(env, protocol)
    gateway = Gateway(config)
    await gateway.start()
    try:
        (source,) = gateway.sources
        assert isinstance(source, Mqtt311Source if protocol == "3.1.1" else MqttSource)
        assert source.connected
        await publish_readings(env, name, 50)
        await wait_rows_of(env, name, 50)
        conn = await env.admin()
        try:
            roles = await conn.fetch(
                "SELECT DISTINCT role, db_user FROM gateway.write_log WHERE checksum IS NOT NULL"
            )
        finally:
            await conn.close()
        assert {(r["role"], r["db_user"]) for r in roles} == {
            ("telemetry_ingest", "telemetry_ingest_login")
        }
    finally:
        await gateway.stop()
    assert await rows_of(env, name) == 50
    client_id = config.sources.mqtt[0].client_id
    connects = [
        line
        for line in env.broker.log_path.read_text().splitlines()
        if f" as {client_id} (" in line
    ]
    assert connects, "the gateway never connected"
    assert all(f"({BROKER_PROTOCOL_LOG[protocol]}, c0," in line for line in connects), connects


async def test_messages_are_acked_only_after_commit(env: Stack, protocol: str) -> None:
    """A gateway that received messages but could not commit them leaves them to the broker."""
    name = device("commit", protocol)
    config = gateway_config(env, protocol, shutdown_timeout=1)
    first = Gateway(config)
    await first.start()
    lock = await env.admin()
    try:
        # COPY into the table waits behind this lock: received, never committed.
        transaction = lock.transaction()
        await transaction.start()
        await lock.execute("LOCK TABLE ingest.telemetry IN ACCESS EXCLUSIVE MODE")
        await publish_readings(env, name, 30)

        async def all_received() -> bool:
            return received(first) >= 30

        await env.wait_for(all_received, WAIT, "30 messages received")
        await first.stop()  # the drain times out: nothing committed, nothing acked
        await transaction.rollback()
    finally:
        await lock.close()
    assert await rows_of(env, name) == 0
    second = Gateway(config)  # same client id: the broker kept the session and its messages
    await second.start()
    try:
        await wait_rows_of(env, name, 30)
        assert received(second) >= 30
    finally:
        await second.stop()
    assert await rows_of(env, name) == 30


async def test_messages_published_while_stopped_land_after_restart(
    env: Stack, protocol: str
) -> None:
    name = device("restart", protocol)
    config = gateway_config(env, protocol)
    first = Gateway(config)
    await first.start()
    await publish_readings(env, name, 20)
    await wait_rows_of(env, name, 20)
    await first.stop()
    await publish_readings(env, name, 40, start=20)
    second = Gateway(config)
    await second.start()
    try:
        await wait_rows_of(env, name, 60)
    finally:
        await second.stop()
    assert await rows_of(env, name) == 60  # drained on stop: nothing came twice
    assert (
        await env.count(
            "SELECT count(DISTINCT value) FROM ingest.telemetry WHERE identity = $1", name
        )
        == 60
    )


async def test_a_retained_message_is_never_replayed_into_the_tables(
    env: Stack, protocol: str
) -> None:
    """A device's retained message is a replay on every subscribe (MQTT 3.1.1 cannot ask the
    broker not to): the gateway writes what is published while its session exists, once."""
    name = device("retained", protocol)
    topic = f"devices/{name}/telemetry"
    async with env.device(name) as client:
        await client.publish(topic, reading(value=-1.0), qos=1, retain=True)
    config = gateway_config(env, protocol)
    for restart in range(2):
        gateway = Gateway(config)
        await gateway.start()
        try:
            await publish_readings(env, name, 5, start=5 * restart)
            await wait_rows_of(env, name, 5 * (restart + 1))
        finally:
            await gateway.stop()
    async with env.device(name) as client:  # clear it, for the broker's next user
        await client.publish(topic, b"", qos=1, retain=True)
    values = await env.count(
        "SELECT count(*) FROM ingest.telemetry WHERE identity = $1 AND value < 0", name
    )
    assert (await rows_of(env, name), values) == (10, 0)


async def test_a_shared_subscription_splits_the_stream(env: Stack, protocol: str) -> None:
    name = device("share", protocol)
    group = f"gw-{PROTOCOLS[protocol]}"
    gateways = [Gateway(gateway_config(env, protocol, share_group=group)) for _ in range(2)]
    for gateway in gateways:
        await gateway.start()
    try:
        await publish_readings(env, name, 300)
        await wait_rows_of(env, name, 300)
        await asyncio.sleep(0.5)  # a duplicate would show up now
    finally:
        for gateway in gateways:
            await gateway.stop()
    counts = [received(gateway) for gateway in gateways]
    assert all(count > 0 for count in counts), counts
    assert sum(counts) == 300
    assert await rows_of(env, name) == 300
    assert (
        await env.count(
            "SELECT count(DISTINCT value) FROM ingest.telemetry WHERE identity = $1", name
        )
        == 300
    )


async def test_bad_input_is_rejected_and_good_input_lands(env: Stack, protocol: str) -> None:
    name = device("bad", protocol)
    bad = {
        "malformed_json": b'{"metric": "temp", "value": ',
        "invalid_reading": b'{"ts": 1, "metric": "temp", "value": "hot"}',
        "non_finite_value": b'{"ts": 1, "metric": "temp", "value": NaN}',
    }
    gateway = Gateway(gateway_config(env, protocol))
    await gateway.start()
    try:
        async with env.device(name) as client:
            for payload in bad.values():
                await publish(client, f"devices/{name}/telemetry", [reading(), payload])
            await publish(client, f"devices/{name}/nosuchstream", [reading()])
        expected = {**{reason: 1 for reason in bad}, "unknown_stream": 1}

        async def all_rejected() -> bool:
            count = await env.count(
                "SELECT count(*) FROM ingest.rejects WHERE topic LIKE $1", f"devices/{name}/%"
            )
            return count >= len(expected)

        await env.wait_for(all_rejected, WAIT, "reject records")
        await wait_rows_of(env, name, len(bad))
    finally:
        await gateway.stop()
    conn = await env.admin()
    try:
        rows = await conn.fetch(
            "SELECT reason, count(*) AS n FROM ingest.rejects WHERE topic LIKE $1 GROUP BY reason",
            f"devices/{name}/%",
        )
    finally:
        await conn.close()
    assert {row["reason"]: row["n"] for row in rows} == expected
    assert await rows_of(env, name) == len(bad)


# Source level: what the engine relies on, without it.


def source_config(env: Stack, protocol: str, client_id: str) -> MqttSourceConfig:
    (source,) = gateway_config(env, protocol, client_id=client_id).sources.mqtt
    return source


async def receive_count(source: AnyMqttSource, count: int) -> list[Message]:
    messages: list[Message] = []
    async with asyncio.timeout(WAIT):
        while len(messages) < count:
            messages += await source.receive()
    return messages


async def assert_nothing_redelivered(env: Stack, name: str, source: AnyMqttSource) -> None:
    """A fresh marker comes first: the broker sends a session's unacked messages before it."""
    async with env.device(name) as client:
        await client.publish(f"devices/{name}/telemetry", b"marker", qos=1)
    batch = await receive_count(source, 1)
    source.ack(batch)
    redelivered = [m for m in batch if m.payload != b"marker"]
    assert not redelivered, f"{len(redelivered)} acked messages came again"


async def test_acks_from_an_earlier_connection_are_ignored(env: Stack, protocol: str) -> None:
    """Packet ids restart with each connection: an old ack must not ack a redelivered message."""
    name = device("generation", protocol)
    config = source_config(env, protocol, f"gw-generation-{secrets.token_hex(3)}")
    source = mqtt_source(config)
    await source.start()
    try:
        await publish_readings(env, name, 6)
        first = await receive_count(source, 6)
        await env.broker.restart()  # the connection drops; the session is persisted
        again = await receive_count(source, 6)
        assert [m.payload for m in again] == [m.payload for m in first]
        assert {m.generation for m in again} != {m.generation for m in first}
        source.ack(first)  # too late: these acks belong to the old connection
    finally:
        await source.close()
    source = mqtt_source(config)
    await source.start()
    try:
        redelivered = await receive_count(source, 6)
        assert [orjson.loads(m.payload)["value"] for m in redelivered] == list(range(6))
        source.ack(redelivered)
    finally:
        await source.close()
    source = mqtt_source(config)
    await source.start()
    try:
        await assert_nothing_redelivered(env, name, source)
    finally:
        await source.close()


async def test_acks_before_close_hold_for_a_client_taking_over_at_once(
    env: Stack, protocol: str
) -> None:
    """A restarted gateway may connect while the broker still reads the old connection's acks.

    Draining a backlog at full speed keeps Mosquitto busy enough to be behind when we leave;
    a close that does not wait for it to catch up fails here often, though not every time.
    """
    name = device("takeover", protocol)
    config = source_config(env, protocol, f"gw-takeover-{secrets.token_hex(3)}")
    source = mqtt_source(config)
    await source.start()  # creates the session
    await source.close()
    await publish_readings(env, name, 20000)
    source = mqtt_source(config)
    await source.start()
    try:
        async with asyncio.timeout(WAIT):
            taken = 0
            while taken < 20000:
                batch = await source.receive()
                source.ack(batch)
                taken += len(batch)
    finally:
        await source.close()
    source = mqtt_source(config)
    await source.start()
    try:
        await assert_nothing_redelivered(env, name, source)
    finally:
        await source.close()


async def test_refused_credentials_fail_start_for_good(env: Stack, protocol: str) -> None:
    config = source_config(env, protocol, f"gw-refused-{secrets.token_hex(3)}")
    wrong = config.model_copy(update={"password": Secret(env="GATEWAY_TEST_NOPE")})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GATEWAY_TEST_NOPE", "not-the-password")
        source = mqtt_source(wrong)
        with pytest.raises(MqttConnectError) as refused:
            await source.start()
    assert refused.value.retriable is False
    assert refused.value.reason_code is not None
    assert not source.connected
