"""No message can stop the gateway, end to end: a registered device sends the hostile corpus over
real MQTT QoS 1, between good readings, to a gateway on real Mosquitto and PostgreSQL.

Each hostile payload must end as exactly one row in ingest.rejects with its reason, each good
reading as exactly one row in ingest.telemetry, the metric must count every reject, and the
gateway must still be running and ready afterwards. Topics a device cannot be allowed to claim
(5,000 bytes long, or holding a NUL) must not hurt it either.
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson
import pytest

from gateway.app import Gateway
from gateway.sources.mqtt.options import DEFAULT_PACKET_LIMIT
from gateway.sources.mqtt.wire import encode_publish, encode_string
from tests.hostile import (
    ANY_REASON,
    LANDS,
    LOOKS_LIKE_NUL,
    LOOKS_LIKE_NUL_TAGS,
    corpus,
    documented_reasons,
)

from .stack import Stack, publish, reading

DEVICE = "hostile-1"
TOPIC = f"devices/{DEVICE}/telemetry"
# The README's table, and the reasons being added with the checks that give them.
REASONS = documented_reasons() | {
    "too_deeply_nested",
    "invalid_text",
    "invalid_identity",
    "topic_too_long",
}
LONG_NAME = "long-" + "x" * 4995
MALFORMED_PACKET, PACKET_TOO_LARGE = 0x81, 0x95  # MQTT v5 DISCONNECT reason codes
RESET = -1


@pytest.fixture(scope="module")
async def env(deployment: Stack) -> Stack:
    await deployment.add_devices([DEVICE])
    deployment.devices[LONG_NAME] = deployment.broker.add_user(LONG_NAME)  # not registered
    return deployment


def rejected_total(gateway: Gateway) -> float:
    """gateway_messages_rejected_total of the MQTT source, over every reason."""
    return sum(
        sample.value
        for metric in gateway.metrics.registry.collect()
        for sample in metric.samples
        if sample.name == "gateway_messages_rejected_total"
        and sample.labels["source"] == "mosquitto"
    )


def fits(payload: bytes) -> bool:
    """Whether the broker takes it: Mosquitto is configured as shipped, its max_packet_size the
    payload limit plus room for a PUBLISH's topic and properties."""
    return len(payload) + len(TOPIC) + 16 <= DEFAULT_PACKET_LIMIT


def assert_ready(gateway: Gateway) -> None:
    checks = gateway.readiness()
    assert all(checks.values()), checks


async def test_each_hostile_payload_is_one_reject_and_the_good_ones_land(
    env: Stack, gateway: Gateway
) -> None:
    items = [item for item in corpus() if fits(item.payload)]
    hostile = [item for item in items if item.expect != LANDS]
    legal = sum(item.rows for item in items if item.expect == LANDS)
    goods = [float(n) for n in range(len(items) + 1)]
    messages = [reading("good", goods[0])]
    for item, value in zip(items, goods[1:], strict=True):
        messages += [item.payload, reading("good", value)]
    async with env.device(DEVICE) as device:
        await publish(device, TOPIC, messages)

    async def all_in() -> bool:
        rows = await env.count("SELECT count(*) FROM ingest.telemetry WHERE identity = $1", DEVICE)
        rejects = await env.count(
            "SELECT count(*) FROM ingest.rejects WHERE identity = $1 OR topic = $2", DEVICE, TOPIC
        )
        return rows >= len(goods) + legal and rejects >= len(hostile)

    await env.wait_for(all_in, timeout=90, what="every message's row or reject record")
    await asyncio.sleep(0.5)  # anything beyond the expected would come now
    conn = await env.admin()
    try:
        records = await conn.fetch(
            "SELECT reason, payload_prefix, detail, source, topic FROM ingest.rejects "
            "WHERE identity = $1 OR topic = $2",
            DEVICE,
            TOPIC,
        )
        good_rows = await conn.fetch(
            "SELECT value, count(*) AS n FROM ingest.telemetry WHERE identity = $1 "
            "AND metric = 'good' GROUP BY value",
            DEVICE,
        )
        others = await conn.fetchval(
            "SELECT count(*) FROM ingest.telemetry WHERE identity = $1 AND metric <> 'good'",
            DEVICE,
        )
        # Text that only looks like a NUL escape is no NUL: it lands in text and jsonb as sent.
        looks_like_nul = await conn.fetch(
            "SELECT metric, tags::text AS tags FROM ingest.telemetry WHERE identity = $1 "
            "AND (metric = $2 OR tags ? 'looks_like_nul')",
            DEVICE,
            LOOKS_LIKE_NUL,
        )
    finally:
        await conn.close()

    by_prefix: dict[bytes, list[str]] = {}
    for record in records:
        by_prefix.setdefault(bytes(record["payload_prefix"] or b""), []).append(record["reason"])
    wrong = []
    for item in hostile:
        reasons = by_prefix.pop(item.payload[:256], [])
        if item.expect == ANY_REASON:
            fine = len(reasons) == 1 and reasons[0] in REASONS - {"internal_error"}
        else:
            fine = reasons == [item.expect]
        if not fine:
            wrong.append(f"{item.name}: expected {item.expect}, got {reasons}")
    stray = [dict(r) for r in records if bytes(r["payload_prefix"] or b"") in by_prefix]
    assert not wrong and not stray, "\n".join([*wrong, *(f"record of no item: {r}" for r in stray)])

    assert {row["value"]: row["n"] for row in good_rows} == {value: 1 for value in goods}
    assert others == legal  # the odd but legal payloads landed too, once each
    stored = {row["metric"]: orjson.loads(row["tags"] or "null") for row in looks_like_nul}
    assert stored == {LOOKS_LIKE_NUL: None, "temp": orjson.loads(LOOKS_LIKE_NUL_TAGS)}
    assert rejected_total(gateway) == len(hostile)
    assert_ready(gateway)


