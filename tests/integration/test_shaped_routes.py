"""Routes with declared shapes end to end, on both MQTT transports: wide rows from JSON and
MessagePack, device state kept newest-first by the transactional role, one message feeding
telemetry and state, and shape errors rejected by the path that was wrong."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import orjson
import pytest

from gateway.app import Gateway
from gateway.config import ColumnConfig, GatewayConfig, RouteConfig, SourcesConfig
from gateway.validation import ConfigError

from .stack import Stack, publish

PROTOCOLS = {"5": "v5", "3.1.1": "v311"}
TESTS = ["fanout", "wide", "bad", "packstate"]
WAIT = 60

ENVIRONMENT = [
    ColumnConfig(name="ts", path="/ts", type="timestamptz"),
    ColumnConfig(name="identity", path="$identity", type="text"),
    ColumnConfig(name="received_at", path="$received_at", type="timestamptz"),
    ColumnConfig(name="temperature", path="/env/temp", type="float8"),
    ColumnConfig(name="humidity", path="/env/hum", type="float8", required=False),
    ColumnConfig(name="battery_mv", path="/battery", type="int4", required=False),
    ColumnConfig(name="uptime_s", path="/uptime", type="int8", required=False),
    ColumnConfig(name="firmware", path="/fw", type="text", required=False),
    ColumnConfig(name="door_open", path="/door", type="bool", required=False, default=False),
    ColumnConfig(name="reading_id", path="/id", type="uuid", required=False),
    ColumnConfig(name="extra", path="/extra", type="jsonb", required=False),
]
STATE = [
    ColumnConfig(name="identity", path="$identity", type="text"),
    ColumnConfig(name="state", path="", type="jsonb"),
    ColumnConfig(name="updated_at", path="/ts", type="timestamptz"),
]
ROUTES = [
    RouteConfig(stream="telemetry", table="ingest.telemetry"),
    RouteConfig(
        stream="telemetry",
        table="ingest.device_state",
        kind="state",
        role="state_writer",
        for_roles=["telemetry_ingest"],
        columns=STATE,
    ),
    RouteConfig(stream="env", table="ingest.environment", kind="table", columns=ENVIRONMENT),
    RouteConfig(
        stream="envpack",
        table="ingest.environment",
        kind="table",
        format="msgpack",
        columns=ENVIRONMENT,
    ),
    RouteConfig(stream="tpack", table="ingest.telemetry", format="msgpack"),
    RouteConfig(
        stream="statepack",
        table="ingest.device_state",
        kind="state",
        format="msgpack",
        role="state_writer",
        for_roles=["telemetry_ingest"],
        columns=STATE,
    ),
]


@pytest.fixture(scope="module")
async def env(deployment: Stack) -> Stack:
    await deployment.add_devices([f"{t}-{slug}" for t in TESTS for slug in PROTOCOLS.values()])
    return deployment


@pytest.fixture(params=list(PROTOCOLS), ids=list(PROTOCOLS.values()))
def protocol(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


def config(env: Stack, protocol: str) -> GatewayConfig:
    base = env.config(routes=ROUTES)
    (source,) = base.sources.mqtt
    source = source.model_copy(update={"protocol": protocol})
    return base.model_copy(update={"sources": SourcesConfig(mqtt=[source])})


def ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


async def send(env: Stack, name: str, stream: str, payloads: list[bytes]) -> None:
    async with env.device(name) as client:
        await publish(client, f"devices/{name}/{stream}", payloads)


async def wait_count(env: Stack, sql: str, name: str, expected: int) -> None:
    async def enough() -> bool:
        return await env.count(sql, name) >= expected

    await env.wait_for(enough, WAIT, f"{expected} of {sql} for {name}")


async def test_one_message_feeds_telemetry_and_the_newest_state(env: Stack, protocol: str) -> None:
    name = f"fanout-{PROTOCOLS[protocol]}"
    now = datetime.now(UTC)
    stamps = [now - timedelta(seconds=s) for s in (1, 3, 2)]  # newest first, then out of order
    payloads = [
        orjson.dumps({"ts": ms(at), "metric": "temp", "value": float(n), "mode": f"m{n}"})
        for n, at in enumerate(stamps)
    ]
    gateway = Gateway(config(env, protocol))
    await gateway.start()
    try:
        await send(env, name, "telemetry", payloads)
        await send(env, name, "telemetry", payloads[:1])  # the newest again: a redelivery
        await wait_count(env, "SELECT count(*) FROM ingest.telemetry WHERE identity = $1", name, 4)
        admin = await env.admin()
        try:

            async def settled() -> bool:
                state = await admin.fetchval(
                    "SELECT state->>'mode' FROM ingest.device_state WHERE identity = $1", name
                )
                return state == "m0"

            await env.wait_for(settled, WAIT, "the newest state")
            row = await admin.fetchrow(
                "SELECT state, updated_at FROM ingest.device_state WHERE identity = $1", name
            )
            assert orjson.loads(row["state"])["value"] == 0.0
            assert abs(row["updated_at"] - stamps[0]) < timedelta(milliseconds=1)
            logged = await admin.fetch(
                "SELECT DISTINCT role, db_user FROM gateway.write_log "
                "WHERE target = 'ingest.device_state'"
            )
            assert [tuple(r) for r in logged] == [("state_writer", "state_writer_login")]
        finally:
            await admin.close()
    finally:
        await gateway.stop()


async def test_a_msgpack_state_keeps_the_newest(env: Stack, protocol: str) -> None:
    name = f"packstate-{PROTOCOLS[protocol]}"
    now = datetime.now(UTC)
    stamps = [now - timedelta(seconds=s) for s in (2, 5, 3)]  # newest first, then older
    payloads = [
        msgspec.msgpack.encode({"ts": ms(at), "mode": f"m{n}", "load": [n, 0.5]})
        for n, at in enumerate(stamps)
    ]
    payloads.append(payloads[0])  # the newest again: a redelivery
    gateway = Gateway(config(env, protocol))
    await gateway.start()
    try:
        await send(env, name, "statepack", payloads)
        admin = await env.admin()
        try:

            async def settled() -> bool:
                # every message of the stream committed: its state part, applied or not
                written = gateway.metrics.registry.get_sample_value(
                    "gateway_rows_written_total",
                    {"role": "state_writer", "table": "ingest.device_state"},
                )
                return (written or 0) >= 4

            await env.wait_for(settled, WAIT, "four state messages committed")
            row = await admin.fetchrow(
                "SELECT state, updated_at FROM ingest.device_state WHERE identity = $1", name
            )
        finally:
            await admin.close()
    finally:
        await gateway.stop()
    assert orjson.loads(row["state"]) == {"ts": ms(stamps[0]), "mode": "m0", "load": [0, 0.5]}
    assert abs(row["updated_at"] - stamps[0]) < timedelta(milliseconds=1)


async def test_wide_rows_from_json_and_msgpack(env: Stack, protocol: str) -> None:
    name = f"wide-{PROTOCOLS[protocol]}"
    now = datetime.now(UTC)
    body: dict[str, Any] = {
        "ts": ms(now),
        "env": {"temp": 21.5, "hum": 40},
        "battery": 3300,
        "uptime": 2**40,
        "fw": "1.2.3",
        "door": True,
        "id": str(uuid.uuid4()),
        "extra": {"site": "berlin", "floor": [1, 2]},
    }
    packed = msgspec.msgpack.encode({**body, "fw": "1.2.4"})
    telemetry = msgspec.msgpack.encode({"ts": ms(now), "metric": "temp", "value": 7.5})
    gateway = Gateway(config(env, protocol))
    await gateway.start()
    try:
        await send(env, name, "env", [orjson.dumps(body)])
        await send(env, name, "envpack", [packed])
        await send(env, name, "tpack", [telemetry])
        await wait_count(
            env, "SELECT count(*) FROM ingest.environment WHERE identity = $1", name, 2
        )
        await wait_count(env, "SELECT count(*) FROM ingest.telemetry WHERE identity = $1", name, 1)
        admin = await env.admin()
        try:
            rows = await admin.fetch(
                "SELECT temperature, humidity, battery_mv, uptime_s, firmware, door_open, "
                "reading_id::text AS id, extra, pressure, rssi FROM ingest.environment "
                "WHERE identity = $1 ORDER BY firmware",
                name,
            )
            value = await admin.fetchval(
                "SELECT value FROM ingest.telemetry WHERE identity = $1", name
            )
        finally:
            await admin.close()
    finally:
        await gateway.stop()
    assert [r["firmware"] for r in rows] == ["1.2.3", "1.2.4"]
    for row in rows:
        assert (row["temperature"], row["humidity"], row["battery_mv"]) == (21.5, 40.0, 3300)
        assert (row["uptime_s"], row["door_open"], row["id"]) == (2**40, True, body["id"])
        assert orjson.loads(row["extra"]) == body["extra"]
        assert (row["pressure"], row["rssi"]) == (None, None)  # not routed: the table's NULL
    assert value == 7.5


async def test_shape_errors_are_rejected_by_their_path(env: Stack, protocol: str) -> None:
    name = f"bad-{PROTOCOLS[protocol]}"
    now = ms(datetime.now(UTC))
    payloads = [
        orjson.dumps({"ts": now, "env": {"hum": 40}}),  # no temperature
        orjson.dumps({"ts": now, "env": {"temp": 20}, "battery": "full"}),
        orjson.dumps({"ts": now, "env": {"temp": 20}, "battery": 2**40}),  # beyond int4
        orjson.dumps({"ts": now, "env": {"temp": 20}, "id": "not-a-uuid"}),
        orjson.dumps({"ts": now, "env": {"temp": 19.5}}),  # good: lands
    ]
    gateway = Gateway(config(env, protocol))
    await gateway.start()
    try:
        await send(env, name, "env", payloads)
        await send(env, name, "envpack", [b"\xc1"])  # a byte MessagePack never uses
        await wait_count(env, "SELECT count(*) FROM ingest.rejects WHERE identity = $1", name, 5)
        await wait_count(
            env, "SELECT count(*) FROM ingest.environment WHERE identity = $1", name, 1
        )
        admin = await env.admin()
        try:
            found = await admin.fetch(
                "SELECT reason, detail FROM ingest.rejects WHERE identity = $1 ORDER BY at", name
            )
        finally:
            await admin.close()
    finally:
        await gateway.stop()
    reasons = sorted((r["reason"], r["detail"].split(":")[0]) for r in found)
    assert reasons == [
        ("malformed_msgpack", "MessagePack data is malformed"),
        ("missing_field", "/env/temp"),
        ("wrong_type", "/battery"),
        ("wrong_type", "/battery"),
        ("wrong_type", "/id"),
    ]


async def test_a_shape_the_table_cannot_take_stops_the_start(env: Stack) -> None:
    wrong = [*ENVIRONMENT[:3], ColumnConfig(name="temprature", path="/env/temp", type="float8")]
    routes = [
        *ROUTES[:2],
        RouteConfig(stream="env", table="ingest.environment", kind="table", columns=wrong),
    ]
    gateway = Gateway(env.config(routes=routes))
    with pytest.raises(ConfigError) as refused:
        await gateway.start()
    problems = dict(refused.value.problems)
    assert 'has no column "temprature"' in problems["routes[2].columns[3].name"]
