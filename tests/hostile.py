"""Payloads a hostile or broken device may send, named, each with what the gateway must make of it.

One corpus serves the engine's unit tests (in-memory source and sinks) and the end-to-end tests
(real Mosquitto and PostgreSQL), so both prove the same promise: every message ends as exactly one
reject record with a precise reason, or as all of its rows, and none stops intake.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson

__all__ = [
    "ANY_REASON",
    "LANDS",
    "LOOKS_LIKE_NUL",
    "LOOKS_LIKE_NUL_TAGS",
    "Hostile",
    "corpus",
    "documented_reasons",
    "good",
    "now_ms",
]

README = Path(__file__).parents[1] / "README.md"

LANDS = "(lands)"
"""The message is legal, however odd: all of its rows land, no reject."""
ANY_REASON = "(any documented reason)"
"""Rejected, for a reason not decided yet: any reason of the README's table but internal_error."""


LOOKS_LIKE_NUL = "\\u0000"
"""A backslash and then the letters u0000: text, not a NUL, which PostgreSQL stores as sent."""
LOOKS_LIKE_NUL_TAGS = b'{"looks_like_nul":"\\\\u0000","\\\\u0000":1}'
"""Tags whose key and value are `LOOKS_LIKE_NUL`, escaped in JSON as `\\\\u0000`."""


def documented_reasons() -> frozenset[str]:
    """The reasons of the README's reject table: a reason nobody documented is a bug too."""
    text = README.read_text()
    start = text.index("| reason | meaning |")
    table = text[start : text.index("\n\n", start)]
    return frozenset(
        name
        for line in table.splitlines()[2:]
        for name in re.findall(r"`([a-z_]+)`", line.split("|")[1])
    )


def now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def good(value: float, ts: int | None = None) -> bytes:
    """A reading that must land."""
    return orjson.dumps({"ts": now_ms() if ts is None else ts, "metric": "temp", "value": value})


@dataclass(frozen=True)
class Hostile:
    name: str
    payload: bytes
    expect: str
    """A reject reason, `LANDS` or `ANY_REASON`."""
    rows: int = 1
    """Rows it gives when it lands."""


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth


def _message(name: str, ts: int, extra: bytes = b"", /, **fields: bytes) -> bytes:
    """A reading whose fields are raw JSON text, led by a `case` field naming it: unknown fields
    are ignored, and the name makes the first 256 bytes (what a reject record keeps) unique.
    `extra` is raw text added before the closing brace."""
    body = {"case": orjson.dumps(name), "ts": str(ts).encode(), "metric": b'"temp"', "value": b"1"}
    body.update(fields)
    pairs = (b'"%s":%s' % (key.encode(), value) for key, value in body.items())
    return b"{" + b",".join(pairs) + extra + b"}"


