"""The engine under hostile senders: budgets for reject records, bounded memory, held tables."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.activity import Activity
from gateway.batching import BatchPolicy
from gateway.config import BatchingConfig
from gateway.contracts import Route
from gateway.decoder import DecodeLimits
from gateway.metrics import Metrics
from gateway.pipeline import MINUTE_US, REJECT_COLUMNS, Pipeline
from gateway.reject_budget import OVERFLOW, RejectBudget
from gateway.sinks.memory import MemorySink
from gateway.sources.memory import MemorySource

from .test_pipeline import IDENTITIES, reading

COLUMN = {name: index for index, name in enumerate(REJECT_COLUMNS)}


def build(
    sink: MemorySink,
    rejects: MemorySink,
    *,
    events: MemorySink | None = None,
    activity: Activity | None = None,
    **options: Any,
) -> Pipeline:
    """Streams `telemetry` and `events` into one table, or `events` into its own."""
    options.setdefault("max_buffered_rows", 10_000)
    return Pipeline(
        lookup=IDENTITIES.get,
        routes=[
            Route("telemetry_ingest", "ingest.telemetry", sink, "telemetry"),
            Route(
                "telemetry_ingest",
                "ingest.events" if events else "ingest.telemetry",
                events or sink,
                "events",
            ),
            Route("rejects_writer", "ingest.rejects", rejects, rejects=True),
        ],
        metrics=Metrics(),
        activity=activity or Activity(),
        policy=BatchPolicy.from_config(BatchingConfig(max_rows=100, max_delay_ms=10)),
        limits=DecodeLimits(),
        **options,
    )


def column(rows: list[Any], name: str) -> list[Any]:
    return [row[COLUMN[name]] for row in rows]


async def test_a_flooding_sender_stores_its_budget_whole_and_a_count_for_the_rest() -> None:
    sink, rejects = MemorySink(), MemorySink()
    pipeline = build(sink, rejects, rejects_per_minute=5)
    source = MemorySource()
    flood = [("devices/sensor-1/telemetry", b"{broken")] * 500
    flood += [("devices/sensor-2/telemetry", b"{broken"), ("devices/sensor-1/telemetry", reading())]
    source.put(flood)
    pipeline.submit(source, await source.receive())
    await pipeline.flush()
    whole = [row for row in rejects.rows if row[COLUMN["count"]] == 1]
    summaries = [row for row in rejects.rows if row[COLUMN["count"]] > 1]
    assert column(whole, "identity") == ["sensor-1"] * 5 + ["sensor-2"]
    assert [(row[COLUMN["identity"]], row[COLUMN["count"]]) for row in summaries] == [
        ("sensor-1", 495)
    ]
    assert summaries[0][COLUMN["payload_prefix"]] == b""
    assert summaries[0][COLUMN["at"]] % MINUTE_US == 0
    # Every message is acknowledged, the counted ones at once, and the good one lands.
    assert len(source.acked) == 502 and len(sink.rows) == 1
    assert pipeline.buffered_rows == 0


async def test_unknown_senders_are_budgeted_by_topic_and_bounded_in_number() -> None:
    budget = RejectBudget(per_minute=1, max_senders=10, max_unregistered=3)
    budget.roll(1)
    admitted = [budget.admit("mqtt", f"x/{n}", False, "unknown_identity") for n in range(10)]
    assert admitted == [True, True, True] + [True] + [False] * 6  # the overflow's first is kept
    (summary,) = budget.roll(2)
    assert (summary.sender, summary.count, summary.registered) == (OVERFLOW, 6, False)
    assert budget.roll(2) == [] and budget.admit("mqtt", "x/1", False, "unknown_identity")
    # Registered identities are tracked beyond the unregistered bound, up to max_senders.
    assert all(budget.admit("mqtt", f"dev-{n}", True, "invalid_reading") for n in range(9))
    assert budget.admit("mqtt", "dev-9", True, "invalid_reading")  # the overflow's first
    assert not budget.admit("mqtt", "dev-10", True, "invalid_reading")


async def test_a_rejected_message_keeps_only_its_record() -> None:
    sink, rejects = MemorySink(), MemorySink()
    rejects.available.clear()  # the database is away: records wait in memory
    pipeline = build(sink, rejects)
    source = MemorySource()
    big = b"[" + b"1," * 100_000 + b"1]"
    source.put([("devices/sensor-1/telemetry", big)])
    (message,) = await source.receive()
    pipeline.submit(source, [message])
    assert message.payload == b""
    (record,) = [row for batch in [pipeline._rejects._batch.rows] for row in batch]
    assert len(record[COLUMN["payload_prefix"]]) == 256
    rejects.available.set()
    await pipeline.flush()
    # What the broker would deliver again is untouched.
    assert source.acked[0].payload == big


async def test_intake_pauses_on_held_bytes_as_well_as_rows() -> None:
    sink, rejects = MemorySink(), MemorySink()
    sink.available.clear()
    pipeline = build(sink, rejects, max_buffered_bytes=2048, max_buffered_rows=10_000)
    source = MemorySource()
    padded = reading()[:-1] + b',"pad":"' + b"x" * 900 + b'"}'
    source.put([("devices/sensor-1/telemetry", padded)] * 3)
    pipeline.submit(source, await source.receive())
    # Three rows are far below the row bound; their bytes are not.
    for batcher in pipeline._batchers.values():
        pipeline._flush_soon(batcher)
    await asyncio.sleep(0)
    assert pipeline.buffered_bytes >= 2048 and not pipeline.has_capacity
    sink.available.set()
    await pipeline.flush()
    assert pipeline.has_capacity and pipeline.buffered_bytes == 0 and len(sink.rows) == 3


async def test_invalid_claims_are_not_stored_or_counted_as_identities() -> None:
    sink, rejects = MemorySink(), MemorySink()
    activity = Activity()
    pipeline = build(sink, rejects, activity=activity, max_topic_length=64)
    source = MemorySource()
    source.put(
        [
            ("devices/" + "x" * 200 + "/telemetry", reading()),  # longer than the topic limit
            ("devices/bad\x00name/telemetry", reading()),  # not a name the registry could hold
            ("devices/nobody/telemetry", reading()),  # a valid name nobody registered
        ]
    )
    pipeline.submit(source, await source.receive())
    await pipeline.flush()
    assert column(rejects.rows, "reason") == [
        "topic_too_long",
        "invalid_identity",
        "unknown_identity",
    ]
    assert column(rejects.rows, "identity") == [None, None, "nobody"]
    assert all(len(topic) <= 256 for topic in column(rejects.rows, "topic"))
    assert len(activity) == 0  # only registered identities have activity


async def test_a_held_table_sends_its_messages_to_rejects_whole_and_others_flow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("gateway.pipeline.HELD_PROBE_SECONDS", 0.01)
    sink, other, rejects = MemorySink(), MemorySink(), MemorySink()
    pipeline = build(sink, rejects, events=other)
    source = MemorySource()
    sink.held = "42501 permission denied for table telemetry"
    first = reading(1)[:-1] + b',"note":"' + b"n" * 1000 + b'"}'
    source.put([("devices/sensor-1/telemetry", first), ("devices/sensor-1/events", reading(2))])
    pipeline.submit(source, await source.receive())
    await pipeline.flush()
    assert [row[3] for row in other.rows] == [2.0]
    (record,) = rejects.rows
    assert record[COLUMN["reason"]] == "route_unavailable" and "42501" in record[COLUMN["detail"]]
    assert record[COLUMN["payload_prefix"]] == first  # whole, not a prefix: nothing lost

    def held() -> float | None:
        labels = {"role": "telemetry_ingest", "table": "ingest.telemetry"}
        return pipeline.metrics.registry.get_sample_value("gateway_route_held", labels)

    assert held() == 1
    # While held, new messages for the table are rejected at once, with their whole payload.
    long = reading(3)[:-1] + b',"note":"' + b"n" * 1000 + b'"}'
    source.put([("devices/sensor-1/telemetry", long)])
    pipeline.submit(source, await source.receive())
    await pipeline.flush()
    assert rejects.rows[-1][COLUMN["payload_prefix"]] == long
    # Fixed: the probe notices, and the table takes writes again.
    sink.held = ""
    for _ in range(100):
        await asyncio.sleep(0.01)
        if held() == 0:
            break
    source.put([("devices/sensor-1/telemetry", reading(4))])
    pipeline.submit(source, await source.receive())
    await pipeline.flush()
    await pipeline.close()
    assert [row[3] for row in sink.rows] == [4.0]
    assert len(source.acked) == 4


async def test_every_reject_record_fits_the_table_and_holds_storable_text() -> None:
    sink = MemorySink(refuse=lambda row: "22021 NUL\x00 in \ud800 text" if row[3] == 2.0 else None)
    rejects = MemorySink()
    pipeline = build(sink, rejects)
    source = MemorySource()
    source.put(
        [
            ("devices/sensor-1/telemetry", reading(1)),
            ("devices/sensor-1/telemetry", reading(2)),  # refused by the 'database'
            ("devices/sensor-1/telemetry", b"{broken"),
            ("devices/nobody/telemetry", reading()),
        ]
    )
    pipeline.submit(source, await source.receive())
    await pipeline.flush()
    assert sorted(column(rejects.rows, "reason")) == [
        "database_refused",
        "malformed_json",
        "unknown_identity",
    ]
    for row in rejects.rows:
        assert len(row) == len(REJECT_COLUMNS)
        for value in row:
            if isinstance(value, str):
                value.encode("utf-8")  # no lone surrogate
                assert "\x00" not in value
