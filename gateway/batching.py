"""Batches per (role, table): rows accumulate until a row, byte or age limit, whichever first.

A batch remembers the acknowledgement tokens of the messages whose rows it holds, so the source
can be told exactly which messages are safe once the batch commits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Batch", "BatchPolicy", "Batcher"]


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """When to cut a batch. Size it with the sources' in-flight windows (MQTT receive maximum,
    Kafka max_poll_records): a batch can never be larger than what the brokers let through."""

    max_rows: int = 5000
    max_bytes: int = 4 * 1024 * 1024
    max_delay: float = 0.05


class Batch:
    """Rows bound for one table, and the tokens of the messages they came from."""

    __slots__ = ("nbytes", "rows", "started", "tokens")

    def __init__(self) -> None:
        self.rows: list[tuple[Any, ...]] = []
        self.tokens: list[Any] = []
        self.nbytes = 0
        self.started = time.monotonic()

    def __len__(self) -> int:
        return len(self.rows)


class Batcher:
    """The open batch of one (role, table); calls `on_full` when it should be flushed."""

    __slots__ = ("_batch", "_loop", "_on_full", "_timer", "key", "policy")

    def __init__(
        self,
        key: tuple[str, str],
        policy: BatchPolicy,
        on_full: Callable[[Batcher], None],
    ) -> None:
        self.key = key
        self.policy = policy
        self._on_full = on_full
        self._batch = Batch()
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()

    def __len__(self) -> int:
        return len(self._batch.rows)

    def add(self, rows: Sequence[tuple[Any, ...]], nbytes: int, token: Any) -> None:
        batch = self._batch
        if not batch.rows:
            batch.started = time.monotonic()
            self._timer = self._loop.call_later(self.policy.max_delay, self._expire, batch)
        batch.rows.extend(rows)
        batch.tokens.append(token)
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
