"""Whether a Kafka cluster's ACLs bind a source's identity claims to the principals that write.

Kafka authenticates producers but does not stamp records with their principal, so a claim is
only as good as the ACLs around it. With topic claims (`topic:telemetry.{identity}`) each
identity's topic may be written only by `User:<identity>` and the source's `trusted_producers`;
with key or header claims every principal that may write a consumed topic must be trusted.
`unbound_writers` reads the cluster's ACL bindings and names each one that breaks this;
`ClaimsWatch` repeats the check while the source runs and tells it whether to stop intake.

The check sees only ALLOW bindings of Write or All on topics, which is what writing a topic
needs; everything else is left out. Conservatively:
- DENY bindings are ignored: a deny is narrowed by its host and pattern and can be deleted on
  its own, so it cannot be relied on to cover every way a broader allow reaches a topic.
  Remove the allow instead.
- `User:*` is always a violation, trusted or not.
- A literal `*` topic, or a prefix that covers topics of several identities, counts for every
  consumed topic it matches. A prefix is bound to identity X only when it fixes the whole
  identity level: `telemetry.X.` for `telemetry.{identity}.{stream}`; `telemetry.X` is not
  (it also covers `telemetry.X2`), and with `telemetry.{identity}` no prefix is.
- With `topic_pattern`, any binding that could match a topic of the pattern counts (the
  pattern's literal beginning is all that rules a prefix out), since its topics may be created
  later; with `topics`, exactly the listed topics count. Bindings on topics the source does not
  consume are ignored, and so are topics that do not fit the template (they claim nobody).
- A check that cannot be made (Describe on the cluster revoked, brokers away) is as blind as a
  widened ACL: once none has succeeded for `UNCHECKED_AFTER` intervals, intake stops too.

What DescribeAcls cannot show is not checked: the broker's super users (`super.users`) may write
everything and appear in no binding, and a broker with `allow.everyone.if.no.acl.found=true`
lets anyone write a topic that has no ACL at all. Keep both to the gateway's trusted producers.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.config import KafkaSourceConfig
from gateway.kafka_admin import AclBinding, KafkaAdmin
from gateway.metrics import Metrics
from gateway.topics import TopicTemplate

__all__ = [
    "UNCHECKED_AFTER",
    "ClaimsWatch",
    "Violation",
    "literal_prefix",
    "topic_writes",
    "unbound_writers",
]

log = logging.getLogger(__name__)

ANYONE = "User:*"
_WRITES = frozenset({"write", "all"})
_SEPARATOR = "."
_ESCAPABLE = frozenset(r"\.^$*+?{}[]|()-/ #&~,:;<=>!@%'\"`_")
_SPECIAL = frozenset(".^$*+?{}[]|()")
_OPTIONAL = frozenset("*?{")

UNCHECKED_AFTER = 3
"""Check intervals without one successful check after which intake stops. One failed check is
routine (a broker restarting, a leader moving) and stopping on it would make pods flap; but a
watch that cannot read the ACLs would miss a widened one, so the blind spot is kept to three."""


@dataclass(frozen=True, slots=True)
class Violation:
    """An ACL binding that lets a principal write records the source would take as another
    identity's; `reason` says which topic and identity, for logs and the start-up error."""

    binding: AclBinding
    reason: str

    def __str__(self) -> str:
        return f"{self.reason} (ACL: {self.binding})"


def unbound_writers(config: KafkaSourceConfig, bindings: Sequence[AclBinding]) -> list[Violation]:
    """The bindings (one violation each, in their order) that break the source's claims."""
    scope = _Scope(config)
    violations = []
    for binding in bindings:
        if not _may_write(binding):
            continue
        reason = scope.violation(binding)
        if reason is not None:
            violations.append(Violation(binding, reason))
    return violations


def _may_write(binding: AclBinding) -> bool:
    return (
        binding.resource_type == "topic"
        and binding.permission == "allow"
        and binding.operation in _WRITES
    )


def literal_prefix(pattern: str) -> str:
    """Text every topic the pattern matches (`re.match`, as the consumer does) starts with.

    Conservative: it stops at the first construct that is not a plain character, and is empty
    for any alternation, so it may be shorter than the real prefix but never longer.
    """
    if "|" in pattern:
        return ""
    prefix: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        width = 1
        if char == "\\":
            if i + 1 >= len(pattern) or pattern[i + 1] not in _ESCAPABLE:
                break  # a class such as \d, or a back-reference
            char, width = pattern[i + 1], 2
        elif char in _SPECIAL:
            if char == "^" and i == 0:
                i += 1
                continue
            break
        following = pattern[i + width : i + width + 1]
        if following and following in _OPTIONAL:
            break  # the character may be absent
        prefix.append(char)
        if following == "+":
            break
        i += width
    return "".join(prefix)


