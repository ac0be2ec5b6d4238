"""The engine: identity -> role -> route -> decode -> batch -> write -> acknowledge.

Sources hand over lists of messages; `submit` resolves and decodes each one synchronously (no
per-message task, database round trip or model), appends its rows to the batcher of its (role,
table), and remembers the message there. A message is acknowledged only when the batch holding
its rows, or the reject record saying why it has none, is committed. Buffered rows are bounded:
when the bound is reached, the source pumps stop asking for more, so the brokers' own flow
control (MQTT receive maximum, Kafka pause) holds everything else upstream.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from operator import itemgetter
from typing import Any, TypeVar, cast

from gateway import pgtime
from gateway.activity import Activity
from gateway.batching import Batch, Batcher, BatchPolicy
from gateway.contracts import Message, Route, Row, Source
from gateway.decoder import DecodeLimits, Reject, decode
from gateway.identities.cache import CachedIdentity
from gateway.identities.model import NAME_PATTERN
from gateway.identities.provisioning import ProvisionRule, match_rule
from gateway.logs import RateLimitedLog
from gateway.metrics import Metrics
from gateway.reject_budget import RejectBudget, Summary

__all__ = ["REJECT_COLUMNS", "Pipeline"]

log = logging.getLogger(__name__)

# A reject record's columns, in the order `_record` fills them: the rejects route's table.
REJECT_COLUMNS = (
    "at",
    "source",
    "reason",
    "identity",
    "topic",
    "payload_prefix",
    "detail",
    "message_key",
    "count",
)
PAYLOAD_PREFIX = 256
TOPIC_KEPT = 256  # of a reject's topic; the rest is the sender's to choose, not ours to store
MAX_PENDING_PROVISION = 10_000
HELD_PROBE_SECONDS = 5.0
MINUTE_US = 60_000_000

M = TypeVar("M", bound=Message)

Lookup = Callable[[str], CachedIdentity | None]
Provision = Callable[[str, ProvisionRule], Awaitable[None]]


class Pipeline:
    """The engine over `routes`: one per (role, stream), and the one marked `rejects`."""

    def __init__(
        self,
        *,
        lookup: Lookup,
        routes: Iterable[Route],
        metrics: Metrics,
        activity: Activity,
        policy: BatchPolicy,
        limits: DecodeLimits,
        max_buffered_rows: int,
        max_buffered_bytes: int = 64 * 1024 * 1024,
        rejects_per_minute: int = 60,
        max_topic_length: int = 1024,
        unknown: str = "reject",
        provision_rules: Sequence[ProvisionRule] = (),
        provision: Provision | None = None,
    ) -> None:
        self._lookup = lookup
        # (role, stream) -> the routes its messages feed: one, or several (each its own table).
        self._routes: dict[tuple[str, str], list[Route]] = {}
        by_table: dict[tuple[str, str], Route] = {}  # routes into one table share its batches
        rejects: list[Route] = []
        for route in routes:
            if route.rejects:
                rejects.append(route)
            elif route.stream is None:
                raise ValueError(f"the route of {route.role} to {route.table} has no stream")
            else:
                fed_by = route.for_role or route.role
                self._routes.setdefault((fed_by, route.stream), []).append(route)
                by_table[(route.role, route.table)] = route
        if len(rejects) != 1:
            raise ValueError(f"exactly one route must take reject records, not {len(rejects)}")
        self.metrics = metrics
        self.activity = activity
        self._limits = limits
        self._max_buffered = max_buffered_rows
        self._max_bytes = max_buffered_bytes
        self._max_topic = max_topic_length
        self._budget = RejectBudget(rejects_per_minute)
        self._summary_timer: asyncio.TimerHandle | None = None
        self._instance = os.urandom(8)  # keeps summary rows of different processes apart
        self._summaries_written = 0
        self._unknown = unknown
        self._rules = list(provision_rules)
        self._provision = provision
        self._streams = {stream for _, stream in self._routes}
        self._batchers: dict[tuple[str, str], Batcher] = {
            key: Batcher(route, policy, self._flush_soon) for key, route in by_table.items()
        }
        self._rejects = Batcher(rejects[0], policy, self._flush_soon)
        self._flushing: set[asyncio.Task[None]] = set()
        self._probes: set[asyncio.Future[None]] = set()
        self._buffered = 0
        self._held_bytes = 0  # of batches cut and not yet committed
        # (role, stream) -> its routes whose tables refuse writes, out of `_routes` meanwhile
        self._held: dict[tuple[str, str], list[Route]] = {}
        self._held_errors: dict[tuple[str, str], str] = {}  # (role, table) -> why
        self._capacity = asyncio.Event()
        self._capacity.set()
        self._pending: dict[str, list[tuple[Source[Any], Any]]] = {}
        self._pending_count = 0
        self._internal_log = RateLimitedLog(log)
        self._provision_log = RateLimitedLog(log)
        self._refused_log = RateLimitedLog(log)

    # -- intake ----------------------------------------------------------------------------

    @property
    def buffered_rows(self) -> int:
        return self._buffered

    @property
    def buffered_bytes(self) -> int:
        return self._held_bytes

    @property
    def has_capacity(self) -> bool:
        return self._capacity.is_set()

    async def pump(self, source: Source[M]) -> None:
        """Feed the pipeline from a source until cancelled, pausing it while buffers are full."""
        while True:
            if not self._capacity.is_set():
                source.pause()
                await self._capacity.wait()
                await source.resume()
            self.submit(source, await source.receive())

    def submit(self, source: Source[M], messages: Iterable[M]) -> None:
        """Route, decode and buffer each message; bad ones become reject records."""
        received_at = pgtime.now()
        count = 0
        claim, lookup, routes, limits = source.claim, self._lookup, self._routes, self._limits
        batchers, unclaimed, held = self._batchers, source.unclaimed_reason, self._held
        for message in messages:
            count += 1
            # One message must never stop intake: whatever a step raises that it did not
            # foresee becomes that message's reject, and the messages around it go on.
            try:
                claimed = claim(message)
                if claimed is None:
                    self._unclaimed(source, message, unclaimed, received_at)
                    continue
                identity, stream = claimed
                entry = lookup(identity)
                if entry is None:
                    self._unknown_identity(source, message, identity, received_at)
                    continue
                if entry.status != "active":  # not the `active` property: a call per message
                    self._reject(
                        source, message, "retired_identity", identity, "retired", received_at
                    )
                    continue
                targets = routes.get((entry.role, stream))
                if targets is None:
                    self._unrouted(source, message, identity, entry.role, stream, received_at)
                    continue
                if len(targets) > 1 or (held and (entry.role, stream) in held):
                    self._fan_out(
                        source, message, identity, entry.role, stream, targets, received_at
                    )
                    continue
                route = targets[0]
                payload = message.payload
                try:
                    if route.decode is None:  # telemetry: the hot path, called directly
                        rows = decode(payload, identity, received_at, limits, route.dedup)
                    else:
                        rows = route.decode(payload, identity, stream, received_at)
                except Reject as reject:
                    self._reject(
                        source, message, reject.reason, identity, reject.detail, received_at
                    )
                    continue
                batchers[(route.role, route.table)].add(rows, len(payload), source, message)
                self._buffered += len(rows)
            except Exception as exc:
                self._internal_error(source, message, exc, received_at)
        self.metrics.messages_received.labels(source.name).inc(count)
        self._check_capacity()

    def _fan_out(
        self,
        source: Source[M],
        message: M,
        identity: str,
        role: str,
        stream: str,
        targets: Sequence[Route],
        at: int,
    ) -> None:
        """A message feeding several routes (or one of whose routes is held): each route gets
        its rows, or a reject record saying why it has none, and the message is acknowledged
        once all of them are committed. One route refusing the payload loses nothing of the
        others'; only when every route refuses it is it one ordinary reject."""
        payload = message.payload
        parts: list[tuple[Route, list[Row]]] = []
        refused: list[tuple[Route, Reject]] = []
        for route in targets:
            try:
                if route.decode is None:
                    rows = decode(payload, identity, at, self._limits, route.dedup)
                else:
                    rows = route.decode(payload, identity, stream, at)
            except Reject as refusal:
                refused.append((route, refusal))
            else:
                parts.append((route, rows))
        unavailable = self._held.get((role, stream), [])
        if not parts and not unavailable:
            detail = "; ".join(f"{route.table}: {r.detail}" for route, r in refused)
            self._reject(source, message, refused[0][1].reason, identity, detail, at)
            return
        # Stands in for the source of each part (it answers what batches and records ask).
        shared = cast(
            Source[M], Shared(source, message, len(parts) + len(refused) + len(unavailable))
        )
        for route, rows in parts:
            self._batchers[(route.role, route.table)].add(rows, len(payload), shared, message)
            self._buffered += len(rows)
        # Each record takes the payload from the message (and empties it): give it back first.
        for route in unavailable:
            message.payload = payload
            self._reject_unavailable(shared, message, identity, route, at)
        for route, why in refused:
            message.payload = payload
            detail = f"{route.table}: {why.detail}"
            self._reject(shared, message, why.reason, identity, detail, at, part=route.table)

    def _check_capacity(self) -> None:
        if self._buffered >= self._max_buffered or self._held_bytes >= self._max_bytes:
            self._capacity.clear()

    def _unclaimed(self, source: Source[M], message: M, reason: str, at: int) -> None:
        if not self._topic_too_long(source, message, at):
            self._reject(source, message, reason, None, "no identity claim", at)

    def _topic_too_long(self, source: Source[M], message: M, at: int) -> bool:
        """Reject a topic longer than the limit, whatever it claims; says whether it did."""
        length = len(message.topic)
        if length <= self._max_topic:
            return False
        detail = f"topic of {length} characters, limit {self._max_topic}"
        self._reject(source, message, "topic_too_long", None, detail, at)
        return True

    def _unrouted(
        self, source: Source[M], message: M, identity: str, role: str, stream: str, at: int
    ) -> None:
        held = self._held.get((role, stream))
        if len(held or ()) > 1:  # each held route's part gets its record
            self._fan_out(source, message, identity, role, stream, (), at)
        elif held:
            self._reject_unavailable(source, message, identity, held[0], at)
        elif stream not in self._streams:
            detail = f"role {role} may not write stream {stream[:TOPIC_KEPT]!r}"
            self._reject(source, message, "unknown_stream", identity, detail, at)
        else:
            detail = f"role {role} may not write stream {stream!r}"
            self._reject(source, message, "not_permitted", identity, detail, at)

    def _internal_error(self, source: Source[M], message: M, exc: Exception, at: int) -> None:
        """A step failed in a way nobody foresaw: reject the message, say which exception.

        Logged at a bounded rate, so that a flood of such messages cannot flood the log too."""
        detail = f"{type(exc).__name__}: {exc}"[:200]  # its text may quote what a device sent
        self._internal_log.warning("message rejected after %s", detail)
        try:
            self._reject(source, message, "internal_error", None, detail, at)
        except Exception:
            # Not even its record can be made: count it, say so, and let it go rather than
            # let it stop the messages after it (it would fail the same way every time).
            self._internal_log.log(logging.ERROR, "no record possible", exc_info=True)
            source.ack((message,))

    def _unknown_identity(
        self, source: Source[M], message: M, identity: str, received_at: int
    ) -> None:
        if self._topic_too_long(source, message, received_at):
            return
        if NAME_PATTERN.fullmatch(identity) is None:
            # Not a name the registry could hold: not stored, not provisioned, not counted.
            detail = f"claimed identity of {len(identity)} characters is not a valid name"
            self._reject(source, message, "invalid_identity", None, detail, received_at)
            return
        if self._unknown == "quarantine":
            self._reject(
                source, message, "quarantined", identity, "unknown identity", received_at, False
            )
            return
        rule = match_rule(self._rules, identity) if self._unknown == "provision" else None
        if rule is None or self._provision is None:
            self._reject(
                source, message, "unknown_identity", identity, "not registered", received_at, False
            )
            return
        if self._pending_count >= MAX_PENDING_PROVISION:
            reason, detail = "provisioning_backlog", "too many pending"
            self._reject(source, message, reason, identity, detail, received_at, False)
            return
        waiting = self._pending.get(identity)
        self._pending_count += 1
        if waiting is not None:
            waiting.append((source, message))
            return
        self._pending[identity] = [(source, message)]
        self._spawn(self._provision_then_resubmit(identity, rule))

    async def _provision_then_resubmit(self, identity: str, rule: ProvisionRule) -> None:
        assert self._provision is not None
        try:
            await self._provision(identity, rule)
        except Exception as exc:
            self._provision_log.warning(
                "provisioning %s failed: %s", identity, exc, extra={"identity": identity}
            )
        waiting = self._pending.pop(identity, [])
        self._pending_count -= len(waiting)
        by_source: dict[int, tuple[Source[Any], list[Any]]] = {}
        for source, message in waiting:
            by_source.setdefault(id(source), (source, []))[1].append(message)
        # Resubmitted messages are counted again as received; reject a provisioning failure
        # rather than loop: the lookup now answers None only if the insert really failed.
        for source, messages in by_source.values():
            if self._lookup(identity) is None:
                for message in messages:
                    self._reject(
                        source,
                        message,
                        "unknown_identity",
                        identity,
                        "provisioning failed",
                        pgtime.now(),
                        False,
                    )
            else:
                self.submit(source, messages)

    def _reject(
        self,
        source: Source[M],
        message: M,
        reason: str,
        identity: str | None,
        detail: str,
        at: int,
        registered: bool = True,
        part: str = "",
    ) -> None:
        """Count the reject; store its record while the sender is within its budget, else
        count it into the minute's summary and acknowledge it at once. `part`: the table of
        one route of several the message feeds, each of whose records is kept."""
        self.metrics.messages_rejected.labels(source.name, reason).inc()
        if identity is not None and registered:
            self.activity.rejected(identity)
        budget = self._budget
        ended = budget.roll(at // MINUTE_US)
        if ended:
            self._summarise(ended)
        sender = identity if identity is not None else message.topic
        if not budget.admit(source.name, sender, registered and identity is not None, reason):
            self.metrics.rejects_summarised.labels(source.name, reason).inc()
            message.payload = b""
            source.ack((message,))
            if self._summary_timer is None:
                self._summary_timer = asyncio.get_running_loop().call_later(
                    MINUTE_US / 1e6 - (at % MINUTE_US) / 1e6 + 0.05, self._end_minute
                )
            return
        self._record(source, message, reason, identity, detail[:1000], at, PAYLOAD_PREFIX, part)

    def _reject_unavailable(
        self, source: Source[M], message: M, identity: str | None, route: Route, at: int
    ) -> None:
        """The message's table refuses every write: its record keeps the whole payload, so
        that nothing of it is lost, and no budget applies (the sender did nothing wrong)."""
        reason = "route_unavailable"
        self.metrics.messages_rejected.labels(source.name, reason).inc()
        error = self._held_errors.get((route.role, route.table), "")
        detail = f"{route.table} refuses writes as {route.role}: {error}"
        self._record(source, message, reason, identity, detail[:1000], at, None, route.table)

    def _record(
        self,
        source: Source[M],
        message: M,
        reason: str,
        identity: str | None,
        detail: str,
        at: int,
        prefix: int | None,
        part: str = "",
    ) -> None:
        """Buffer a message's reject record; from here on the record is all that is kept."""
        payload = message.payload
        kept = bytes(payload if prefix is None else payload[:prefix])
        topic = message.topic
        key = hashlib.blake2b(
            f"{source.name}\0{source.position(message)}\0{topic}\0{part}".encode(
                "utf-8", "surrogatepass"
            ),
            digest_size=16,
        )
        # What the record keeps and the length: enough to know the same message again, without
        # hashing 256 KiB for every reject of a flood.
        key.update(kept)
        key.update(len(payload).to_bytes(8, "big"))
        shown = _storable(identity[:TOPIC_KEPT]) if identity is not None else None
        row = (
            at,
            source.name,
            reason,
            shown,
            _storable(topic[:TOPIC_KEPT]),
            kept,
            _storable(detail),
            key.digest(),
            1,
        )
        message.payload = b""
        self._buffered += 1
        self._rejects.add((row,), len(kept), source, message)
        self._check_capacity()

    def _end_minute(self) -> None:
        self._summary_timer = None
        self._summarise(self._budget.roll(pgtime.now() // MINUTE_US))

    def _summarise(self, summaries: list[Summary]) -> None:
        """One row per (sender, reason, minute) for the rejects that were only counted."""
        for summary in summaries:
            self._summaries_written += 1
            key = hashlib.blake2b(
                self._instance + self._summaries_written.to_bytes(8, "big"), digest_size=16
            ).digest()
            identity, topic = (
                (summary.sender, None) if summary.registered else (None, summary.sender)
            )
            detail = (
                f"{summary.count} more {summary.reason} rejects in this minute, beyond "
                f"{self._budget.per_minute} stored whole"
            )
            row = (
                summary.minute * MINUTE_US,
                summary.source,
                summary.reason,
                identity,
                topic,
                b"",
                detail,
                key,
                summary.count,
            )
            self._buffered += 1
            self._rejects.add((row,), 0, None, None)

    # -- flushing --------------------------------------------------------------------------

    def _flush_soon(self, batcher: Batcher) -> None:
        batch = batcher.take()
        if batch is not None:
            self._held_bytes += batch.nbytes
            self._check_capacity()
            self._spawn(self._write(batcher.route, batch))

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def _write(self, route: Route, batch: Batch) -> None:
        started = time.monotonic()
        positions = self._positions(batch)
        outcome = await route.sink.write(batch.rows, positions)
        while outcome.held and route.rejects:
            # Nowhere to put a reject record's own failure: wait for the operator, loudly.
            log.error("reject records cannot be written: %s", outcome.held)
            self.metrics.route_held.labels(route.role, route.table).set(1)
            await asyncio.sleep(HELD_PROBE_SECONDS)
            outcome = await route.sink.write(batch.rows, positions)
        if outcome.held:
            self._hold(route, outcome.held)
            self._reject_batch(route, batch)
            self._release(batch)
            return
        if route.rejects:
            self.metrics.route_held.labels(route.role, route.table).set(0)
        if outcome.bad_rows:
            self._refused_by_database(route, outcome.bad_rows)
        role, table = route.role, route.table
        now = time.monotonic()
        if not route.rejects:  # reject records are not readings: nothing to count as written
            self.metrics.rows_written.labels(role, table).inc(outcome.written)
            self.metrics.batch_rows.observe(outcome.written)
            self.metrics.flush_duration.labels(role, table).observe(now - started)
            column = route.identity_column
            if column is not None:
                written = Counter(map(itemgetter(column), batch.rows))
                if outcome.bad_rows:  # refused rows count as their identity's rejects instead
                    written.subtract(row[column] for row, _ in outcome.bad_rows)
                self.activity.wrote(+written)
            if route.ts_column is not None:
                newest = max(map(itemgetter(route.ts_column), batch.rows))
                self.metrics.end_to_end_latency.observe(max(0.0, (pgtime.now() - newest) / 1e6))
        self._acknowledge(batch)
        self.metrics.ack_latency.observe(now - batch.started)
        self._release(batch)

    def _release(self, batch: Batch) -> None:
        """The batch no longer takes memory: intake may go on if it was waiting for that."""
        self._buffered -= len(batch.rows)
        self._held_bytes -= batch.nbytes
        if self._buffered < self._max_buffered and self._held_bytes < self._max_bytes:
            self._capacity.set()

    async def close(self) -> None:
        """Stop the probes of held tables and the end-of-minute timer (after `flush`)."""
        if self._summary_timer is not None:
            self._summary_timer.cancel()
            self._summary_timer = None
        for task in list(self._probes):
            task.cancel()
        await asyncio.gather(*self._probes, return_exceptions=True)

    def _hold(self, route: Route, error: str) -> None:
        """The table refuses every write: send its streams' messages to rejects, whole, until
        a probe finds it writable again; every other route keeps flowing meanwhile."""
        key = (route.role, route.table)
        held = key in self._held_errors
        self._held_errors[key] = error
        if held:
            return  # and probed already
        _move(self._routes, self._held, route)
        self.metrics.route_held.labels(route.role, route.table).set(1)
        log.error(
            "%s refuses writes as %s (%s): its messages go to rejects, whole, until it is fixed",
            route.table,
            route.role,
            error,
            extra={"role": route.role, "table": route.table},
        )
        probe = asyncio.ensure_future(self._probe(route))
        self._probes.add(probe)
        probe.add_done_callback(self._probes.discard)

    async def _probe(self, route: Route) -> None:
        while True:
            await asyncio.sleep(HELD_PROBE_SECONDS)
            try:
                error = await route.sink.probe()
            except Exception as exc:  # a probe that cannot even ask is no answer either
                error = f"{type(exc).__name__}: {exc}"
            if not error:
                break
            self._held_errors[(route.role, route.table)] = error
        _move(self._held, self._routes, route)
        self._held_errors.pop((route.role, route.table), None)
        self.metrics.route_held.labels(route.role, route.table).set(0)
        log.warning("%s takes writes as %s again", route.table, route.role)

    def _reject_batch(self, route: Route, batch: Batch) -> None:
        """A held table's batch: each message becomes a reject keeping its whole payload."""
        at = pgtime.now()
        for source, messages in batch.by_source():
            for message in messages:
                claimed = source.claim(message)
                identity = claimed[0] if claimed is not None else None
                self._reject_unavailable(source, message, identity, route, at)

    def _refused_by_database(self, route: Route, bad_rows: list[tuple[Row, str]]) -> None:
        """Rows the database refused go to rejects, tied to their identity, payload rebuilt."""
        if route.rejects:
            for row, error in bad_rows:
                self._refused_log.log(
                    logging.ERROR, "reject record refused by the database: %s (%r)", error, row[:5]
                )
            return
        for row, error in bad_rows:
            column = route.identity_column
            identity = row[column] if column is not None else None
            self.metrics.messages_rejected.labels("database", "database_refused").inc()
            if identity is not None:
                self.activity.rejected(identity)
            shown = row[2:5] if route.decode is None else row  # telemetry: metric, value, tags
            payload = repr(shown).encode()[:PAYLOAD_PREFIX]
            record = (
                pgtime.now(),
                "database",
                "database_refused",
                identity,
                route.table,
                payload,
                _storable(error[:1000]),
                None,  # no message behind it: nothing to recognise if it came again
                1,
            )
            # No message: it is acknowledged with its batch; its rows' fate is recorded here.
            self._buffered += 1
            self._rejects.add((record,), len(payload), None, None)

    def _acknowledge(self, batch: Batch) -> None:
        for source, messages in batch.by_source():
            source.ack(messages)

    @staticmethod
    def _positions(batch: Batch) -> dict[str, Any]:
        if not batch.messages:
            return {}
        first_source, last_source = batch.runs[0][0], batch.runs[-1][0]
        return {
            "messages": len(batch.messages),
            "first": [first_source.name, first_source.position(batch.messages[0])],
            "last": [last_source.name, last_source.position(batch.messages[-1])],
        }

    def report_buffers(self) -> None:
        """Refresh the buffered-rows gauge (called by the metrics endpoint, not per message)."""
        for (role, table), batcher in self._batchers.items():
            self.metrics.buffered_rows.labels(role, table).set(len(batcher))

    async def flush(self) -> None:
        """Cut every open batch now and wait until everything in flight is committed."""
        self._summarise(self._budget.take_summaries())
        for batcher in [*self._batchers.values(), self._rejects]:
            self._flush_soon(batcher)
        while self._flushing or self._pending:
            await asyncio.gather(*list(self._flushing), return_exceptions=True)
            if self._pending and not self._flushing:
                await asyncio.sleep(0.01)
            for batcher in [*self._batchers.values(), self._rejects]:
                self._flush_soon(batcher)

    async def abandon(self) -> None:
        """Cancel writes still in flight: their messages stay unacknowledged and come again."""
        for task in list(self._flushing):
            task.cancel()
        await asyncio.gather(*list(self._flushing), return_exceptions=True)


class Shared:
    """One message feeding several routes, as the source of each of its parts: the parts are
    acknowledged one by one (a batch, a reject record), the message at its source with the last.

    It stands in for the source wherever a batch or record names one, so it answers the same
    questions (name, claim, position) by asking the source.
    """

    __slots__ = ("message", "remaining", "source")

    def __init__(self, source: Source[Any], message: Any, parts: int) -> None:
        self.source = source
        self.message = message
        self.remaining = parts

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def claim(self) -> Callable[[Any], tuple[str, str] | None]:
        return self.source.claim

    def position(self, message: Any) -> Any:
        return self.source.position(message)

    def ack(self, messages: Sequence[Any]) -> None:
        self.remaining -= len(messages)
        if self.remaining == 0:
            self.source.ack((self.message,))


def _move(
    origin: dict[tuple[str, str], list[Route]],
    target: dict[tuple[str, str], list[Route]],
    route: Route,
) -> None:
    """Move every (role, stream)'s routes into `route`'s (role, table) from one map to the other."""
    for key, routes in list(origin.items()):
        moving = [r for r in routes if r.role == route.role and r.table == route.table]
        if not moving:
            continue
        target.setdefault(key, []).extend(moving)
        rest = [r for r in routes if r not in moving]
        if rest:
            origin[key] = rest
        else:
            del origin[key]


def _storable(text: str) -> str:
    """Text PostgreSQL can store, whatever a sender put in it: no NUL, no lone surrogate.

    Reject records quote what was sent; a record the database refused would be lost."""
    if text.isascii() and "\x00" not in text:
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
