"""What both MQTT transports do alike around a connection they keep up in the background.

The inbox that `receive()` waits on (woken by the reader, stopped by a failure or a close) and the
jittered backoff between connection attempts. Messages are appended to `Inbox.messages` directly,
so nothing here sits on the per-message path.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from gateway.errors import MqttError
from gateway.sources.mqtt.message import Message

__all__ = ["Backoff", "Inbox"]


class Inbox:
    """Messages received and not yet handed out, and the one task waiting for them."""

    __slots__ = ("_closed", "_waiter", "closing", "failure", "messages")

    def __init__(self, closed: str) -> None:
        self.messages: list[Message] = []
        self.failure: MqttError | None = None
        """The error that stopped the connection for good; `wait()` raises it."""
        self.closing = False
        self._closed = closed
        self._waiter: asyncio.Future[None] | None = None

    async def wait(self) -> None:
        """Return once a message is in; raise the failure, or MqttError once closed."""
        while not self.messages:
            if self.failure is not None:
                raise self.failure
            if self.closing:
                raise MqttError(self._closed)
            if self._waiter is not None:
                raise MqttError("another task is already waiting in receive()")
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    def wake(self) -> None:
        """Messages came in, or the connection stopped: the waiting task looks again."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Backoff:
    """Exponential delay with jitter, so a fleet of gateways does not reconnect in step."""

    __slots__ = ("_attempt", "_log", "_max_delay", "_min_delay", "_random", "_where")

    def __init__(self, where: str, min_delay: float, max_delay: float, log: logging.Logger) -> None:
        self._where = where
        self._min_delay = min_delay
        self._max_delay = max_delay
        self._log = log
        self._attempt = 0
        self._random = random.Random()

    def next_delay(self) -> float:
        delay = min(self._max_delay, self._min_delay * 2**self._attempt)
        self._attempt += 1
        return self._random.uniform(delay / 2, delay)

    async def after_failure(self, error: Exception) -> None:
        """Wait before the next attempt after one that failed to connect."""
        delay = self.next_delay()
        self._log.warning(
            "MQTT connect to %s failed (%s); retrying in %.2fs", self._where, error, delay
        )
        await asyncio.sleep(delay)

    async def after_loss(self, lost: str | Exception, connected_at: float) -> None:
        """Wait before reconnecting after a connection (up since `connected_at`) dropped."""
        # A connection that stayed up a while earns a fresh backoff; one that keeps dropping
        # at once (say, another client with our id) keeps backing off.
        if time.monotonic() - connected_at >= self._max_delay:
            self._attempt = 0
        delay = self.next_delay()
        self._log.warning(
            "MQTT connection to %s lost (%s); reconnecting in %.2fs", self._where, lost, delay
        )
        await asyncio.sleep(delay)
