"""Which ACL bindings leave a Kafka source's identity claims unbound, and what the watch does
with each verdict; the analysis is pure, so it is tried here against generated bindings."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import KafkaSourceConfig
from gateway.kafka_admin import AclBinding
from gateway.metrics import Metrics
from gateway.sources.kafka_claims import ClaimsWatch, literal_prefix, unbound_writers

IDENTITIES = ["alice", "bob", "alice2", "carol-7"]


def source(identity_from: str = "key", **config: Any) -> KafkaSourceConfig:
    if "topics" not in config and "topic_pattern" not in config:
        config["topics"] = ["telemetry"]
    return KafkaSourceConfig(
        name="k", bootstrap_servers="k:9092", identity_from=identity_from, **config
    )


def write(
    topic: str,
    principal: str,
    *,
    prefixed: bool = False,
    operation: str = "write",
    permission: str = "allow",
) -> AclBinding:
    pattern = "prefixed" if prefixed else "literal"
    return AclBinding("topic", topic, pattern, principal, operation, permission)


def by_topic(template: str = "telemetry.{identity}", **config: Any) -> KafkaSourceConfig:
    if "topics" not in config and "topic_pattern" not in config:
        config["topics"] = [template.replace("{identity}", i) for i in IDENTITIES]
    return source(f"topic:{template}", **config)


# -- key and header claims -------------------------------------------------------------------


def test_key_claims_need_every_writer_trusted() -> None:
    config = source(trusted_producers=["User:bridge"])
    assert unbound_writers(config, [write("telemetry", "User:bridge")]) == []
    (violation,) = unbound_writers(config, [write("telemetry", "User:mallory")])
    assert "User:mallory may write topic telemetry" in str(violation)
    assert "key" in violation.reason and "trusted" in violation.reason
    assert "ALLOW User:mallory WRITE on topic 'telemetry'" in str(violation)


def test_header_claims_name_the_header() -> None:
    (violation,) = unbound_writers(source("header:device"), [write("telemetry", "User:x")])
    assert "header 'device'" in violation.reason


def test_only_allowed_writes_on_consumed_topics_count() -> None:
    config = source(trusted_producers=["User:bridge"])
    ignored = [
        write("telemetry", "User:x", operation="read"),
        write("telemetry", "User:x", operation="describe"),
        write("telemetry", "User:x", permission="deny"),
        write("other", "User:x"),
        write("tele-other", "User:x", prefixed=True),
        AclBinding("group", "telemetry", "literal", "User:x", "all"),
        AclBinding("cluster", "kafka-cluster", "literal", "User:x", "all"),
    ]
    assert unbound_writers(config, ignored) == []
    counted = [
        write("telemetry", "User:x", operation="all"),
        write("*", "User:y"),
        write("tele", "User:z", prefixed=True),
        write("", "User:w", prefixed=True),
    ]
    assert [v.binding for v in unbound_writers(config, counted)] == counted


def test_anyone_is_never_trusted() -> None:
    config = source(trusted_producers=["User:*", "User:bridge"])
    (violation,) = unbound_writers(config, [write("telemetry", "User:*")])
    assert "every principal (User:*)" in violation.reason
    topic = by_topic(trusted_producers=["User:*"])
    assert unbound_writers(topic, [write("telemetry.alice", "User:*")])


def test_a_deny_does_not_excuse_an_allow() -> None:
    bindings = [write("telemetry", "User:x"), write("telemetry", "User:x", permission="deny")]
    assert [v.binding for v in unbound_writers(source(), bindings)] == bindings[:1]


def test_key_claims_under_a_pattern() -> None:
    config = source(topic_pattern=r"bridge\.[a-z]+")
    assert unbound_writers(config, [write("bridge.eu", "User:x")])
    assert unbound_writers(config, [write("bridge", "User:x", prefixed=True)])
    assert unbound_writers(config, [write("bridge.eu.x", "User:x", prefixed=True)])
    assert unbound_writers(config, [write("*", "User:x")])
    assert not unbound_writers(config, [write("bridge.EU", "User:x")])  # not matched
    assert not unbound_writers(config, [write("orders", "User:x", prefixed=True)])


# -- topic claims ----------------------------------------------------------------------------


def test_each_identity_writes_its_own_topic_only() -> None:
    config = by_topic(trusted_producers=["User:bridge"])
    own = [write(f"telemetry.{i}", f"User:{i}") for i in IDENTITIES]
    assert unbound_writers(config, [*own, write("telemetry.alice", "User:bridge")]) == []
    (violation,) = unbound_writers(config, [write("telemetry.alice", "User:mallory")])
    assert (
        violation.reason
        == "User:mallory may write topic telemetry.alice, which claims identity alice"
    )


def test_wildcards_and_prefixes_count_for_every_topic_they_match() -> None:
    config = by_topic()
    (star,) = unbound_writers(config, [write("*", "User:alice")])
    assert "topic telemetry.bob (every topic), which claims identity bob" in star.reason
    # `telemetry.alice` also covers `telemetry.alice2`, another identity's topic.
    (prefix,) = unbound_writers(config, [write("telemetry.alice", "User:alice", prefixed=True)])
    assert "telemetry.alice2" in prefix.reason and "claims identity alice2" in prefix.reason
    assert (
        unbound_writers(config, [write("telemetry.carol-7", "User:carol-7", prefixed=True)]) == []
    )
    assert unbound_writers(config, [write("telemetry.", "User:alice", prefixed=True)])


def test_topics_outside_the_template_claim_nobody() -> None:
    config = by_topic(topics=["telemetry.alice", "legacy"])
    assert unbound_writers(config, [write("legacy", "User:mallory")]) == []
    assert unbound_writers(config, [write("*", "User:alice")]) == []


def test_prefixes_under_a_pattern_are_bound_only_when_they_fix_the_identity_level() -> None:
    streams = by_topic("telemetry.{identity}.{stream}", topic_pattern=r"telemetry\..*")
    assert unbound_writers(streams, [write("telemetry.alice.", "User:alice", prefixed=True)]) == []
    (other,) = unbound_writers(streams, [write("telemetry.alice.", "User:bob", prefixed=True)])
    assert "whose topics claim identity alice" in other.reason
    for prefix in ("telemetry.alice", "telemetry.", "tele", ""):
        assert unbound_writers(streams, [write(prefix, "User:alice", prefixed=True)]), prefix
    # Under these prefixes no topic fits the template, or the pattern: they claim nobody.
    for prefix in ("metrics.", "telemetry.alice.raw.x", "telemetry..", "other"):
        assert not unbound_writers(streams, [write(prefix, "User:x", prefixed=True)]), prefix
    # With the identity as the last level no prefix can fix it.
    single = by_topic(topic_pattern=r"telemetry\.")
    assert unbound_writers(single, [write("telemetry.alice", "User:alice", prefixed=True)])
    assert unbound_writers(single, [write("telemetry.alice", "User:alice")]) == []
    assert unbound_writers(single, [write("*", "User:alice")])


def test_a_stream_level_before_the_identity() -> None:
    config = by_topic("{stream}.{identity}", topic_pattern=r".*")
    assert unbound_writers(config, [write("events.alice", "User:alice")]) == []
    assert unbound_writers(config, [write("events.", "User:alice", prefixed=True)])
    assert unbound_writers(config, [write("events.alice", "User:bob")])


def test_literal_prefix_never_claims_more_than_the_pattern_fixes() -> None:
    assert literal_prefix(r"telemetry\..*") == "telemetry."
    assert literal_prefix(r"^telemetry\.x") == "telemetry.x"
    assert literal_prefix(r"telemetry-?x") == "telemetry"
    assert literal_prefix(r"ab+c") == "ab"
    assert literal_prefix(r"a{2}") == ""
    assert literal_prefix(r"a|b") == ""
    assert literal_prefix(r"(?i)abc") == ""
    assert literal_prefix(r"\dabc") == ""
    assert literal_prefix(r"[ab]c") == ""


# -- properties ------------------------------------------------------------------------------

names = st.text(alphabet="abcxyz019-_", min_size=1, max_size=6)
topic_texts = st.text(alphabet="abct.elmry*-_", max_size=16)


@given(identity=names, template=st.sampled_from(["t.{identity}", "t.{identity}.{stream}"]))
def test_an_identity_on_its_own_topic_is_never_a_violation(identity: str, template: str) -> None:
    topic = template.replace("{identity}", identity).replace("{stream}", "telemetry")
    bindings = [write(topic, f"User:{identity}")]
    if "{stream}" in template:
        bindings.append(write(f"t.{identity}.", f"User:{identity}", prefixed=True))
    assert unbound_writers(by_topic(template, topics=[topic]), bindings) == []
    assert unbound_writers(by_topic(template, topic_pattern=r"t\."), bindings) == []


@given(
    owner=names,
    writer=names,
    topics=st.lists(names, min_size=1, max_size=4),
    prefixed=st.booleans(),
    cut=st.integers(min_value=0, max_value=8),
    trusted=st.lists(names, max_size=2),
    pattern=st.booleans(),
)
def test_an_untrusted_principal_on_another_identitys_topic_always_is(
    owner: str,
    writer: str,
    topics: list[str],
    prefixed: bool,
    cut: int,
    trusted: list[str],
    pattern: bool,
) -> None:
    if writer == owner or writer in trusted:
        return
    topic = f"t.{owner}"
    # Any binding that covers the owner's topic: the topic itself, a prefix of it, or `*`.
    name = topic[: len(topic) - cut] if prefixed else topic
    consumed = {"topic_pattern": r"t\."} if pattern else {"topics": [topic, *topics]}
    config = by_topic("t.{identity}", trusted_producers=[f"User:{t}" for t in trusted], **consumed)
    for binding in (write(name, f"User:{writer}", prefixed=prefixed), write("*", f"User:{writer}")):
        assert unbound_writers(config, [binding]), binding


@given(
    bindings=st.lists(
        st.builds(
            write,
            topic_texts,
            st.sampled_from(["User:bridge", "User:alice", "User:bob", "User:*"]),
            prefixed=st.booleans(),
            operation=st.sampled_from(["write", "all", "read", "describe"]),
            permission=st.sampled_from(["allow", "deny"]),
        ),
        max_size=8,
    ),
    identity_from=st.sampled_from(["key", "header:d", "topic:telemetry.{identity}"]),
    pattern=st.booleans(),
)
def test_a_verdict_names_only_allowed_writes_and_keeps_their_order(
    bindings: list[AclBinding], identity_from: str, pattern: bool
) -> None:
    consumed: dict[str, Any] = (
        {"topic_pattern": r"telemetry\..*"} if pattern else {"topics": ["telemetry.alice"]}
    )
    config = source(identity_from, trusted_producers=["User:bridge"], **consumed)
    violations = unbound_writers(config, bindings)
    flagged = [v.binding for v in violations]
    assert flagged == [b for b in bindings if b in flagged]
    for binding in flagged:
        assert binding.permission == "allow" and binding.operation in ("write", "all")
        assert binding.principal != "User:bridge"
    # Anyone, on a topic the source reads, is always named.
    for binding in bindings:
        everyone = binding.principal == "User:*" and binding.permission == "allow"
        if everyone and binding.operation in ("write", "all") and _covers(binding, pattern):
            assert binding in flagged


def _covers(binding: AclBinding, pattern: bool) -> bool:
    name = binding.resource_name
    if binding.pattern_type == "prefixed":
        return "telemetry.alice".startswith(name)
    return (
        name == "*"
        or name == "telemetry.alice"
        or (pattern and re.match(r"telemetry\..*", name) is not None)
    )


@given(pattern=st.from_regex(r"[a-z.\\*+?|^]{0,10}", fullmatch=True), topic=topic_texts)
def test_a_matched_topic_starts_with_the_literal_prefix(pattern: str, topic: str) -> None:
    try:
        compiled = re.compile(pattern)
    except re.error:
        return
    if compiled.match(topic):
        assert topic.startswith(literal_prefix(pattern))


# -- the watch -------------------------------------------------------------------------------


class Acls:
    def __init__(self) -> None:
        self.bindings: list[AclBinding] = []
        self.error: Exception | None = None

    async def describe(self) -> Sequence[AclBinding]:
        if self.error is not None:
            raise self.error
        return list(self.bindings)


class Clock:
    """A monotonic clock the test moves by hand, so the bound is tried without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sample(metrics: Metrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"source": "k"})


