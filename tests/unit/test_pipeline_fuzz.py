"""No message can stop the engine: generated hostile input through a whole pipeline.

Each test builds one pipeline over the in-memory source and sinks, on an event loop of its own,
and feeds it every generated example in turn (building one per example would cost more than the
examples). Every message comes from a device of its own, so its rows (by identity) and its reject
record (by topic) can be told apart from everyone else's. For every message: exactly one reject
record with a documented reason, or all of its rows; the good messages around it land; every
message is acknowledged to the broker; nothing stays buffered.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.activity import Activity
from gateway.batching import BatchPolicy
from gateway.config import BatchingConfig
from gateway.contracts import Route, Row
from gateway.decoder import DecodeLimits
from gateway.identities.cache import CachedIdentity
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.sinks.memory import MemorySink
from gateway.sources.memory import MemoryBroker, MemorySource
from tests.hostile import ANY_REASON, LANDS, Hostile, corpus, documented_reasons, good, now_ms

SENSOR = CachedIdentity("telemetry_ingest", "telemetry_ingest_login", "active")
# The README's table, and the reasons being added with the checks that give them.
REASONS = documented_reasons() | {
    "too_deeply_nested",
    "invalid_text",
    "invalid_identity",
    "topic_too_long",
    "internal_error",
}
CORPUS_LIMITS = DecodeLimits(max_payload_bytes=4 * 1024 * 1024)  # 100,000 readings fit
# The engine runs every example, so the fuzz takes the health checks' time warnings as given;
# the engine is built once per test on purpose (see the module docstring).
FUZZ = settings(
    deadline=None,
    database=None,
    derandomize=False,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


@dataclass
class Fate:
    """What became of one message: its rows and its reject records."""

    topic: str
    payload: bytes
    rows: list[Row] = field(default_factory=list)
    rejects: list[Row] = field(default_factory=list)


class Engine:
    """One pipeline over a memory broker and sinks, fed one example after another."""

    def __init__(self, limits: DecodeLimits) -> None:
        self.loop = asyncio.new_event_loop()
        self.limits = limits
        self.registry: dict[str, CachedIdentity] = {}
        self._serial = itertools.count()
        self._restart()

    def _restart(self) -> None:
        """A new pipeline, broker and sinks: after a failure, so that the next example (and
        Hypothesis's shrinking) starts from a clean state rather than the failed one's."""
        self.broker = MemoryBroker()
        self.sink, self.rejects = MemorySink(), MemorySink()
        self.pipeline = self.loop.run_until_complete(self._build(self.limits))
        self.source = MemorySource(broker=self.broker)
        self.rejected: Counter[str] = Counter()
        self._seen_rows = self._seen_rejects = 0

    async def _build(self, limits: DecodeLimits) -> Pipeline:
        return Pipeline(
            lookup=self.registry.get,
            routes=[
                Route("telemetry_ingest", "ingest.telemetry", self.sink, "telemetry"),
                Route("rejects_writer", "ingest.rejects", self.rejects, rejects=True),
            ],
            metrics=Metrics(),
            activity=Activity(),
            policy=BatchPolicy.from_config(BatchingConfig(max_rows=100, max_delay_ms=10)),
            limits=limits,
            max_buffered_rows=200_000,
            # Every message here has a sender of its own, tens of thousands a minute: the flood
            # budget would summarise them, and its own tests prove that. Here each is stored.
            rejects_per_minute=1_000_000_000,
        )

    def device(self) -> str:
        """A topic of a newly registered device of its own."""
        name = f"dev-{next(self._serial)}"
        self.registry[name] = SENSOR
        return f"devices/{name}/telemetry"

    def run(self, messages: list[tuple[str, bytes]]) -> list[Fate]:
        """Publish, submit and flush the messages; no exception may escape any of it."""
        source = self.source
        acked = len(source.acked)

        async def feed() -> list[int]:
            published = source.put(messages)
            self.pipeline.submit(source, await source.receive())
            await self.pipeline.flush()
            return [message.position for message in published]

        try:
            positions = self.loop.run_until_complete(feed())
        except BaseException:
            self._restart()
            raise
        rows, self._seen_rows = self.sink.rows[self._seen_rows :], len(self.sink.rows)
        records, self._seen_rejects = (
            self.rejects.rows[self._seen_rejects :],
            len(self.rejects.rows),
        )
        assert [m.position for m in source.acked[acked:]] == positions, "all acknowledged"
        assert self.broker.unacked == [] and self.broker.queued == 0
        assert self.pipeline.buffered_rows == 0, "buffers return to zero"
        fates = [Fate(topic, payload) for topic, payload in messages]
        by_topic = {fate.topic: fate for fate in fates}
        by_identity = {fate.topic.split("/")[1]: fate for fate in fates}
        for row in rows:
            by_identity[row[1]].rows.append(row)
        unmatched = []
        for record in records:
            if record[4] in by_topic:
                by_topic[record[4]].rejects.append(record)
            else:
                unmatched.append(record)
        # A record may keep a topic cut short or escaped (a NUL cannot be stored): those go, in
        # submit order, to the messages that nothing else accounts for.
        silent = [fate for fate in fates if not fate.rows and not fate.rejects]
        assert len(unmatched) <= len(silent), f"records of no message: {unmatched}"
        for record, fate in zip(unmatched, silent, strict=False):
            fate.rejects.append(record)
        self.rejected.update(record[2] for fate in fates for record in fate.rejects)
        metrics = self.pipeline.metrics.registry
        for reason, n in self.rejected.items():
            labels = {"source": source.name, "reason": reason}
            assert metrics.get_sample_value("gateway_messages_rejected_total", labels) == n
        return fates

    def close(self) -> None:
        self.loop.close()


@pytest.fixture
def engine() -> Iterator[Engine]:
    running = Engine(DecodeLimits())
    yield running
    running.close()


def assert_one_fate(fate: Fate) -> None:
    """Exactly one reject record with a documented reason, or all of the message's rows."""
    where = f"{fate.topic} {fate.payload[:120]!r}"
    assert len(fate.rejects) + bool(fate.rows) == 1, f"{where}: {fate.rejects} {fate.rows[:3]}"
    if fate.rejects:
        (record,) = fate.rejects
        reason = record[2]
        # The guard of last resort must never be what a device's input reaches: every hostile
        # message has a precise reason. internal_error here is a bug in a step, not a verdict.
        assert reason != "internal_error", f"{where}: internal_error ({record[6]})"
        assert reason in REASONS, f"{where}: undocumented reason {reason!r}"
        return
    expected = _readings(fate.payload)
    assert expected is None or len(fate.rows) == expected, where
    for row in fate.rows:
        assert_storable(row, where)


def assert_storable(row: Row, where: str) -> None:
    """What the engine accepts, PostgreSQL can store: text is UTF-8 without NUL, values finite."""
    _, _, metric, value, tags, _ = row[:6]
    assert _text_ok(metric) and math.isfinite(value), f"{where}: {row}"
    if tags is not None:
        # Judged on the parsed strings, not on the text: `\\u0000` in JSON is an escaped
        # backslash and then the letters u0000, no NUL, and PostgreSQL stores it as sent.
        assert _text_ok(tags), f"{where}: {tags[:200]!r}"
        assert all(_text_ok(text) for text in _strings(json.loads(tags))), (
            f"{where}: {tags[:200]!r}"
        )


def _text_ok(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return "\x00" not in text


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _readings(payload: bytes) -> int | None:
    """How many rows a message that landed must have given, when a strict parser can tell."""
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    readings = body.get("readings") if isinstance(body, dict) else None
    return len(readings) if isinstance(readings, list) else 1


def run_interleaved(engine: Engine, payloads: list[bytes]) -> None:
    """Each payload from a device of its own, between good readings that must all land."""
    messages = [(engine.device(), good(0.0))]
    for payload in payloads:
        messages.append((engine.device(), payload))
        messages.append((engine.device(), good(float(len(messages)))))
    fates = engine.run(messages)
    for index, fate in enumerate(fates):
        if index % 2 == 0:
            assert [row[3] for row in fate.rows] == [float(index)] and not fate.rejects
        else:
            assert_one_fate(fate)


# -- generated payloads -------------------------------------------------------------------------

# Pieces of JSON string content: plain, escaped, and every kind of text PostgreSQL cannot take.
TEXT_PIECES = (
    b"a",
    b"temp",
    b"\xe2\x82\xac",  # a valid multi-byte character
    b"\\ud83d\\ude00",  # a valid surrogate pair
    b"\\u0000",
    b"\x00",
    b"\\ud800",
    b"\\udfff",
    b"\\udc00\\ud800",  # a pair in the wrong order
    b"\xff",
    b"\xc3",  # a truncated sequence
    b"\xed\xa0\x80",  # a surrogate encoded as UTF-8
    b"\xc0\x80",  # an overlong NUL
    b"\xef\xbb\xbf",
    b"\x01",
    b"\\n",
    b'\\"',
    b"\\\\u0000",  # an escaped backslash, then text: not a NUL
    b"\\",
    b'"',
    b"{",
    b"[",
)
NUMBERS = (
    b"0",
    b"-0",
    b"1.5",
    b"1e400",
    b"-1e400",
    b"1e-400",
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"18446744073709551616",
    b"-18446744073709551617",
    b"9" * 400,
    b"1e308",
    b"01",
    b"+1",
    b".5",
)

piece = st.sampled_from(TEXT_PIECES[:3]) | st.sampled_from(TEXT_PIECES)  # half plain text
text = st.lists(piece, max_size=6).map(lambda parts: b'"%s"' % b"".join(parts))
number = st.one_of(
    st.sampled_from(NUMBERS),
    st.integers().map(lambda n: str(n).encode()),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: repr(f).encode()),
)
scalar = st.one_of(text, number, st.sampled_from((b"true", b"false", b"null")))


def _containers(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    array = st.lists(children, max_size=4).map(lambda items: b"[%s]" % b",".join(items))
    pairs = st.lists(st.tuples(text, children), max_size=4)
    return array | pairs.map(lambda kv: b"{%s}" % b",".join(k + b":" + v for k, v in kv))


def _around(limit: int, huge: int) -> st.SearchStrategy[int]:
    """Sizes near a limit, where off-by-ones live, and now and then a huge one (costly to run
    often, and no different beyond the limit)."""
    return st.integers(0, 15).flatmap(
        lambda pick: st.just(huge) if pick == 0 else st.integers(0, limit + 8)
    )


def _deep(depth: int, opener: bytes) -> bytes:
    closer = b"]" if opener == b"[" else b"}"
    return opener * depth + b"1" + closer * depth


def _wide(keys: int, key: bytes) -> bytes:
    return b"{" + b",".join(b'"%s%d":%d' % (key, i, i) for i in range(keys)) + b"}"


value = st.one_of(
    st.recursive(scalar, _containers, max_leaves=6),
    st.builds(_deep, _around(32, 5000), st.sampled_from((b"[", b'{"k":'))),
    st.builds(_wide, _around(64, 10_000), st.sampled_from((b"k", b"k", b"k", b"\\u0000", b"\xff"))),
)
FIELDS = ("ts", "metric", "value", "tags", "id", "readings")
# Mostly kept, so that many messages are wrong in one field only and reach the deeper checks.
ACTIONS = ("keep",) * 6 + ("drop", "replace", "repeat")


@st.composite
def reading_fields(draw: st.DrawFn, batch: bool) -> bytes:
    """A reading's fields, each kept, dropped, replaced by anything, or repeated; plus unknown
    fields with any key."""
    fields = {"ts": str(now_ms()).encode(), "metric": b'"temp"', "value": b"1"}
    pairs = []
    for name in FIELDS if not batch else ("metric", "value", "tags", "ts"):
        action = draw(st.sampled_from(ACTIONS))
        current = fields.get(name)
        if action == "replace" or (current is None and action == "repeat"):
            current = draw(value)
        if current is not None and action != "drop":
            pairs.append((b'"%s"' % name.encode(), current))
            if action == "repeat":
                pairs.append((b'"%s"' % name.encode(), draw(value)))
    unknown = draw(st.lists(st.tuples(text, value), max_size=2))
    at = draw(st.integers(0, len(pairs)))  # unknown fields anywhere among the known ones
    pairs[at:at] = unknown
    return b"{%s}" % b",".join(key + b":" + text for key, text in pairs)


@st.composite
def batch(draw: st.DrawFn) -> bytes:
    """A batch of readings, up to 100,000 of them, one of which may be anything."""
    count = draw(_around(12, 100_000) | st.sampled_from((10_000, 10_001)))
    plain = b'{"metric":"m","value":1}'
    readings = [plain] * count
    if count and draw(st.booleans()):
        readings[draw(st.integers(0, count - 1))] = draw(reading_fields(batch=True))
    ts = draw(st.sampled_from((str(now_ms()).encode(), b'"now"', b"null", b"1e400")))
    return b'{"ts":%s,"readings":[%s]}' % (ts, b",".join(readings))


WRAPPERS = (b"",) * 12 + (b"\xef\xbb\xbf", b" \t\r\n", b"\x00", b"\\")
body = st.one_of(
    reading_fields(batch=False),
    batch(),
    st.binary(max_size=64),
    st.lists(st.sampled_from(TEXT_PIECES), max_size=8).map(b"".join),
)
message = st.tuples(st.sampled_from(WRAPPERS), body, st.sampled_from(WRAPPERS)).map(b"".join)


def _tagged(tags: bytes) -> bytes:
    return b'{"ts":%d,"metric":"temp","value":1,"tags":%s}' % (now_ms(), tags)


def _batch_tagged(tags: bytes) -> bytes:
    reading = b'{"metric":"m","value":1}'
    return b'{"ts":%d,"readings":[%s,{"metric":"m","value":2,"tags":%s},%s]}' % (
        now_ms(),
        reading,
        tags,
        reading,
    )


@settings(FUZZ, max_examples=6_000)
@given(st.lists(message, min_size=1, max_size=3))
# A NUL anywhere in tags is one reject; text that only looks like its escape lands as sent.
@example([_tagged(b'{"a":"\\\\u0000"}'), _tagged(b'{"a":"\\u0000"}'), _tagged(b'{"\\u0000":1}')])
@example([_tagged(b'{"a":{"b":["\\\\\\u0000"]}}'), _tagged(b'{"\\\\u0000":"\\u005cu0000"}')])
@example([_batch_tagged(b'{"a":"\\u0000"}'), _batch_tagged(b'{"a":"\\\\u0000"}')])
def test_every_message_gives_one_reject_or_all_its_rows(
    engine: Engine, payloads: list[bytes]
) -> None:
    run_interleaved(engine, payloads)


@settings(FUZZ, max_examples=9_000)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=4))
def test_any_bytes_give_one_reject_or_all_their_rows(engine: Engine, payloads: list[bytes]) -> None:
    run_interleaved(engine, payloads)


