"""Telemetry payloads to COPY-ready rows, or a reject reason: the per-message hot path.

Accepted shapes (JSON): one reading `{"ts", "metric", "value", "tags"}`, or a batch
`{"ts", "readings": [{"metric", "value", ...}, ...]}` whose readings may carry their own `ts`.
Timestamps are RFC 3339 strings or epoch milliseconds. A message is taken or rejected whole, so
a half-written batch message never exists; other messages around a bad one are unaffected.

Rows are plain tuples `(ts, identity, metric, value, tags_json, received_at)`, with `tags`
serialised to a string once here: live dicts in half a million buffered rows make the garbage
collector run over and over.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from gateway.errors import GatewayError

__all__ = ["COLUMNS", "DEDUP_COLUMNS", "DecodeLimits", "Reject", "Row", "decode"]

COLUMNS = ("ts", "identity", "metric", "value", "tags", "received_at")
DEDUP_COLUMNS = (*COLUMNS, "message_id")
Row = tuple[Any, ...]

MAX_METRIC_LENGTH = 200
NON_FINITE = (b"NaN", b"Infinity")


class Reject(GatewayError):
    """A message that can never succeed; `reason` is a stable label for metrics and rejects."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """What a payload may be; timestamps outside the window are usually clock faults."""

    max_payload_bytes: int = 256 * 1024
    max_readings: int = 10_000
    max_age: timedelta = timedelta(days=7)
    max_ahead: timedelta = timedelta(minutes=5)


def decode(
    payload: bytes,
    identity: str,
    received_at: datetime,
    limits: DecodeLimits,
    dedup: bool = False,
) -> list[Row]:
    """The rows of one message, all or nothing; raises `Reject` saying why not.

    With `dedup`, each row ends with a message id: the payload's `id` (plus the reading's
    index in a batch), or else the reading's own `ts` and `metric`, unique per identity.
    """
    if len(payload) > limits.max_payload_bytes:
        raise Reject("payload_too_large", f"{len(payload)} bytes, limit {limits.max_payload_bytes}")
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        # JSON has no NaN or infinity; devices that send them anyway get the precise reason.
        if "infinity" in str(exc) or any(word in payload for word in NON_FINITE):
            raise Reject("non_finite_value", str(exc)) from None
        raise Reject("malformed_json", str(exc)) from None
    if not isinstance(body, dict):
        raise Reject("invalid_reading", f"expected a JSON object, got {type(body).__name__}")
    earliest, latest = received_at - limits.max_age, received_at + limits.max_ahead
    readings = body.get("readings")
    if readings is None:
        row = _row(body, None, identity, received_at, earliest, latest, None)
        return [(*row, _message_id(body.get("id"), row, None))] if dedup else [row]
    if not isinstance(readings, list) or not readings:
        raise Reject("invalid_reading", "`readings` must be a non-empty list")
    if len(readings) > limits.max_readings:
        raise Reject("payload_too_large", f"{len(readings)} readings, limit {limits.max_readings}")
    default_ts = body.get("ts")
    shared: datetime | None = None  # the batch's own ts, parsed and checked once when used
    rows = []
    for index, reading in enumerate(readings):
        if not isinstance(reading, dict):
            raise Reject("invalid_reading", f"readings[{index}]: expected an object")
        if shared is None and "ts" not in reading and default_ts is not None:
            shared = _checked_ts(default_ts, earliest, latest, "")
        rows.append(_row(reading, shared, identity, received_at, earliest, latest, index))
    if dedup:
        batch_id = body.get("id")
        return [(*row, _message_id(batch_id, row, index)) for index, row in enumerate(rows)]
    return rows


def _message_id(given: Any, row: Row, index: int | None) -> str:
    if isinstance(given, str | int) and not isinstance(given, bool):
        return f"{given}" if index is None else f"{given}#{index}"
    return f"{row[0].isoformat()}|{row[2]}"


def _row(
    reading: dict[str, Any],
    shared_ts: datetime | None,
    identity: str,
    received_at: datetime,
    earliest: datetime,
    latest: datetime,
    index: int | None,
) -> Row:
    """One reading as a row; `shared_ts` stands in when a batch's reading has no `ts`."""
    metric = reading.get("metric")
    if not isinstance(metric, str) or not metric or len(metric) > MAX_METRIC_LENGTH:
        raise Reject(
            "invalid_reading",
            f"{_where(index)}metric must be a non-empty string of at most "
            f"{MAX_METRIC_LENGTH} characters",
        )
    value = reading.get("value")
    if type(value) is int:
        value = float(value)
    elif type(value) is not float:
        raise Reject(
            "invalid_reading", f"{_where(index)}value must be a number, got {_kind(value)}"
        )
    if not math.isfinite(value):
        raise Reject("non_finite_value", f"{_where(index)}value is {value}")
    raw_ts = reading.get("ts")
    if raw_ts is None and shared_ts is not None:
        ts = shared_ts
    else:
        ts = _checked_ts(raw_ts, earliest, latest, _where(index))
    tags = reading.get("tags")
    if tags is None:
        tags_json = None
    elif isinstance(tags, dict):
        tags_json = orjson.dumps(tags).decode()
    else:
        raise Reject("invalid_reading", f"{_where(index)}tags must be an object, got {_kind(tags)}")
    return (ts, identity, metric, value, tags_json, received_at)


def _where(index: int | None) -> str:
    """Where in a batch message a problem is, for the reject's detail (error path only)."""
    return "" if index is None else f"readings[{index}]."


def _checked_ts(raw: Any, earliest: datetime, latest: datetime, where: str) -> datetime:
    ts = _timestamp(raw, where)
    if not earliest <= ts <= latest:
        raise Reject(
            "timestamp_out_of_window",
            f"{where}ts {ts.isoformat()} is outside [{earliest.isoformat()}, {latest.isoformat()}]",
        )
    return ts


def _timestamp(raw: Any, where: str) -> datetime:
    if type(raw) is int:
        try:
            return datetime.fromtimestamp(raw / 1000, UTC)
        except (OverflowError, OSError, ValueError):
            raise Reject("invalid_reading", f"{where}ts {raw} is not a valid epoch in ms") from None
    if isinstance(raw, str):
        try:
            parsed = datetime.fromisoformat(raw)
        except ValueError:
            raise Reject("invalid_reading", f"{where}ts {raw!r} is not RFC 3339") from None
        if parsed.tzinfo is None:
            raise Reject("invalid_reading", f"{where}ts {raw!r} has no UTC offset")
        return parsed
    if raw is None:
        raise Reject("invalid_reading", f"{where}ts is missing")
    raise Reject(
        "invalid_reading", f"{where}ts must be RFC 3339 or epoch milliseconds, got {_kind(raw)}"
    )


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__
