"""What the MQTT client needs to know, validated when it is built so mistakes show at startup."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from ssl import SSLContext

from gateway.config import LimitsConfig

__all__ = [
    "DEFAULT_PACKET_LIMIT",
    "MAX_TOPIC_BYTES",
    "PACKET_HEADROOM",
    "MqttOptions",
    "packet_limit",
    "validate_topic_filter",
]

_MAX_UINT16 = 0xFFFF
_MAX_UINT32 = 0xFFFF_FFFF
_MAX_PACKET = 5 + 268_435_455  # a fixed header and the largest remaining length MQTT allows

MAX_TOPIC_BYTES = 1024
"""The longest topic a message may have and still fit the packet limit (ours are ~40 bytes)."""
PACKET_HEADROOM = 4096
"""Bytes a PUBLISH may carry beside its payload: fixed header 5 + topic 2 + 1,024 + packet id 2
= 1,033, leaving 3,063 for properties (a broker adds a few bytes; a device may add user
properties). A device that needs more has its message dropped, not our memory grown."""


def packet_limit(max_payload_bytes: int) -> int:
    """The Maximum Packet Size that lets through every payload the decoder would accept.

    A payload a little over `max_payload_bytes` still arrives and is rejected as
    `payload_too_large` (a row in ingest.rejects); one past the headroom never leaves the broker.
    """
    return max_payload_bytes + PACKET_HEADROOM


DEFAULT_PACKET_LIMIT = packet_limit(LimitsConfig.model_fields["max_payload_bytes"].default)
"""The packet limit of the default payload limit: 256 KiB + 4 KiB = 266,240 bytes."""


def validate_topic_filter(topic_filter: str) -> None:
    """Raise ValueError unless the filter is a valid MQTT v5 filter, `$share/<group>/` included."""
    if not topic_filter:
        raise ValueError("a topic filter must not be empty")
    if len(topic_filter.encode()) > _MAX_UINT16:
        raise ValueError(f"topic filter is longer than {_MAX_UINT16} bytes: {topic_filter[:40]}...")
    if "\0" in topic_filter:
        raise ValueError(f"topic filter contains a NUL character: {topic_filter!r}")
    filter_part = topic_filter
    if topic_filter.startswith("$share/"):
        _, group, *rest = topic_filter.split("/", 2)
        if not group or any(c in group for c in "+#"):
            raise ValueError(
                f"shared subscription {topic_filter!r} needs a share name without '+' or '#': "
                "$share/<group>/<filter>"
            )
        if not rest or not rest[0]:
            raise ValueError(f"shared subscription {topic_filter!r} has no topic filter after it")
        filter_part = rest[0]
    levels = filter_part.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            raise ValueError(f"'#' must be a whole last level in topic filter {topic_filter!r}")
        if "+" in level and level != "+":
            raise ValueError(f"'+' must be a whole level in topic filter {topic_filter!r}")


@dataclass(frozen=True, kw_only=True)
class MqttOptions:
    """Connection, session and reconnect settings of one MQTT client.

    The defaults make a persistent session (clean_start False, one hour of session expiry), so
    that messages queued while the gateway is away are delivered, and unacked ones redelivered,
    when it comes back with the same `client_id`. `receive_maximum` is the number of unacked
    QoS 1 messages the broker may have in flight to us: it bounds memory and, because acks are
    released in receive order, it must exceed what the batcher holds across all its buffers.
    `max_buffered` and `max_buffered_bytes` bound what waits for `receive()`: above either the
    socket is no longer read (this is what bounds QoS 0, which has no in-flight limit, and large
    payloads, which the receive maximum does not count). `max_packet_size` is sent in CONNECT
    (MQTT v5 Maximum Packet Size): the broker never sends a larger packet, and a broker that does
    anyway is disconnected before the packet is buffered. So what waits for `receive()` is at
    most `max_buffered_bytes` plus one socket read and one packet; what the caller took and has
    not acknowledged is the caller's to bound (the engine stops reading, `MqttClient.hold`).
    """

    client_id: str
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    subscriptions: Sequence[tuple[str, int]] = ()
    clean_start: bool = False
    session_expiry_interval: int = 3600
    receive_maximum: int = 10_000
    keep_alive: int = 30
    ssl: SSLContext | None = None
    server_hostname: str | None = None
    connect_timeout: float = 10.0
    reconnect_min_delay: float = 0.1
    reconnect_max_delay: float = 30.0
    max_buffered: int = 50_000
    max_buffered_bytes: int = 8 * 1024 * 1024
    max_packet_size: int = DEFAULT_PACKET_LIMIT

    def __post_init__(self) -> None:
        # A tuple, so that the frozen options cannot change under a running client.
        object.__setattr__(self, "subscriptions", tuple(self.subscriptions))
        if not self.client_id:
            raise ValueError("client_id must not be empty: a persistent session is found by it")
        if len(self.client_id.encode()) > _MAX_UINT16:
            raise ValueError(f"client_id is longer than {_MAX_UINT16} bytes")
        if not 0 < self.port <= _MAX_UINT16:
            raise ValueError(f"port must be within 1..{_MAX_UINT16}, got {self.port}")
        if self.password is not None and self.username is None:
            raise ValueError("a password needs a username")
        for topic_filter, qos in self.subscriptions:
            validate_topic_filter(topic_filter)
            if qos not in (0, 1):
                raise ValueError(
                    f"subscription {topic_filter!r}: qos must be 0 or 1 (QoS 2 is not supported; "
                    f"QoS 1 with idempotent writes gives the same result), got {qos}"
                )
        if not 0 <= self.session_expiry_interval <= _MAX_UINT32:
            raise ValueError(f"session_expiry_interval must be within 0..{_MAX_UINT32} seconds")
        if not 0 < self.receive_maximum <= _MAX_UINT16:
            raise ValueError(f"receive_maximum must be within 1..{_MAX_UINT16}")
        if not 0 <= self.keep_alive <= _MAX_UINT16:
            raise ValueError(f"keep_alive must be within 0..{_MAX_UINT16} seconds (0 disables it)")
        if self.server_hostname is not None and self.ssl is None:
            raise ValueError("server_hostname is only meaningful with ssl")
        if self.connect_timeout <= 0:
            raise ValueError("connect_timeout must be positive")
        if not 0 < self.reconnect_min_delay <= self.reconnect_max_delay:
            raise ValueError("reconnect delays must satisfy 0 < reconnect_min_delay <= max_delay")
        if self.max_buffered <= 0:
            raise ValueError("max_buffered must be positive")
        if not 64 <= self.max_packet_size <= _MAX_PACKET:
            raise ValueError(f"max_packet_size must be within 64..{_MAX_PACKET} bytes")
