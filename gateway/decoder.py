"""Telemetry payloads to COPY-ready rows, or a reject reason: the per-message hot path.

Accepted shapes (JSON): one reading `{"ts", "metric", "value", "tags"}`, or a batch
`{"ts", "readings": [{"metric", "value", ...}, ...]}` whose readings may carry their own `ts`.
Timestamps are RFC 3339 strings or epoch milliseconds. A message is taken or rejected whole, so
a half-written batch message never exists; other messages around a bad one are unaffected.

msgspec parses and type-checks a payload in one pass in C, into slotted structs rather than
dicts; `tags` stays the raw JSON text of its object, which is what the jsonb column takes, so it
is never rebuilt. Rows are plain tuples `(ts, identity, metric, value, tags_json, received_at)`
with both timestamps in PostgreSQL's integer microseconds (`gateway.pgtime`), which COPY writes
without datetime arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Any

import msgspec

from gateway import pgtime
from gateway.config import LimitsConfig
from gateway.contracts import Row
from gateway.errors import GatewayError

__all__ = ["COLUMNS", "DEDUP_COLUMNS", "DecodeLimits", "Reject", "decode"]

COLUMNS = ("ts", "identity", "metric", "value", "tags", "received_at")
DEDUP_COLUMNS = (*COLUMNS, "message_id")

MAX_METRIC_LENGTH = 200
NON_FINITE = (b"NaN", b"Infinity")
_NO_TAGS = msgspec.Raw(b"")


class Reject(GatewayError):
    """A message that can never succeed; `reason` is a stable label for metrics and rejects."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


_CONFIGURED = LimitsConfig()


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """What a payload may be; timestamps outside the window are usually clock faults.

    The defaults are the configuration's (`LimitsConfig`), stated there once where the reference
    documents them; only `max_readings`, which is not configurable, is stated here.
    """

    max_payload_bytes: int = _CONFIGURED.max_payload_bytes
    max_readings: int = 10_000
    max_age: timedelta = timedelta(seconds=_CONFIGURED.max_age_seconds)
    max_ahead: timedelta = timedelta(seconds=_CONFIGURED.max_ahead_seconds)
    max_age_us: int = field(init=False, repr=False)  # the window in rows' own unit, once
    max_ahead_us: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_age_us", pgtime.duration(self.max_age))
        object.__setattr__(self, "max_ahead_us", pgtime.duration(self.max_ahead))

    @classmethod
    def from_config(cls, config: LimitsConfig) -> DecodeLimits:
        return cls(
            max_payload_bytes=config.max_payload_bytes,
            max_age=timedelta(seconds=config.max_age_seconds),
            max_ahead=timedelta(seconds=config.max_ahead_seconds),
        )


Metric = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_METRIC_LENGTH)]


class _Reading(msgspec.Struct, gc=False):
    """A reading as sent; absent fields are None, so that the reject can say which is missing."""

    metric: Metric | None = None
    value: float | None = None  # JSON integers are accepted; booleans and numbers beyond the
    ts: int | datetime | None = None  # range of a double are not
    tags: msgspec.Raw = _NO_TAGS  # the object's JSON text, checked to be an object below


class _Message(_Reading, gc=False):
    """A whole message: one reading at the top level, or a batch of `readings`."""

    id: Any = None  # any JSON: only strings and integers are used as dedup ids
    readings: list[_Reading] | None = None


_parse = msgspec.json.Decoder(_Message).decode


