"""An in-memory sink for unit tests and benchmarks, with failures on demand."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from gateway.contracts import Row, Sink, WriteOutcome

__all__ = ["MemorySink"]


class MemorySink(Sink):
    """Keeps committed rows. `available` cleared blocks writes until set again (a database
    outage); `refuse(row)` marks rows the 'database' refuses for data reasons; `held` set to an
    error text makes the 'table' refuse every row (a revoked privilege) until it is cleared."""

    def __init__(self, refuse: Callable[[Row], str | None] = lambda row: None) -> None:
        self.rows: list[Row] = []
        self.batches = 0
        self.held = ""
        self._refuse = refuse
        self.available = asyncio.Event()
        self.available.set()

    async def write(self, rows: Sequence[Row], positions: dict[str, Any]) -> WriteOutcome:
        await self.available.wait()
        if self.held:
            return WriteOutcome(0, [], held=self.held)
        bad = [(row, reason) for row in rows if (reason := self._refuse(row)) is not None]
        refused = {id(row) for row, _ in bad}
        good = [row for row in rows if id(row) not in refused]
        self.rows.extend(good)
        self.batches += 1
        return WriteOutcome(len(good), bad)

    async def probe(self) -> str:
        # Like a real probe, it answers at once: an outage is a reason not to write yet.
        if not self.available.is_set():
            return "the database is away"
        return self.held
