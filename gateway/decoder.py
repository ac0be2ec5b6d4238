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

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from operator import itemgetter
from typing import Annotated, Any

import msgspec

from gateway import pgtime
from gateway.config import LimitsConfig
from gateway.contracts import Row
from gateway.errors import GatewayError

__all__ = [
    "COLUMNS",
    "DEDUP_COLUMNS",
    "DecodeLimits",
    "Reject",
    "decode",
    "has_nul_escape",
    "undecodable",
]

COLUMNS = ("ts", "identity", "metric", "value", "tags", "received_at")
DEDUP_COLUMNS = (*COLUMNS, "message_id")

MAX_METRIC_LENGTH = 200
_TAG_BYTES = 5  # the shortest member of a tags object, `"":0,`
SMALL_PAYLOAD = 256
_TAGS_JSON = itemgetter(4)
MAX_ID_LENGTH = 200  # a dedup id must fit a btree index entry with room to spare
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
    max_depth: int = _CONFIGURED.max_depth
    max_tags: int = _CONFIGURED.max_tags
    max_readings: int = 10_000
    max_age: timedelta = timedelta(seconds=_CONFIGURED.max_age_seconds)
    max_ahead: timedelta = timedelta(seconds=_CONFIGURED.max_ahead_seconds)
    max_age_us: int = field(init=False, repr=False)  # the window in rows' own unit, once
    tag_chars: int = field(init=False, repr=False)  # tags shorter than this are within max_tags
    tags_nestable: int = field(init=False, repr=False)  # shorter tags cannot nest too deep
    max_ahead_us: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_age_us", pgtime.duration(self.max_age))
        object.__setattr__(self, "tag_chars", _TAG_BYTES * self.max_tags)
        object.__setattr__(self, "tags_nestable", 2 * self.max_depth - 2)
        object.__setattr__(self, "max_ahead_us", pgtime.duration(self.max_ahead))

    @classmethod
    def from_config(cls, config: LimitsConfig) -> DecodeLimits:
        return cls(
            max_payload_bytes=config.max_payload_bytes,
            max_depth=config.max_depth,
            max_tags=config.max_tags,
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
_TAGS = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode


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
    # Nesting deeper than `max_depth` is refused in every field, measured without recursion
    # (`_check_depth`), but only where it could be: counting brackets is cheap, measuring is
    # not. A payload with an array (91 is `[`: one memchr) is measured when its brackets are
    # more than its readings account for (below); a single reading over SMALL_PAYLOAD bytes
    # when it has more braces than the limit; a smaller one cannot nest deeper than half its
    # length, far within the parser's own bound, and only its `tags` are measured.
    arrays = 91 in payload
    if not arrays and len(payload) > SMALL_PAYLOAD and payload.count(b"{") > limits.max_depth:
        _check_depth(payload, limits.max_depth)
    if 92 in payload and has_nul_escape(payload):  # 92 is a backslash: one memchr
        raise Reject("invalid_text", "text contains NUL (\\u0000), which PostgreSQL cannot store")
    try:
        body = _parse(payload)
    except RecursionError:  # what was not measured first (above) still ends in a clean reject
        raise Reject("too_deeply_nested", "nesting deeper than the parser allows") from None
    except msgspec.ValidationError as exc:
        reason = "non_finite_value" if str(exc).startswith("Number out of range") else None
        raise Reject(reason or "invalid_reading", str(exc)) from None
    except msgspec.DecodeError as exc:
        raise undecodable(payload, exc) from None
    earliest, latest = received_at - limits.max_age_us, received_at + limits.max_ahead_us
    readings = body.readings
    if readings is None:
        if arrays:
            if payload.count(b"{") + payload.count(b"[") > limits.max_depth:
                _check_depth(payload, limits.max_depth)
        elif len(payload) <= SMALL_PAYLOAD and len(body.tags) > limits.tags_nestable:
            _check_depth(bytes(body.tags), limits.max_depth - 1)  # one level is the message
        row = _row(body, None, identity, received_at, earliest, latest, None, limits.tag_chars)
        return [(*row, _message_id(body.id, row, None))] if dedup else [row]
    if not readings:
        raise Reject("invalid_reading", "`readings` must be a non-empty list")
    if len(readings) > limits.max_readings:
        raise Reject("payload_too_large", f"{len(readings)} readings, limit {limits.max_readings}")
    # The batch's own ts stands in for readings without one; parsed and checked once, if used.
    shared = None if body.ts is None else _checked_ts(body.ts, earliest, latest, None)
    rows = [
        _row(reading, shared, identity, received_at, earliest, latest, index, limits.tag_chars)
        for index, reading in enumerate(readings)
    ]
    # Any path nests at most the message, `readings`, one reading and its tags object (4),
    # plus every other bracket; when those are few enough, nothing can be too deep.
    tagged = len(rows) - list(map(_TAGS_JSON, rows)).count(None)
    others = payload.count(b"{") + payload.count(b"[") - 2 - len(rows) - tagged
    if others > limits.max_depth - 4:
        _check_depth(payload, limits.max_depth)
    if dedup:
        return [(*row, _message_id(body.id, row, index)) for index, row in enumerate(rows)]
    return rows


def _message_id(given: Any, row: Row, index: int | None) -> str:
    if isinstance(given, str | int) and not isinstance(given, bool):
        if isinstance(given, int) and given.bit_length() > 128:
            raise Reject("invalid_reading", "id is an integer beyond 128 bits")
        text = f"{given}"
        if len(text) > MAX_ID_LENGTH:
            raise Reject("invalid_reading", f"id is longer than {MAX_ID_LENGTH} characters")
        return text if index is None else f"{text}#{index}"
    return f"{pgtime.to_datetime(row[0]).isoformat()}|{row[2]}"


def undecodable(payload: bytes, exc: msgspec.DecodeError) -> Reject:
    """The precise reason a payload is not JSON we can store (error path only)."""
    text = str(exc)
    # JSON has no NaN or infinity; devices that send them anyway get the precise reason.
    if any(word in payload for word in NON_FINITE):
        return Reject("non_finite_value", text)
    if "UTF-8" in text or "surrogate" in text or b"\x00" in payload or _lone_surrogate(payload):
        return Reject("invalid_text", text)
    return Reject("malformed_json", text)


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_PARENS = bytes.maketrans(b"{[}]", b"(())")
_NOT_BRACKETS = bytes(set(range(256)) - set(b"{}[]"))
_NOT_BRACKETS_OR_QUOTES = bytes(set(range(256)) - set(b'{}[]"'))
_RUNS = re.compile(rb"\(+|\)+")
_FEW_RUNS = 16_384  # about 1.5 ms to follow one by one
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
_SURROGATE = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])")


