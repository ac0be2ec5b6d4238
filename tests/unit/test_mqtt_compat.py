"""The 3.1.1 transport's paho adapter: manual acks on, PUBACKs in receive order, whole-queue reads.

A fake paho client records what would go on the wire; the adapter is the only code that reaches
into aiomqtt's private attributes, so a stand-in with those two attributes is all it needs.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import cast

import aiomqtt

from gateway.sources.mqtt.compat import PahoAdapter


class FakePaho:
    def __init__(self) -> None:
        self.manual_ack = False
        self.acked: list[tuple[int, int]] = []
        self.closed = False

    def manual_ack_set(self, on: bool) -> None:
        self.manual_ack = on

    def ack(self, mid: int, qos: int) -> int:
        assert self.manual_ack, "acked while paho was acking by itself"
        self.acked.append((mid, qos))
        return 0

    def _sock_close(self) -> None:
        self.closed = True


def adapter() -> tuple[PahoAdapter, FakePaho, asyncio.Queue[aiomqtt.Message]]:
    paho = FakePaho()
    queue: asyncio.Queue[aiomqtt.Message] = asyncio.Queue()
    client = cast(aiomqtt.Client, SimpleNamespace(_client=paho, _queue=queue))
    return PahoAdapter(client), paho, queue


def message(mid: int) -> aiomqtt.Message:
    return aiomqtt.Message(
        "devices/d/telemetry", b"{}", qos=1, retain=False, mid=mid, properties=None
    )


def test_manual_acks_are_on_before_anything_is_received() -> None:
    _, paho, _ = adapter()
    assert paho.manual_ack


def test_pubacks_leave_in_receive_order_for_the_committed_prefix() -> None:
    acks, paho, _ = adapter()
    first, second, third, fourth = (acks.register(mid) for mid in (41, 7, 41_000, 8))
    acks.complete([third, second])
    assert paho.acked == []  # the first is not committed yet
    acks.complete([first])
    assert paho.acked == [(41, 1), (7, 1), (41_000, 1)]
    acks.complete([fourth, first, second])  # again: each PUBACK goes once
    assert paho.acked == [(41, 1), (7, 1), (41_000, 1), (8, 1)]


def test_a_reused_packet_id_is_acked_once_per_delivery() -> None:
    acks, paho, _ = adapter()
    earlier = acks.register(5)
    acks.complete([earlier])
    later = acks.register(5)  # the broker reused the id once the first was acked
    acks.complete([earlier])
    assert paho.acked == [(5, 1)]
    acks.complete([later])
    assert paho.acked == [(5, 1), (5, 1)]


async def test_take_empties_the_queue_in_order() -> None:
    acks, _, queue = adapter()
    assert acks.take() == []
    for mid in (3, 1, 2):
        queue.put_nowait(message(mid))
    assert [m.mid for m in acks.take()] == [3, 1, 2]
    assert queue.empty()


def test_abort_closes_the_socket() -> None:
    acks, paho, _ = adapter()
    acks.abort()
    assert paho.closed
