"""A bare MQTT v5 publisher for the benchmarks that need payloads the fleet does not make: any
bytes from a callable, QoS 1 pipelined up to a window, every answer counted (PUBACK reason codes,
the broker's DISCONNECT and its reason, a connection lost).

The fleet (`gateway.fleet.mqtt`) builds valid readings only; these benchmarks send the largest
payloads the broker allows, payloads over its packet limit and hostile ones.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import mqtt5

from gateway.sources.mqtt.wire import DISCONNECT, MAX_PACKET_ID, encode_publish, encode_string

__all__ = ["Outcome", "Publisher", "publish_count", "publish_for"]


@dataclass
class Outcome:
    """What one connection's publishes came to."""

    sent: int = 0
    acked: int = 0  # PUBACK success (0x00) or "no matching subscribers" (0x10)
    refused: Counter[str] = field(default_factory=Counter)  # PUBACK reason >= 0x80, by name
    disconnect: str | None = None  # the broker's DISCONNECT reason, or how the connection ended
    unanswered: int = 0  # in flight when the connection ended

    def merge(self, other: Outcome) -> None:
        self.sent += other.sent
        self.acked += other.acked
        self.refused.update(other.refused)
        self.unanswered += other.unanswered


class Publisher(asyncio.Protocol):
    """One device connection: publishes `payload(seq)` to `topic` while `window` is not full,
    until stopped or (with `count`) once `count` messages are sent."""

    def __init__(
        self,
        username: str,
        password: str,
        topic: str,
        payload: Callable[[int], bytes],
        window: int,
        count: int | None = None,
    ) -> None:
        self.username = username
        self.password = password
        self.header = encode_string(topic)
        self.payload = payload
        self.window = window
        self.count = count
        self.outcome = Outcome()
        self.inflight: set[int] = set()
        self.next_id = 1
        self.sending = False
        self.started = False  # drained means nothing before it
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.connack: asyncio.Future[int] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.drained: asyncio.Future[None] = loop.create_future()
        self._rest = b""
        self._writable = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        connect = mqtt5.ConnectPacket(
            self.username,  # the broker binds a device's account to its name
            username=self.username,
            password=self.password.encode(),
            clean_start=True,
        )
        self.transport.write(connect.write())

    def pause_writing(self) -> None:
        self._writable = False

    def resume_writing(self) -> None:
        self._writable = True
        self.pump()

    def data_received(self, data: bytes) -> None:
        data = self._rest + data
        offset = 0
        while offset < len(data):
            try:
                packet, size = mqtt5.read(memoryview(data)[offset:])
            except IndexError:
                break
            offset += size
            if isinstance(packet, mqtt5.PubAckPacket):
                self.inflight.discard(packet.packet_id)
                code = int(packet.reason_code)
                if code >= 0x80:
                    self.outcome.refused[packet.reason_code.name.lower()] += 1
                else:
                    self.outcome.acked += 1
            elif isinstance(packet, mqtt5.ConnAckPacket):
                if not self.connack.done():
                    self.connack.set_result(int(packet.reason_code))
            elif isinstance(packet, mqtt5.DisconnectPacket):
                self.outcome.disconnect = f"broker DISCONNECT {packet.reason_code.name.lower()}"
        self._rest = data[offset:]
        if self.started and not self.sending and not self.inflight and not self.drained.done():
            self.drained.set_result(None)
        self.pump()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.outcome.disconnect is None:
            self.outcome.disconnect = f"connection lost: {exc}" if exc else "connection closed"
        self.outcome.unanswered = len(self.inflight)
        for future in (self.connack, self.closed, self.drained):
            if not future.done():
                future.set_result(None)  # type: ignore[arg-type]

    def pump(self) -> None:
        transport = self.transport
        if not self.sending or not self._writable or transport is None or transport.is_closing():
            return
        packets: list[bytes] = []
        limit = self.count
        while len(self.inflight) < self.window and len(packets) < 64:
            if limit is not None and self.outcome.sent >= limit:
                self.sending = False
                break
            packet_id = self.next_id
            while packet_id in self.inflight:
                packet_id = packet_id % MAX_PACKET_ID + 1
            self.next_id = packet_id % MAX_PACKET_ID + 1
            self.inflight.add(packet_id)
            packets.append(encode_publish(self.header, self.payload(self.outcome.sent), packet_id))
            self.outcome.sent += 1
        if packets:
            transport.write(b"".join(packets))

    def start(self) -> None:
        self.started = self.sending = True
        self.pump()

    def stop(self) -> None:
        self.sending = False
        if not self.inflight and not self.drained.done():
            self.drained.set_result(None)


async def connect(host: str, port: int, publisher: Publisher) -> Publisher:
    loop = asyncio.get_running_loop()
    await loop.create_connection(lambda: publisher, host, port)
    async with asyncio.timeout(10):
        code = await publisher.connack
    if code != 0:
        raise RuntimeError(f"{publisher.username}: CONNACK {code} ({publisher.outcome.disconnect})")
    return publisher


async def publish_count(host: str, port: int, publishers: list[Publisher]) -> Outcome:
    """Connect all, publish each one's `count`, return once every answer is in."""
    await _start(host, port, publishers)
    await asyncio.gather(*(asyncio.shield(p.drained) for p in publishers))
    return _end(publishers)


async def publish_for(
    host: str, port: int, publishers: list[Publisher], seconds: float, drain: float = 30.0
) -> Outcome:
    """Connect all, publish for `seconds`, wait (at most `drain` s) for the answers in flight."""
    await _start(host, port, publishers)
    await asyncio.sleep(seconds)
    for publisher in publishers:
        publisher.stop()
    with_timeout = [asyncio.wait_for(asyncio.shield(p.drained), drain) for p in publishers]
    await asyncio.gather(*with_timeout, return_exceptions=True)
    return _end(publishers)


async def _start(host: str, port: int, publishers: list[Publisher]) -> None:
    """Every publisher connected before any publishes, so they start together."""
    for publisher in publishers:
        await connect(host, port, publisher)
    for publisher in publishers:
        publisher.start()


def _end(publishers: list[Publisher]) -> Outcome:
    """Disconnect each, and add up their outcomes (what is still in flight as unanswered)."""
    total = Outcome()
    for publisher in publishers:
        if publisher.transport is not None and not publisher.transport.is_closing():
            publisher.transport.write(DISCONNECT)
            publisher.transport.close()
        if publisher.outcome.unanswered == 0:
            publisher.outcome.unanswered = len(publisher.inflight)
        total.merge(publisher.outcome)
    return total