def corpus(max_payload_bytes: int = 256 * 1024) -> list[Hostile]:
    """The corpus, with timestamps of now; `max_payload_bytes` is the limit the gateway runs with.

    Expectations are the contract: where today's gateway gives another reason, the test fails
    and says which."""
    ts = now_ms()
    deep = _nested(5000)
    items = [
        *(
            Hostile(
                f"nested_5000_in_{field}",
                _message(f"deep {field}", ts, **{field: deep}),
                "too_deeply_nested",
            )
            for field in ("tags", "id", "unknown")
        ),
        # In a field with a type, the parser stops at the first bracket: the wrong type is the
        # reason, found before any depth.
        *(
            Hostile(
                f"nested_5000_in_{field}",
                _message(f"deep {field}", ts, **{field: deep}),
                "invalid_reading",
            )
            for field in ("readings", "value", "ts", "metric")
        ),
        Hostile(
            "nested_5000_in_tags_object",
            _message("deep tags object", ts, tags=b'{"a":' * 5000 + b"1" + b"}" * 5000),
            "too_deeply_nested",
        ),
        Hostile(
            "invalid_utf8_in_tags",
            _message("bad tags", ts, tags=b'{"site":"\xff\xfe"}'),
            "invalid_text",
        ),
        Hostile(
            "invalid_utf8_in_tags_key",
            _message("bad tag key", ts, tags=b'{"\xc3(":1}'),
            "invalid_text",
        ),
        Hostile(
            "invalid_utf8_in_metric", _message("bad metric", ts, metric=b'"t\xffx"'), "invalid_text"
        ),
        # Fields the gateway does not know are skipped, never stored: not checked as text.
        Hostile("invalid_utf8_in_unknown_key", _message("bad key", ts, b',"\xff":1'), LANDS),
        Hostile("invalid_utf8_in_id", _message("bad id", ts, id=b'"\xff"'), "invalid_text"),
        Hostile("invalid_utf8_in_unknown_value", _message("bad other", ts, other=b'"\xfe"'), LANDS),
        Hostile(
            "encoded_surrogate_in_metric",
            _message("cesu", ts, metric=b'"\xed\xa0\x80"'),
            "invalid_text",
        ),
        Hostile(
            "nul_escape_in_metric",
            _message("nul metric", ts, metric=b'"a\\u0000b"'),
            "invalid_text",
        ),
        Hostile(
            "nul_escape_in_tags_value",
            _message("nul tag", ts, tags=b'{"a":"x\\u0000"}'),
            "invalid_text",
        ),
        Hostile(
            "nul_escape_in_tags_key",
            _message("nul tag key", ts, tags=b'{"\\u0000":1}'),
            "invalid_text",
        ),
        Hostile(
            "nul_escape_in_nested_tags",
            _message("nul nested tag", ts, tags=b'{"a":{"b":["x","\\u0000"]}}'),
            "invalid_text",
        ),
        Hostile(
            "nul_escape_after_escaped_backslash_in_tags",
            _message("nul after backslash", ts, tags=b'{"a":"\\\\\\u0000"}'),
            "invalid_text",
        ),
        Hostile(
            "nul_escape_in_tags_of_a_batch_reading",
            _message(
                "nul batch tag", ts, readings=b'[{"metric":"m","value":1,"tags":{"a":"\\u0000"}}]'
            ),
            "invalid_text",
        ),
        # An escaped backslash and then the letters u0000: no NUL, and PostgreSQL stores it.
        Hostile(
            "escaped_backslash_then_u0000_in_tags",
            _message("looks like nul", ts, tags=LOOKS_LIKE_NUL_TAGS),
            LANDS,
        ),
        Hostile(
            "escaped_backslash_then_u0000_in_metric",
            _message("looks like nul metric", ts, metric=b'"\\\\u0000"'),
            LANDS,
        ),
        Hostile("nul_escape_in_id", _message("nul id", ts, id=b'"\\u0000"'), "invalid_text"),
        Hostile("raw_nul_in_metric", _message("raw nul", ts, metric=b'"a\x00b"'), "invalid_text"),
        Hostile(
            "lone_high_surrogate_in_metric",
            _message("hi metric", ts, metric=b'"\\ud800"'),
            "invalid_text",
        ),
        Hostile(
            "lone_low_surrogate_in_metric",
            _message("lo metric", ts, metric=b'"\\udfff"'),
            "invalid_text",
        ),
        Hostile(
            "lone_surrogate_in_tags_value",
            _message("surrogate tag", ts, tags=b'{"a":"\\ud800"}'),
            "invalid_text",
        ),
        Hostile(
            "lone_surrogate_in_tags_key",
            _message("surrogate key", ts, tags=b'{"\\udfff":1}'),
            "invalid_text",
        ),
        Hostile(
            "lone_surrogate_in_id", _message("surrogate id", ts, id=b'"\\ud800"'), "invalid_text"
        ),
        Hostile(
            "lone_surrogate_in_unknown",
            _message("surrogate other", ts, other=b'"\\udfff"'),
            "invalid_text",
        ),
        Hostile("value_1e400", _message("1e400", ts, value=b"1e400"), "non_finite_value"),
        Hostile("value_minus_1e400", _message("-1e400", ts, value=b"-1e400"), "non_finite_value"),
        Hostile("value_nan", _message("nan", ts, value=b"NaN"), "non_finite_value"),
        Hostile("value_infinity", _message("inf", ts, value=b"Infinity"), "non_finite_value"),
        Hostile(
            "value_minus_infinity", _message("-inf", ts, value=b"-Infinity"), "non_finite_value"
        ),
        Hostile("value_400_digits", _message("digits", ts, value=b"9" * 400), "non_finite_value"),
        Hostile("value_2_pow_64", _message("2**64", ts, value=str(2**64).encode()), LANDS),
        Hostile("value_minus_zero", _message("-0", ts, value=b"-0"), LANDS),
        Hostile("ts_2_pow_64", _message("ts 2**64", 2**64), "timestamp_out_of_window"),
        Hostile("ts_negative", _message("ts -1", -1), "timestamp_out_of_window"),
        Hostile("duplicate_keys", _message("dup", ts, b',"metric":"again","value":2'), LANDS),
        Hostile("tags_10000_keys", _message("many tags", ts, tags=_object(10_000)), ANY_REASON),
        Hostile("unknown_10000_keys", _message("many keys", ts, more=_object(10_000)), LANDS),
        Hostile("readings_100000", _readings(ts, 100_000), "payload_too_large"),
        Hostile("one_byte_over_the_limit", _padded(ts, max_payload_bytes + 1), "payload_too_large"),
        Hostile("utf8_bom", b"\xef\xbb\xbf" + good(1.0, ts), "malformed_json"),
        Hostile("empty", b"", "malformed_json"),
        Hostile("whitespace", b" \t\r\n ", "malformed_json"),
        Hostile("not_json", b"\x00\xff{garbage", ANY_REASON),
        *(
            Hostile(f"wrong_type_{name}", _message(f"type {name}", ts, **fields), "invalid_reading")
            for name, fields in WRONG_TYPES.items()
        ),
        *(
            Hostile(f"top_level_{name}", text, "invalid_reading")
            for name, text in TOP_LEVEL.items()
        ),
    ]
    names = [item.name for item in items]
    assert len(set(names)) == len(names), "corpus names must be unique"
    prefixes = [item.payload[:256] for item in items]
    assert len(set(prefixes)) == len(prefixes), (
        "corpus payloads must differ in their first 256 bytes"
    )
    return items


