"""The routes with declared shapes for the MQTT drain benchmark: each variant's routes (those of
tests/integration/test_shaped_routes.py), its stream, its payloads, and what its drain writes.

- *telemetry*: one reading per message into `ingest.telemetry` (the reference shape);
- *wide*: a `table` route, one `ingest.environment` row of typed columns per JSON message;
- *state*: a `state` route, `ingest.device_state` written by `state_writer` for the ingest
  role's devices, the newest `ts` winning; each device's `ts` increases, and every
  `OUT_OF_ORDER`-th message carries an older one, which must change nothing;
- *fanout*: telemetry whose every message also updates the device's state.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from gateway.config import ColumnConfig, RouteConfig

__all__ = [
    "BASE_MS",
    "OUT_OF_ORDER",
    "STATE_TABLE",
    "VARIANTS",
    "Variant",
    "newest_ts",
]

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
STATE_TABLE = "ingest.device_state"
TELEMETRY = RouteConfig(stream="telemetry", table="ingest.telemetry")


def state_route(stream: str) -> RouteConfig:
    return RouteConfig(
        stream=stream,
        table=STATE_TABLE,
        kind="state",
        role="state_writer",
        for_roles=["telemetry_ingest"],
        columns=STATE,
    )


# An hour ago, as the run starts: inside the decoder's window (a week back), and the same for
# every drain, so each device's newest state is known ahead.
BASE_MS = int(time.time() * 1000) - 3_600_000
STEP_MS = 10
OUT_OF_ORDER = 10  # every 10th message of a device goes back in time
BACK_MS = 50 * STEP_MS


def ts_of(seq: int) -> int:
    """A device's `seq`-th message's ts: increasing, but every OUT_OF_ORDER-th one older."""
    ts = BASE_MS + seq * STEP_MS
    return ts - BACK_MS if seq % OUT_OF_ORDER == OUT_OF_ORDER - 1 else ts


def newest_ts(per_device: int) -> int:
    """The ts a device's state must end with after `per_device` messages."""
    return max(ts_of(seq) for seq in range(max(0, per_device - OUT_OF_ORDER), per_device))


def telemetry(seq: int) -> bytes:
    return orjson.dumps(
        {"ts": ts_of(seq), "metric": "temperature", "value": seq * 0.5, "tags": {"site": "s-3"}}
    )


def wide(seq: int) -> bytes:
    return orjson.dumps(
        {
            "ts": BASE_MS + seq * STEP_MS,
            "env": {"temp": 20 + seq % 50 * 0.1, "hum": 40 + seq % 7},
            "battery": 3000 + seq % 300,
            "uptime": 2**33 + seq,
            "fw": "1.2.3",
            "door": seq % 2 == 0,
            "id": str(uuid.UUID(int=seq + 1)),
            "extra": {"site": "berlin", "floor": [1, 2]},
        }
    )


def state(seq: int) -> bytes:
    return orjson.dumps(
        {"ts": ts_of(seq), "mode": f"m{seq % 4}", "value": seq * 0.5, "battery": 3000 + seq % 300}
    )


@dataclass(frozen=True)
class Variant:
    """One drain's shape: where devices publish, what, and the routes the gateway has."""

    name: str
    stream: str
    payload: Callable[[int], bytes]
    routes: list[RouteConfig]
    tables: tuple[str, ...]  # where its rows land; the last commit among them ends the drain

    @property
    def writes_per_message(self) -> int:
        return len(self.routes)

    @property
    def keeps_state(self) -> bool:
        return STATE_TABLE in self.tables


VARIANTS = {
    v.name: v
    for v in (
        Variant("telemetry", "telemetry", telemetry, [TELEMETRY], ("ingest.telemetry",)),
        Variant(
            "wide",
            "env",
            wide,
            [
                RouteConfig(
                    stream="env", table="ingest.environment", kind="table", columns=ENVIRONMENT
                )
            ],
            ("ingest.environment",),
        ),
        Variant("state", "state", state, [state_route("state")], (STATE_TABLE,)),
        Variant(
            "fanout",
            "telemetry",
            telemetry,
            [TELEMETRY, state_route("telemetry")],
            ("ingest.telemetry", STATE_TABLE),
        ),
    )
}
