"""An in-memory source for unit tests and benchmarks: the same contract as MQTT and Kafka.

`MemoryBroker` plays the broker's part for one session: it keeps what was published and not yet
delivered, and what was delivered and not yet acknowledged. Acknowledgements reach it in receive
order only (the `AckWindow` the MQTT transports use), and a new `MemorySource` on the same broker
takes the session over, getting every unacknowledged message again first, as a persistent MQTT
session or a Kafka consumer group would after a crash.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.contracts import Source
from gateway.sources.acks import AckWindow
from gateway.topics import TopicTemplate

__all__ = ["MemoryBroker", "MemoryMessage", "MemorySource"]


@dataclass(slots=True)
class MemoryMessage:
    topic: str
    payload: bytes
    position: int = 0


class MemoryBroker:
    """One session's messages: lists not yet delivered, and delivered ones not yet acknowledged."""

    def __init__(self) -> None:
        self._next = 0
        self._queued: deque[list[MemoryMessage]] = deque()
        self._unacked: dict[int, MemoryMessage] = {}
        self._session: MemorySource | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self.acked: list[MemoryMessage] = []
        """Every message acknowledged to the broker, in the order it was."""

    def publish(self, messages: Iterable[tuple[str, bytes]]) -> list[MemoryMessage]:
        """Queue (topic, payload) pairs as one list; a source receives it whole if it has room."""
        batch = []
        for topic, payload in messages:
            batch.append(MemoryMessage(topic, payload, self._next))
            self._next += 1
        self._queued.append(batch)
        self.wake()
        return batch

    @property
    def queued(self) -> int:
        """Lists published (or given back) and not yet delivered."""
        return len(self._queued)

    @property
    def unacked(self) -> list[MemoryMessage]:
        """Delivered to the current session and not acknowledged, in delivery order."""
        return list(self._unacked.values())

    def attach(self, source: MemorySource) -> None:
        """`source` takes the session over; what its predecessor left unacked comes first."""
        self._give_back()
        self._session = source
        self.wake()

    def detach(self, source: MemorySource) -> None:
        """The session closes; the broker keeps what it did not acknowledge."""
        if self._session is source:
            self._give_back()
            self._session = None

    def take(self, source: MemorySource, limit: int | None) -> list[MemoryMessage]:
        """The next list for the session's source, cut to `limit` messages; empty if none."""
        if self._session is not source or not self._queued or limit == 0:
            return []
        batch = self._queued.popleft()
        if limit is not None and len(batch) > limit:
            batch, rest = batch[:limit], batch[limit:]
            self._queued.appendleft(rest)
        for message in batch:
            self._unacked[message.position] = message
        # Copies, as a real broker sends bytes: what the engine does to a message it received
        # (it empties a rejected one's payload) never changes what the broker would redeliver.
        return [MemoryMessage(m.topic, m.payload, m.position) for m in batch]

    def release(self, source: MemorySource, positions: Sequence[int]) -> list[MemoryMessage]:
        """Forget acknowledged messages; a replaced session's acks change nothing."""
        if self._session is not source:
            return []
        released = [self._unacked.pop(position) for position in positions]
        self.acked.extend(released)
        self.wake()
        return released

    async def changed(self) -> None:
        """Wait until something is published, acknowledged, or a source resumes."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter

    def wake(self) -> None:
        """Let waiting sources look again."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _give_back(self) -> None:
        if self._unacked:
            self._queued.appendleft(list(self._unacked.values()))
            self._unacked.clear()


class MemorySource(Source[MemoryMessage]):
    """A session on a `MemoryBroker` (its own unless given one); see the module docstring.

    `max_inflight` bounds the unacknowledged messages it holds, like MQTT's receive maximum;
    while paused it takes nothing in, like a paused Kafka consumer.
    """

    unclaimed_reason = "topic_mismatch"

    def __init__(
        self,
        name: str = "memory",
        template: str = "devices/{identity}/{stream}",
        *,
        broker: MemoryBroker | None = None,
        max_inflight: int | None = None,
    ) -> None:
        self.name = name
        self._connected = True
        self.broker = broker if broker is not None else MemoryBroker()
        self.max_inflight = max_inflight
        self.paused = False
        self.acked: list[MemoryMessage] = []
        """What this source acknowledged to the broker, in receive order."""
        self._parse = TopicTemplate(template).parse
        self._window = AckWindow()
        self._seqs: dict[int, int] = {}
        self.broker.attach(self)

    def put(self, messages: Iterable[tuple[str, bytes]]) -> list[MemoryMessage]:
        """Publish to this source's broker."""
        return self.broker.publish(messages)

    def pause(self) -> None:
        self.paused = True

    async def resume(self) -> None:
        self.paused = False
        self.broker.wake()

    def claim(self, message: MemoryMessage) -> tuple[str, str] | None:
        return self._parse(message.topic)

    def position(self, message: MemoryMessage) -> int:
        return message.position

    def ack(self, messages: Sequence[MemoryMessage]) -> None:
        """Done in any order; the broker hears of the longest done prefix, in receive order."""
        seqs = self._seqs
        for message in messages:
            seq = seqs.get(message.position)
            if seq is not None:
                self._window.complete(seq)
        released = self._window.release()
        for position in released:
            del seqs[position]
        self.acked.extend(self.broker.release(self, released))

    async def start(self) -> None:
        pass

    @property
    def connected(self) -> bool:
        return self._connected

    async def close(self) -> None:
        self._connected = False
        self.broker.detach(self)

    @property
    def pending(self) -> int:
        """Lists published and not yet received."""
        return self.broker.queued

    async def receive(self) -> list[MemoryMessage]:
        while True:
            if self._connected and not self.paused:
                room = None if self.max_inflight is None else self.max_inflight - len(self._window)
                batch = self.broker.take(self, room)
                if batch:
                    for message in batch:
                        self._seqs[message.position] = self._window.register(message.position)
                    return batch
            await self.broker.changed()