def decode(
    payload: bytes,
    identity: str,
    received_at: int,
    limits: DecodeLimits,
    dedup: bool = False,
) -> list[Row]:
    """The rows of one message, all or nothing; raises `Reject` saying why not.

    `received_at` is in PostgreSQL microseconds (`pgtime.now()`), as are the rows' timestamps.

    With `dedup`, each row ends with a message id: the payload's `id` (plus the reading's
    index in a batch), or else the reading's own `ts` and `metric`, unique per identity.
    """
    if len(payload) > limits.max_payload_bytes:
        raise Reject("payload_too_large", f"{len(payload)} bytes, limit {limits.max_payload_bytes}")
    try:
        body = _parse(payload)
    except RecursionError:
        # msgspec recurses once per nesting level, in any field, known or not.
        raise Reject("too_deeply_nested", "nesting deeper than the parser allows") from None
    except msgspec.ValidationError as exc:
        reason = "non_finite_value" if str(exc).startswith("Number out of range") else None
        raise Reject(reason or "invalid_reading", str(exc)) from None
    except msgspec.DecodeError as exc:
        # JSON has no NaN or infinity; devices that send them anyway get the precise reason.
        if any(word in payload for word in NON_FINITE):
            raise Reject("non_finite_value", str(exc)) from None
        raise Reject("malformed_json", str(exc)) from None
    earliest, latest = received_at - limits.max_age_us, received_at + limits.max_ahead_us
    readings = body.readings
    if readings is None:
        row = _row(body, None, identity, received_at, earliest, latest, None)
        return [(*row, _message_id(body.id, row, None))] if dedup else [row]
    if not readings:
        raise Reject("invalid_reading", "`readings` must be a non-empty list")
    if len(readings) > limits.max_readings:
        raise Reject("payload_too_large", f"{len(readings)} readings, limit {limits.max_readings}")
    # The batch's own ts stands in for readings without one; parsed and checked once, if used.
    shared = None if body.ts is None else _checked_ts(body.ts, earliest, latest, None)
    rows = [
        _row(reading, shared, identity, received_at, earliest, latest, index)
        for index, reading in enumerate(readings)
    ]
    if dedup:
        return [(*row, _message_id(body.id, row, index)) for index, row in enumerate(rows)]
    return rows


def _message_id(given: Any, row: Row, index: int | None) -> str:
    if isinstance(given, str | int) and not isinstance(given, bool):
        return f"{given}" if index is None else f"{given}#{index}"
    return f"{pgtime.to_datetime(row[0]).isoformat()}|{row[2]}"


def _row(
    reading: _Reading,
    shared_ts: int | None,
    identity: str,
    received_at: int,
    earliest: int,
    latest: int,
    index: int | None,
) -> Row:
    """One reading as a row; `shared_ts` stands in when a batch's reading has no `ts`."""
    metric, value, raw_ts = reading.metric, reading.value, reading.ts
    if metric is None or value is None or (raw_ts is None and shared_ts is None):
        raise _incomplete(reading, index)
    if raw_ts is None:
        ts = shared_ts
    elif type(raw_ts) is int:  # epoch milliseconds, the common case: checked inline
        ts = raw_ts * 1000 - pgtime.UNIX_EPOCH_US  # pgtime.from_epoch_ms, without a call
        if not earliest <= ts <= latest:
            raise _out_of_window(ts, raw_ts, earliest, latest, index)
    else:
        ts = _checked_ts(raw_ts, earliest, latest, index)
    tags = reading.tags
    if not tags:
        tags_json = None
    else:
        try:
            tags_json = str(tags, "utf-8")  # Raw is not checked by the parser
        except UnicodeDecodeError as exc:
            raise Reject("invalid_text", f"{_where(index)}tags: {exc.reason}") from None
        if tags_json[0] != "{":
            if tags_json != "null":
                raise Reject("invalid_reading", f"{_where(index)}tags must be an object")
            tags_json = None
    return (ts, identity, metric, value, tags_json, received_at)


def _incomplete(reading: _Reading, index: int | None) -> Reject:
    missing = "metric" if reading.metric is None else "value" if reading.value is None else "ts"
    return Reject("invalid_reading", f"{_where(index)}{missing} is missing")


def _where(index: int | None) -> str:
    """Where in a batch message a problem is, for the reject's detail (error path only)."""
    return "" if index is None else f"readings[{index}]."


def _checked_ts(raw: int | datetime, earliest: int, latest: int, index: int | None) -> int:
    if type(raw) is int:
        ts = pgtime.from_epoch_ms(raw)
    else:
        assert isinstance(raw, datetime)
        if raw.tzinfo is None:
            where = _where(index)
            raise Reject("invalid_reading", f"{where}ts {raw.isoformat()} has no UTC offset")
        ts = pgtime.from_datetime(raw)
    if not earliest <= ts <= latest:
        raise _out_of_window(ts, raw, earliest, latest, index)
    return ts


def _out_of_window(ts: int, raw: Any, earliest: int, latest: int, index: int | None) -> Reject:
    return Reject(
        "timestamp_out_of_window",
        f"{_where(index)}ts {_shown(ts, raw)} is outside "
        f"[{_shown(earliest, None)}, {_shown(latest, None)}]",
    )


def _shown(us: int, raw: Any) -> str:
    """A timestamp for a reject's detail (error path only); the raw value when out of range."""
    try:
        return pgtime.to_datetime(us).isoformat()
    except OverflowError:
        return repr(raw)
