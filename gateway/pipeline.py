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
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from operator import itemgetter
from typing import Any, TypeVar

from gateway import pgtime
from gateway.activity import Activity
from gateway.batching import Batch, Batcher, BatchPolicy
from gateway.contracts import Message, Route, Row, Source
from gateway.decoder import DecodeLimits, Reject, decode
from gateway.identities.cache import CachedIdentity
from gateway.identities.provisioning import ProvisionRule, match_rule
from gateway.metrics import Metrics

__all__ = ["REJECT_COLUMNS", "Pipeline"]

log = logging.getLogger(__name__)

# A reject record's columns, in the order `_reject` fills them: the rejects route's table.
REJECT_COLUMNS = ("at", "source", "reason", "identity", "topic", "payload_prefix", "detail")
_TS, _IDENTITY = itemgetter(0), itemgetter(1)  # of telemetry rows; map() runs them in C
PAYLOAD_PREFIX = 256
MAX_PENDING_PROVISION = 10_000

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
        unknown: str = "reject",
        provision_rules: Sequence[ProvisionRule] = (),
        provision: Provision | None = None,
    ) -> None:
        self._lookup = lookup
        self._routes: dict[tuple[str, str], Route] = {}
        by_table: dict[tuple[str, str], Route] = {}  # routes into one table share its batches
        rejects: list[Route] = []
        for route in routes:
            if route.rejects:
                rejects.append(route)
            elif route.stream is None:
                raise ValueError(f"the route of {route.role} to {route.table} has no stream")
            else:
                self._routes[(route.role, route.stream)] = route
                by_table[(route.role, route.table)] = route
        if len(rejects) != 1:
            raise ValueError(f"exactly one route must take reject records, not {len(rejects)}")
        self.metrics = metrics
        self.activity = activity
        self._limits = limits
        self._max_buffered = max_buffered_rows
        self._unknown = unknown
        self._rules = list(provision_rules)
        self._provision = provision
        self._streams = {stream for _, stream in self._routes}
        self._batchers: dict[tuple[str, str], Batcher] = {
            key: Batcher(route, policy, self._flush_soon) for key, route in by_table.items()
        }
        self._rejects = Batcher(rejects[0], policy, self._flush_soon)
        self._flushing: set[asyncio.Task[None]] = set()
        self._buffered = 0
        self._capacity = asyncio.Event()
        self._capacity.set()
        self._pending: dict[str, list[tuple[Source[Any], Any]]] = {}
        self._pending_count = 0
        self._internal_errors = 0
        self._internal_logged_at = float("-inf")

    # -- intake ----------------------------------------------------------------------------

    @property
    def buffered_rows(self) -> int:
        return self._buffered

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
        batchers, unclaimed = self._batchers, source.unclaimed_reason
        for message in messages:
            count += 1
            # One message must never stop intake: whatever a step raises that it did not
            # foresee becomes that message's reject, and the messages around it go on.
            try:
                claimed = claim(message)
                if claimed is None:
                    self._reject(source, message, unclaimed, None, "no identity claim", received_at)
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
                route = routes.get((entry.role, stream))
                if route is None:
                    reason = "unknown_stream" if stream not in self._streams else "not_permitted"
                    detail = f"role {entry.role} may not write stream {stream!r}"
                    self._reject(source, message, reason, identity, detail, received_at)
                    continue
                payload = message.payload
                try:
                    rows = decode(payload, identity, received_at, limits, route.dedup)
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
        if self._buffered >= self._max_buffered:
            self._capacity.clear()

    def _internal_error(self, source: Source[M], message: M, exc: Exception, at: int) -> None:
        """A step failed in a way nobody foresaw: reject the message, say which exception.

        Logged at most once a second, with the count of those not logged since, so that a
        flood of such messages cannot flood the log as well."""
        detail = f"{type(exc).__name__}: {exc}"[:200]  # its text may quote what a device sent
        self._internal_errors += 1
        now = time.monotonic()
        if now - self._internal_logged_at >= 1.0:
            self._internal_logged_at = now
            log.warning(
                "message rejected after %s (%d such rejects since the last line)",
                detail,
                self._internal_errors,
            )
            self._internal_errors = 0
        self._reject(source, message, "internal_error", None, detail, at)

    def _unknown_identity(
        self, source: Source[M], message: M, identity: str, received_at: int
    ) -> None:
        if self._unknown == "quarantine":
            self._reject(source, message, "quarantined", identity, "unknown identity", received_at)
            return
        rule = match_rule(self._rules, identity) if self._unknown == "provision" else None
        if rule is None or self._provision is None:
            self._reject(
                source, message, "unknown_identity", identity, "not registered", received_at
            )
            return
        if self._pending_count >= MAX_PENDING_PROVISION:
            self._reject(
                source, message, "provisioning_backlog", identity, "too many pending", received_at
            )
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
            log.warning("provisioning %s failed: %s", identity, exc, extra={"identity": identity})
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
    ) -> None:
        self.metrics.messages_rejected.labels(source.name, reason).inc()
        if identity is not None:
            self.activity.rejected(identity)
        payload = bytes(message.payload[:PAYLOAD_PREFIX])
        row = (at, source.name, reason, identity, message.topic, payload, detail[:1000])
        self._buffered += 1
        self._rejects.add((row,), len(payload), source, message)
        if self._buffered >= self._max_buffered:
            self._capacity.clear()

    # -- flushing --------------------------------------------------------------------------

    def _flush_soon(self, batcher: Batcher) -> None:
        batch = batcher.take()
        if batch is not None:
            self._spawn(self._write(batcher.route, batch))

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def _write(self, route: Route, batch: Batch) -> None:
        started = time.monotonic()
        outcome = await route.sink.write(batch.rows, self._positions(batch))
        if outcome.bad_rows:
            self._refused_by_database(route, outcome.bad_rows)
        role, table = route.role, route.table
        now = time.monotonic()
        if not route.rejects:  # reject records are not readings: nothing to count as written
            self.metrics.rows_written.labels(role, table).inc(outcome.written)
            self.metrics.batch_rows.observe(outcome.written)
            self.metrics.flush_duration.labels(role, table).observe(now - started)
            self.activity.wrote(Counter(map(_IDENTITY, batch.rows)))
            newest = max(map(_TS, batch.rows))
            self.metrics.end_to_end_latency.observe(max(0.0, (pgtime.now() - newest) / 1e6))
        self._acknowledge(batch)
        self.metrics.ack_latency.observe(now - batch.started)
        self._buffered -= len(batch.rows)
        if self._buffered < self._max_buffered:
            self._capacity.set()

    def _refused_by_database(self, route: Route, bad_rows: list[tuple[Row, str]]) -> None:
        """Rows the database refused go to rejects, tied to their identity, payload rebuilt."""
        if route.rejects:
            for row, error in bad_rows:
                log.error("reject record refused by the database: %s (%r)", error, row[:5])
            return
        for row, error in bad_rows:
            identity = row[1]
            self.metrics.messages_rejected.labels("database", "database_refused").inc()
            self.activity.rejected(identity)
            payload = repr(row[2:5]).encode()[:PAYLOAD_PREFIX]
            record = (
                pgtime.now(),
                "database",
                "database_refused",
                identity,
                route.table,
                payload,
                error,
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
