"""One message feeding several routes: every route gets its rows or a record of why not, and
the message is acknowledged only once all of them are committed."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import orjson

from gateway.activity import Activity
from gateway.batching import BatchPolicy
from gateway.config import BatchingConfig
from gateway.contracts import Route, Row
from gateway.decoder import DecodeLimits, Reject
from gateway.identities.cache import CachedIdentity
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.sinks.memory import MemorySink
from gateway.sources.memory import MemorySource

IDENTITIES = {
    "sensor-1": CachedIdentity("telemetry_ingest", "telemetry_ingest_login", "active"),
    "intruder": CachedIdentity("other_ingest", "other_ingest_login", "active"),
}
TOPIC = "devices/sensor-1/telemetry"


def reading(value: float, **extra: object) -> bytes:
    now = int(datetime.now(UTC).timestamp() * 1000)
    return orjson.dumps({"ts": now, "metric": "temp", "value": value, **extra})


def state_of(payload: bytes, identity: str, stream: str, at: int) -> list[Row]:
    """A state route's decoding, strict where telemetry is not: it needs `mode`."""
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise Reject("malformed_json", "not JSON") from None
    if "mode" not in body:
        raise Reject("missing_field", "/mode: required text")
    return [(identity, body["mode"], at)]


def build(telemetry: MemorySink, state: MemorySink, rejects: MemorySink, *more: Route) -> Pipeline:
    return Pipeline(
        lookup=IDENTITIES.get,
        routes=[
            Route("telemetry_ingest", "ingest.telemetry", telemetry, "telemetry"),
            Route(
                "state_writer",
                "ingest.device_state",
                state,
                "telemetry",
                decode=state_of,
                for_role="telemetry_ingest",
                ts_column=2,
                identity_column=0,
            ),
            Route("rejects_writer", "ingest.rejects", rejects, rejects=True),
            *more,
        ],
        metrics=Metrics(),
        activity=Activity(),
        policy=BatchPolicy.from_config(BatchingConfig(max_rows=100, max_delay_ms=10)),
        limits=DecodeLimits(),
        max_buffered_rows=10_000,
    )


async def test_a_message_is_acknowledged_only_when_every_route_committed() -> None:
    telemetry, state, rejects = MemorySink(), MemorySink(), MemorySink()
    state.available.clear()  # the state table's database is away
    pipeline = build(telemetry, state, rejects)
    source = MemorySource()
    source.put([(TOPIC, reading(n, mode="eco")) for n in range(5)])
    pipeline.submit(source, await source.receive())
    for _ in range(20):
        await asyncio.sleep(0.01)
        if len(telemetry.rows) == 5:
            break
    assert len(telemetry.rows) == 5  # one route committed...
    assert source.acked == []  # ...but the messages wait for the other
    state.available.set()
    await pipeline.flush()
    assert [row[1] for row in state.rows] == ["eco"] * 5
    assert len(source.acked) == 5 and rejects.rows == []


async def test_a_route_refusing_the_payload_loses_nothing_of_the_others() -> None:
    telemetry, state, rejects = MemorySink(), MemorySink(), MemorySink()
    pipeline = build(telemetry, state, rejects)
    source = MemorySource()
    source.put([(TOPIC, reading(1.0)), (TOPIC, reading(2.0, mode="on"))])
    pipeline.submit(source, await source.receive())
    await pipeline.flush()
    assert sorted(row[3] for row in telemetry.rows) == [1.0, 2.0]
    assert [row[1] for row in state.rows] == ["on"]
    (record,) = rejects.rows
    assert record[2] == "missing_field"
    assert record[6] == "ingest.device_state: /mode: required text"
    assert len(source.acked) == 2  # each once, after all its parts


async def test_a_payload_every_route_refuses_is_one_reject() -> None:
    telemetry, state, rejects = MemorySink(), MemorySink(), MemorySink()
    pipeline = build(telemetry, state, rejects)
    source = MemorySource()
    source.put([(TOPIC, b"{broken")])
    pipeline.submit(source, await source.receive())
    await pipeline.flush()
    assert telemetry.rows == [] and state.rows == []
    (record,) = rejects.rows
    assert record[2] == "malformed_json" and "ingest.telemetry" in record[6]
    assert len(source.acked) == 1