def _describe(binding: AclBinding) -> str:
    name = binding.resource_name
    if binding.pattern_type == "prefixed":
        return f"every topic starting with {name!r}"
    if name == "*":
        return "every topic"
    return f"topic {name}"


class _Scope:
    """What a source consumes and how it claims identities, compiled once per check."""

    def __init__(self, config: KafkaSourceConfig) -> None:
        self.trusted = frozenset(config.trusted_producers)
        self.topics = list(config.topics)
        self.pattern = re.compile(config.topic_pattern) if config.topic_pattern else None
        self.pattern_prefix = literal_prefix(config.topic_pattern or "")
        claim = config.identity_from
        self.by_topic = claim.startswith("topic:")
        template = claim.removeprefix("topic:") if self.by_topic else "{identity}"
        self.levels = template.split(_SEPARATOR)
        self.template = TopicTemplate(template, separator=_SEPARATOR)
        self.parse = self.template.parse
        self.carrier = "key" if claim == "key" else f"header {claim.removeprefix('header:')!r}"

    def violation(self, binding: AclBinding) -> str | None:
        principal = binding.principal
        prefixed = binding.pattern_type == "prefixed"
        covered: list[str] | None  # the consumed topics it covers; None: not known by name
        if prefixed:
            covered = None
            if self.pattern is None:
                covered = [t for t in self.topics if t.startswith(binding.resource_name)]
        elif binding.resource_name == "*":
            covered = self.topics if self.pattern is None else None
        else:
            covered = [t for t in self.topics if t == binding.resource_name]
            if self.pattern is not None and self.pattern.match(binding.resource_name):
                covered = [binding.resource_name]
        if covered is None and not self._could_match(binding):
            return None
        if covered is not None and not covered:
            return None
        what = _describe(binding)
        if principal == ANYONE:
            return f"every principal ({ANYONE}) may write {what}"
        if principal in self.trusted:
            return None
        if not self.by_topic:
            return (
                f"{principal} may write {what}, whose records name their identity in the "
                f"{self.carrier}, and is not one of the trusted producers"
            )
        own = principal.removeprefix("User:") if principal.startswith("User:") else None
        if covered is not None:
            for topic in covered:
                claimed = self.parse(topic)
                if claimed is not None and claimed[0] != own:
                    where = "" if what == f"topic {topic}" else f" ({what})"
                    return (
                        f"{principal} may write topic {topic}{where}, "
                        f"which claims identity {claimed[0]}"
                    )
            return None
        return self._pattern_violation(binding, principal, own, what)

    def _could_match(self, binding: AclBinding) -> bool:
        """Whether a binding not settled by name could cover a topic of the pattern."""
        if binding.pattern_type != "prefixed":
            return True  # the literal `*`
        name, start = binding.resource_name, self.pattern_prefix
        return name.startswith(start) or start.startswith(name)

    def _pattern_violation(
        self, binding: AclBinding, principal: str, own: str | None, what: str
    ) -> str | None:
        if binding.pattern_type != "prefixed" or binding.resource_name == "":
            return f"{principal} may write {what}, which includes topics of other identities"
        bound = self.template.prefix_identity(binding.resource_name)
        if bound is None:
            return None  # no topic under this prefix fits the template
        if bound == "":
            return (
                f"{principal} may write {what}, which does not fix the identity level of "
                f"{_SEPARATOR.join(self.levels)!r} and so covers several identities' topics"
            )
        if bound != own:
            return f"{principal} may write {what}, whose topics claim identity {bound}"
        return None


async def topic_writes(config: KafkaSourceConfig) -> list[AclBinding]:
    """The cluster's ALLOW bindings that apply to the source's topics, read as its own principal
    (which needs Describe on the cluster); a connection of its own for each check, so a broker
    that went away and came back needs nothing more. Raises `KafkaAdminError`.

    Listed topics are asked one by one (the broker gives the literal, prefixed and `*`
    bindings that apply to each), so a cluster with an ACL per identity is not read whole
    every few seconds; a pattern may match topics made later, so it needs every topic binding.
    """
    async with KafkaAdmin(config) as admin:
        if config.topic_pattern is not None:
            return await admin.describe_acls(resource_type="topic", permission="allow")
        found: dict[AclBinding, None] = {}
        for topic in config.topics:
            applying = await admin.describe_acls(
                resource_type="topic", resource_name=topic, pattern_type="match", permission="allow"
            )
            found.update(dict.fromkeys(applying))
        return list(found)


