"""One MQTT v5 connection as an asyncio Protocol: framing, dispatch, keep-alive and PUBACKs.

This is the hot path. Each socket read is parsed in one loop over one buffer with an offset;
a PUBLISH costs one `mqtt5.read` and one `Message`, with no task or future per message; the
clocks are read once per socket read; PUBACKs finished in the same event-loop turn leave in one
`transport.write`. Everything that is not a PUBLISH is rare and may be slow.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Sequence
from typing import cast

import mqtt5

from gateway.errors import MqttConnectionLost, MqttError
from gateway.sources.acks import AckWindow
from gateway.sources.mqtt.message import Message
from gateway.sources.mqtt.options import DEFAULT_PACKET_LIMIT
from gateway.sources.mqtt.wire import (
    DISCONNECT,
    MAX_PACKET_ID,
    PINGREQ,
    encode_pubacks,
    packet_size,
)

__all__ = ["MqttProtocol", "reason_text"]

log = logging.getLogger(__name__)

_PUBLISH = mqtt5.PublishPacket
_read = mqtt5.read
_PROTOCOL_ERROR = mqtt5.DisconnectReasonCode.PROTOCOL_ERROR
_MALFORMED = mqtt5.DisconnectReasonCode.MALFORMED_PACKET
_KEEP_ALIVE_TIMEOUT = mqtt5.DisconnectReasonCode.KEEP_ALIVE_TIMEOUT
_PACKET_TOO_LARGE = mqtt5.DisconnectReasonCode.PACKET_TOO_LARGE


def reason_text(code: enum.IntEnum) -> str:
    """A reason code as people read it: `bad user name or password (134)`."""
    return f"{code.name.replace('_', ' ').lower()} ({int(code)})"


def disconnect_reason(code: int) -> str:
    """A DISCONNECT reason as a metric label: `session_taken_over`; `code_<n>` if unknown."""
    try:
        return mqtt5.DisconnectReasonCode(code).name.lower()
    except ValueError:
        return f"code_{code}"


class MqttProtocol(asyncio.Protocol):
    """One connection: writes CONNECT, parses everything, pings, and sends PUBACKs in order.

    Messages go straight into the caller's `inbox` list (shared by every connection of a client)
    and `on_messages` is called once per socket read that added any. Reading pauses while
    `receive_maximum` QoS 1 messages are unacked (even if the broker sends more) or while
    `max_buffered` messages wait in the inbox, so memory stays bounded. A packet longer than
    `max_packet_size` (what CONNECT advertised) ends the connection as soon as its fixed header
    says so, before it is buffered: a broker that ignores the limit cannot grow our memory.
    `connack` resolves with the
    CONNACK, or None when the connection ended first; `closed` resolves with the error that says
    why the connection ended (a value, never raised, so nobody has to retrieve it).
    """

    def __init__(
        self,
        connect: mqtt5.ConnectPacket,
        *,
        generation: int,
        inbox: list[Message],
        on_messages: Callable[[], None],
        receive_maximum: int,
        max_buffered: int,
        max_buffered_bytes: int = 8 * 1024 * 1024,
        max_packet_size: int = DEFAULT_PACKET_LIMIT,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._connect = connect
        self.generation = generation
        self._inbox = inbox
        self._on_messages = on_messages
        self._receive_maximum = receive_maximum
        self._max_buffered = max_buffered
        self._max_buffered_bytes = max_buffered_bytes
        self._read_bytes = 0  # read since the caller last emptied the inbox: counted per read
        self._max_packet_size = max_packet_size
        self.connack: asyncio.Future[mqtt5.ConnAckPacket | None] = loop.create_future()
        self.closed: asyncio.Future[MqttError] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.window = AckWindow()
        self._rest = bytearray()  # the start of a packet whose end has not arrived
        self._need = 0  # its total size, once its fixed header is complete
        self._error: MqttError | None = None
        self._disconnecting = False
        self._subacks: dict[int, asyncio.Future[mqtt5.SubAckPacket | None]] = {}
        self._packet_id = 0
        self._flush_handle: asyncio.Handle | None = None
        self._keep_alive = 0
        self._timer: asyncio.TimerHandle | None = None
        self.last_received = self.last_sent = time.monotonic()
        self.paused = False  # reading paused, because of one of:
        self._window_full = False  # receive_maximum messages unacked
        self._inbox_full = False  # max_buffered messages not taken by receive()
        self._held = False  # the engine's buffers are full (rows or bytes): `hold`

    @property
    def alive(self) -> bool:
        """Connected and not disconnecting: nothing may be written after our DISCONNECT."""
        return (
            self.transport is not None
            and not self.transport.is_closing()
            and not self._disconnecting
        )

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._write(self._connect.write())

    def data_received(self, data: bytes) -> None:
        if self._disconnecting:
            return  # the broker will redeliver what it sent before reading our DISCONNECT
        self.last_received = time.monotonic()
        self._read_bytes += len(data)
        if self._rest:
            rest = self._rest
            rest += data
            # A large packet arriving in many reads is parsed once, when complete.
            if len(rest) < self._need or self._window_full:
                return
            data = bytes(rest)
            self._rest = bytearray()
        self._parse(data)

    def _parse(self, data: bytes) -> None:
        now = self.last_received
        wall = time.time()
        inbox = self._inbox
        before = len(inbox)
        append = inbox.append
        register = self.window.register
        generation = self.generation
        budget = self._receive_maximum - len(self.window)
        limit = self._max_packet_size
        view = memoryview(data)
        end = len(data)
        offset = 0
        try:
            while offset < end:
                # 0x32 under mask 0xF6 is a QoS 1 PUBLISH, whatever its DUP and RETAIN bits.
                if budget <= 0 and data[offset] & 0xF6 == 0x32:
                    # The broker went past our receive maximum (Mosquitto 2.0.11 does, once
                    # acks flow): keep the rest unparsed and stop reading until acks free room.
                    self._rest = bytearray(view[offset:])
                    self._need = 0
                    self._window_full = True
                    break
                try:
                    packet, size = _read(view[offset:])
                except IndexError:  # the rest of this packet is still on its way
                    need = packet_size(data, offset)
                    if need > limit:
                        self._too_large(need)
                        return
                    self._rest = bytearray(view[offset:])
                    self._need = need
                    break
                if size > limit:
                    self._too_large(size)
                    return
                offset += size
                if type(packet) is _PUBLISH:
                    # The codec's QoS is a Rust enum, not an int: store a plain int instead.
                    level = packet.qos
                    if level == 1:
                        qos = 1
                        packet_id = packet.packet_id
                        assert packet_id is not None
                        seq = register(packet_id)
                        budget -= 1
                    elif level == 0:
                        qos = 0
                        packet_id = 0
                        seq = -1
                    else:
                        self._fail("the broker sent QoS 2, which we never subscribe with")
                        return
                    append(
                        Message(
                            packet.topic,
                            packet.payload,
                            qos,
                            packet_id,
                            packet.duplicate,
                            now,
                            wall,
                            generation,
                            seq,
                        )
                    )
                elif not self._control(packet):
                    return
        except ValueError as exc:
            self._fail(f"malformed packet from the broker: {exc}", _MALFORMED)
            return
        if not inbox:
            self._read_bytes = 0  # nothing waits for receive(): what was read is not held here
        elif len(inbox) >= self._max_buffered or self._read_bytes >= self._max_buffered_bytes:
            # Nobody is taking messages: stop reading, so that the socket and then the broker's
            # queue hold them instead of our memory (QoS 0 has no other bound).
            self._inbox_full = True
        self._update_reading()
        if len(inbox) > before:
            self._on_messages()

    def hold(self, held: bool) -> None:
        """Stop reading while the engine's buffers are full, so that what the broker sends
        waits in the socket and the broker, not in our memory: the engine's byte bound then
        holds for MQTT too (the receive maximum alone counts messages, not bytes)."""
        self._held = held
        self._update_reading()

    def _update_reading(self) -> None:
        paused = self._window_full or self._inbox_full or self._held
        if paused != self.paused and self.alive:
            assert self.transport is not None
            self.paused = paused
            if paused:
                self.transport.pause_reading()
            else:
                # Silence while paused was ours; the keep-alive clock starts again from here.
                self.last_received = time.monotonic()
                self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._error is None:
            detail = f": {exc}" if exc is not None else ""
            self._error = MqttConnectionLost(f"connection to the broker lost{detail}")
        if self._timer is not None:
            self._timer.cancel()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self.connack.done():
            self.connack.set_result(None)
        for waiter in self._subacks.values():
            if not waiter.done():
                waiter.set_result(None)
        self._subacks.clear()
        if not self.closed.done():
            self.closed.set_result(self._error)

    # control packets

    def _control(self, packet: mqtt5.Packet) -> bool:
        """Handle a packet other than PUBLISH; False when the connection is being closed."""
        if isinstance(packet, mqtt5.PingRespPacket):
            return True  # data_received already noted that the broker is alive
        if isinstance(packet, mqtt5.SubAckPacket):
            waiter = self._subacks.pop(packet.packet_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(packet)
            return True
        if isinstance(packet, mqtt5.ConnAckPacket) and not self.connack.done():
            self.connack.set_result(packet)
            return True
        if isinstance(packet, mqtt5.DisconnectPacket):
            code = packet.reason_code
            text = f"the broker closed the connection: {reason_text(code)}"
            if packet.reason_str:
                text += f": {packet.reason_str}"
            log.warning("%s", text)
            self._error = MqttConnectionLost(text, reason_code=int(code))
            if self.transport is not None:
                self.transport.close()
            return False
        self._fail(f"unexpected {type(packet).__name__} from the broker")
        return False

    def _too_large(self, size: int) -> None:
        self._fail(
            f"the broker sent a {size}-byte packet, over the maximum packet size of "
            f"{self._max_packet_size} bytes we asked for",
            _PACKET_TOO_LARGE,
        )

    def _fail(self, why: str, reason: mqtt5.DisconnectReasonCode = _PROTOCOL_ERROR) -> None:
        """End the connection because of a broker-side problem, telling the broker why."""
        log.warning("closing the MQTT connection: %s", why)
        self._error = MqttConnectionLost(why)
        if self.alive:
            assert self.transport is not None
            self.transport.write(mqtt5.DisconnectPacket(reason_code=reason).write())
            self.transport.abort()

    # outbound

    def _write(self, data: bytes) -> None:
        if self.alive:
            assert self.transport is not None
            self.transport.write(data)
            self.last_sent = time.monotonic()

    def schedule_flush(self) -> None:
        """Send the acks finished so far at the end of this event-loop turn, in one write."""
        if self._flush_handle is None and self.alive:
            self._flush_handle = self._loop.call_soon(self.flush_acks)

    def flush_acks(self) -> None:
        """Send PUBACKs for the done prefix of the ack window now."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        packet_ids = self.window.release()
        if packet_ids:
            self._write(encode_pubacks(packet_ids))
            if self._window_full and len(self.window) < self._receive_maximum and self.alive:
                self._window_full = False
                held, self._rest = bytes(self._rest), bytearray()
                self._parse(held)

    def inbox_taken(self) -> None:
        """The caller emptied the inbox (some of it): read again if that is what held us."""
        if not self._inbox:
            self._read_bytes = 0
        if (
            self._inbox_full
            and len(self._inbox) < self._max_buffered
            and self._read_bytes < self._max_buffered_bytes
        ):
            self._inbox_full = False
            self._update_reading()

    def start_keep_alive(self, seconds: int) -> None:
        """Ping every half keep-alive when idle; declare the broker dead after 1.5x of silence."""
        self._keep_alive = seconds
        if seconds > 0 and self.alive:
            self._timer = self._loop.call_later(seconds / 2, self._tick)

    def _tick(self) -> None:
        if not self.alive:
            return
        now = time.monotonic()
        keep_alive = self._keep_alive
        silent = now - self.last_received
        # While reading is paused the broker's answers sit unread in the socket: not silence.
        if silent > 1.5 * keep_alive and not self.paused:
            self._fail(
                f"no packet from the broker for {silent:.1f}s (keep-alive {keep_alive}s)",
                _KEEP_ALIVE_TIMEOUT,
            )
            return
        if now - self.last_sent >= keep_alive / 2 or silent >= keep_alive / 2:
            self._write(PINGREQ)
        self._timer = self._loop.call_later(keep_alive / 2, self._tick)

    async def subscribe(self, subscriptions: Sequence[tuple[str, int]]) -> list[int]:
        """Send one SUBSCRIBE and return the SUBACK reason codes, in the order of the filters."""
        if not self.alive:
            raise await self.wait_closed()
        self._packet_id = self._packet_id % MAX_PACKET_ID + 1
        packet_id = self._packet_id
        filters = [
            mqtt5.TopicFilter(
                topic_filter,
                max_qos=mqtt5.QoS(qos),
                # A retained message is a replay of one published before: the session gets
                # what is published while it exists, each message once, never a replay.
                retain_handling=mqtt5.RetainHandling.SEND_NEVER,
            )
            for topic_filter, qos in subscriptions
        ]
        waiter: asyncio.Future[mqtt5.SubAckPacket | None] = self._loop.create_future()
        self._subacks[packet_id] = waiter
        self._write(mqtt5.SubscribePacket(packet_id, filters).write())
        suback = await waiter
        if suback is None:
            raise await self.wait_closed()
        return [int(code) for code in suback.reason_codes]

    async def wait_closed(self) -> MqttError:
        """Wait for the end of the connection; cancelling the wait leaves `closed` intact."""
        return await asyncio.shield(self.closed)

    def disconnect(self) -> None:
        """Send the acks that are due, then DISCONNECT (normal: the session is kept).

        The broker closes the connection once it has read the DISCONNECT, and so every ack
        before it: `closed` resolving then means the session state is final. Closing from our
        side instead could lose those acks if a new connection with our client id takes the
        session over before the broker has read them.
        """
        if not self.alive:
            return
        self.flush_acks()
        self._write(DISCONNECT)
        self._error = MqttConnectionLost("disconnected by the client")
        self._disconnecting = True
        if self._timer is not None:
            self._timer.cancel()

    def abort(self, why: str) -> None:
        """Drop the connection at once, without DISCONNECT (the broker keeps the session)."""
        if self._error is None:
            self._error = MqttConnectionLost(why)
        if self.transport is not None:
            self.transport.abort()
