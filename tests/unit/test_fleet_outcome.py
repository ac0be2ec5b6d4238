"""The demo's summary of a run: rows per writing role, then route by route, each line telling
what the database holds, and saying so loudly when a guarantee did not hold."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from gateway.cli.demo import demo_routes
from gateway.fleet.outcome import Outcome, summary
from gateway.fleet.report import FleetReport, KindCounts


def report(devices: int, valid: int, malformed: int, spoofed: int) -> FleetReport:
    return FleetReport(
        devices=devices,
        readings=1,
        planned=None,
        duration=2.0,
        kinds={
            "valid": KindCounts(valid, valid, 0),
            "malformed": KindCounts(malformed, malformed, 0),
            "spoofed": KindCounts(spoofed, 0, spoofed),
        },
        errors=[],
        qos=1,
        protocol="5",
    )


def outcome(behind: int = 0) -> Outcome:
    per_role: list[Any] = [
        {"role": "state_writer", "target": "ingest.device_state", "rows": 40},
        {"role": "telemetry_ingest", "target": "ingest.telemetry", "rows": 100},
        {"role": "telemetry_ingest", "target": "ingest.environment", "rows": 30},
    ]
    sample: Any = {
        "identity": "sensor-0000",
        "state": '{"ts": 1, "value": 2.5}',
        "updated_at": datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
    }
    reasons: list[Any] = [{"reason": "malformed_json", "n": 3}]
    return Outcome(
        rows=130,
        rejects=3,
        per_table={"ingest.telemetry": 100, "ingest.environment": 30},
        per_role=per_role,
        per_reason=reasons,
        states=10,
        behind=behind,
        upserts=40,
        packed=10,
        sample=sample,
        latency=(30.0, 60.0),
    )


REPORTS = {"sensors": report(10, 100, 2, 1), "environment sensors": report(3, 30, 1, 0)}


def test_the_run_then_each_route() -> None:
    lines = summary(REPORTS, outcome(), demo_routes())
    head, routes = lines[: lines.index("Routes")], lines[lines.index("Routes") + 1 :]
    assert head[0].split() == [
        "fleet", "134", "messages", "in", "2.0", "s", "(67/s):",
        "10", "sensors,", "3", "environment", "sensors",
    ]  # fmt: skip
    assert "  written      100 rows as telemetry_ingest into ingest.telemetry" in head
    assert "  written      30 rows as telemetry_ingest into ingest.environment" in head
    assert any(line.startswith("  upserted     40 states as state_writer") for line in head)
    assert "  expected     130 rows" in head
    assert "  rejected     3 x malformed_json" in head
    assert "  spoofing     1 attempts, 1 refused by the broker" in head
    assert routes == [
        "  telemetry    stream telemetry -> ingest.telemetry: 100 rows",
        "  state        stream telemetry -> ingest.device_state: 10 rows, one per device, "
        "each its newest reading",
        "  table        streams env, envpack (msgpack) -> ingest.environment: 30 rows "
        "(10 from MessagePack)",
        "  sample       sensor-0000's state as of 2026-01-02T03:04:05.678+00:00: "
        '{"ts": 1, "value": 2.5}',
    ]


def test_states_behind_their_newest_reading_are_called_out() -> None:
    lines = summary(REPORTS, outcome(behind=2), demo_routes())
    assert any(line.endswith("2 NOT THEIR NEWEST READING") for line in lines)