async def until(check: Any) -> None:
    for _ in range(1000):  # ten seconds at most
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the watch never got there")


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]


async def test_the_watch_reports_each_change_once(caplog: pytest.LogCaptureFixture) -> None:
    metrics, acls = Metrics(), Acls()
    stops: list[bool] = []
    config = source(acl_check_interval=0.01)
    # The clock stands still: failed checks never reach the bound here.
    watch = ClaimsWatch(
        config, describe=acls.describe, metrics=metrics, stop_intake=stops.append, clock=Clock()
    )
    assert await watch.check() == []
    task = asyncio.create_task(watch.run())
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.sources.kafka_claims"):
            acls.bindings = [write("telemetry", "User:mallory")]
            await until(lambda: stops == [True])
            assert sample(metrics, "gateway_kafka_unbound_writers") == 1
            acls.error = OSError("broker away")
            await until(
                lambda: (sample(metrics, "gateway_kafka_acl_check_failures_total") or 0) >= 3
            )
            assert stops == [True] and watch.violations  # the last verdict stands
            acls.error = None
            acls.bindings = []
            await until(lambda: stops == [True, False])
            assert sample(metrics, "gateway_kafka_unbound_writers") == 0
        (error,) = errors(caplog)
        assert "User:mallory" in error
        failed = [r for r in caplog.records if "cannot read" in r.getMessage()]
        assert len(failed) == 1  # once per streak of failures
        assert sample(metrics, "gateway_kafka_claims_unchecked") == 0
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_acls_unread_for_three_intervals_stop_intake_until_a_check_succeeds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics, acls, clock = Metrics(), Acls(), Clock()
    stops: list[bool] = []
    config = source(acl_check_interval=5)
    watch = ClaimsWatch(
        config, describe=acls.describe, metrics=metrics, stop_intake=stops.append, clock=clock
    )
    assert watch.bound == 15
    watch.settle(await watch.check())  # at 1000

    async def fails_at(now: float, error: str) -> None:
        clock.now = now
        acls.error = OSError(error)
        with pytest.raises(OSError):
            await watch.check()
        watch.failed(acls.error)
        watch.lapse()

    with caplog.at_level(logging.WARNING, logger="gateway.sources.kafka_claims"):
        await fails_at(1005, "first")
        await fails_at(1010, "second")
        clock.now = 1014.9
        watch.lapse()
        assert stops == [] and not watch.stopped
        assert sample(metrics, "gateway_kafka_claims_unchecked") == 0
        await fails_at(1015, "Describe refused")
        assert stops == [True] and watch.unchecked and watch.violations == []
        assert sample(metrics, "gateway_kafka_claims_unchecked") == 1
        assert sample(metrics, "gateway_kafka_unbound_writers") == 0  # no binding was found
        await fails_at(1020, "still refused")
        assert stops == [True]  # told once
        (error,) = errors(caplog)
        assert "intake stopped, the cluster's ACLs could not be read since " in error
        assert "last error: Describe refused" in error

        clock.now, acls.error = 1025, None
        watch.settle(await watch.check())
    assert stops == [True, False] and not watch.stopped
    assert sample(metrics, "gateway_kafka_claims_unchecked") == 0
    assert sample(metrics, "gateway_kafka_acl_check_failures_total") == 4
    assert "can be read again" in caplog.records[-1].getMessage()
    assert "intake resumes" in caplog.records[-1].getMessage()


