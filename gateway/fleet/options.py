"""What to simulate, for each fleet: options validated on construction, so that a bad option
fails before any connection is made."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gateway.fleet.common import FleetError, KafkaFleetError, device_name
from gateway.fleet.payloads import SHAPES, Shape
from gateway.sources.mqtt.wire import MAX_PACKET_ID
from gateway.topics import TopicTemplate

__all__ = [
    "MAX_BATCH_BYTES",
    "PROTOCOLS",
    "Acks",
    "FleetOptions",
    "KafkaFleetOptions",
    "SaslMechanism",
    "SecurityProtocol",
]

# MQTT 3.1.1 is for brokers without v5 (amqtt): they cannot refuse a publish, only drop it.
PROTOCOLS = ("5", "3.1.1")
Acks = Literal[0, 1, "all"]
SecurityProtocol = Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL"]
SaslMechanism = Literal["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"]
MAX_BATCH_BYTES = 1024 * 1024  # the broker's default message.max.bytes, about
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


@dataclass(frozen=True, slots=True)
class FleetOptions:
    """What to simulate; validated on construction, so a bad option fails before any connect.

    `count` (total messages) or `duration` (seconds) ends the run; with neither, it runs until
    `Fleet.stop()`. `rate` is messages/s for the whole fleet, 0 for as fast as possible.
    `window` caps unacked QoS 1 publishes per connection (the broker's receive maximum too).
    `shape` is what the bodies carry; with `packed_stream`, every other device (the odd
    indices) sends MessagePack on that stream instead of JSON on `stream`, as a fleet does
    whose firmware differs.
    """

    host: str = "127.0.0.1"
    port: int = 1883
    devices: int = 10
    prefix: str = "sensor-"
    password: str | None = field(default=None, repr=False)
    credentials: Mapping[str, str] | None = field(default=None, repr=False)
    rate: float = 0.0
    count: int | None = None
    duration: float | None = None
    readings: int = 1
    topic_template: str = "devices/{identity}/{stream}"
    stream: str = "telemetry"
    shape: Shape = "telemetry"
    packed_stream: str | None = None
    malformed: float = 0.0
    spoofed: float = 0.0
    qos: int = 1
    protocol: str = "5"
    processes: int = 1
    window: int = 1000
    connect_timeout: float = 10.0
    drain_timeout: float = 30.0

    def __post_init__(self) -> None:
        problems = []
        if self.devices < 1:
            problems.append("devices must be at least 1")
        if not 1 <= self.processes <= max(self.devices, 1):
            problems.append("processes must be between 1 and the number of devices")
        problems += _pace_problems(self.rate, self.count, self.duration, self.readings)
        if not (0 <= self.malformed <= 1 and 0 <= self.spoofed <= 1):
            problems.append("malformed and spoofed are shares between 0 and 1")
        elif self.malformed + self.spoofed > 1:
            problems.append("malformed + spoofed must not exceed 1")
        if self.qos not in (0, 1):
            problems.append("qos must be 0 or 1")
        if self.protocol not in PROTOCOLS:
            problems.append(f"protocol must be one of {', '.join(PROTOCOLS)}")
        if not 1 <= self.window <= MAX_PACKET_ID:
            problems.append(f"window must be between 1 and {MAX_PACKET_ID}")
        for stream in (self.stream, self.packed_stream):
            if stream is not None and (not stream or any(c in stream for c in "/+#")):
                problems.append("a stream must be one topic level, without wildcards")
        if self.shape not in SHAPES:
            problems.append(f"shape must be one of {', '.join(SHAPES)}")
        if self.password is None and self.credentials is None:
            problems.append("give a password or credentials")
        elif self.credentials is not None:
            missing = [n for n in self.names() if n not in self.credentials]
            if missing:
                shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
                problems.append(f"no password in the credentials for {len(missing)}: {shown}")
        if problems:
            raise FleetError("invalid fleet options: " + "; ".join(problems))
        TopicTemplate(self.topic_template)  # raises ConfigError naming the problem

    def name(self, index: int) -> str:
        """`<prefix><index>`, zero-padded to 4 digits or to the widest index."""
        return device_name(self.prefix, self.devices, index)

    def names(self) -> list[str]:
        return [self.name(i) for i in range(self.devices)]

    def password_for(self, name: str) -> str:
        if self.credentials is not None:
            return self.credentials[name]
        assert self.password is not None
        return self.password

    def packs(self, index: int) -> bool:
        """Whether device `index` sends MessagePack (on `packed_stream`)."""
        return self.packed_stream is not None and index % 2 == 1

    def topic(self, name: str, packed: bool = False) -> str:
        stream = self.packed_stream if packed and self.packed_stream is not None else self.stream
        return self.topic_template.replace("{identity}", name).replace("{stream}", stream)

    def victim(self, index: int) -> str:
        """Whose topic device `index` spoofs: the next device (another name when alone)."""
        return self.name((index + 1) % self.devices if self.devices > 1 else index + 1)


@dataclass(frozen=True, slots=True)
class KafkaFleetOptions:
    """What to simulate; validated on construction, so a bad option fails before any connect.

    `count` (total messages) or `duration` (seconds) ends the run; with neither, it runs until
    `KafkaFleet.stop()`. `rate` is messages/s for the whole fleet, 0 for as fast as possible.
    `identity_header` puts each device's name in that header instead of the record key.
    """

    bootstrap_servers: str = "127.0.0.1:9092"
    topic: str = "telemetry"
    devices: int = 10
    prefix: str = "sensor-"
    identity_header: str | None = None
    rate: float = 0.0
    count: int | None = None
    duration: float | None = None
    readings: int = 1
    malformed: float = 0.0
    acks: Acks = "all"
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism = "SCRAM-SHA-256"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    batch_bytes: int = MAX_BATCH_BYTES
    client_id: str = "gateway-simulate"
    connect_timeout: float = 30.0
    drain_timeout: float = 30.0

    def __post_init__(self) -> None:
        problems = []
        if not self.bootstrap_servers.strip():
            problems.append("bootstrap_servers must name at least one host:port")
        if not _TOPIC.fullmatch(self.topic):
            problems.append("topic must be 1-249 characters of letters, digits, `.`, `_`, `-`")
        if self.devices < 1:
            problems.append("devices must be at least 1")
        if self.identity_header is not None and not self.identity_header:
            problems.append("identity_header must not be empty")
        problems += _pace_problems(self.rate, self.count, self.duration, self.readings)
        if not 0 <= self.malformed <= 1:
            problems.append("malformed is a share between 0 and 1")
        if self.acks not in (0, 1, "all"):
            problems.append("acks must be 0, 1 or 'all'")
        if self.security_protocol not in ("PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL"):
            problems.append("security_protocol must be PLAINTEXT, SASL_PLAINTEXT, SASL_SSL or SSL")
        elif self.security_protocol.startswith("SASL") and not (self.username and self.password):
            problems.append(f"{self.security_protocol} needs a username and a password")
        if self.sasl_mechanism not in ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"):
            problems.append("sasl_mechanism must be SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN")
        if not 1024 <= self.batch_bytes <= MAX_BATCH_BYTES:
            problems.append(f"batch_bytes must be between 1024 and {MAX_BATCH_BYTES}")
        if self.connect_timeout <= 0 or self.drain_timeout <= 0:
            problems.append("timeouts must be positive")
        if problems:
            raise KafkaFleetError("invalid Kafka fleet options: " + "; ".join(problems))

    @property
    def identity_from(self) -> str:
        """Where the gateway must look for the identity: its `identity_from` setting."""
        return "key" if self.identity_header is None else f"header:{self.identity_header}"

    def name(self, index: int) -> str:
        """`<prefix><index>`, zero-padded like the MQTT fleet's names (4 digits or wider)."""
        return device_name(self.prefix, self.devices, index)

    def names(self) -> list[str]:
        return [self.name(i) for i in range(self.devices)]


def _pace_problems(
    rate: float, count: int | None, duration: float | None, readings: int
) -> list[str]:
    """What is wrong with how fast, how long and how much a fleet sends (both fleets share it)."""
    problems = []
    if rate < 0:
        problems.append("rate must be 0 (unlimited) or positive")
    if count is not None and count < 0:
        problems.append("count must not be negative")
    if duration is not None and duration <= 0:
        problems.append("duration must be positive")
    if readings < 1:
        problems.append("readings must be at least 1")
    return problems
