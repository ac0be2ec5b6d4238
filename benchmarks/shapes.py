"""Decoding cost per message: a 10-column table route from JSON and from MessagePack, against the
telemetry decoder on a one-reading payload, and MessagePack telemetry (re-encoded as JSON first).

All variants run in one process, interleaved round by round (ABBA-like), so the machine's drift
falls on all alike; reports the median per variant in microseconds per message and its ratio to
the telemetry decoder measured in the same run. Prints one JSON object on stdout.

    .venv/bin/python benchmarks/shapes.py [--messages 20000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime

import msgspec

from gateway import pgtime
from gateway.config import ColumnConfig, RouteConfig
from gateway.decoder import DecodeLimits, decode
from gateway.shapes import msgpack_as_json, shape_decoder

LIMITS = DecodeLimits()
COLUMNS = [
    ColumnConfig(name="ts", path="/ts", type="timestamptz"),
    ColumnConfig(name="identity", path="$identity", type="text"),
    ColumnConfig(name="received_at", path="$received_at", type="timestamptz"),
    ColumnConfig(name="temp", path="/env/temp", type="float8"),
    ColumnConfig(name="humidity", path="/env/humidity", type="float8"),
    ColumnConfig(name="count", path="/count", type="int8"),
    ColumnConfig(name="level", path="/level", type="int4"),
    ColumnConfig(name="running", path="/running", type="bool"),
    ColumnConfig(name="site", path="/site", type="text"),
    ColumnConfig(name="reading_id", path="/id", type="uuid"),
]


def table_message(now_ms: int) -> dict[str, object]:
    return {
        "ts": now_ms,
        "env": {"temp": 21.5, "humidity": 40},
        "count": 123456,
        "level": 3,
        "running": True,
        "site": "north",
        "id": "12345678-1234-5678-1234-567812345678",
    }


def variants(now_ms: int, received_at: int) -> dict[str, Callable[[], object]]:
    """Each variant decodes its own payload once per call."""
    routes = {
        fmt: shape_decoder(
            RouteConfig(stream="s", table="app.t", kind="table", format=fmt, columns=COLUMNS),
            LIMITS,
        )
        for fmt in ("json", "msgpack")
    }
    body = table_message(now_ms)
    as_json, as_msgpack = msgspec.json.encode(body), msgspec.msgpack.encode(body)
    reading = {"ts": now_ms, "metric": "temp", "value": 21.5, "tags": {"site": "north"}}
    reading_json, reading_msgpack = msgspec.json.encode(reading), msgspec.msgpack.encode(reading)
    table_json, table_msgpack = routes["json"], routes["msgpack"]
    return {
        "telemetry_json": lambda: decode(reading_json, "sensor-1", received_at, LIMITS),
        "table10_json": lambda: table_json(as_json, "sensor-1", "s", received_at),
        "table10_msgpack": lambda: table_msgpack(as_msgpack, "sensor-1", "s", received_at),
        "telemetry_msgpack": lambda: decode(
            msgpack_as_json(reading_msgpack, LIMITS), "sensor-1", received_at, LIMITS
        ),
    }


def per_message(run: Callable[[], object], messages: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(messages):
        run()
    return (time.perf_counter_ns() - start) / messages / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    now = datetime.now(UTC)
    runs = variants(int(now.timestamp() * 1000), pgtime.from_datetime(now))
    for run in runs.values():
        run()  # warm and prove each variant decodes
    names = list(runs)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(args.rounds):
        for name in names if round_ % 2 == 0 else reversed(names):
            samples[name].append(per_message(runs[name], args.messages))
    reference = statistics.median(samples["telemetry_json"])
    print(
        json.dumps(
            {
                "benchmark": "shapes",
                "python": platform.python_version(),
                "msgspec": msgspec.__version__,
                "messages_per_round": args.messages,
                "rounds": args.rounds,
                "us_per_message": {
                    name: round(statistics.median(values), 3) for name, values in samples.items()
                },
                "ratio_to_telemetry_json": {
                    name: round(statistics.median(values) / reference, 2)
                    for name, values in samples.items()
                },
                "spread_us": {
                    name: [round(min(values), 3), round(max(values), 3)]
                    for name, values in samples.items()
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