WRONG_TYPES: dict[str, dict[str, bytes]] = {
    "metric_number": {"metric": b"5"},
    "metric_list": {"metric": b'["t"]'},
    "metric_empty": {"metric": b'""'},
    "metric_too_long": {"metric": b'"' + b"m" * 201 + b'"'},
    "value_string": {"value": b'"1"'},
    "value_bool": {"value": b"true"},
    "value_object": {"value": b"{}"},
    "value_null": {"value": b"null"},
    "ts_text": {"ts": b'"yesterday"'},
    "ts_float": {"ts": b"1.5"},
    "ts_list": {"ts": b"[]"},
    "ts_no_offset": {"ts": b'"2026-11-25T12:00:00"'},
    "tags_list": {"tags": b"[1]"},
    "tags_string": {"tags": b'"x"'},
    "tags_number": {"tags": b"5"},
    "readings_object": {"readings": b"{}"},
    "readings_string": {"readings": b'"x"'},
    "readings_empty": {"readings": b"[]"},
    "readings_of_numbers": {"readings": b"[5]"},
}
TOP_LEVEL = {
    "array": b"[1,2]",
    "string": b'"x"',
    "number": b"5",
    "null": b"null",
    "true": b"true",
    "object": b"{}",
}


def _object(keys: int) -> bytes:
    return b"{" + b",".join(b'"k%d":%d' % (i, i) for i in range(keys)) + b"}"


def _readings(ts: int, count: int) -> bytes:
    reading = b'{"metric":"m","value":1}'
    return b'{"case":"readings","ts":%d,"readings":[%s]}' % (ts, b",".join([reading] * count))


def _padded(ts: int, size: int) -> bytes:
    """A good reading padded with an unknown field to exactly `size` bytes."""
    bare = _message("padded", ts, pad=b'""')
    return bare[:-3] + b'"' + b"x" * (size - len(bare)) + b'"}'
