"""MQTT packets written by hand are the bytes the codec writes, or reads back."""

from __future__ import annotations

import mqtt5
import pytest

from gateway.sources.mqtt.wire import (
    encode_connect_311,
    encode_pubacks,
    encode_publish,
    encode_string,
)


@pytest.mark.parametrize("payload_size", [0, 90, 200, 16_348, 16_350, 20_000])
@pytest.mark.parametrize("packet_id", [None, 1, 65535])
def test_publish_bytes_match_the_codec(payload_size: int, packet_id: int | None) -> None:
    topic = "devices/sensor-0001/telemetry"
    payload = bytes(range(256)) * (payload_size // 256) + b"x" * (payload_size % 256)
    qos = mqtt5.QoS.AT_MOST_ONCE if packet_id is None else mqtt5.QoS.AT_LEAST_ONCE
    expected = mqtt5.PublishPacket(topic, payload, qos=qos, packet_id=packet_id).write()
    assert encode_publish(encode_string(topic), payload, packet_id) == expected


@pytest.mark.parametrize("payload_size", [0, 200, 20_000])
def test_mqtt_311_publish_has_no_properties_field(payload_size: int) -> None:
    topic, payload = "devices/sensor-0001/telemetry", b"x" * payload_size
    v5 = encode_publish(encode_string(topic), payload, 7)
    v311 = encode_publish(encode_string(topic), payload, 7, properties=b"")
    # The same packet one byte shorter: the length, the topic, the packet id, then the payload.
    assert v311.endswith(encode_string(topic) + b"\x00\x07" + payload)
    assert len(v311) == len(v5) - 1 or payload_size == 20_000


def test_mqtt_311_connect_bytes() -> None:
    assert encode_connect_311("id", "u", "p") == bytes.fromhex(
        "101400044d51545404c2000000026964000175000170"
    )
    assert encode_connect_311("c" * 200, "u", "p")[1:3] == bytes((0xDA, 0x01))  # 218 bytes follow


def test_encoded_pubacks_are_what_the_codec_reads() -> None:
    data = encode_pubacks([1, 255, 256, 65535])
    view = memoryview(data)
    ids = []
    offset = 0
    while offset < len(data):
        packet, size = mqtt5.read(view[offset:])
        assert isinstance(packet, mqtt5.PubAckPacket)
        assert packet.reason_code == mqtt5.PubAckReasonCode.SUCCESS
        ids.append(packet.packet_id)
        offset += size
    assert ids == [1, 255, 256, 65535]
