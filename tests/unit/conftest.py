"""Shared fixtures of the unit tests: the engine's in-memory source and sinks.

Unit tests are pure and fast and run no external binary; engine tests drive the pipeline through
these instead of a broker and a database.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from gateway.sinks.memory import MemorySink
from gateway.sources.memory import MemoryBroker, MemorySource


@dataclass
class Memory:
    """A memory broker with a source on it, a sink for rows and one for reject records."""

    broker: MemoryBroker
    source: MemorySource
    sink: MemorySink
    rejects: MemorySink

    def reconnect(self) -> MemorySource:
        """A new source on the same session: it gets what the old one left unacknowledged."""
        self.source = MemorySource(broker=self.broker, max_inflight=self.source.max_inflight)
        return self.source


@pytest.fixture
def memory() -> Memory:
    broker = MemoryBroker()
    return Memory(broker, MemorySource(broker=broker), MemorySink(), MemorySink())