Describe = Callable[[], Awaitable[Sequence[AclBinding]]]


class ClaimsWatch:
    """Re-checks a source's ACLs every `acl_check_interval` seconds while it runs.

    Intake stops while the last check found unbound writers, or while no check has succeeded
    for `UNCHECKED_AFTER` intervals (a timer, so a check that hangs does not hold it open);
    `stop_intake` is told each time that changes. Each new verdict is logged once (an error
    naming every binding, or why the ACLs went unread), and so is each streak of failed checks.
    Between two checks a widened ACL goes unseen, and records it let in before intake stopped,
    or while it lasted, cannot be told from others: they are read when intake resumes.
    """

    def __init__(
        self,
        config: KafkaSourceConfig,
        *,
        describe: Describe,
        metrics: Metrics,
        stop_intake: Callable[[bool], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.violations: list[Violation] = []
        self.unchecked = False  # no check has succeeded within the bound
        self.failures = 0
        self.bound = UNCHECKED_AFTER * config.acl_check_interval
        self._describe = describe
        self._gauge = metrics.kafka_unbound_writers.labels(config.name)
        self._unchecked_gauge = metrics.kafka_claims_unchecked.labels(config.name)
        self._failed = metrics.kafka_acl_check_failures.labels(config.name)
        self._stop_intake = stop_intake
        self._clock = clock
        self._checked_at = clock()
        self._checked_when = datetime.now(UTC)
        self._error: Exception | None = None  # the last failure since a check succeeded
        self._timer: asyncio.TimerHandle | None = None

    @property
    def stopped(self) -> bool:
        """Whether intake must stop: unbound writers found, or the ACLs unread too long."""
        return bool(self.violations) or self.unchecked

    async def check(self) -> list[Violation]:
        """Read the ACLs and judge them; raises whatever reading them raised."""
        violations = unbound_writers(self.config, await self._describe())
        self._checked_at = self._clock()
        self._checked_when = datetime.now(UTC)
        self._gauge.set(len(violations))
        if self._timer is not None:
            self._arm()
        return violations

    def settle(self, violations: list[Violation]) -> None:
        """Take a successful check's verdict: log it and pass it on when it changed."""
        stopped, recovered = self.stopped, self.unchecked
        changed = violations != self.violations
        self.violations, self.unchecked, self._error = violations, False, None
        self._unchecked_gauge.set(0)
        name = self.config.name
        if changed and violations:
            log.error(
                "kafka source %s: intake stopped, identity claims not bound to who writes: %s",
                name,
                "; ".join(map(str, violations)),
                extra={"source": name},
            )
        elif stopped and not violations:
            log.warning(
                "kafka source %s: %s; intake resumes",
                name,
                "the cluster's ACLs can be read again and bind the identity claims"
                if recovered
                else "identity claims bound again",
                extra={"source": name},
            )
        if self.stopped != stopped:
            self._stop_intake(self.stopped)

    def failed(self, exc: Exception) -> None:
        """Count a check that could not be made; the verdict stands until the bound passes."""
        self.failures += 1
        self._failed.inc()
        if self._error is None:
            name = self.config.name
            log.warning(
                "kafka source %s: cannot read the cluster's ACLs (%s); intake stops unless a "
                "check succeeds within %gs of the last one",
                name,
                exc,
                self.bound,
                extra={"source": name},
            )
        self._error = exc

    def lapse(self) -> None:
        """Stop intake once no check has succeeded for the bound (early calls re-arm)."""
        if self.unchecked:
            return
        if self._clock() - self._checked_at < self.bound:
            if self._timer is not None:
                self._arm()
            return
        stopped = self.stopped
        self.unchecked = True
        self._unchecked_gauge.set(1)
        name = self.config.name
        log.error(
            "kafka source %s: intake stopped, the cluster's ACLs could not be read since %s "
            "(%s), so a principal that may write as another identity would go unseen; it "
            "resumes once a check succeeds (brokers reachable, Describe on the cluster granted "
            "to the source's principal)",
            name,
            self._checked_when.isoformat(timespec="seconds"),
            f"last error: {self._error}" if self._error else "no check has answered",
            extra={"source": name},
        )
        if not stopped:
            self._stop_intake(True)

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        due = self._checked_at + self.bound - self._clock()
        self._timer = asyncio.get_running_loop().call_later(max(due, 0), self.lapse)

    async def run(self) -> None:
        self._arm()
        try:
            while True:
                await asyncio.sleep(self.config.acl_check_interval)
                try:
                    violations = await self.check()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.failed(exc)  # broker away or Describe revoked
                    continue
                self.settle(violations)
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
