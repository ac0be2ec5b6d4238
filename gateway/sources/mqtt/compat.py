"""MQTT 3.1.1 as a gateway source, over aiomqtt: for brokers that do not speak MQTT v5.

The default transport (`source.py`) is our own MQTT v5 client; this one serves brokers limited to
3.1.1, such as the pure-Python `amqtt` broker of `gateway demo`. The contract is the same: one
persistent session (clean_session False, so the broker keeps the subscription and every unacked
message while we are away), messages handed out in batches, a PUBACK for each only after its
commit and in receive order, reconnects with jittered backoff, and failures that retrying cannot
fix (refused credentials, a certificate that does not verify, a refused subscription) raised
from `start()` or `receive()`.

It is slower (see `benchmarks/mqtt311_drain.py`): paho reads one packet per event-loop callback
and sends each PUBACK with its own write. MQTT 3.1.1 has no receive maximum, so only the broker's
in-flight limit (Mosquitto's `max_inflight_messages`, which applies to 3.1.1 clients) bounds the
unacked messages held here; `session_expiry` and `receive_maximum` are MQTT v5 settings and do
not apply.

Nor can a 3.1.1 client tell the broker the largest packet it takes, and paho (2.2) has no receive
bound of its own: it reads whatever length a packet's header announces, up to MQTT's 256 MiB. The
bound on a message here is the broker's: Mosquitto's `max_packet_size` (shipped in
`deploy/mosquitto/mosquitto.conf` as the payload limit plus 4 KiB) refuses larger packets from
publishers, so none reaches a subscriber. A broker without such a setting bounds nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
import time
from collections.abc import Callable, Iterable, Sequence

import aiomqtt
import aiomqtt.exceptions
from paho.mqtt.reasoncodes import ReasonCode

from gateway.config import MqttSourceConfig
from gateway.errors import MqttConnectError, MqttError, MqttSubscribeError
from gateway.sources.acks import AckWindow
from gateway.sources.mqtt.message import Message
from gateway.sources.mqtt.source import MqttSourceBase
from gateway.sources.mqtt.supervise import Backoff, Inbox

__all__ = ["Mqtt311Source", "PahoAdapter"]

log = logging.getLogger(__name__)

# As the MQTT v5 client's defaults (`MqttOptions`).
_CONNECT_TIMEOUT = 10.0
_RECONNECT_MIN_DELAY = 0.1
_RECONNECT_MAX_DELAY = 30.0
# paho reports a 3.1.1 CONNACK code as its MQTT v5 equivalent; of the five refusals 3.1.1 has,
# only "server unavailable" says "not now" rather than "not you".
_SERVER_UNAVAILABLE = 0x88
# Never subscribed: unsubscribing from it changes nothing but costs the broker a reply.
_ACK_BARRIER = "$gateway/ack-barrier"


class PahoAdapter:
    """What aiomqtt 2.5 keeps private and this transport needs: ordered manual acks, batch reads.

    aiomqtt has no public API for application-controlled acks (its issue #345; PR #346 is open),
    but the paho client it wraps, `client._client`, does: `manual_ack_set(True)` stops paho from
    acking on receipt (set before connecting, since a resumed session delivers right after
    CONNACK), and `ack(mid, qos)` sends one PUBACK. MQTT wants a session's PUBACKs in receive
    order and paho sends them as `ack` is called, so messages are registered in an `AckWindow`
    as they are taken and only the finished prefix is acked. Messages are taken from aiomqtt's
    queue, `client._queue`, all at once, because `client.messages` costs a task and an
    event-loop turn per message. This class is the only place that touches private attributes.
    """

    __slots__ = ("_paho", "_queue", "_window")

    def __init__(self, client: aiomqtt.Client) -> None:
        self._paho = client._client
        self._queue = client._queue
        self._window = AckWindow()
        self._paho.manual_ack_set(True)

    def take(self) -> list[aiomqtt.Message]:
        """Every message aiomqtt has queued, in receive order."""
        queue = self._queue
        taken = []
        while not queue.empty():
            taken.append(queue.get_nowait())
        return taken

    def register(self, packet_id: int) -> int:
        """Record a QoS 1 message as received; returns its sequence number for `complete`."""
        return self._window.register(packet_id)

    def complete(self, seqs: Iterable[int]) -> None:
        """Mark messages committed, then PUBACK the longest committed prefix, in receive order."""
        window = self._window
        for seq in seqs:
            window.complete(seq)
        ack = self._paho.ack
        for packet_id in window.release():
            ack(packet_id, 1)

    def abort(self) -> None:
        """Close the socket of a connection that got no CONNACK; aiomqtt leaves it open.

        paho's `disconnect()` would first send a DISCONNECT and then tell aiomqtt, whose
        handler fails on the connect future its own timeout or our cancellation left cancelled.
        """
        self._paho._sock_close()


class Mqtt311Source(MqttSourceBase):
    """One persistent MQTT 3.1.1 session (optionally in a `$share` group) feeding the pipeline."""

    def __init__(
        self,
        config: MqttSourceConfig,
        *,
        on_connection_change: Callable[[bool], None] | None = None,
    ) -> None:
        super().__init__(config)
        self._on_connection_change = on_connection_change
        self._where = where = f"{config.host}:{config.port}"
        self._inbox = Inbox("the MQTT source is closed")
        self._backoff = Backoff(where, _RECONNECT_MIN_DELAY, _RECONNECT_MAX_DELAY, log)
        self._ready: asyncio.Future[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._client: aiomqtt.Client | None = None
        self._adapter: PahoAdapter | None = None
        self._generation = 0
        self._connected = False
        self.retained_dropped = 0  # replays of retained messages, acknowledged and dropped

    @property
    def connected(self) -> bool:
        """True while a connection is up (what /readyz reports)."""
        return self._connected

    def ack(self, messages: Sequence[Message]) -> None:
        """Acknowledge committed messages, in any order; see `PahoAdapter.complete`.

        Acks of messages from an earlier connection are ignored: packet ids are reused, and the
        broker redelivers those messages on the current connection.
        """
        adapter, generation = self._adapter, self._generation
        if adapter is not None:
            adapter.complete(m.seq for m in messages if m.generation == generation and m.seq >= 0)

    async def start(self) -> None:
        """Connect and subscribe, then keep the connection up in the background.

        Returns once the first connection is subscribed, or delivers messages (a resumed session
        may deliver its backlog before the SUBACK). Retriable failures are retried with backoff
        meanwhile; one that retrying cannot fix is raised here, or later from `receive()`.
        """
        if self._supervisor is not None:
            raise MqttError("the MQTT source was already started")
        loop = asyncio.get_running_loop()
        self._ready = ready = loop.create_future()
        self._supervisor = loop.create_task(self._supervise(), name=f"mqtt311-{self.name}")
        try:
            await ready
        except BaseException:
            await self.close()
            raise

    async def receive(self) -> list[Message]:
        """Every message received since the last call (at least one), in receive order.

        Waits across reconnects. Raises the error that stopped the source, or MqttError once it
        is closed.
        """
        inbox = self._inbox
        if not inbox.messages:
            await inbox.wait()
        batch, inbox.messages = inbox.messages, []
        return batch

    async def close(self) -> None:
        """Send the acks that are due and a DISCONNECT (the session stays), then stop.

        Messages still unacked are redelivered on the next connection of this client id.
        """
        self._inbox.closing = True
        client = self._client
        if client is not None:
            # A round trip behind the last PUBACKs: the broker answers once it has processed
            # them, so a client taking the session over right after us (a restarted gateway)
            # cannot make the broker drop them unread, as Mosquitto otherwise may.
            with contextlib.suppress(aiomqtt.MqttError):
                await client.unsubscribe(_ACK_BARRIER, timeout=_CONNECT_TIMEOUT)
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        ready = self._ready
        if ready is not None and not ready.done():
            ready.set_exception(MqttError("the MQTT source was closed before it connected"))
        self._inbox.wake()

    # connection management

    def _new_client(self) -> aiomqtt.Client:
        config = self.config
        return aiomqtt.Client(
            config.host,
            config.port,
            username=config.username,
            password=config.password.require() if config.password else None,
            identifier=config.client_id,
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=False,
            keepalive=config.keep_alive,
            tls_context=config.tls_context(),
            timeout=_CONNECT_TIMEOUT,
        )

    async def _supervise(self) -> None:
        backoff = self._backoff
        while True:
            try:
                client, adapter = await self._connect()
            except MqttConnectError as exc:
                if not exc.retriable:
                    self._stop_with(exc)
                    return
                await backoff.after_failure(exc)
                continue
            connected_at = time.monotonic()
            self._client, self._adapter = client, adapter
            self._set_connected(True)
            try:
                lost = await self._serve(client, adapter)
            except MqttSubscribeError as exc:
                self._stop_with(exc)
                return
            finally:
                self._client = self._adapter = None
                self._set_connected(False)
                with contextlib.suppress(aiomqtt.MqttError):
                    await client.__aexit__(None, None, None)
            await backoff.after_loss(lost, connected_at)

    async def _connect(self) -> tuple[aiomqtt.Client, PahoAdapter]:
        """One connection up to its CONNACK; raises MqttConnectError."""
        client = self._new_client()
        adapter = PahoAdapter(client)
        self._generation += 1
        where = self._where
        try:
            await client.__aenter__()
        except aiomqtt.exceptions.MqttConnectError as exc:
            raise _refused(exc) from None
        except aiomqtt.MqttError as exc:
            adapter.abort()
            # aiomqtt re-raises socket and TLS errors as its own, `from None`: the original is
            # still the context.
            cause = exc.__context__
            if isinstance(cause, ssl.SSLError) and not isinstance(cause, ssl.SSLEOFError):
                raise MqttConnectError(
                    f"TLS with {where} failed: {cause}", retriable=False
                ) from None
            raise MqttConnectError(f"cannot connect to {where}: {exc}", retriable=True) from None
        except BaseException:
            adapter.abort()
            raise
        log.info(
            "MQTT 3.1.1 connected to %s as %s (generation %d)",
            where,
            self.config.client_id,
            self._generation,
        )
        return client, adapter

    async def _serve(self, client: aiomqtt.Client, adapter: PahoAdapter) -> str:
        """Subscribe and deliver messages until the connection drops; returns why it dropped.

        The subscription is renewed on every connection, so that a changed one takes effect, and
        concurrently with reading, because a resumed session's messages come before the SUBACK.
        """
        reader = asyncio.create_task(self._read(client, adapter, self._generation))
        subscriber = asyncio.create_task(self._subscribe(client))
        try:
            await asyncio.wait((reader, subscriber), return_when=asyncio.FIRST_COMPLETED)
            if not subscriber.done():
                return reader.result()
            try:
                subscriber.result()
            except aiomqtt.MqttError as exc:
                return f"subscribing failed: {exc}"
            return await reader
        finally:
            reader.cancel()
            subscriber.cancel()
            await asyncio.gather(reader, subscriber, return_exceptions=True)

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        config = self.config
        topic_filter = config.subscription
        # No timeout: the SUBACK may queue behind a whole backlog; a dead connection ends this.
        (code,) = await client.subscribe(topic_filter, qos=config.qos, timeout=math.inf)
        granted = code.value if isinstance(code, ReasonCode) else code
        if granted >= 0x80:
            raise MqttSubscribeError(
                f"broker refused subscription: {topic_filter}", refused=[(topic_filter, granted)]
            )
        if granted < config.qos:
            log.warning(
                "broker granted only QoS %d for %s (asked %d)", granted, topic_filter, config.qos
            )
        self._mark_ready()

    async def _read(self, client: aiomqtt.Client, adapter: PahoAdapter, generation: int) -> str:
        """Move messages to the inbox, a whole queue at a time; returns why the connection ended."""
        messages = client.messages
        try:
            while True:
                first = await anext(messages)
                self._deliver([first, *adapter.take()], adapter, generation)
        except aiomqtt.MqttError as exc:
            return str(exc.__cause__ or exc)

    def _deliver(
        self, received: list[aiomqtt.Message], adapter: PahoAdapter, generation: int
    ) -> None:
        received_at, received_time = time.monotonic(), time.time()
        register = adapter.register
        # aiomqtt does not pass the DUP flag on. MQTT 3.1.1 cannot ask the broker to keep
        # retained messages back, and sends them again on every subscribe: a message flagged
        # retained is such a replay (one forwarded live never is), so it is acknowledged, in
        # its place in receive order, and dropped, as v5 never receives one.
        inbox = self._inbox
        replays: list[int] = []
        for m in received:
            seq = register(m.mid) if m.qos else -1
            if m.retain:
                replays.append(seq)
                continue
            inbox.messages.append(
                Message(
                    m.topic.value,
                    m.payload,
                    m.qos,
                    m.mid,
                    False,
                    received_at,
                    received_time,
                    generation,
                    seq,
                )
            )
        if replays:
            self.retained_dropped += len(replays)
            adapter.complete(seq for seq in replays if seq >= 0)
        inbox.wake()
        self._mark_ready()

    def _mark_ready(self) -> None:
        ready = self._ready
        if ready is not None and not ready.done():
            ready.set_result(None)

    def _stop_with(self, error: MqttError) -> None:
        log.error("MQTT source %s stopped: %s", self.name, error)
        self._inbox.failure = error
        ready = self._ready
        if ready is not None and not ready.done():
            ready.set_exception(error)
        self._inbox.wake()

    def _set_connected(self, connected: bool) -> None:
        if connected != self._connected:
            self._connected = connected
            if self._on_connection_change is not None:
                self._on_connection_change(connected)


def _refused(exc: aiomqtt.exceptions.MqttConnectError) -> MqttConnectError:
    code = exc.rc.value if isinstance(exc.rc, ReasonCode) else exc.rc
    return MqttConnectError(
        f"broker refused connection: {exc.rc} ({code})",
        reason_code=code,
        retriable=code == _SERVER_UNAVAILABLE,
    )