async def test_the_bound_counts_from_the_last_check_that_succeeded() -> None:
    metrics, acls, clock = Metrics(), Acls(), Clock()
    stops: list[bool] = []
    watch = ClaimsWatch(
        source(acl_check_interval=5),
        describe=acls.describe,
        metrics=metrics,
        stop_intake=stops.append,
        clock=clock,
    )
    clock.now = 1012
    watch.settle(await watch.check())
    clock.now = 1026.9
    watch.lapse()
    assert stops == []
    clock.now = 1027
    watch.lapse()
    assert stops == [True]


async def test_unbound_and_unread_stop_intake_once_and_both_must_clear() -> None:
    metrics, acls, clock = Metrics(), Acls(), Clock()
    stops: list[bool] = []
    watch = ClaimsWatch(
        source(acl_check_interval=1),
        describe=acls.describe,
        metrics=metrics,
        stop_intake=stops.append,
        clock=clock,
    )
    acls.bindings = [write("telemetry", "User:mallory")]
    watch.settle(await watch.check())
    assert stops == [True]
    clock.now += 5
    watch.lapse()
    assert watch.unchecked and stops == [True]
    watch.settle(await watch.check())  # read again, still unbound
    assert not watch.unchecked and watch.stopped and stops == [True]
    acls.bindings = []
    watch.settle(await watch.check())
    assert stops == [True, False]


async def test_a_check_that_hangs_does_not_hold_intake_open(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics, answer = Metrics(), asyncio.Event()
    stops: list[bool] = []

    async def hangs() -> Sequence[AclBinding]:
        await answer.wait()
        return []

    watch = ClaimsWatch(
        source(acl_check_interval=0.01), describe=hangs, metrics=metrics, stop_intake=stops.append
    )
    task = asyncio.create_task(watch.run())
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.sources.kafka_claims"):
            await until(lambda: stops == [True])  # while the first check still waits
            (error,) = errors(caplog)
            assert "no check has answered" in error
            answer.set()
            await until(lambda: stops == [True, False])
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
