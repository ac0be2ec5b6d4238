"""The engine with in-memory source and sinks: routing, rejects, acks after commit, backpressure."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from gateway.activity import Activity
from gateway.batching import BatchPolicy
from gateway.config import BatchingConfig, RouteConfig, load_config
from gateway.contracts import Route, Table
from gateway.decoder import DecodeLimits
from gateway.identities.cache import CachedIdentity
from gateway.metrics import Metrics
from gateway.pipeline import REJECT_COLUMNS, Pipeline
from gateway.roles.declaration import load_declaration
from gateway.route_checks import route_problems
from gateway.routes import build_routes
from gateway.sinks.memory import MemorySink
from gateway.sources.memory import MemorySource

EXAMPLE_CONFIG = Path(__file__).parents[2] / "config" / "gateway.toml"
IDENTITIES = {
    "sensor-1": CachedIdentity("telemetry_ingest", "telemetry_ingest_login", "active"),
    "sensor-2": CachedIdentity("telemetry_ingest", "telemetry_ingest_login", "active"),
    "old-1": CachedIdentity("telemetry_ingest", "telemetry_ingest_login", "retired"),
    "reader-1": CachedIdentity("analytics_reader", "analytics_reader_login", "active"),
}


def reading(value: float = 1.0) -> bytes:
    now = int(datetime.now(UTC).timestamp() * 1000)
    return orjson.dumps({"ts": now, "metric": "temp", "value": value})


def build(
    sink: MemorySink, rejects: MemorySink, max_buffered: int = 10_000, max_rows: int = 100
) -> Pipeline:
    return Pipeline(
        lookup=IDENTITIES.get,
        routes=[
            Route("telemetry_ingest", "ingest.telemetry", sink, "telemetry"),
            Route("rejects_writer", "ingest.rejects", rejects, rejects=True),
        ],
        metrics=Metrics(),
        activity=Activity(),
        policy=BatchPolicy.from_config(BatchingConfig(max_rows=max_rows, max_delay_ms=10)),
        limits=DecodeLimits(),
        max_buffered_rows=max_buffered,
    )


async def test_good_and_bad_messages_each_find_their_place() -> None:
    sink, rejects = MemorySink(), MemorySink()
    pipeline = build(sink, rejects)
    source = MemorySource()
    messages = source.put(
        [
            ("devices/sensor-1/telemetry", reading(1)),
            ("devices/sensor-1/telemetry", b"{broken"),
            ("devices/sensor-2/telemetry", reading(2)),
            ("devices/nobody/telemetry", reading()),
            ("devices/old-1/telemetry", reading()),
            ("devices/reader-1/telemetry", reading()),
            ("devices/sensor-1/other", reading()),
            ("elsewhere/sensor-1/telemetry", reading()),
        ]
    )
    pipeline.submit(source, await source.receive())
    await pipeline.flush()
    assert sorted(row[3] for row in sink.rows) == [1.0, 2.0]
    reasons = sorted(row[2] for row in rejects.rows)
    assert reasons == [
        "malformed_json",
        "not_permitted",
        "retired_identity",
        "topic_mismatch",
        "unknown_identity",
        "unknown_stream",
    ]
    assert sorted(m.position for m in source.acked) == [m.position for m in messages]


async def test_nothing_is_acknowledged_before_its_batch_commits() -> None:
    sink, rejects = MemorySink(), MemorySink()
    sink.available.clear()  # the database is away
    pipeline = build(sink, rejects)
    source = MemorySource()
    source.put([("devices/sensor-1/telemetry", reading(i)) for i in range(10)])
    pipeline.submit(source, await source.receive())
    await asyncio.sleep(0.05)
    assert source.acked == []
    sink.available.set()
    await pipeline.flush()
    assert len(source.acked) == 10 and len(sink.rows) == 10


async def test_intake_pauses_when_buffers_are_full() -> None:
    sink, rejects = MemorySink(), MemorySink()
    sink.available.clear()
    pipeline = build(sink, rejects, max_buffered=50, max_rows=10)
    source = MemorySource()
    source.put([("devices/sensor-1/telemetry", reading(i)) for i in range(60)])
    pump = asyncio.ensure_future(pipeline.pump(source))
    await asyncio.sleep(0.05)
    assert source.paused and not pipeline.has_capacity
    source.put([("devices/sensor-1/telemetry", reading(99))])
    await asyncio.sleep(0.05)
    assert source.pending == 1  # not taken while paused
    sink.available.set()
    await asyncio.sleep(0.1)
    assert not source.paused and source.pending == 0
    pump.cancel()
    await pipeline.flush()
    assert len(sink.rows) == 61


async def test_rows_refused_by_the_database_become_rejects_and_the_rest_lands() -> None:
    sink = MemorySink(refuse=lambda row: "bad value" if row[3] == 13.0 else None)
    rejects = MemorySink()
    pipeline = build(sink, rejects)
    source = MemorySource()
    source.put([("devices/sensor-1/telemetry", reading(i)) for i in range(20)])
    pipeline.submit(source, await source.receive())
    await pipeline.flush()
    assert len(sink.rows) == 19
    assert [row[2] for row in rejects.rows] == ["database_refused"]
    assert len(source.acked) == 20


async def test_reject_records_are_not_counted_as_rows_written() -> None:
    sink, rejects = MemorySink(), MemorySink()
    pipeline = build(sink, rejects)
    source = MemorySource()
    source.put([("devices/sensor-1/telemetry", reading()), ("devices/nobody/telemetry", reading())])
    pipeline.submit(source, await source.receive())
    await pipeline.flush()
    assert (len(sink.rows), len(rejects.rows)) == (1, 1)
    registry = pipeline.metrics.registry
    written = {"role": "telemetry_ingest", "table": "ingest.telemetry"}
    assert registry.get_sample_value("gateway_rows_written_total", written) == 1
    tables = {
        sample.labels["table"]
        for metric in registry.collect()
        for sample in metric.samples
        if sample.name == "gateway_rows_written_total"
    }
    assert tables == {"ingest.telemetry"}


def test_exactly_one_route_takes_reject_records() -> None:
    telemetry = Route("telemetry_ingest", "ingest.telemetry", MemorySink(), "telemetry")
    for rejects in ([], [Route("a", "ingest.rejects", MemorySink(), rejects=True)] * 2):
        with pytest.raises(ValueError, match="exactly one route"):
            Pipeline(
                lookup=IDENTITIES.get,
                routes=[telemetry, *rejects],
                metrics=Metrics(),
                activity=Activity(),
                policy=BatchPolicy.from_config(BatchingConfig()),
                limits=DecodeLimits(),
                max_buffered_rows=10,
            )


def test_routes_follow_the_declaration_and_end_with_the_rejects_route() -> None:
    config = load_config(EXAMPLE_CONFIG)
    doc = load_declaration(EXAMPLE_CONFIG.parents[1] / config.database.roles_file)
    opened: list[tuple[str, Table]] = []

    def open_sink(role: str, table: Table) -> MemorySink:
        opened.append((role, table))
        return MemorySink()

    routes = build_routes(config, doc, open_sink)
    *readings, rejects = routes
    assert rejects.rejects and rejects.stream is None
    assert (rejects.role, rejects.table) == (config.database.rejects_role, "ingest.rejects")
    assert readings and not any(route.rejects for route in readings)
    declared = {(r.stream, r.table): r for r in config.routes}
    for route in readings:
        assert route.stream is not None
        assert route_problems(doc, route.role, declared[(route.stream, route.table)]) == []
    assert [(role, table.qualified) for role, table in opened] == [
        (route.role, route.table) for route in routes
    ]
    assert opened[-1][1].columns == REJECT_COLUMNS and not opened[-1][1].write_log


def nested(depth: int, field: str) -> bytes:
    """A reading whose `field` holds `depth` nested arrays (2 bytes a level)."""
    now = int(datetime.now(UTC).timestamp() * 1000)
    inner = "[" * depth + "]" * depth
    fields = {"ts": str(now), "metric": '"temp"', "value": "1.0", field: inner}
    if field == "tags":
        fields[field] = '{"a":' + inner + "}"
    return ("{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}").encode()


async def test_poison_messages_are_rejected_and_the_good_ones_around_them_land() -> None:
    sink, rejects = MemorySink(), MemorySink()
    pipeline = build(sink, rejects)
    source = MemorySource()
    topic = "devices/sensor-1/telemetry"
    bad_utf8_tags = reading()[:-1] + b',"tags":{"site":"\xff\xfe"}}'
    messages = source.put(
        [
            (topic, reading(1)),
            (topic, nested(100_000, "tags")),
            (topic, nested(100_000, "id")),
            (topic, nested(100_000, "unknown")),
            (topic, bad_utf8_tags),
            (topic, reading(2)),
        ]
    )
    pipeline.submit(source, await source.receive())
    await pipeline.flush()
    assert sorted(row[3] for row in sink.rows) == [1.0, 2.0]
    reasons = [row[2] for row in rejects.rows]
    assert sorted(reasons) == ["invalid_text", *["too_deeply_nested"] * 3]
    assert sorted(m.position for m in source.acked) == [m.position for m in messages]


async def test_an_unforeseen_failure_rejects_only_its_message() -> None:
    def lookup(identity: str) -> CachedIdentity | None:
        if identity == "sensor-2":
            raise KeyError("a lookup that breaks")
        return IDENTITIES.get(identity)

    sink, rejects = MemorySink(), MemorySink()
    pipeline = build(sink, rejects)
    pipeline._lookup = lookup
    source = MemorySource()
    messages = source.put(
        [
            ("devices/sensor-1/telemetry", reading(1)),
            ("devices/sensor-2/telemetry", reading(2)),
            ("devices/sensor-1/telemetry", reading(3)),
        ]
    )
    pipeline.submit(source, await source.receive())
    await pipeline.flush()
    assert sorted(row[3] for row in sink.rows) == [1.0, 3.0]
    assert [(row[2], row[6]) for row in rejects.rows] == [
        ("internal_error", "KeyError: 'a lookup that breaks'")
    ]
    assert sorted(m.position for m in source.acked) == [m.position for m in messages]


async def test_an_unforeseen_failure_records_a_bounded_detail() -> None:
    def lookup(identity: str) -> CachedIdentity | None:
        raise ValueError(identity * 1000)  # an exception quoting what the device sent

    sink, rejects = MemorySink(), MemorySink()
    pipeline = build(sink, rejects)
    pipeline._lookup = lookup
    source = MemorySource()
    source.put([("devices/sensor-1/telemetry", reading(1))])
    pipeline.submit(source, await source.receive())
    await pipeline.flush()
    [record] = rejects.rows
    assert record[2] == "internal_error"
    assert record[6].startswith("ValueError: sensor-1sensor-1") and len(record[6]) == 200


def test_streams_into_one_table_share_its_sink() -> None:
    config = load_config(EXAMPLE_CONFIG)
    config = config.model_copy(
        update={
            "routes": [
                RouteConfig(stream="telemetry", table="ingest.telemetry"),
                RouteConfig(stream="metrics", table="ingest.telemetry"),
            ]
        }
    )
    doc = load_declaration(EXAMPLE_CONFIG.parents[1] / config.database.roles_file)
    opened: list[tuple[str, str]] = []

    def open_sink(role: str, table: Table) -> MemorySink:
        opened.append((role, table.qualified))
        return MemorySink()

    *readings, _ = build_routes(config, doc, open_sink)
    by_role: dict[str, set[int]] = {}
    for route in readings:
        by_role.setdefault(route.role, set()).add(id(route.sink))
    assert readings and all(len(sinks) == 1 for sinks in by_role.values())
    assert len(opened) == len(set(opened)) == len(by_role) + 1