async def test_a_held_route_sends_its_part_to_rejects_whole_and_the_rest_lands() -> None:
    telemetry, state, rejects = MemorySink(), MemorySink(), MemorySink()
    state.held = "42501 permission denied for table device_state"
    pipeline = build(telemetry, state, rejects)
    source = MemorySource()
    payload = reading(3.0, mode="eco")
    source.put([(TOPIC, payload)])
    pipeline.submit(source, await source.receive())
    await pipeline.flush()
    # The state part's batch was refused: its message became a record keeping the payload.
    assert [row[3] for row in telemetry.rows] == [3.0]
    (record,) = rejects.rows
    assert (record[2], record[5]) == ("route_unavailable", payload)
    assert len(source.acked) == 1
    # While held, a new message's state part goes to rejects at once, whole; telemetry lands.
    source.put([(TOPIC, reading(4.0, mode="off"))])
    pipeline.submit(source, await source.receive())
    await pipeline.flush()
    assert sorted(row[3] for row in telemetry.rows) == [3.0, 4.0]
    assert [r[2] for r in rejects.rows] == ["route_unavailable"] * 2
    assert len(source.acked) == 2
    await pipeline.close()


async def test_a_route_fed_for_one_role_takes_nothing_from_another_roles_devices() -> None:
    """A device of another role, on the same stream and with a payload the state route would
    take, reaches only its own role's route: never the state kept for telemetry_ingest."""
    telemetry, other, state, rejects = MemorySink(), MemorySink(), MemorySink(), MemorySink()
    pipeline = build(
        telemetry, state, rejects, Route("other_ingest", "other.telemetry", other, "telemetry")
    )
    source = MemorySource()
    source.put([("devices/intruder/telemetry", reading(1.0, mode="pwned"))])
    pipeline.submit(source, await source.receive())
    await pipeline.flush()
    assert [(row[1], row[3]) for row in other.rows] == [("intruder", 1.0)]
    assert telemetry.rows == [] and state.rows == [] and rejects.rows == []
    assert len(source.acked) == 1


async def test_each_record_of_one_message_has_its_own_key() -> None:
    """The rejects table keeps one record per message key (a redelivery adds none): a message
    refused by one route while another's table is held has two records, and both are kept."""
    telemetry, state, rejects = MemorySink(), MemorySink(), MemorySink()
    state.held = "42501 permission denied for table device_state"
    pipeline = build(telemetry, state, rejects)
    source = MemorySource()
    source.put([(TOPIC, reading(1.0, mode="eco"))])
    pipeline.submit(source, await source.receive())
    await pipeline.flush()  # the state route is held from here on
    payload = orjson.dumps({"mode": "off"})  # no reading: telemetry refuses it
    source.put([(TOPIC, payload)])
    pipeline.submit(source, await source.receive())
    await pipeline.flush()
    _, *records = rejects.rows
    assert sorted(r[2] for r in records) == ["invalid_reading", "route_unavailable"]
    assert all(r[5] for r in records)  # each keeps the payload
    assert len({r[7] for r in rejects.rows}) == 3
    assert len(source.acked) == 2
    await pipeline.close()


async def test_when_every_route_of_a_message_is_held_each_has_its_record() -> None:
    telemetry, state, rejects = MemorySink(), MemorySink(), MemorySink()
    telemetry.held = state.held = "42501 permission denied"
    pipeline = build(telemetry, state, rejects)
    source = MemorySource()
    source.put([(TOPIC, reading(1.0, mode="eco"))])
    pipeline.submit(source, await source.receive())
    await pipeline.flush()  # both tables are held from here on
    payload = reading(2.0, mode="off")
    source.put([(TOPIC, payload)])
    pipeline.submit(source, await source.receive())
    await pipeline.flush()
    records = [r for r in rejects.rows if r[5] == payload]
    assert sorted(r[6].split(" ")[0] for r in records) == [
        "ingest.device_state",
        "ingest.telemetry",
    ]
    assert len({r[7] for r in rejects.rows}) == len(rejects.rows) == 4
    assert telemetry.rows == [] and state.rows == [] and len(source.acked) == 2
    await pipeline.close()