def _check_depth(payload: bytes, limit: int) -> None:
    """Reject nesting deeper than `limit`, measured without recursion, in C passes but for a
    few runs.

    Only brackets outside strings count. A batch's readings are siblings at one shallow depth,
    so a few passes that each drop the innermost pairs (one level of every branch) empty it;
    a deep attack is a few runs of openers and closers, however deep, followed run by run.
    Brackets that do not pair up are malformed JSON, which the parser then reports."""
    brackets = _structure(payload)
    pared = 0
    while brackets and pared < limit:
        runs = brackets.count(b")(")
        shorter = brackets.replace(b"()", b"")
        if len(shorter) == len(brackets):
            break  # nothing pairs up: malformed, unless the openers alone are too deep
        # Passes pay while they shed a quarter or more, or while runs are too many to follow.
        paying = len(shorter) * 4 <= len(brackets) * 3
        brackets, pared = shorter, pared + 1
        if runs <= _FEW_RUNS and not paying:
            break
    depth, deepest = 0, limit - pared
    for run in _RUNS.findall(brackets):
        depth += len(run) if run[0] == 40 else -len(run)  # 40 is `(`
        if depth > deepest:
            raise Reject("too_deeply_nested", f"nested deeper than {limit} levels")
        if depth < 0:
            return


def _structure(payload: bytes) -> bytes:
    """The brackets outside strings, as `(` and `)`.

    Without escapes, a string's quotes are adjacent once all but brackets and quotes are
    dropped, unless it holds brackets: so one replace removes nearly every string, in C, and a
    split removes the rest. With escapes (rare), a regex finds the strings."""
    if 92 in payload:  # a backslash: quotes may be escaped
        return _STRING.sub(b"", payload).translate(_PARENS, _NOT_BRACKETS)
    marks = payload.translate(_PARENS, _NOT_BRACKETS_OR_QUOTES).replace(b'""', b"")
    return marks if 34 not in marks else b"".join(marks.split(b'"')[::2])  # 34 is `"`


def has_nul_escape(payload: bytes) -> bool:
    """A `\\u0000` escape that is not itself an escaped backslash followed by `u0000`."""
    return _NUL_ESCAPE.search(payload) is not None


def _lone_surrogate(payload: bytes) -> bool:
    """A high surrogate escape not followed by a low one (the parser names stray low ones)."""
    return _SURROGATE.search(payload) is not None


def _row(
    reading: _Reading,
    shared_ts: int | None,
    identity: str,
    received_at: int,
    earliest: int,
    latest: int,
    index: int | None,
    tag_chars: int,
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
        elif len(tags_json) > tag_chars:  # shorter objects cannot hold more keys
            _check_tag_count(tags_json, tag_chars // _TAG_BYTES, index)
    return (ts, identity, metric, value, tags_json, received_at)


def _check_tag_count(tags_json: str, limit: int, index: int | None) -> None:
    """At most `limit` keys, and `limit` KiB in all: counting keys means parsing the object,
    so an object too large to hold so few reasonable tags is refused by its length alone."""
    if len(tags_json) > limit * 1024:
        where = _where(index)
        raise Reject(
            "invalid_reading", f"{where}tags of {len(tags_json)} characters, limit {limit} KiB"
        )
    count = len(_TAGS(tags_json))
    if count > limit:
        raise Reject("invalid_reading", f"{_where(index)}tags has {count} keys, limit {limit}")


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
