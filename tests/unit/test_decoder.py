"""Payloads become rows, or a reject with a stable reason; a message is taken or refused whole."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import pgtime
from gateway.decoder import DecodeLimits, Reject, decode

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
NOW_US = pgtime.from_datetime(NOW)  # rows carry PostgreSQL's integer microseconds
LIMITS = DecodeLimits()
MS = int(NOW.timestamp() * 1000)


def rejected(payload: bytes, limits: DecodeLimits = LIMITS) -> str:
    with pytest.raises(Reject) as caught:
        decode(payload, "sensor-1", NOW_US, limits)
    return caught.value.reason


def test_single_reading_with_epoch_ms() -> None:
    (row,) = decode(
        orjson.dumps({"ts": MS, "metric": "temp", "value": 21, "tags": {"b": 1, "a": "x"}}),
        "sensor-1",
        NOW_US,
        LIMITS,
    )
    assert row == (NOW_US, "sensor-1", "temp", 21.0, '{"b":1,"a":"x"}', NOW_US)


def test_batch_with_rfc3339_and_per_reading_timestamps() -> None:
    payload = orjson.dumps(
        {
            "ts": "2026-11-25T11:59:00+00:00",
            "readings": [
                {"metric": "a", "value": 1.5},
                {"metric": "b", "value": 2, "ts": "2026-11-25T11:58:00Z"},
            ],
        }
    )
    rows = decode(payload, "sensor-1", NOW_US, LIMITS)
    assert [(r[0], r[2], r[3], r[4]) for r in rows] == [
        (pgtime.from_datetime(NOW - timedelta(minutes=1)), "a", 1.5, None),
        (pgtime.from_datetime(NOW - timedelta(minutes=2)), "b", 2.0, None),
    ]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "malformed_json"),
        (b'{"ts": 1, "metric": "t", "value": NaN}', "non_finite_value"),
        (b'{"ts": 1, "metric": "t", "value": 1e999}', "non_finite_value"),
        (b"[1, 2]", "invalid_reading"),
        (b'{"metric": "t", "value": 1}', "invalid_reading"),
        (orjson.dumps({"ts": MS, "metric": "", "value": 1}), "invalid_reading"),
        (orjson.dumps({"ts": MS, "metric": "t", "value": "1"}), "invalid_reading"),
        (orjson.dumps({"ts": MS, "metric": "t", "value": True}), "invalid_reading"),
        (orjson.dumps({"ts": MS, "metric": "t", "value": 1, "tags": [1]}), "invalid_reading"),
        (orjson.dumps({"ts": "2026-11-25 12:00", "metric": "t", "value": 1}), "invalid_reading"),
        (
            orjson.dumps({"ts": MS - 8 * 86_400_000, "metric": "t", "value": 1}),
            "timestamp_out_of_window",
        ),
        (
            orjson.dumps({"ts": MS + 3_600_000, "metric": "t", "value": 1}),
            "timestamp_out_of_window",
        ),
        (orjson.dumps({"ts": MS, "readings": []}), "invalid_reading"),
        (orjson.dumps({"ts": MS, "readings": [{"metric": "a", "value": 1}, 5]}), "invalid_reading"),
    ],
)
def test_rejects_say_why(payload: bytes, reason: str) -> None:
    assert rejected(payload) == reason


def test_size_limits() -> None:
    small = DecodeLimits(max_payload_bytes=64, max_readings=2)
    assert rejected(b" " * 65, small) == "payload_too_large"
    many = orjson.dumps({"ts": MS, "readings": [{"metric": "a", "value": 1}] * 3})
    assert rejected(many, DecodeLimits(max_readings=2)) == "payload_too_large"


def test_a_bad_reading_refuses_its_whole_batch() -> None:
    payload = orjson.dumps(
        {"ts": MS, "readings": [{"metric": "a", "value": 1}, {"metric": "b", "value": None}]}
    )
    with pytest.raises(Reject, match=r"readings\[1\]\.value"):
        decode(payload, "sensor-1", NOW_US, LIMITS)


def test_dedup_ids_come_from_the_payload_or_the_reading() -> None:
    single = orjson.dumps({"id": "m-7", "ts": MS, "metric": "t", "value": 1})
    assert decode(single, "s", NOW_US, LIMITS, dedup=True)[0][-1] == "m-7"
    batch = orjson.dumps({"id": 9, "ts": MS, "readings": [{"metric": "a", "value": 1}] * 2})
    assert [r[-1] for r in decode(batch, "s", NOW_US, LIMITS, dedup=True)] == ["9#0", "9#1"]
    anonymous = orjson.dumps({"ts": MS, "metric": "t", "value": 1})
    assert decode(anonymous, "s", NOW_US, LIMITS, dedup=True)[0][-1] == f"{NOW.isoformat()}|t"


def assert_decodes_or_rejects(payload: bytes, reasons: set[str]) -> None:
    """The payload gives whole rows, or a reject with one of `reasons`: nothing else escapes."""
    try:
        rows = decode(payload, "sensor-1", NOW_US, LIMITS)
    except Reject as reject:
        assert reject.reason in reasons, reject
    else:
        assert all(len(row) == 6 for row in rows)


@given(st.binary(max_size=300))
def test_any_bytes_either_decode_or_reject_cleanly(payload: bytes) -> None:
    assert_decodes_or_rejects(
        payload,
        {
            "malformed_json",
            "invalid_reading",
            "non_finite_value",
            "timestamp_out_of_window",
            "payload_too_large",
            "too_deeply_nested",
            "invalid_text",
        },
    )


FIELDS = ("ts", "metric", "value", "tags", "id", "readings", "other")


@given(
    st.sampled_from(FIELDS),
    st.integers(min_value=1, max_value=5000),
    st.sampled_from(("[", '{"k":')),
    st.binary(max_size=8),
)
def test_nesting_and_bytes_in_any_field_reject_cleanly(
    field: str, depth: int, opener: str, junk: bytes
) -> None:
    closer = "]" if opener == "[" else "}"
    value = (opener * depth + "1" + closer * depth).encode()
    fields = {"ts": str(MS).encode(), "metric": b'"t"', "value": b"1", field: value}
    if field == "tags":
        fields["tags"] = b'{"a":' + value + b',"b":"' + junk + b'"}'
    payload = b"{" + b",".join(b'"%s":%s' % (k.encode(), v) for k, v in fields.items()) + b"}"
    assert_decodes_or_rejects(
        payload, {"malformed_json", "invalid_reading", "too_deeply_nested", "invalid_text"}
    )


def nested(depth: int, opener: str = "[") -> bytes:
    closer = "]" if opener == "[" else "}"
    return (opener * depth + "1" + closer * depth).encode()


def reading_with(field: str, raw: bytes) -> bytes:
    return b'{"ts":%d,"metric":"t","value":1,"%s":%s}' % (MS, field.encode(), raw)


@pytest.mark.parametrize("field", ["tags", "id", "other"])
def test_depth_is_limited_before_parsing(field: str) -> None:
    limits = DecodeLimits(max_depth=8)
    inner = (lambda d: b'{"a":' * d + b"1" + b"}" * d) if field == "tags" else nested
    # The message object is one level; the field's value adds the rest.
    assert decode(reading_with(field, inner(7)), "s", NOW_US, limits)
    assert rejected(reading_with(field, inner(8)), limits) == "too_deeply_nested"
    # Far deeper than the parser could recurse: still a clean, precise reject.
    assert rejected(reading_with(field, inner(40_000))) == "too_deeply_nested"


def test_brackets_inside_strings_are_not_nesting() -> None:
    metric = '"' + "[{" * 40 + '\\"' + "}]" * 40 + '"'
    payload = b'{"ts":%d,"metric":%s,"value":1}' % (MS, metric.encode())
    assert decode(payload, "s", NOW_US, DecodeLimits(max_depth=4, max_payload_bytes=10_000))


def test_unbalanced_openers_beyond_the_limit_are_too_deep() -> None:
    assert rejected(b'{"x":' + b"[" * 50_000) == "too_deeply_nested"
    assert rejected(b'{"a":]]]}') == "malformed_json"


@pytest.mark.parametrize(
    "text",
    [
        b'"a\\u0000b"',  # NUL: PostgreSQL text and jsonb cannot hold it
        b'"\\ud800"',  # a lone high surrogate
        b'"x\\udc00"',  # a lone low surrogate
        b'"\\ud800\\u0041"',  # a high surrogate followed by no low one
        b'"\xff"',  # not UTF-8
        b'"\xed\xa0\x80"',  # a surrogate encoded in UTF-8
    ],
)
@pytest.mark.parametrize("where", ["metric", "tags"])
def test_text_postgresql_cannot_store_is_invalid_text(text: bytes, where: str) -> None:
    raw = text if where == "metric" else b'{"k":' + text + b"}"
    payload = (
        b'{"ts":%d,"metric":%s,"value":1}' % (MS, raw)
        if where == "metric"
        else reading_with("tags", raw)
    )
    assert rejected(payload) == "invalid_text"


def test_text_that_only_looks_like_a_nul_escape_is_kept() -> None:
    (row,) = decode(b'{"ts":%d,"metric":"a\\\\u0000","value":1}' % MS, "s", NOW_US, LIMITS)
    assert row[2] == "a\\u0000"
    (row,) = decode(b'{"ts":%d,"metric":"\\ud83d\\ude00","value":1}' % MS, "s", NOW_US, LIMITS)
    assert row[2] == "\U0001f600"


@pytest.mark.parametrize(
    "tags",
    [
        b'{"a":"\\u0000"}',
        b'{"\\u0000":1}',
        b'{"a":{"b":["x","\\u0000"]}}',
        b'{"a":"\\\\\\u0000"}',  # an escaped backslash, then a NUL
        b'{"\\\\":"\\u0000"}',
        b'{"a":"\\u005c\\u0000"}',  # a backslash spelled as an escape, then a NUL
    ],
)
def test_a_nul_anywhere_in_tags_is_invalid_text(tags: bytes) -> None:
    assert rejected(reading_with("tags", tags)) == "invalid_text"
    batch = b'{"ts":%d,"readings":[{"metric":"t","value":1},{"metric":"t","value":2,"tags":%s}]}'
    assert rejected(batch % (MS, tags)) == "invalid_text"


@pytest.mark.parametrize(
    "tags",
    [
        b'{"a":"\\\\u0000"}',  # an escaped backslash, then the text u0000
        b'{"\\\\u0000":"\\\\\\\\u0000"}',
        b'{"a":"\\u005cu0000"}',
        b'{"a":"\\/u0000"}',
    ],
)
def test_tags_that_only_look_like_a_nul_escape_are_kept_as_sent(tags: bytes) -> None:
    (row,) = decode(reading_with("tags", tags), "s", NOW_US, LIMITS)
    assert row[4] == tags.decode()
    assert "\x00" not in str(orjson.loads(row[4]))


def test_tag_count_and_id_length_are_bounded() -> None:
    limits = DecodeLimits(max_tags=3)
    tags = {f"k{i}": i for i in range(3)}
    assert decode(
        orjson.dumps({"ts": MS, "metric": "t", "value": 1, "tags": tags}), "s", NOW_US, limits
    )
    tags["k3"] = 3
    payload = orjson.dumps({"ts": MS, "metric": "t", "value": 1, "tags": tags})
    assert rejected(payload, limits) == "invalid_reading"
    long_ids = (b'"%s"' % (b"x" * 201), b"%d" % 2**200)
    for given_id in long_ids:
        payload = b'{"id":%s,"ts":%d,"metric":"t","value":1}' % (given_id, MS)
        with pytest.raises(Reject) as caught:
            decode(payload, "s", NOW_US, LIMITS, dedup=True)
        assert caught.value.reason == "invalid_reading"