async def test_a_message_over_the_packet_limit_is_refused_by_the_broker(
    env: Stack, gateway: Gateway
) -> None:
    (oversized,) = [item for item in corpus() if not fits(item.payload)]  # 100,000 readings
    before = await env.count("SELECT count(*) FROM ingest.rejects")
    # Mosquitto refuses the PUBLISH by its length and drops the device (reason 0x95, packet
    # too large, unless the device is still sending and only sees the reset): the message is
    # never stored, so the gateway never sees it.
    assert await publish_raw(env, DEVICE, TOPIC, oversized.payload) in (PACKET_TOO_LARGE, RESET)
    await assert_intake_goes_on(env, gateway, "after-oversized")
    assert await env.count("SELECT count(*) FROM ingest.rejects") == before


async def test_a_claim_5000_bytes_long_is_rejected_and_intake_goes_on(
    env: Stack, gateway: Gateway
) -> None:
    topic = f"devices/{LONG_NAME}/telemetry"
    async with env.device(LONG_NAME) as device:
        await publish(device, topic, [reading()])

    async def recorded() -> bool:
        return (
            await env.count(
                "SELECT count(*) FROM ingest.rejects WHERE topic LIKE 'devices/long-xxx%'"
            )
            >= 1
        )

    await env.wait_for(recorded, what="the long claim's reject record")
    conn = await env.admin()
    try:
        reasons = await conn.fetch(
            "SELECT reason FROM ingest.rejects WHERE topic LIKE 'devices/long-xxx%'"
        )
    finally:
        await conn.close()
    assert len(reasons) == 1 and reasons[0]["reason"] in REASONS, reasons
    await assert_intake_goes_on(env, gateway, "after-long-claim")


async def test_a_topic_with_nul_is_refused_by_the_broker_and_intake_goes_on(
    env: Stack, gateway: Gateway
) -> None:
    before = await env.count("SELECT count(*) FROM ingest.rejects")
    # MQTT forbids U+0000 in a topic: Mosquitto drops the device that sends one (reason 0x81,
    # malformed packet), so the gateway never sees it.
    topic = f"devices/{DEVICE}\x00/telemetry"
    assert await publish_raw(env, DEVICE, topic, reading()) == MALFORMED_PACKET
    await assert_intake_goes_on(env, gateway, "after-nul")
    assert await env.count("SELECT count(*) FROM ingest.rejects") == before


async def assert_intake_goes_on(env: Stack, gateway: Gateway, metric: str) -> None:
    """A good reading sent now still lands, and the gateway is ready."""
    async with env.device(DEVICE) as device:
        await publish(device, TOPIC, [reading(metric)])

    async def landed() -> bool:
        return (
            await env.count(
                "SELECT count(*) FROM ingest.telemetry WHERE identity = $1 AND metric = $2",
                DEVICE,
                metric,
            )
            == 1
        )

    await env.wait_for(landed, what="a good reading after the hostile one")
    assert_ready(gateway)


async def publish_raw(env: Stack, user: str, topic: str, payload: bytes) -> int | None:
    """Connect as `user` over a bare socket (MQTT v5), send one QoS 1 PUBLISH as given, and
    read until the broker closes: the reason code of its DISCONNECT, None if it acked, or
    `RESET` if the connection was reset before its answer could be read.

    A client library may refuse to send such a packet, or hide how the broker answered it."""
    account = env.devices[user]
    connect = b"\x00\x04MQTT\x05\xc2\x00\x00\x00" + b"".join(
        encode_string(text) for text in (user, user, account.password)
    )
    reader, writer = await asyncio.open_connection(env.broker.host, env.broker.port)
    try:
        writer.write(b"\x10" + _length(len(connect)) + connect)
        packet_type, body = await _packet(reader)
        assert (packet_type, body[1]) == (0x20, 0), "CONNACK, success"
        try:
            writer.write(encode_publish(encode_string(topic), payload, 1))
            await writer.drain()
        except ConnectionError:
            pass  # the broker may close before it has read it all
        while True:
            try:
                packet_type, body = await asyncio.wait_for(_packet(reader), 10)
            except ConnectionResetError:  # still sending when the broker closed: no answer kept
                return RESET
            if packet_type == 0x40:
                return None
            if packet_type == 0xE0:
                return body[0]
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def _length(n: int) -> bytes:
    """MQTT's variable byte integer."""
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


async def _packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return first & 0xF0, await reader.readexactly(length)
