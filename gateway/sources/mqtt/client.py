"""The gateway's MQTT v5 consumer: a session that survives reconnects, read in batches, acked late.

`MqttClient` keeps one connection up (reconnecting with jittered exponential backoff), hands
out messages in batches, and sends each QoS 1 PUBACK only when the caller acks the message after
its own commit, in receive order (`AckWindow`). Failures that retrying cannot fix (refused
credentials or authorization, a certificate that does not verify, a refused subscription) stop
the client and are raised from `start()` or `receive()` instead of being retried forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable, Iterable

import mqtt5

from gateway.errors import MqttConnectError, MqttError, MqttSubscribeError
from gateway.lifecycle import Lifecycle
from gateway.sources.mqtt.message import Message
from gateway.sources.mqtt.options import MqttOptions
from gateway.sources.mqtt.protocol import MqttProtocol, reason_text
from gateway.sources.mqtt.supervise import Backoff, Inbox

__all__ = ["MqttClient"]

log = logging.getLogger(__name__)

_Code = mqtt5.ConnAckReasonCode
# CONNACK refusals that say "not now" rather than "not you": worth another try later. (As ints:
# the codec's enums are Rust classes that compare with ints but cannot be hashed.)
_RETRIABLE_REFUSALS = frozenset(
    int(code)
    for code in (
        _Code.UNSPECIFIED_ERROR,
        _Code.IMPLEMENTATION_SPECIFIC_ERROR,
        _Code.SERVER_UNAVAILABLE,
        _Code.SERVER_BUSY,
        _Code.QUOTA_EXCEEDED,
        _Code.CONNECTION_RATE_EXCEEDED,
    )
)


class MqttClient(Lifecycle):
    """A persistent MQTT v5 session read in batches; see the module docstring.

    Use as `async with MqttClient(options) as client:`, then loop on `await client.receive()`
    and call `client.ack_many(batch)` once the batch is committed. Only one task may receive.
    """

    def __init__(
        self,
        options: MqttOptions,
        *,
        on_connection_change: Callable[[bool], None] | None = None,
        on_lost: Callable[[MqttError], None] | None = None,
    ) -> None:
        self.options = options
        self._on_connection_change = on_connection_change
        self._on_lost = on_lost
        self._inbox = Inbox("the MQTT client is closed")
        self._backoff = Backoff(
            f"{options.host}:{options.port}",
            options.reconnect_min_delay,
            options.reconnect_max_delay,
            log,
        )
        self._protocol: MqttProtocol | None = None
        self._held = False
        self._generation = 0
        self._connected = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._first_attempt: asyncio.Future[None] | None = None
        self.session_present = False
        """Whether the broker still had our session at the last connect."""

    # lifecycle

    async def start(self) -> None:
        """Connect and subscribe, then keep the connection up in the background.

        Returns once the first connection is up: subscribed, for a new session; for a resumed
        one, as soon as the broker accepts it, because the SUBACK of the (repeated) subscription
        queues behind the session's messages, which the caller must be draining. Retriable
        failures (broker down or busy) are retried with backoff meanwhile; a failure that
        retrying cannot fix is raised here, or later from `receive()`.
        """
        if self._supervisor is not None:
            raise MqttError("the MQTT client was already started")
        loop = asyncio.get_running_loop()
        self._first_attempt = loop.create_future()
        self._supervisor = loop.create_task(self._supervise(), name="mqtt-supervisor")
        waiter = self._first_attempt
        try:
            await waiter
        except BaseException:
            await self.disconnect()
            raise

    async def disconnect(self) -> None:
        """Send the acks that are due and a normal DISCONNECT (the session stays), then stop.

        Messages still unacked are redelivered on the next connection of this client id.
        """
        self._inbox.closing = True
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        protocol = self._protocol
        if protocol is not None:
            protocol.disconnect()
            # The broker closes on DISCONNECT; waiting for it makes the session state final.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(protocol.wait_closed(), 5)
            protocol.abort("disconnected by the client")
        self._set_disconnected()
        self._inbox.wake()

    close = disconnect  # what `async with` calls on the way out

    @property
    def connected(self) -> bool:
        """True while a connection is up (what /readyz reports)."""
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        """Wait until a connection is up."""
        await self._connected.wait()

    @property
    def generation(self) -> int:
        """Number of the current (or last) connection attempt; messages carry theirs."""
        return self._generation

    # data

    async def receive(self, max_messages: int | None = None) -> list[Message]:
        """Every buffered message (at least one, at most max_messages), in receive order.

        Waits across reconnects. Raises the error that stopped the client, or MqttError once the
        client is closed and nothing is left.
        """
        inbox = self._inbox.messages
        if not inbox:
            await self._inbox.wait()
        if max_messages is None or len(inbox) <= max_messages:
            batch = inbox.copy()
            inbox.clear()
        else:
            batch = inbox[:max_messages]
            del inbox[:max_messages]
        if self._protocol is not None:
            self._protocol.inbox_taken()
        return batch

    def hold(self, held: bool) -> None:
        """Stop (True) or resume (False) reading from the broker; kept across reconnects."""
        self._held = held
        if self._protocol is not None:
            self._protocol.hold(held)

    def ack(self, message: Message) -> None:
        """Acknowledge one message after its commit; see `ack_many`."""
        protocol = self._protocol
        if message.seq >= 0 and protocol is not None and message.generation == protocol.generation:
            protocol.window.complete(message.seq)
            protocol.schedule_flush()

    def ack_many(self, messages: Iterable[Message]) -> None:
        """Acknowledge messages after their commit, in any order.

        PUBACKs leave in receive order, for the longest acked prefix, in one write at the end of
        this event-loop turn. QoS 0 messages need no ack; acks of messages from an earlier
        connection are ignored, because the broker redelivers those on the current one.
        """
        protocol = self._protocol
        if protocol is None:
            return
        generation = protocol.generation
        complete = protocol.window.complete
        for message in messages:
            if message.generation == generation and message.seq >= 0:
                complete(message.seq)
        protocol.schedule_flush()

    # connection management

    async def _supervise(self) -> None:
        """Keep connected until a failure retrying cannot fix; `receive()` then raises it."""
        try:
            error = await self._keep_connected()
        except Exception as exc:  # a bug here must not leave receive() waiting forever
            log.exception("MQTT client %s failed", self.options.client_id)
            error = MqttError(f"the MQTT client failed: {exc!r}")
            if self._protocol is not None:
                self._protocol.abort(str(error))
        log.error("MQTT client %s stopped: %s", self.options.client_id, error)
        self._set_disconnected()
        self._stop_with(error)

    async def _keep_connected(self) -> MqttError:
        options = self.options
        backoff = self._backoff
        while True:
            try:
                protocol = await self._connect_once()
            except MqttError as exc:
                if not exc.retriable:
                    return exc
                await backoff.after_failure(exc)
                continue
            connected_at = time.monotonic()
            self._set_connected()
            if self._first_attempt is not None and not self._first_attempt.done():
                self._first_attempt.set_result(None)
            if self.session_present and options.subscriptions:
                # Resumed: the broker sends the session's messages at once and our SUBACK
                # queues behind them, so the caller must be draining before it can arrive.
                try:
                    await self._subscribe(protocol)
                except MqttSubscribeError as exc:
                    protocol.abort(str(exc))
                    return exc
                except MqttError:
                    pass  # the connection ended; handled below like any other loss
            lost = await protocol.wait_closed()
            self._set_disconnected()
            if self._on_lost is not None:
                try:
                    self._on_lost(lost)
                except Exception:
                    log.exception("on_lost(%s) failed", lost)
            await backoff.after_loss(lost, connected_at)

    def _stop_with(self, error: MqttError) -> None:
        self._inbox.failure = error
        if self._first_attempt is not None and not self._first_attempt.done():
            self._first_attempt.set_exception(error)
        self._inbox.wake()

    def _set_connected(self) -> None:
        self._connected.set()
        self._notify(True)

    def _set_disconnected(self) -> None:
        if self._connected.is_set():
            self._connected.clear()
            self._notify(False)

    def _notify(self, connected: bool) -> None:
        if self._on_connection_change is not None:
            try:
                self._on_connection_change(connected)
            except Exception:  # an observer's bug must not break the connection
                log.exception("on_connection_change(%s) failed", connected)

    def _connect_packet(self) -> mqtt5.ConnectPacket:
        options = self.options
        return mqtt5.ConnectPacket(
            options.client_id,
            username=options.username,
            password=None if options.password is None else options.password.encode(),
            clean_start=options.clean_start,
            keep_alive=options.keep_alive,
            session_expiry_interval=options.session_expiry_interval,
            receive_max=options.receive_maximum,
            # Topic aliases would make the topic depend on earlier packets; we want each alone.
            topic_alias_max=0,
            # The broker drops (as delivered) what would exceed it: see `MqttOptions`.
            max_packet_size=options.max_packet_size,
        )

    async def _connect_once(self) -> MqttProtocol:
        """One connection: TCP (and TLS), CONNECT/CONNACK, SUBSCRIBE/SUBACK; raises MqttError."""
        options = self.options
        where = f"{options.host}:{options.port}"
        self._generation += 1
        protocol = MqttProtocol(
            self._connect_packet(),
            generation=self._generation,
            inbox=self._inbox.messages,
            on_messages=self._inbox.wake,
            receive_maximum=options.receive_maximum,
            max_buffered=options.max_buffered,
            max_buffered_bytes=options.max_buffered_bytes,
            max_packet_size=options.max_packet_size,
        )
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(options.connect_timeout):
                await loop.create_connection(
                    lambda: protocol,
                    options.host,
                    options.port,
                    ssl=options.ssl,
                    server_hostname=options.server_hostname if options.ssl else None,
                )
                connack = await protocol.connack
                if connack is None:
                    lost = await protocol.wait_closed()
                    raise MqttConnectError(
                        f"{where} closed the connection before CONNACK ({lost})", retriable=True
                    )
                if connack.reason_code != _Code.SUCCESS:
                    raise _refused(connack)
                # From here on, messages can arrive (a present session is resumed at once) and
                # must be ackable, so this connection is current before the subscription.
                self._protocol = protocol
                self.session_present = connack.session_present
                keep_alive = connack.server_keep_alive
                protocol.start_keep_alive(options.keep_alive if keep_alive is None else keep_alive)
                if options.subscriptions and not connack.session_present:
                    await self._subscribe(protocol)
                # Held (engine full) across a reconnect: read no further than the SUBACK of a
                # fresh session; a resumed one's SUBACK waits behind its messages until resumed.
                protocol.hold(self._held)
        except BaseException as exc:
            protocol.abort("connect failed")
            if self._protocol is protocol:
                self._protocol = None
            if isinstance(exc, TimeoutError):
                raise MqttConnectError(
                    f"no MQTT session with {where} within {options.connect_timeout}s",
                    retriable=True,
                ) from None
            if isinstance(exc, ssl.SSLCertVerificationError):
                raise MqttConnectError(
                    f"TLS with {where} failed: certificate verify failed: {exc.verify_message}",
                    retriable=False,
                ) from exc
            if isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError):
                raise MqttConnectError(f"TLS with {where} failed: {exc}", retriable=False) from exc
            if isinstance(exc, OSError):
                raise MqttConnectError(f"cannot connect to {where}: {exc}", retriable=True) from exc
            raise
        log.info(
            "MQTT connected to %s as %s (generation %d, session present: %s)",
            where,
            options.client_id,
            protocol.generation,
            connack.session_present,
        )
        return protocol

    async def _subscribe(self, protocol: MqttProtocol) -> None:
        """Subscribe on every connection, so that a changed subscription list takes effect."""
        subscriptions = self.options.subscriptions
        codes = await protocol.subscribe(subscriptions)
        refused = [
            (topic_filter, code)
            for (topic_filter, _), code in zip(subscriptions, codes, strict=True)
            if code >= 0x80
        ]
        if refused:
            listing = ", ".join(
                f"{topic_filter} ({reason_text(mqtt5.SubAckReasonCode(code))})"
                for topic_filter, code in refused
            )
            raise MqttSubscribeError(f"broker refused subscription: {listing}", refused=refused)
        for (topic_filter, qos), code in zip(subscriptions, codes, strict=True):
            if code < qos:
                log.warning("broker granted only QoS %d for %s (asked %d)", code, topic_filter, qos)


def _refused(connack: mqtt5.ConnAckPacket) -> MqttConnectError:
    code = int(connack.reason_code)
    text = f"broker refused connection: {reason_text(connack.reason_code)}"
    if connack.reason_str:
        text += f": {connack.reason_str}"
    return MqttConnectError(text, reason_code=code, retriable=code in _RETRIABLE_REFUSALS)
