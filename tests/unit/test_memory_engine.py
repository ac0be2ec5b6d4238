"""The engine over the in-memory broker: acknowledgements reach it only after commit, and what a
stopped engine had not committed comes again to the next source on the session."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import orjson

from gateway.activity import Activity
from gateway.batching import BatchPolicy
from gateway.config import BatchingConfig
from gateway.contracts import Route
from gateway.decoder import DecodeLimits
from gateway.identities.cache import CachedIdentity
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.sinks.memory import MemorySink

from .conftest import Memory

SENSOR = CachedIdentity("telemetry_ingest", "telemetry_ingest_login", "active")
TOPIC = "devices/sensor-1/telemetry"


def reading(value: float) -> bytes:
    now = int(datetime.now(UTC).timestamp() * 1000)
    return orjson.dumps({"ts": now, "metric": "temp", "value": value})


def engine(memory: Memory, sink: MemorySink | None = None) -> Pipeline:
    return Pipeline(
        lookup={"sensor-1": SENSOR}.get,
        routes=[
            Route("telemetry_ingest", "ingest.telemetry", sink or memory.sink, "telemetry"),
            Route("rejects_writer", "ingest.rejects", memory.rejects, rejects=True),
        ],
        metrics=Metrics(),
        activity=Activity(),
        policy=BatchPolicy.from_config(BatchingConfig(max_rows=100, max_delay_ms=10)),
        limits=DecodeLimits(),
        max_buffered_rows=10_000,
    )


async def test_uncommitted_messages_come_again_to_the_next_source(memory: Memory) -> None:
    away = MemorySink()
    away.available.clear()  # the first engine's database never answers: nothing commits
    memory.broker.publish([(TOPIC, reading(n)) for n in range(10)])
    first = engine(memory, away)
    first.submit(memory.source, await memory.source.receive())
    await asyncio.sleep(0.05)
    assert memory.broker.acked == []

    source = memory.reconnect()  # the first engine is gone with its batch
    second = engine(memory)
    second.submit(source, await source.receive())
    await second.flush()
    assert sorted(row[3] for row in memory.sink.rows) == [float(n) for n in range(10)]
    assert [m.position for m in memory.broker.acked] == list(range(10))
    assert memory.broker.queued == 0

    away.available.set()  # the first engine's late commit acknowledges to a replaced session
    await first.flush()
    assert [m.position for m in memory.broker.acked] == list(range(10))
