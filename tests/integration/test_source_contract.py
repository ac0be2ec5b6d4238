"""What the engine relies on of a source, proved against every source alike.

The in-memory source, the MQTT v5 and MQTT 3.1.1 transports (real Mosquitto) and the Kafka
source (a real broker) run the same cases: delivery with the identity claim, acknowledgement
only when and in the order the engine says, redelivery after a crash, the bound while paused,
and a clean stop that leaves the unacknowledged with the broker. Each case has its own session.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .sources import BOUND, STREAM, WAIT, Harness, number

MARKER = -1


async def take(source: Any, count: int) -> list[Any]:
    """Exactly `count` messages, however they are split into lists."""
    messages: list[Any] = []
    async with asyncio.timeout(WAIT):
        while len(messages) < count:
            messages += await source.receive()
    assert len(messages) == count, [number(m) for m in messages]
    return messages


async def drain(source: Any, quiet: float) -> list[Any]:
    """What arrives until nothing has for `quiet` seconds."""
    messages: list[Any] = []
    while True:
        try:
            async with asyncio.timeout(quiet):
                messages += await source.receive()
        except TimeoutError:
            return messages


async def redelivered(harness: Harness, count: int) -> list[int]:
    """What a new instance on the session receives first; acknowledged, then it closes."""
    source = harness.source()
    await source.start()
    try:
        messages = await take(source, count)
        source.ack(messages)
    finally:
        await source.close()
    return [number(m) for m in messages]


async def assert_nothing_left(harness: Harness) -> None:
    """A fresh marker comes first: a broker delivers a session's unacked messages before it."""
    source = harness.source()
    await source.start()
    try:
        await harness.publish([MARKER])
        messages = await take(source, 1)
        source.ack(messages)
    finally:
        await source.close()
    assert [number(m) for m in messages] == [MARKER]


async def test_what_is_published_arrives_with_its_claim(harness: Harness) -> None:
    source = harness.source()
    await source.start()
    try:
        await harness.publish(range(5))
        messages = await take(source, 5)
        assert [number(m) for m in messages] == list(range(5))
        assert {source.claim(m) for m in messages} == {(harness.identity, STREAM)}
        source.ack(messages)
    finally:
        await source.close()
    await assert_nothing_left(harness)


async def test_acks_reach_the_broker_only_when_given_and_in_receive_order(
    harness: Harness,
) -> None:
    source = harness.source()
    await source.start()
    try:
        await harness.publish(range(6))
        await take(source, 6)  # received, never acknowledged
    finally:
        await source.close()

    source = harness.source()
    await source.start()
    try:
        messages = await take(source, 6)
        assert [number(m) for m in messages] == list(range(6))
        source.ack(messages[1:])  # the first is not done: nothing may be released
    finally:
        await source.close()

    source = harness.source()
    await source.start()
    try:
        messages = await take(source, 6)
        assert [number(m) for m in messages] == list(range(6))
        source.ack([messages[4], messages[0], messages[5], messages[1], messages[3]])
    finally:
        await source.close()

    assert await redelivered(harness, 4) == [2, 3, 4, 5]
    await assert_nothing_left(harness)


async def test_what_a_crashed_source_received_comes_again(harness: Harness) -> None:
    await harness.open_session()
    await harness.publish(range(6))
    assert await harness.crash(6) == list(range(6))
    assert await redelivered(harness, 6) == list(range(6))
    await assert_nothing_left(harness)


async def test_a_paused_source_stops_at_its_bound_and_resumes_exactly_once(
    harness: Harness,
) -> None:
    total = 3 * BOUND
    source = harness.source()
    await source.start()
    try:
        await harness.publish(range(total))
        held = await source.receive()
        source.pause()
        held += await drain(source, quiet=2)
        assert 0 < len(held) <= BOUND, len(held)
        source.ack(held)
        await source.resume()
        seen = [number(m) for m in held]
        async with asyncio.timeout(WAIT):
            while len(seen) < total:
                batch = await source.receive()
                source.ack(batch)
                seen += [number(m) for m in batch]
        assert sorted(seen) == list(range(total))  # each once: nothing lost, nothing twice
    finally:
        await source.close()
    await assert_nothing_left(harness)


async def test_close_returns_and_leaves_the_unacked_with_the_broker(harness: Harness) -> None:
    source = harness.source()
    await source.start()
    try:
        await harness.publish(range(6))
        messages = await take(source, 6)
        source.ack(messages[:3])
    finally:
        async with asyncio.timeout(10):
            await source.close()
    assert await redelivered(harness, 3) == [3, 4, 5]
    await assert_nothing_left(harness)
