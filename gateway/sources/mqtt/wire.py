"""MQTT packets written by hand, for the gateway's client and the simulated fleet alike.

The `mqtt5` codec reads every packet and writes the rare ones. What is here is either on a hot
path, where the codec would cost more per message (a PUBLISH whose topic is encoded once per
device, runs of success PUBACKs), or MQTT 3.1.1, which the codec does not speak (its CONNECT
and CONNACK return codes). Unit tests check these bytes against the codec's.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import mqtt5

__all__ = [
    "CONNACK_311",
    "DISCONNECT",
    "MAX_PACKET_ID",
    "PINGREQ",
    "encode_connect_311",
    "encode_pubacks",
    "encode_publish",
    "encode_string",
    "packet_size",
]

MAX_PACKET_ID = 0xFFFF
DISCONNECT = mqtt5.DisconnectPacket().write()
"""A normal DISCONNECT: `e0 00`, the same bytes in MQTT 3.1.1 and v5."""
PINGREQ = mqtt5.PingReqPacket().write()
CONNACK_311 = {
    0: mqtt5.ConnAckReasonCode.SUCCESS,
    1: mqtt5.ConnAckReasonCode.UNSUPPORTED_PROTOCOL_VERSION,
    2: mqtt5.ConnAckReasonCode.CLIENT_ID_NOT_VALID,
    3: mqtt5.ConnAckReasonCode.SERVER_UNAVAILABLE,
    4: mqtt5.ConnAckReasonCode.BAD_USER_NAME_OR_PASSWORD,
    5: mqtt5.ConnAckReasonCode.NOT_AUTHORIZED,
}
"""MQTT 3.1.1 CONNACK return codes as the v5 reason codes that say the same."""

_ONE_BYTE = [bytes((n,)) for n in range(128)]


def encode_string(text: str) -> bytes:
    """An MQTT string (a topic, a client id...): a 2-byte length, then UTF-8."""
    encoded = text.encode()
    return len(encoded).to_bytes(2, "big") + encoded


def encode_publish(
    topic: bytes, payload: bytes, packet_id: int | None, properties: bytes = b"\x00"
) -> bytes:
    """A PUBLISH without properties: QoS 1 with a packet id, QoS 0 without. MQTT 3.1.1 has no
    properties field at all (`properties=b""`).

    `topic` is already encoded (`encode_string`), once per device: the codec would rebuild it
    for every message.
    """
    if packet_id is None:
        first, pid = b"\x30", b""
    else:
        first, pid = b"\x32", packet_id.to_bytes(2, "big")
    remaining = len(topic) + len(pid) + len(properties) + len(payload)
    if remaining < 0x80:
        length = _ONE_BYTE[remaining]
    elif remaining < 0x4000:  # the usual telemetry message
        length = bytes((remaining & 0x7F | 0x80, remaining >> 7))
    else:
        length = _remaining_length(remaining)
    return b"".join((first, length, topic, pid, properties, payload))


def encode_pubacks(packet_ids: Sequence[int]) -> bytes:
    """Success PUBACKs for the ids, in order, as one buffer.

    MQTT v5 lets a successful PUBACK omit its reason code and properties, so each is four bytes:
    type 0x40, remaining length 2, packet id; one `struct.pack` writes them all.
    """
    return struct.pack(f">{len(packet_ids)}I", *[0x4002_0000 | pid for pid in packet_ids])


def encode_connect_311(client_id: str, username: str, password: str) -> bytes:
    """An MQTT 3.1.1 CONNECT with a user name, a password and a clean session, no keep-alive."""
    fields = b"".join(encode_string(text) for text in (client_id, username, password))
    body = b"\x00\x04MQTT\x04\xc2\x00\x00" + fields
    return b"\x10" + _remaining_length(len(body)) + body


def packet_size(data: bytes, offset: int) -> int:
    """Total size of the packet starting at offset, from its fixed header; 0 while incomplete."""
    length = 0
    shift = 0
    index = offset + 1
    while index < len(data) and shift <= 21:
        byte = data[index]
        index += 1
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return index - offset + length
        shift += 7
    return 0


def _remaining_length(remaining: int) -> bytes:
    digits = bytearray()
    while True:
        digit = remaining & 0x7F
        remaining >>= 7
        digits.append(digit | 0x80 if remaining else digit)
        if not remaining:
            return bytes(digits)
