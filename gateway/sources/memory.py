"""An in-memory source for unit tests and benchmarks: the same contract as MQTT and Kafka."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.topics import TopicTemplate

__all__ = ["MemoryMessage", "MemorySource"]


@dataclass(slots=True)
class MemoryMessage:
    topic: str
    payload: bytes
    position: int = 0


class MemorySource:
    """Messages put in by the test, handed out in lists; acknowledgements recorded in order."""

    def __init__(self, name: str = "memory", template: str = "devices/{identity}/{stream}") -> None:
        self.name = name
        self.connected = True
        self._parse = TopicTemplate(template).parse
        self._queue: asyncio.Queue[list[MemoryMessage]] = asyncio.Queue()
        self._next = 0
        self.acked: list[MemoryMessage] = []
        self.paused = False

    def put(self, messages: Iterable[tuple[str, bytes]]) -> list[MemoryMessage]:
        batch = []
        for topic, payload in messages:
            batch.append(MemoryMessage(topic, payload, self._next))
            self._next += 1
        self._queue.put_nowait(batch)
        return batch

    unclaimed_reason = "topic_mismatch"

    def pause(self) -> None:
        self.paused = True

    async def resume(self) -> None:
        self.paused = False

    def claim(self, message: MemoryMessage) -> tuple[str, str] | None:
        return self._parse(message.topic)

    def position(self, message: MemoryMessage) -> int:
        return message.position

    def ack(self, messages: Sequence[MemoryMessage]) -> None:
        self.acked.extend(messages)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        self.connected = False

    @property
    def pending(self) -> int:
        """Lists put in and not yet received."""
        return self._queue.qsize()

    async def receive(self) -> list[MemoryMessage]:
        return await self._queue.get()
