"""The protocol parses each packet exactly once, however the byte stream is cut into reads.

The protocol is driven with a fake transport: bytes in through `data_received`, bytes out
recorded from `write`, no socket.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import mqtt5
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.sources.mqtt.message import Message
from gateway.sources.mqtt.protocol import MqttProtocol

QOS1 = mqtt5.QoS.AT_LEAST_ONCE


class FakeTransport(asyncio.Transport):
    """Records what the protocol writes; closing reports the loss as a socket would."""

    def __init__(self, protocol: MqttProtocol) -> None:
        super().__init__()
        self.protocol = protocol
        self.written = bytearray()
        self.closing = False
        self.reading = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closing, "write after close"
        self.written += data

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def packets(self) -> list[mqtt5.Packet]:
        """Everything written, decoded."""
        out = []
        view = memoryview(bytes(self.written))
        offset = 0
        while offset < len(view):
            packet, size = mqtt5.read(view[offset:])
            out.append(packet)
            offset += size
        return out


def make_protocol(
    *,
    max_buffered: int = 1_000_000,
    receive_maximum: int = 65535,
    max_packet_size: int = 1 << 28,
    max_buffered_bytes: int = 1 << 30,
) -> tuple[MqttProtocol, FakeTransport, list[Message]]:
    inbox: list[Message] = []
    protocol = MqttProtocol(
        mqtt5.ConnectPacket("framing-test"),
        generation=3,
        inbox=inbox,
        on_messages=lambda: None,
        receive_maximum=receive_maximum,
        max_buffered=max_buffered,
        max_buffered_bytes=max_buffered_bytes,
        max_packet_size=max_packet_size,
    )
    transport = FakeTransport(protocol)
    protocol.connection_made(transport)
    return protocol, transport, inbox


def publish(n: int, size: int, qos: int = 1) -> mqtt5.PublishPacket:
    return mqtt5.PublishPacket(
        f"devices/sensor-{n}/telemetry",
        bytes([n % 251]) * size,
        qos=mqtt5.QoS(qos),
        packet_id=n % 65535 + 1 if qos else None,
        duplicate=qos == 1 and n % 7 == 0,
    )


# Payload sizes cross every width of the remaining-length field (1, 2 and 3 bytes).
SIZES = st.sampled_from([0, 1, 90, 126, 127, 128, 500, 16_383, 16_384, 70_000])
STREAMS = st.lists(st.tuples(SIZES, st.sampled_from([0, 1])), min_size=1, max_size=25)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(stream=STREAMS, cuts=st.lists(st.floats(0, 1), max_size=40))
async def test_packets_split_anywhere_are_parsed_exactly_once(
    stream: list[tuple[int, int]], cuts: list[float]
) -> None:
    protocol, transport, inbox = make_protocol()
    publishes = [publish(n, size, qos) for n, (size, qos) in enumerate(stream)]
    wire = mqtt5.ConnAckPacket(session_present=True).write()
    wire += b"".join(p.write() for p in publishes) + mqtt5.PingRespPacket().write()
    points = sorted({int(c * len(wire)) for c in cuts} | {0, len(wire)})
    for start, end in itertools.pairwise(points):
        protocol.data_received(wire[start:end])

    connack = protocol.connack.result()
    assert connack is not None and connack.session_present
    assert [(m.topic, m.payload, m.qos, m.duplicate) for m in inbox] == [
        (p.topic, p.payload, int(p.qos), p.duplicate) for p in publishes
    ]
    assert [m.packet_id for m in inbox] == [p.packet_id or 0 for p in publishes]
    assert all(m.generation == 3 for m in inbox)
    assert len(protocol.window) == sum(qos for _, qos in stream)
    assert not protocol.closed.done()
    transport.close()
    await protocol.wait_closed()


async def test_one_byte_at_a_time() -> None:
    protocol, _, inbox = make_protocol()
    wire = mqtt5.ConnAckPacket().write() + publish(1, 300).write() + publish(2, 5).write()
    for index in range(len(wire)):
        protocol.data_received(wire[index : index + 1])
    assert [m.packet_id for m in inbox] == [2, 3]
    assert [type(m.qos) for m in inbox] == [int, int]


async def test_pubacks_leave_in_receive_order_in_one_write() -> None:
    protocol, transport, inbox = make_protocol()
    protocol.data_received(
        mqtt5.ConnAckPacket().write() + b"".join(publish(n, 10).write() for n in range(6))
    )
    written = len(transport.written)
    for message in reversed(inbox[1:]):  # the first one finishes last
        protocol.window.complete(message.seq)
    protocol.schedule_flush()
    await asyncio.sleep(0)
    assert len(transport.written) == written  # all held behind the first message
    protocol.window.complete(inbox[0].seq)
    protocol.schedule_flush()
    protocol.schedule_flush()  # coalesced: one write in this turn
    await asyncio.sleep(0)
    pubacks = transport.packets()[1:]  # after the CONNECT
    assert [p.packet_id for p in pubacks if isinstance(p, mqtt5.PubAckPacket)] == [
        m.packet_id for m in inbox
    ]
    assert len(transport.written) - written == 4 * len(inbox)


async def test_malformed_input_closes_with_a_reason() -> None:
    protocol, transport, _ = make_protocol()
    protocol.data_received(mqtt5.ConnAckPacket().write() + publish(1, 5).write() + b"\xff\x00")
    error = await protocol.wait_closed()
    assert "malformed" in str(error)
    assert error.retriable
    disconnect = transport.packets()[-1]
    assert isinstance(disconnect, mqtt5.DisconnectPacket)
    assert disconnect.reason_code == mqtt5.DisconnectReasonCode.MALFORMED_PACKET


async def test_broker_disconnect_reason_is_reported() -> None:
    protocol, _, _ = make_protocol()
    protocol.data_received(
        mqtt5.ConnAckPacket().write()
        + mqtt5.DisconnectPacket(
            reason_code=mqtt5.DisconnectReasonCode.SESSION_TAKEN_OVER, reason_str="bye"
        ).write()
    )
    error = await protocol.wait_closed()
    assert str(error) == "the broker closed the connection: session taken over (142): bye"
    assert error.reason_code == mqtt5.DisconnectReasonCode.SESSION_TAKEN_OVER


async def test_reading_pauses_when_nobody_takes_messages() -> None:
    protocol, transport, inbox = make_protocol(max_buffered=3)
    protocol.data_received(mqtt5.ConnAckPacket().write() + publish(1, 5, qos=0).write())
    assert transport.reading
    protocol.data_received(b"".join(publish(n, 5, qos=0).write() for n in range(2, 5)))
    assert not transport.reading and protocol.paused
    inbox.clear()
    protocol.inbox_taken()
    assert transport.reading and not protocol.paused


async def test_reading_pauses_on_bytes_waiting_as_well_as_messages() -> None:
    """Large payloads: few messages, many bytes. The receive maximum does not count bytes."""
    protocol, transport, inbox = make_protocol(max_buffered_bytes=100_000)
    protocol.data_received(mqtt5.ConnAckPacket().write() + publish(1, 60_000).write())
    assert transport.reading
    protocol.data_received(publish(2, 60_000).write())
    assert not transport.reading and len(inbox) == 2
    inbox.clear()
    protocol.inbox_taken()
    assert transport.reading
    # Control packets alone never hold reading: nothing would ever take them.
    protocol.data_received(mqtt5.PingRespPacket().write() * 30_000)
    assert transport.reading


async def test_the_engine_holds_reading_until_its_buffers_have_room() -> None:
    protocol, transport, inbox = make_protocol()
    protocol.data_received(mqtt5.ConnAckPacket().write() + publish(1, 5).write())
    protocol.hold(True)
    assert not transport.reading and protocol.paused
    inbox.clear()
    protocol.inbox_taken()
    assert not transport.reading  # an empty inbox is no reason to read while held
    protocol.hold(False)
    assert transport.reading and not protocol.paused


async def test_a_broker_past_the_receive_maximum_is_held_off() -> None:
    """More unacked QoS 1 than we allowed: the excess waits, unparsed, until acks free room."""
    protocol, transport, inbox = make_protocol(receive_maximum=3)
    protocol.data_received(
        mqtt5.ConnAckPacket().write()
        + b"".join(publish(n, 5).write() for n in range(7))
        + publish(99, 5, qos=0).write()
    )
    assert [m.packet_id for m in inbox] == [1, 2, 3]
    assert not transport.reading
    protocol.data_received(publish(7, 5).write())  # already in flight when reading paused
    assert len(inbox) == 3
    protocol.window.complete(inbox[0].seq)
    protocol.flush_acks()
    assert [m.packet_id for m in inbox] == [1, 2, 3, 4]
    assert not transport.reading
    for message in inbox:
        protocol.window.complete(message.seq)
    protocol.flush_acks()
    # QoS 0 needs no room: it is parsed up to the next QoS 1 PUBLISH that does.
    assert [m.packet_id for m in inbox] == [1, 2, 3, 4, 5, 6, 7, 0]
    assert not transport.reading
    for message in inbox:
        protocol.window.complete(message.seq)
    protocol.flush_acks()
    assert [m.packet_id for m in inbox] == [1, 2, 3, 4, 5, 6, 7, 0, 8]
    assert transport.reading


async def test_connection_lost_before_connack_resolves_waiters() -> None:
    protocol, transport, _ = make_protocol()
    transport.close()
    error = await protocol.wait_closed()
    assert protocol.connack.result() is None
    assert error.retriable
    with pytest.raises(type(error)):
        await protocol.subscribe([("devices/#", 1)])


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    stream=STREAMS,
    cuts=st.lists(st.floats(0, 1), max_size=40),
    limit=st.sampled_from([64, 200, 16_420, 70_040]),
)
async def test_a_packet_over_the_advertised_size_is_refused_before_it_is_buffered(
    stream: list[tuple[int, int]], cuts: list[float], limit: int
) -> None:
    """A broker ignoring our Maximum Packet Size: what fits is delivered, the first packet that
    does not ends the connection (reason 0x95), and no more than `limit` bytes are ever held."""
    protocol, transport, inbox = make_protocol(max_packet_size=limit)
    publishes = [publish(n, size, qos).write() for n, (size, qos) in enumerate(stream)]
    fitting = list(itertools.takewhile(lambda packet: len(packet) <= limit, publishes))
    wire = mqtt5.ConnAckPacket().write() + b"".join(publishes)
    points = sorted({int(c * len(wire)) for c in cuts} | {0, len(wire)})
    for start, end in itertools.pairwise(points):
        if transport.closing:
            break  # an aborted socket delivers nothing more
        protocol.data_received(wire[start:end])
        assert len(protocol._rest) <= limit
    assert len(inbox) == len(fitting)
    if len(fitting) == len(publishes):
        assert not transport.closing
        transport.close()
        await protocol.wait_closed()
        return
    error = await protocol.wait_closed()
    assert error.retriable  # a reconnect, which a conforming broker answers within the limit
    assert f"over the maximum packet size of {limit} bytes" in str(error)
    disconnect = transport.packets()[-1]
    assert isinstance(disconnect, mqtt5.DisconnectPacket)
    assert disconnect.reason_code == mqtt5.DisconnectReasonCode.PACKET_TOO_LARGE


async def test_a_packet_of_exactly_the_advertised_size_is_taken() -> None:
    packet = publish(1, 1000).write()
    protocol, transport, inbox = make_protocol(max_packet_size=len(packet))
    protocol.data_received(mqtt5.ConnAckPacket().write() + packet[:10])
    protocol.data_received(packet[10:])
    assert [m.payload for m in inbox] == [bytes([1]) * 1000]
    assert not transport.closing
