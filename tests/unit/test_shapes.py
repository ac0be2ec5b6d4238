"""Declared shapes: a payload gives one row of the declared types, or a reject with a reason;
JSON and MessagePack alike; a column that can never be filled stops the start."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway import pgtime
from gateway.config import ColumnConfig, RouteConfig
from gateway.contracts import Decode, Row
from gateway.decoder import DecodeLimits, Reject, decode
from gateway.shapes import msgpack_as_json, shape_decoder
from gateway.validation import ConfigError

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
NOW_US = pgtime.from_datetime(NOW)
MS = int(NOW.timestamp() * 1000)
LIMITS = DecodeLimits()
FORMATS = ("json", "msgpack")
# Every reason a shaped route may give: telemetry's, and the three of declared shapes.
REASONS = frozenset(
    {
        "payload_too_large",
        "malformed_json",
        "malformed_msgpack",
        "too_deeply_nested",
        "invalid_text",
        "non_finite_value",
        "timestamp_out_of_window",
        "missing_field",
        "wrong_type",
    }
)
TELEMETRY_REASONS = frozenset(
    {
        "payload_too_large",
        "malformed_json",
        "malformed_msgpack",
        "too_deeply_nested",
        "invalid_text",
        "non_finite_value",
        "timestamp_out_of_window",
        "invalid_reading",
    }
)


def column(name: str, path: str, type_: str, **more: Any) -> ColumnConfig:
    return ColumnConfig.model_validate({"name": name, "path": path, "type": type_, **more})


def decoder(*columns: ColumnConfig, fmt: str = "json", limits: DecodeLimits = LIMITS) -> Decode:
    """A table route's decoder; rows end with the sender's identity where the columns name no
    `$identity` (every table route must), which `one` takes off again."""
    named = any(c.path == "$identity" for c in columns)
    route = RouteConfig.model_validate(
        {
            "stream": "s",
            "table": "app.t",
            "kind": "table",
            "format": fmt,
            "columns": [*columns, *([] if named else [column("sender", "$identity", "text")])],
        }
    )
    built = shape_decoder(route, limits)
    if named:
        return built
    return lambda payload, identity, stream, at: [
        row[:-1] for row in built(payload, identity, stream, at)
    ]


def encode(value: Any, fmt: str) -> bytes:
    return msgspec.json.encode(value) if fmt == "json" else msgspec.msgpack.encode(value)


def one(decode_: Decode, payload: bytes) -> Row:
    (row,) = decode_(payload, "sensor-1", "s", NOW_US)
    return row


def refused(decode_: Decode, payload: bytes) -> Reject:
    with pytest.raises(Reject) as caught:
        decode_(payload, "sensor-1", "s", NOW_US)
    assert caught.value.reason in REASONS
    return caught.value


WIDE = (
    column("ts", "/ts", "timestamptz"),
    column("device", "$identity", "text"),
    column("stream", "$stream", "text"),
    column("received", "$received_at", "timestamptz"),
    column("temp", "/env/temp", "float8"),
    column("count", "/count", "int8"),
    column("level", "/level", "int4"),
    column("on", "/on", "bool"),
    column("name", "/name", "text"),
    column("extra", "/extra", "jsonb"),
    column("id", "/id", "uuid"),
)
WIDE_MESSAGE = {
    "ts": "2026-11-25T11:59:00Z",
    "env": {"temp": 21},
    "count": 2**40,
    "level": -3,
    "on": True,
    "name": "pump",
    "extra": {"b": [1, "x", None], "a": 1.5},
    "id": "12345678-1234-5678-1234-567812345678",
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_type_lands_in_column_order(fmt: str) -> None:
    row = one(decoder(*WIDE, fmt=fmt), encode(WIDE_MESSAGE, fmt))
    assert row == (
        NOW_US - 60_000_000,
        "sensor-1",
        "s",
        NOW_US,
        21.0,
        2**40,
        -3,
        True,
        "pump",
        '{"b":[1,"x",null],"a":1.5}',
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
    )
    assert type(row[4]) is float


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_payload_cannot_name_its_sender_or_stream(fmt: str) -> None:
    """The sender and stream come from the authenticated claim, never from fields a device
    writes; a payload naming another device (as the column or under `$identity`) changes nothing."""
    spoof = {
        **WIDE_MESSAGE,
        "device": "sensor-2",
        "stream": "other",
        "$identity": "sensor-2",
        "received": MS - 86_400_000,
    }
    assert one(decoder(*WIDE, fmt=fmt), encode(spoof, fmt))[1:4] == ("sensor-1", "s", NOW_US)


@pytest.mark.parametrize("fmt", FORMATS)
def test_timestamps_epoch_ms_rfc3339_and_window(fmt: str) -> None:
    stamps = decoder(column("ts", "/ts", "timestamptz"), fmt=fmt)
    assert one(stamps, encode({"ts": MS}, fmt)) == (NOW_US,)
    assert one(stamps, encode({"ts": "2026-11-25T13:00:00+01:00"}, fmt)) == (NOW_US,)
    for late in (MS - 8 * 86_400_000, MS + 3_600_000, 2**64 - 1, -(2**63)):
        assert refused(stamps, encode({"ts": late}, fmt)).reason == "timestamp_out_of_window"
    for wrong in ("yesterday", "2026-11-25T12:00:00", 1.5, True, [MS], {"ms": MS}):
        reject = refused(stamps, encode({"ts": wrong}, fmt))
        assert (reject.reason, reject.detail.split(":")[0]) == ("wrong_type", "/ts")


def test_msgpack_timestamp_extension_is_a_timestamp() -> None:
    payload = msgspec.msgpack.encode({"ts": NOW, "x": NOW})
    assert one(decoder(column("ts", "/ts", "timestamptz"), fmt="msgpack"), payload) == (NOW_US,)
    as_text = decoder(column("x", "/x", "text"), fmt="msgpack")
    assert refused(as_text, payload).detail == "/x: expected text, got timestamp"
    as_json = decoder(column("x", "", "jsonb"), fmt="msgpack")
    assert one(as_json, payload) == ('{"ts":"2026-11-25T12:00:00Z","x":"2026-11-25T12:00:00Z"}',)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    ("type_", "value", "reason", "detail"),
    [
        ("float8", "1", "wrong_type", "/v: expected float8, got text"),
        ("float8", True, "wrong_type", "/v: expected float8, got boolean"),
        ("float8", [1.0], "wrong_type", "/v: expected float8, got array"),
        ("int8", 1.0, "wrong_type", "/v: expected int8, got number"),
        ("int8", 2**63, "wrong_type", f"/v: expected int8, {-(2**63)}..{2**63 - 1}, got {2**63}"),
        ("int8", False, "wrong_type", "/v: expected int8, got boolean"),
        ("int4", 2**31, "wrong_type", f"/v: expected int4, {-(2**31)}..{2**31 - 1}, got {2**31}"),
        ("int4", -(2**31) - 1, "wrong_type", None),
        ("int4", "7", "wrong_type", "/v: expected int4, got text"),
        ("bool", 1, "wrong_type", "/v: expected bool, got integer"),
        ("bool", "true", "wrong_type", "/v: expected bool, got text"),
        ("text", 5, "wrong_type", "/v: expected text, got integer"),
        ("text", {"a": 1}, "wrong_type", "/v: expected text, got object"),
        ("text", "a\x00b", "invalid_text", None),
        ("jsonb", {"k": ["a\x00"]}, "invalid_text", None),
        ("jsonb", {"k\x00": 1}, "invalid_text", None),
        ("uuid", "not-a-uuid", "wrong_type", None),
        ("uuid", "{12345678-1234-5678-1234-567812345678}", "wrong_type", None),
        ("uuid", 5, "wrong_type", "/v: expected uuid, got integer"),
    ],
)
def test_wrong_values_say_where_and_what(
    fmt: str, type_: str, value: Any, reason: str, detail: str | None
) -> None:
    reject = refused(decoder(column("v", "/v", type_), fmt=fmt), encode({"v": value}, fmt))
    assert reject.reason == reason
    assert reject.detail.startswith("/v: ")
    if detail is not None:
        assert reject.detail == detail


@pytest.mark.parametrize("fmt", FORMATS)
def test_integer_bounds_land(fmt: str) -> None:
    numbers = decoder(column("a", "/a", "int8"), column("b", "/b", "int4"), fmt=fmt)
    for a, b in ((2**63 - 1, 2**31 - 1), (-(2**63), -(2**31)), (0, 0)):
        assert one(numbers, encode({"a": a, "b": b}, fmt)) == (a, b)


def test_float8_beyond_a_double_is_non_finite() -> None:
    floats = decoder(column("v", "/v", "float8"))
    assert refused(floats, b'{"v":1e400}').reason == "non_finite_value"
    assert refused(floats, b'{"v":NaN}').reason == "non_finite_value"
    assert refused(floats, b'{"v":' + b"9" * 400 + b"}").reason == "non_finite_value"
    assert refused(floats, b'{"v":' + b"9" * 5000 + b"}").reason == "non_finite_value"
    packed = decoder(column("v", "/v", "float8"), fmt="msgpack")
    for value in (math.nan, math.inf, -math.inf):
        assert refused(packed, msgspec.msgpack.encode({"v": value})).reason == "non_finite_value"
    nan_in_jsonb = msgspec.msgpack.encode({"v": {"x": math.nan}})
    assert refused(decoder(column("v", "/v", "jsonb"), fmt="msgpack"), nan_in_jsonb).reason == (
        "non_finite_value"
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_pointers_escape_and_index(fmt: str) -> None:
    pointed = decoder(
        column("slash", "/a~1b", "int8"),
        column("tilde", "/m~0n", "int8"),
        column("both", "/~01~10", "int8"),
        column("item", "/list/1/v", "int8"),
        column("digits", "/obj/01", "int8"),
        column("empty_key", "/", "int8"),
        column("whole", "", "jsonb"),
        fmt=fmt,
    )
    message = {
        "a/b": 1,
        "m~n": 2,
        "~1/0": 3,
        "list": [{"v": 4}, {"v": 5}],
        "obj": {"01": 6},
        "": 7,
    }
    row = one(pointed, encode(message, fmt))
    assert row[:6] == (1, 2, 3, 5, 6, 7)
    assert orjson.loads(row[6]) == message


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "message",
    [
        {},
        {"list": []},
        {"list": [{"v": 1}]},
        {"list": {"1": {"v": 1}}},  # an object's key "1" is named by /list/1 too: found below
        {"list": "text"},
        {"list": [{"v": 1}, {"v": None}]},
        {"list": [1, 2]},
    ],
)
def test_missing_is_required_or_default(fmt: str, message: dict[str, Any]) -> None:
    path = "/list/1/v"
    required = decoder(column("v", path, "int8"), fmt=fmt)
    optional = decoder(column("v", path, "int8", required=False, default=-1), fmt=fmt)
    nullable = decoder(column("v", path, "int8", required=False), fmt=fmt)
    payload = encode(message, fmt)
    if message == {"list": {"1": {"v": 1}}}:
        assert one(required, payload) == (1,)
        return
    reject = refused(required, payload)
    assert (reject.reason, reject.detail) == ("missing_field", "/list/1/v: required int8")
    assert one(optional, payload) == (-1,)
    assert one(nullable, payload) == (None,)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("top", [[1, 2], "x", 5, None, True])
def test_a_top_level_other_than_an_object_misses_the_field(fmt: str, top: Any) -> None:
    reject = refused(decoder(column("v", "/v", "float8"), fmt=fmt), encode(top, fmt))
    assert (reject.reason, reject.detail) == ("missing_field", "/v: required float8")


def test_whole_payload_pointer() -> None:
    whole = decoder(column("doc", "", "jsonb"))
    assert one(whole, b"[1, 2]") == ("[1,2]",)
    assert one(whole, b'"x"') == ('"x"',)
    assert refused(whole, b"null").detail == "(whole payload): required jsonb"
    assert one(decoder(column("n", "", "int8")), b"5") == (5,)
    assert refused(decoder(column("n", "", "int8")), b"[5]").reason == "wrong_type"


def test_defaults_are_converted_once() -> None:
    defaults = decoder(
        column("a", "/a", "float8", required=False, default=1),
        column("b", "/b", "timestamptz", required=False, default="2000-01-01T00:00:00Z"),
        column("c", "/c", "timestamptz", required=False, default=0),
        column("d", "/d", "uuid", required=False, default="12345678123456781234567812345678"),
        column("e", "/e", "jsonb", required=False, default="x"),
        column("f", "/f", "bool", required=False, default=False),
        column("g", "/g", "text", required=False, default="none"),
        column("h", "/h", "int4", required=False, default=7),
    )
    assert one(defaults, b"{}") == (
        1.0,
        0,
        -pgtime.UNIX_EPOCH_US,
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        '"x"',
        False,
        "none",
        7,
    )


@pytest.mark.parametrize(
    ("type_", "default"),
    [
        ("int4", 2**31),
        ("int8", 1.5),
        ("int8", True),
        ("float8", "1"),
        ("bool", 1),
        ("uuid", "nope"),
        ("timestamptz", "today"),
        ("timestamptz", "2026-11-25T12:00:00"),
        ("text", 3),
        ("text", "a\x00"),
        ("text", "\ud800"),
        ("float8", math.inf),
    ],
)
def test_a_default_that_does_not_convert_stops_the_start(type_: str, default: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        decoder(
            column("ok", "/ok", "text"), column("v", "/v", type_, required=False, default=default)
        )
    ((where, _),) = caught.value.problems
    assert where == "columns[1].default"


@pytest.mark.parametrize("path", ["/a~", "/a~2", "/~x/b", "/ok/~"])
def test_a_pointer_that_is_not_one_stops_the_start(path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        decoder(column("v", path, "text"))
    assert caught.value.problems[0][0] == "columns[0].path"


def test_message_values_need_their_types() -> None:
    with pytest.raises(ConfigError) as caught:
        decoder(column("t", "$received_at", "int8"))
    assert caught.value.problems[0][0] == "columns[0].type"
    with pytest.raises(ConfigError):
        decoder(column("t", "$identity", "float8"))
    by_uuid = decoder(column("device", "$identity", "uuid"))
    device = "12345678-1234-5678-1234-567812345678"
    assert by_uuid(b"{}", device, "s", NOW_US) == [(uuid.UUID(device),)]
    with pytest.raises(Reject) as caught_reject:
        by_uuid(b"{}", "sensor-1", "s", NOW_US)
    assert caught_reject.value.reason == "wrong_type"


def test_telemetry_routes_take_the_telemetry_decoder() -> None:
    with pytest.raises(ConfigError):
        shape_decoder(RouteConfig(stream="s", table="app.t"), LIMITS)


@pytest.mark.parametrize("fmt", FORMATS)
def test_limits_are_telemetry_limits(fmt: str) -> None:
    small = DecodeLimits(max_payload_bytes=64, max_depth=4)
    shaped = decoder(column("v", "/v", "jsonb", required=False), fmt=fmt, limits=small)
    big = encode({"v": "x" * 64}, fmt)
    assert refused(shaped, big).reason == "payload_too_large"
    assert one(shaped, encode({"v": [[[1]]]}, fmt)) == ("[[[1]]]",)
    assert refused(shaped, encode({"v": [[[[1]]]]}, fmt)).reason == "too_deeply_nested"
    # Nesting is refused anywhere, as telemetry does, not only where a column looks.
    assert refused(shaped, encode({"w": [[[[1]]]]}, fmt)).reason == "too_deeply_nested"
    # Beyond what the parser itself can follow.
    wide = decoder(column("v", "/v", "jsonb", required=False), fmt=fmt)
    if fmt == "json":
        deep = b"[" * 5000 + b"1" + b"]" * 5000
        inside = b'{"v":' + deep + b"}"
    else:
        deep = b"\x91" * 5000 + b"\x01"
        inside = b"\x81\xa1v" + deep
    assert refused(wide, deep).reason == "too_deeply_nested"
    assert refused(wide, inside).reason == "too_deeply_nested"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "malformed_json"),
        (b"", "malformed_json"),
        (b'{"v":"\xff"}', "invalid_text"),
        (b'{"v":"\xed\xa0\x80"}', "invalid_text"),
        (b'{"v":"\\ud800"}', "invalid_text"),
        (b'{"v":"\\udfff"}', "invalid_text"),
        (b'{"v":"a\x00"}', "invalid_text"),
        (b'{"v":"\\u0000"}', "invalid_text"),
        (b'{"v":NaN}', "non_finite_value"),
        (b"\xef\xbb\xbf{}", "malformed_json"),
    ],
)
def test_json_reasons(payload: bytes, reason: str) -> None:
    assert refused(decoder(column("v", "/v", "text", required=False)), payload).reason == reason


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "malformed_msgpack"),
        (b"\xc1", "malformed_msgpack"),
        (b"\x81\xa1v\x01\x02", "malformed_msgpack"),  # trailing bytes
        (b"\x81\xa1v\xa2\xff\xfe", "invalid_text"),
        (b"\x81\xa1v\xa3\xed\xa0\x80", "invalid_text"),  # an encoded surrogate
        (b"\x81\xa1v\xa2a\x00", "invalid_text"),
        (b"\x81\xa1v\xd4\xff\x00", "malformed_msgpack"),  # a timestamp of the wrong length
        (b"\x81\x80\x01", "malformed_msgpack"),  # a map as a key
    ],
)
def test_msgpack_reasons(payload: bytes, reason: str) -> None:
    text = decoder(column("v", "/v", "text", required=False), fmt="msgpack")
    assert refused(text, payload).reason == reason


def test_msgpack_values_json_cannot_hold() -> None:
    ext = msgspec.msgpack.Ext(5, b"x")
    for value in (b"bin", ext, {1: "a"}, [b"x"]):
        for type_ in ("jsonb", "text"):
            payload = msgspec.msgpack.encode({"v": value})
            reject = refused(decoder(column("v", "/v", type_), fmt="msgpack"), payload)
            assert reject.reason == "wrong_type"
            assert reject.detail.startswith("/v: ")
    keyed = msgspec.msgpack.encode({1: "a", "w": 2})
    reject = refused(decoder(column("v", "/v", "text", required=False), fmt="msgpack"), keyed)
    assert (reject.reason, reject.detail) == ("wrong_type", "/v: map keys must be text")
    found = decoder(column("w", "/w", "int8"), fmt="msgpack")
    assert one(found, keyed) == (2,)  # a key the pointer names is found; the others are skipped


def test_msgpack_telemetry_is_telemetry_json() -> None:
    reading = {"ts": MS, "metric": "temp", "value": 21, "tags": {"b": 1, "a": "x"}}
    packed = msgpack_as_json(msgspec.msgpack.encode(reading), LIMITS)
    assert decode(packed, "sensor-1", NOW_US, LIMITS) == decode(
        orjson.dumps(reading), "sensor-1", NOW_US, LIMITS
    )
    stamped = msgpack_as_json(msgspec.msgpack.encode({**reading, "ts": NOW}), LIMITS)
    assert decode(stamped, "sensor-1", NOW_US, LIMITS)[0][0] == NOW_US


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ({"ts": MS, "metric": "t", "value": math.nan}, "non_finite_value"),
        ({"ts": MS, "metric": "t", "value": 1, "tags": {"a": b"x"}}, "invalid_reading"),
        ({"ts": MS, "metric": "t", "value": 1, "tags": {1: "x"}}, "invalid_reading"),
        (
            {"ts": MS, "metric": "t", "value": 1, "x": msgspec.msgpack.Ext(1, b"")},
            "invalid_reading",
        ),
        ({"ts": MS, "metric": "t\x00", "value": 1}, "invalid_text"),
    ],
)
def test_msgpack_telemetry_refusals(message: dict[Any, Any], reason: str) -> None:
    with pytest.raises(Reject) as caught:
        msgpack_as_json(msgspec.msgpack.encode(message), LIMITS)
    assert caught.value.reason == reason


def test_msgpack_telemetry_limits() -> None:
    small = DecodeLimits(max_payload_bytes=32, max_depth=3)
    for payload, reason in (
        (msgspec.msgpack.encode({"pad": "x" * 40}), "payload_too_large"),
        (msgspec.msgpack.encode({"tags": {"a": [[1]]}}), "too_deeply_nested"),
        (b"\xc1", "malformed_msgpack"),
        (b"\xa2\xff\xfe", "invalid_text"),
    ):
        with pytest.raises(Reject) as caught:
            msgpack_as_json(payload, small)
        assert caught.value.reason == reason


# Property tests: whatever arrives, one row of the declared types or a documented reject.

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.sampled_from(
        [
            MS,
            "2026-11-25T11:00:00Z",
            "2026-11-25T11:00:00",
            "12345678-1234-5678-1234-567812345678",
            "\x00",
        ]
    )
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=30,
)
MSGPACK_VALUES = st.recursive(
    SCALARS.filter(lambda value: type(value) is not int or -(2**63) <= value < 2**64)
    | st.binary(max_size=8)
    | st.builds(msgspec.msgpack.Ext, st.integers(0, 127), st.binary(max_size=4))
    | st.datetimes(timezones=st.just(UTC)),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=5) | st.integers(-3, 3), inner, max_size=4)
    ),
    max_leaves=30,
)
KEYS = st.sampled_from(["ts", "v", "a", "0", ""])
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TYPES: dict[str, tuple[type, ...]] = {
    "timestamptz": (int,),
    "float8": (float,),
    "int8": (int,),
    "int4": (int,),
    "bool": (bool,),
    "text": (str,),
    "jsonb": (str,),
    "uuid": (uuid.UUID,),
}
SHAPED = (
    column("ts", "/ts", "timestamptz", required=False),
    column("v", "/v", "float8", required=False),
    column("i", "/a/0", "int8", required=False),
    column("j", "/a/1", "int4", required=False),
    column("b", "/0", "bool", required=False),
    column("t", "/v", "text", required=False),
    column("u", "/", "uuid", required=False),
    column("doc", "", "jsonb"),
    column("device", "$identity", "text"),
)
SHAPED_DECODERS = {fmt: decoder(*SHAPED, fmt=fmt) for fmt in FORMATS}
SMALL = DecodeLimits(max_depth=3, max_payload_bytes=512)
SMALL_DECODERS = {fmt: decoder(*SHAPED, fmt=fmt, limits=SMALL) for fmt in FORMATS}


def judged(fmt: str, payload: bytes) -> None:
    for decoders in (SHAPED_DECODERS, SMALL_DECODERS):
        try:
            (row,) = decoders[fmt](payload, "sensor-1", "s", NOW_US)
        except Reject as exc:
            assert exc.reason in REASONS, exc
            continue
        assert len(row) == len(SHAPED)
        for value, declared in zip(row, SHAPED, strict=True):
            assert value is None or type(value) in TYPES[declared.type], (declared, value)
            if declared.type == "jsonb":
                text = str(value)
                assert "\\u0000" not in text.replace("\\\\", "")
                orjson.loads(text)  # jsonb takes it
            if declared.type in ("int8", "int4") and value is not None:
                assert abs(value) <= 2**63
            if declared.type == "float8" and value is not None:
                assert math.isfinite(value)


@PROPERTY
@given(st.binary(max_size=600))
@example(b"\x91" * 40 + b"\x01")
@example(b"[" * 40 + b"1" + b"]" * 40)
@example(b'{"v":"\\ud800"}')
def test_any_bytes_give_a_row_or_a_reason(payload: bytes) -> None:
    for fmt in FORMATS:
        judged(fmt, payload)


@PROPERTY
@given(st.dictionaries(KEYS, JSON_VALUES, max_size=5) | JSON_VALUES)
def test_any_json_structure_gives_a_row_or_a_reason(value: Any) -> None:
    judged("json", msgspec.json.encode(value))


@PROPERTY
@given(st.dictionaries(KEYS | st.integers(-2, 2), MSGPACK_VALUES, max_size=5) | MSGPACK_VALUES)
def test_any_msgpack_structure_gives_a_row_or_a_reason(value: Any) -> None:
    judged("msgpack", msgspec.msgpack.encode(value))


@PROPERTY
@given(st.dictionaries(KEYS, MSGPACK_VALUES, max_size=5) | MSGPACK_VALUES)
def test_any_msgpack_telemetry_gives_json_or_a_reason(value: Any) -> None:
    try:
        text = msgpack_as_json(msgspec.msgpack.encode(value), LIMITS)
    except Reject as exc:
        assert exc.reason in TELEMETRY_REASONS, exc
        return
    try:
        decode(text, "sensor-1", NOW_US, LIMITS)
    except Reject as exc:
        assert exc.reason in TELEMETRY_REASONS, exc


def test_keys_that_are_not_text_are_named_where_the_pointer_misses() -> None:
    nested = msgspec.msgpack.encode({"a": {1: "x"}, "l": [{2: "y"}]})
    for path in ("/a/b", "/l/0/b"):
        shaped = decoder(column("v", path, "text", required=False), fmt="msgpack")
        reject = refused(shaped, nested)
        assert (reject.reason, reject.detail) == ("wrong_type", f"{path}: map keys must be text")


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_state_route_decodes_alike(fmt: str) -> None:
    route = RouteConfig.model_validate(
        {
            "stream": "state",
            "table": "app.device_state",
            "kind": "state",
            "format": fmt,
            "columns": [
                column("device", "$identity", "text"),
                column("seen", "/ts", "timestamptz"),
                column("state", "", "jsonb"),
            ],
        }
    )
    state = shape_decoder(route, LIMITS)
    message = {"ts": MS, "mode": "eco"}
    assert state(encode(message, fmt), "sensor-1", "state", NOW_US) == [
        ("sensor-1", NOW_US, f'{{"ts":{MS},"mode":"eco"}}')
    ]