CLAIM_PIECES = ("sensor", "-", "\x00", "\x01", "\n", "\x7f", "\u200b", "\ud800", "é", "+", "#", " ")
claim = st.one_of(
    st.lists(st.sampled_from(CLAIM_PIECES), max_size=8).map("".join),
    st.text(max_size=20),
    st.integers(129, 5000).map(lambda n: "x" * n),
)


@settings(FUZZ, max_examples=5_000)
@given(claim, st.sampled_from(("telemetry", "other", "", "telemetry/extra")))
def test_any_identity_claim_gives_one_reject(engine: Engine, identity: str, stream: str) -> None:
    topic = f"devices/{identity}/{stream}"
    fates = engine.run(
        [(engine.device(), good(1.0)), (topic, good(2.0)), (engine.device(), good(3.0))],
    )
    assert [row[3] for row in fates[0].rows + fates[2].rows] == [1.0, 3.0]
    assert not fates[0].rejects and not fates[2].rejects
    (record,) = fates[1].rejects  # nobody registered the claim: never rows
    assert not fates[1].rows
    # As above: internal_error is the guard of last resort, never the verdict on a claim.
    assert record[2] != "internal_error", f"{topic!r}: internal_error ({record[6]})"
    assert record[2] in REASONS, f"{topic!r}: undocumented reason {record[2]!r}"


# -- the named corpus ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "item", corpus(CORPUS_LIMITS.max_payload_bytes), ids=lambda item: item.name
)
def test_each_hostile_payload_gets_its_reason(item: Hostile) -> None:
    engine = Engine(CORPUS_LIMITS)
    try:
        fates = engine.run(
            [
                (engine.device(), good(1.0)),
                (engine.device(), item.payload),
                (engine.device(), good(2.0)),
            ]
        )
    finally:
        engine.close()
    assert [row[3] for row in fates[0].rows + fates[2].rows] == [1.0, 2.0]
    fate = fates[1]
    assert_one_fate(fate)
    got = fate.rejects[0][2] if fate.rejects else LANDS
    if item.expect == ANY_REASON:
        assert got != LANDS, f"{item.name} landed; expected a reject"
    else:
        detail = fate.rejects[0][6] if fate.rejects else f"{len(fate.rows)} rows"
        assert got == item.expect, f"{item.name}: {got} ({detail})"
        assert got != LANDS or len(fate.rows) == item.rows
