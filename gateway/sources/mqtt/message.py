"""A received PUBLISH as the caller sees it: a small slotted object, made once per message."""

from __future__ import annotations

import msgspec

__all__ = ["Message"]


class Message(msgspec.Struct, gc=False):
    """One application message.

    `received_at` is `time.monotonic()` (for latencies), `received_time` is `time.time()` (for
    records); both are taken once per socket read, not per message. `generation` numbers the
    connection that delivered the message: an ack is only meaningful on that connection, because
    packet ids are reused and the broker redelivers unacked messages on the next one. `seq` is
    the message's place in that connection's ack window, -1 for QoS 0 (nothing to ack).

    A msgspec struct, made once per message: its constructor runs in C (0.17 us against 0.45
    for a slotted class's `__init__`), and it references nothing that could form a cycle, so
    the garbage collector need not track it.
    """

    topic: str
    payload: bytes
    qos: int
    packet_id: int
    duplicate: bool
    received_at: float
    received_time: float
    generation: int
    seq: int

    def __repr__(self) -> str:
        return (
            f"Message(topic={self.topic!r}, qos={int(self.qos)}, packet_id={self.packet_id}, "
            f"duplicate={self.duplicate}, generation={self.generation}, "
            f"payload={len(self.payload)} bytes)"
        )
