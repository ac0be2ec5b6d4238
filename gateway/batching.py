"""Batches per (role, table): rows accumulate until a row, byte or age limit, whichever first.

A batch remembers the messages whose rows it holds, so their sources can be told exactly which
messages are safe once the batch commits. Messages are kept in one list, and their sources as
runs over it (a source and where its run starts): one source is the common case, and a run per
source change costs nothing per message, where a (source, message) pair each would.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.config import BatchingConfig
from gateway.contracts import Route, Row, Source

__all__ = ["Batch", "BatchPolicy", "Batcher"]


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """When to cut a batch. Size it with the sources' in-flight windows (MQTT receive maximum,
    Kafka max_poll_records): a batch can never be larger than what the brokers let through.

    No defaults here: the configuration (`BatchingConfig`) states them once, and the policy is
    built from it (`from_config`), so a test and a running gateway cannot disagree on them.
    """

    max_rows: int
    max_bytes: int
    max_delay: float  # seconds

    @classmethod
    def from_config(cls, config: BatchingConfig) -> BatchPolicy:
        return cls(config.max_rows, config.max_bytes, config.max_delay_ms / 1000)


class Batch:
    """Rows bound for one table, and the messages they came from, by source."""

    __slots__ = ("messages", "nbytes", "rows", "runs", "started")

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.messages: list[Any] = []
        self.runs: list[tuple[Source[Any], int]] = []  # (source, index of its first message)
        self.nbytes = 0
        self.started = time.monotonic()

    def __len__(self) -> int:
        return len(self.rows)

    def by_source(self) -> Iterator[tuple[Source[Any], list[Any]]]:
        """Each source with its messages, in the order they were added."""
        runs, messages = self.runs, self.messages
        for index, (source, start) in enumerate(runs):
            end = runs[index + 1][1] if index + 1 < len(runs) else len(messages)
            yield source, messages[start:end]


class Batcher:
    """The open batch of one route's (role, table); calls `on_full` when it should be flushed."""

    __slots__ = ("_batch", "_loop", "_on_full", "_timer", "policy", "route")

    def __init__(
        self,
        route: Route,
        policy: BatchPolicy,
        on_full: Callable[[Batcher], None],
    ) -> None:
        self.route = route
        self.policy = policy
        self._on_full = on_full
        self._batch = Batch()
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()

    def __len__(self) -> int:
        return len(self._batch.rows)

    def add(
        self, rows: Sequence[Row], nbytes: int, source: Source[Any] | None, message: Any
    ) -> None:
        """Rows of one message; with `source` None they belong to no message (nothing to ack)."""
        batch = self._batch
        if not batch.rows:
            batch.started = time.monotonic()
            self._timer = self._loop.call_later(self.policy.max_delay, self._expire, batch)
        batch.rows.extend(rows)
        if source is not None:
            runs = batch.runs
            if not runs or runs[-1][0] is not source:
                runs.append((source, len(batch.messages)))
            batch.messages.append(message)
        batch.nbytes += nbytes
        if len(batch.rows) >= self.policy.max_rows or batch.nbytes >= self.policy.max_bytes:
            self._on_full(self)

    def take(self) -> Batch | None:
        """The open batch, if it has rows; a new one opens in its place."""
        batch = self._batch
        if not batch.rows:
            return None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._batch = Batch()
        return batch

    def _expire(self, batch: Batch) -> None:
        if batch is self._batch and batch.rows:
            self._on_full(self)
