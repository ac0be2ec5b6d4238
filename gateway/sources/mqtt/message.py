"""A received PUBLISH as the caller sees it: a small slotted object, made once per message."""

from __future__ import annotations

__all__ = ["Message"]


class Message:
    """One application message.

    `received_at` is `time.monotonic()` (for latencies), `received_time` is `time.time()` (for
    records); both are taken once per socket read, not per message. `generation` numbers the
    connection that delivered the message: an ack is only meaningful on that connection, because
    packet ids are reused and the broker redelivers unacked messages on the next one. `seq` is
    the message's place in that connection's ack window, -1 for QoS 0 (nothing to ack).
    """

    __slots__ = (
        "duplicate",
        "generation",
        "packet_id",
        "payload",
        "qos",
        "received_at",
        "received_time",
        "seq",
        "topic",
    )

    def __init__(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        packet_id: int,
        duplicate: bool,
        received_at: float,
        received_time: float,
        generation: int,
        seq: int,
    ) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.packet_id = packet_id
        self.duplicate = duplicate
        self.received_at = received_at
        self.received_time = received_time
        self.generation = generation
        self.seq = seq

    def __repr__(self) -> str:
        return (
            f"Message(topic={self.topic!r}, qos={int(self.qos)}, packet_id={self.packet_id}, "
            f"duplicate={self.duplicate}, generation={self.generation}, "
            f"payload={len(self.payload)} bytes)"
        )
