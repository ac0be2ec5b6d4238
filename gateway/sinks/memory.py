"""An in-memory sink for unit tests and benchmarks, with failures on demand."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from gateway.contracts import Row, Sink, WriteOutcome

__all__ = ["MemorySink"]


class MemorySink(Sink):
    """Keeps committed rows. `hold` blocks writes until released (a database outage);
    `refuse(row)` marks rows the 'database' refuses for data reasons."""

    def __init__(self, refuse: Callable[[Row], str | None] = lambda row: None) -> None:
        self.rows: list[Row] = []
        self.batches = 0
        self._refuse = refuse
        self.available = asyncio.Event()
        self.available.set()

    async def write(self, rows: Sequence[Row], positions: dict[str, Any]) -> WriteOutcome:
        await self.available.wait()
        bad = [(row, reason) for row in rows if (reason := self._refuse(row)) is not None]
        refused = {id(row) for row, _ in bad}
        good = [row for row in rows if id(row) not in refused]
        self.rows.extend(good)
        self.batches += 1
        return WriteOutcome(len(good), bad)
