"""A simulated device fleet publishing telemetry over MQTT v5, for demos, tests and benchmarks.

It has to load a gateway that drains 100k+ messages/s on a 2-core machine, so each device is a
bare asyncio protocol over the `mqtt5` codec rather than a general client: topic headers are
encoded once per device, PUBLISH packets are assembled in bursts and leave in one write, QoS 1
publishes are pipelined up to a window of packet ids per connection (reused as PUBACKs return),
the usual PUBACKs are parsed without the codec, and the fleet can be spread over processes.

Each message is one of three kinds, so that a test can compare with what the gateway recorded:
*valid*; *malformed* (truncated JSON, which the gateway must reject); *spoofed* (a valid body
published under another device's topic, which the broker's ACL must refuse: PUBACK 135). Every
body carries a unique `id` (`<run>-<device index>-<seq>`) and `ts`, the send time in epoch ms.

    report = await run_fleet(FleetOptions(port=1883, devices=100, password="...", count=10_000))
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import multiprocessing.connection
import multiprocessing.synchronize
import os
import random
import secrets
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NamedTuple, cast

import mqtt5
import orjson
import uvloop

from gateway.errors import GatewayError
from gateway.topics import TopicTemplate

__all__ = [
    "KINDS",
    "Fleet",
    "FleetError",
    "FleetOptions",
    "FleetReport",
    "KindCounts",
    "Mix",
    "Payloads",
    "Progress",
    "device_quota",
    "encode_publish",
    "load_credentials",
    "run_fleet",
    "topic_header",
]

VALID, MALFORMED, SPOOFED = 0, 1, 2
# MQTT 3.1.1 is for brokers without v5 (amqtt): they cannot refuse a publish, only drop it.
PROTOCOLS = ("5", "3.1.1")
# 3.1.1 CONNACK return codes as the v5 reason codes that say the same.
_CONNACK_311 = {
    0: mqtt5.ConnAckReasonCode.SUCCESS,
    1: mqtt5.ConnAckReasonCode.UNSUPPORTED_PROTOCOL_VERSION,
    2: mqtt5.ConnAckReasonCode.CLIENT_ID_NOT_VALID,
    3: mqtt5.ConnAckReasonCode.SERVER_UNAVAILABLE,
    4: mqtt5.ConnAckReasonCode.BAD_USER_NAME_OR_PASSWORD,
    5: mqtt5.ConnAckReasonCode.NOT_AUTHORIZED,
}
KINDS = ("valid", "malformed", "spoofed")
METRICS = ("temperature", "humidity", "pressure", "voltage")
SITES = tuple({"site": f"site-{n}"} for n in range(10))

_MAX_PACKET_ID = 0xFFFF
_BURST = 512  # messages per write: big enough to amortise, small enough to interleave devices
_UNLIMITED = 1 << 62
_PACE_TICK = 0.01  # seconds between credit grants when the rate is limited
_POLL_TICK = 0.05  # seconds between checks for a stop or the deadline otherwise
_CONNECTING = 64  # concurrent connection attempts: more only overflows the broker's backlog
_SHARE_SCALE = 1_000_000
_HANG_UP_TIMEOUT = 5.0  # seconds a broker gets to close the connection after DISCONNECT
_DISCONNECT = mqtt5.DisconnectPacket().write()
_read = mqtt5.read


class FleetError(GatewayError):
    """The fleet could not run: invalid options, unreachable broker, or a device refused."""


def load_credentials(path: Path) -> dict[str, str]:
    """`name:password` lines (blank lines and `#` comments skipped); the password may hold `:`."""
    credentials = {}
    try:
        text = path.read_text()
    except OSError as exc:
        raise FleetError(f"cannot read credentials file {path}: {exc.strerror}") from None
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, password = line.partition(":")
        if not colon or not name or not password:
            raise FleetError(f"{path}:{number}: expected `name:password`")
        credentials[name] = password
    return credentials


@dataclass(frozen=True, slots=True)
class FleetOptions:
    """What to simulate; validated on construction, so a bad option fails before any connect.

    `count` (total messages) or `duration` (seconds) ends the run; with neither, it runs until
    `Fleet.stop()`. `rate` is messages/s for the whole fleet, 0 for as fast as possible.
    `window` caps unacked QoS 1 publishes per connection (the broker's receive maximum too).
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
        if self.rate < 0:
            problems.append("rate must be 0 (unlimited) or positive")
        if self.count is not None and self.count < 0:
            problems.append("count must not be negative")
        if self.duration is not None and self.duration <= 0:
            problems.append("duration must be positive")
        if self.readings < 1:
            problems.append("readings must be at least 1")
        if not (0 <= self.malformed <= 1 and 0 <= self.spoofed <= 1):
            problems.append("malformed and spoofed are shares between 0 and 1")
        elif self.malformed + self.spoofed > 1:
            problems.append("malformed + spoofed must not exceed 1")
        if self.qos not in (0, 1):
            problems.append("qos must be 0 or 1")
        if self.protocol not in PROTOCOLS:
            problems.append(f"protocol must be one of {', '.join(PROTOCOLS)}")
        if not 1 <= self.window <= _MAX_PACKET_ID:
            problems.append(f"window must be between 1 and {_MAX_PACKET_ID}")
        if not self.stream or any(c in self.stream for c in "/+#"):
            problems.append("stream must be one topic level, without wildcards")
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
        width = max(4, len(str(self.devices - 1)))
        return f"{self.prefix}{index:0{width}d}"

    def names(self) -> list[str]:
        return [self.name(i) for i in range(self.devices)]

    def password_for(self, name: str) -> str:
        if self.credentials is not None:
            return self.credentials[name]
        assert self.password is not None
        return self.password

    def topic(self, name: str) -> str:
        return self.topic_template.replace("{identity}", name).replace("{stream}", self.stream)

    def victim(self, index: int) -> str:
        """Whose topic device `index` spoofs: the next device (another name when alone)."""
        return self.name((index + 1) % self.devices if self.devices > 1 else index + 1)


def device_quota(count: int | None, devices: int, index: int) -> int | None:
    """Messages device `index` sends: `count` spread evenly, the remainder to the first ones."""
    if count is None:
        return None
    return count // devices + (1 if index < count % devices else 0)


class Mix:
    """Chooses each next message's kind so the shares hold exactly (rounded) and evenly spread.

    Error diffusion on integers rather than random draws: a test then knows the counts, and
    a share of 0.01 gives one message in a hundred, not a cluster or none.
    """

    __slots__ = ("_malformed", "_malformed_step", "_spoofed", "_spoofed_step")

    def __init__(self, malformed: float, spoofed: float) -> None:
        self._malformed_step = round(malformed * _SHARE_SCALE)
        self._spoofed_step = round(spoofed * _SHARE_SCALE)
        # Starting half-way makes the totals round to nearest instead of down.
        self._malformed = self._spoofed = _SHARE_SCALE // 2

    def next(self) -> int:
        self._malformed += self._malformed_step
        self._spoofed += self._spoofed_step
        if self._spoofed >= _SHARE_SCALE:
            self._spoofed -= _SHARE_SCALE
            return SPOOFED
        if self._malformed >= _SHARE_SCALE:
            self._malformed -= _SHARE_SCALE
            return MALFORMED
        return VALID


class Payloads:
    """Message bodies in the shapes the gateway decodes: one reading, or a batch of `readings`."""

    __slots__ = ("_random", "_readings", "_run_id")

    def __init__(self, run_id: str, readings: int) -> None:
        self._run_id = run_id
        self._readings = readings
        self._random = random.Random()

    def build(self, index: int, seq: int, ts: int, malformed: bool) -> bytes:
        """The body of device `index`'s message `seq`; malformed ones lose their closing brace."""
        uniform = self._random.random
        tags = SITES[index % len(SITES)]
        message_id = f"{self._run_id}-{index}-{seq}"
        if self._readings == 1:
            body: dict[str, Any] = {
                "id": message_id,
                "ts": ts,
                "metric": METRICS[seq % len(METRICS)],
                "value": round(uniform() * 100, 2),
                "tags": tags,
            }
        else:
            body = {
                "id": message_id,
                "ts": ts,
                "readings": [
                    {"metric": metric, "value": round(uniform() * 100, 2), "tags": tags}
                    for metric in (METRICS[(seq + n) % len(METRICS)] for n in range(self._readings))
                ],
            }
        data = orjson.dumps(body)
        return data[:-1] if malformed else data


def topic_header(topic: str) -> bytes:
    """The topic as a PUBLISH variable header starts: a 2-byte length, then UTF-8."""
    encoded = topic.encode()
    return len(encoded).to_bytes(2, "big") + encoded


_ONE_BYTE = [bytes((n,)) for n in range(128)]


def encode_publish(
    header: bytes, payload: bytes, packet_id: int | None, properties: bytes = b"\x00"
) -> bytes:
    """A PUBLISH without properties: QoS 1 with a packet id, QoS 0 without. MQTT 3.1.1 has no
    properties field at all (`properties=b""`).

    By hand because the codec would rebuild the topic bytes of every message; a unit test checks
    the bytes against `mqtt5.PublishPacket.write()`.
    """
    if packet_id is None:
        first, pid = b"\x30", b""
    else:
        first, pid = b"\x32", packet_id.to_bytes(2, "big")
    remaining = len(header) + len(pid) + len(properties) + len(payload)
    if remaining < 0x80:
        length = _ONE_BYTE[remaining]
    elif remaining < 0x4000:  # the usual telemetry message
        length = bytes((remaining & 0x7F | 0x80, remaining >> 7))
    else:
        length = _remaining_length(remaining)
    return b"".join((first, length, header, pid, properties, payload))


def encode_connect_311(client_id: str, username: str, password: str) -> bytes:
    """An MQTT 3.1.1 CONNECT with a user name, a password and a clean session, no keep-alive."""
    fields = b"".join(topic_header(text) for text in (client_id, username, password))
    body = b"\x00\x04MQTT\x04\xc2\x00\x00" + fields
    return b"\x10" + _remaining_length(len(body)) + body


def _remaining_length(remaining: int) -> bytes:
    digits = bytearray()
    while True:
        digit = remaining & 0x7F
        remaining >>= 7
        digits.append(digit | 0x80 if remaining else digit)
        if not remaining:
            return bytes(digits)


def _reason_name(code: int) -> str:
    """`not_authorized`, for a PUBACK reason code; the number itself when the codec has none."""
    try:
        return mqtt5.PubAckReasonCode(code).name.lower()
    except ValueError:
        return str(code)


@dataclass(slots=True)
class KindCounts:
    """Messages of one kind: sent, accepted by the broker (reason < 0x80), refused (>= 0x80)."""

    sent: int = 0
    acked: int = 0
    refused: int = 0


@dataclass(slots=True)
class FleetReport:
    """What a run sent and how the broker answered, with what the gateway should have recorded.

    `reasons` counts PUBACK reason codes (QoS 1). For QoS 0 nothing is answered, so what was
    sent stands for what was delivered and spoofs are assumed dropped.
    """

    devices: int
    processes: int
    qos: int
    readings: int
    protocol: str
    planned: int | None
    duration: float
    kinds: dict[str, KindCounts]
    reasons: dict[int, int]
    errors: list[str]

    @property
    def sent(self) -> int:
        return sum(k.sent for k in self.kinds.values())

    @property
    def acked(self) -> int:
        return sum(k.acked for k in self.kinds.values())

    @property
    def refused(self) -> int:
        return sum(k.refused for k in self.kinds.values())

    @property
    def unanswered(self) -> int:
        return self.sent - self.acked - self.refused if self.qos else 0

    @property
    def malformed_sent(self) -> int:
        return self.kinds["malformed"].sent

    @property
    def spoofed_sent(self) -> int:
        return self.kinds["spoofed"].sent

    @property
    def rate(self) -> float:
        """Messages sent per second over the whole run, final PUBACKs included."""
        return self.sent / self.duration if self.duration > 0 else 0.0

    def expected(self) -> dict[str, int]:
        """What a subscriber (the gateway) should receive, per kind, and the rows it writes."""

        def delivered(kind: str) -> int:
            counts = self.kinds[kind]
            return counts.acked if self.qos else counts.sent

        valid = delivered("valid")
        return {
            "valid_messages": valid,
            "rows": valid * self.readings,
            "malformed_messages": delivered("malformed"),
            "spoofed_messages": 0,
        }

    def problems(self) -> list[str]:
        """Why the run did not go as it must: empty when every message got its expected answer."""
        problems = list(self.errors)
        if self.unanswered:
            problems.append(f"{self.unanswered} of {self.sent} messages got no PUBACK")
        spoofs = self.kinds["spoofed"].acked if self.protocol == "5" else 0
        if spoofs:
            problems.append(
                f"the broker accepted {spoofs} spoofed messages: its ACL lets devices "
                "publish under other devices' topics"
            )
        own = self.kinds["valid"].refused + self.kinds["malformed"].refused
        if own:
            refusals = ", ".join(
                f"{_reason_name(code)} ({code}) x{count}"
                for code, count in sorted(self.reasons.items())
                if code >= 0x80
            )
            problems.append(
                f"the broker refused {own} messages the devices sent to their own topics: "
                f"{refusals}"
            )
        return problems

    @property
    def ok(self) -> bool:
        return not self.problems()

    def as_json(self) -> dict[str, Any]:
        return {
            "devices": self.devices,
            "processes": self.processes,
            "qos": self.qos,
            "protocol": self.protocol,
            "readings": self.readings,
            "planned": self.planned,
            "sent": self.sent,
            "acked": self.acked,
            "refused": self.refused,
            "unanswered": self.unanswered,
            "malformed_sent": self.malformed_sent,
            "spoofed_sent": self.spoofed_sent,
            "duration": round(self.duration, 3),
            "rate": round(self.rate, 1),
            "reasons": {_reason_name(c): n for c, n in sorted(self.reasons.items())},
            "kinds": {
                name: {"sent": k.sent, "acked": k.acked, "refused": k.refused}
                for name, k in self.kinds.items()
            },
            "expected": self.expected(),
            "errors": self.errors,
            "ok": self.ok,
        }

    def render(self) -> str:
        plural = "es" if self.processes > 1 else ""
        planned = f" of {self.planned}" if self.planned is not None else ""
        lines = [
            f"{self.devices} devices, {self.processes} process{plural}, QoS {self.qos}, "
            f"{self.readings} reading(s) per message",
            f"sent        {self.sent}{planned} in {self.duration:.2f} s ({self.rate:,.0f} msg/s)",
        ]
        if self.qos:
            lines.append(
                f"answered    {self.acked} acked, {self.refused} refused, "
                f"{self.unanswered} unanswered"
            )
        for name, k in self.kinds.items():
            answers = f": {k.acked} acked, {k.refused} refused" if self.qos else ""
            lines.append(f"  {name:<10}{k.sent} sent{answers}")
        if self.reasons:
            reasons = ", ".join(f"{_reason_name(c)} {n}" for c, n in sorted(self.reasons.items()))
            lines.append(f"reasons     {reasons}")
        expected = self.expected()
        lines.append(
            f"expected    {expected['valid_messages']} valid messages "
            f"({expected['rows']} rows), {expected['malformed_messages']} malformed rejects, "
            "no spoofed message"
        )
        return "\n".join(lines)

    @classmethod
    def merge(cls, parts: Sequence[FleetReport], processes: int) -> FleetReport:
        """One report from the processes' reports; they all started together."""
        first = parts[0]
        kinds = {name: KindCounts() for name in KINDS}
        reasons: dict[int, int] = {}
        for part in parts:
            for name, counts in part.kinds.items():
                total = kinds[name]
                total.sent += counts.sent
                total.acked += counts.acked
                total.refused += counts.refused
            for code, count in part.reasons.items():
                reasons[code] = reasons.get(code, 0) + count
        return cls(
            devices=sum(p.devices for p in parts),
            processes=processes,
            qos=first.qos,
            protocol=first.protocol,
            readings=first.readings,
            planned=first.planned,
            duration=max(p.duration for p in parts),
            kinds=kinds,
            reasons=reasons,
            errors=[e for p in parts for e in p.errors],
        )


class Progress(NamedTuple):
    """Running totals, for a live progress line."""

    sent: int
    acked: int
    refused: int


class _Device(asyncio.Protocol):
    """One device's connection: sends bursts while its window, quota and credit allow."""

    def __init__(self, part: _Part, index: int) -> None:
        options = part.options
        self.part = part
        self.index = index
        self.name = options.name(index)
        self.header = topic_header(options.topic(self.name))
        self.spoof_header = topic_header(options.topic(options.victim(index)))
        quota = device_quota(options.count, options.devices, index)
        self.quota = _UNLIMITED if quota is None else quota
        self.credit = 0
        self.window = options.window if options.qos else _BURST
        self.v311 = options.protocol == "3.1.1"
        self.properties = b"" if self.v311 else b"\x00"  # a PUBLISH's empty properties
        self.inflight: dict[int, int] = {}  # packet id -> kind
        self.next_id = 1
        self.seq = 0
        self.sending = True  # until the quota is spent or sending stops
        self.finished = False  # once every message is answered or the connection failed
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.connack: asyncio.Future[mqtt5.ConnAckPacket | None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self._rest = b""
        self._writable = True
        self._scheduled = False

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        options = self.part.options
        client_id, password = f"{self.name}-{self.part.run_id}", options.password_for(self.name)
        if options.protocol == "3.1.1":
            self.transport.write(encode_connect_311(client_id, self.name, password))
            return
        connect = mqtt5.ConnectPacket(
            client_id, username=self.name, password=password.encode(), clean_start=True
        )
        self.transport.write(connect.write())

    def pause_writing(self) -> None:
        self._writable = False

    def resume_writing(self) -> None:
        self._writable = True
        self.pump()

    def data_received(self, data: bytes) -> None:
        if self._rest:
            data = self._rest + data
            self._rest = b""
        inflight = self.inflight
        acked = self.part.acked
        end = len(data)
        offset = 0
        while offset < end:
            # Mosquitto's PUBACKs: 4 bytes on success, 5 with another reason and no properties.
            if data[offset] == 0x40 and offset + 1 < end and data[offset + 1] in (2, 3):
                size = data[offset + 1] + 2
                if offset + size > end:
                    self._rest = data[offset:]
                    break
                kind = inflight.pop((data[offset + 2] << 8) | data[offset + 3], -1)
                if kind < 0:
                    self._fail("a PUBACK for a packet id that was not in flight")
                    return
                if size == 4:
                    acked[kind] += 1
                else:
                    self._answered(kind, data[offset + 4])
                offset += size
                continue
            if data[offset] == 0x20 and self.v311:  # a 3.1.1 CONNACK: 4 bytes, no properties
                if offset + 4 > end:
                    self._rest = data[offset:]
                    break
                code = _CONNACK_311.get(data[offset + 3], mqtt5.ConnAckReasonCode.UNSPECIFIED_ERROR)
                if not self._control(mqtt5.ConnAckPacket(reason_code=code)):
                    return
                offset += 4
                continue
            try:
                packet, size = _read(memoryview(data)[offset:])
            except IndexError:  # the rest of this packet is still on its way
                self._rest = data[offset:]
                break
            except ValueError as exc:
                self._fail(f"malformed packet from the broker: {exc}")
                return
            offset += size
            if not self._control(packet):
                return
        # Refill once a quarter of the window is free: a write for every few PUBACKs would
        # cost us and the broker a system call each.
        if 4 * (self.window - len(inflight)) >= self.window:
            self.pump()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished:
            detail = f": {exc}" if exc is not None else ""
            self._fail(f"connection lost{detail}")
        if not self.connack.done():
            self.connack.set_result(None)
        if not self.closed.done():
            self.closed.set_result(None)

    # answers

    def _answered(self, kind: int, code: int) -> None:
        part = self.part
        part.reasons[code] = part.reasons.get(code, 0) + 1
        if code >= 0x80:
            part.refused[kind] += 1
        else:
            part.acked[kind] += 1

    def _control(self, packet: mqtt5.Packet) -> bool:
        """Handle a packet other than a fast-path PUBACK; False once the connection is failed."""
        if isinstance(packet, mqtt5.PubAckPacket):
            kind = self.inflight.pop(packet.packet_id, -1)
            if kind < 0:
                self._fail("a PUBACK for a packet id that was not in flight")
                return False
            self._answered(kind, int(packet.reason_code))
            return True
        if isinstance(packet, mqtt5.ConnAckPacket) and not self.connack.done():
            self.connack.set_result(packet)
            return True
        if isinstance(packet, mqtt5.DisconnectPacket):
            code = packet.reason_code
            self._fail(f"the broker disconnected it: {code.name.lower()} ({int(code)})")
            return False
        if isinstance(packet, mqtt5.PingRespPacket):
            return True
        self._fail(f"unexpected {type(packet).__name__} from the broker")
        return False

    def _fail(self, why: str) -> None:
        if not self.finished:
            self.part.errors.append(f"{self.name}: {why}")
            self.finish()
        if self.transport is not None:
            self.transport.abort()

    # sending

    def pump(self) -> None:
        """Send what the window, quota and credit allow now, in one write."""
        transport = self.transport
        if self.finished or not self._writable or transport is None:
            return
        inflight = self.inflight
        n = min(self.window - len(inflight), self.quota, self.credit, _BURST)
        if n <= 0:
            if self.quota == 0 and not inflight:
                self.finish()
            return
        self.quota -= n
        self.credit -= n
        part = self.part
        kind_of = part.mix.next
        build = part.payloads.build
        sent = part.sent
        index, first = self.index, self.seq
        header, spoof_header, properties = self.header, self.spoof_header, self.properties
        ts = time.time_ns() // 1_000_000
        packets = []
        if part.options.qos:
            packet_id = self.next_id
            for seq in range(first, first + n):
                kind = kind_of()
                payload = build(index, seq, ts, kind == MALFORMED)
                while packet_id in inflight:
                    packet_id = packet_id % _MAX_PACKET_ID + 1
                inflight[packet_id] = kind
                packets.append(
                    encode_publish(
                        spoof_header if kind == SPOOFED else header, payload, packet_id, properties
                    )
                )
                packet_id = packet_id % _MAX_PACKET_ID + 1
                sent[kind] += 1
            self.next_id = packet_id
        else:
            for seq in range(first, first + n):
                kind = kind_of()
                payload = build(index, seq, ts, kind == MALFORMED)
                packets.append(
                    encode_publish(
                        spoof_header if kind == SPOOFED else header, payload, None, properties
                    )
                )
                sent[kind] += 1
        self.seq = first + n
        transport.write(b"".join(packets))
        if self.quota == 0:
            self._sent_all()
            if not inflight:
                self.finish()
        elif not part.options.qos and self.credit > 0 and not self._scheduled:
            # No PUBACK will call us back: come back after the other devices had their turn.
            self._scheduled = True
            part.loop.call_soon(self._resume)

    def _resume(self) -> None:
        self._scheduled = False
        self.pump()

    def stop_sending(self) -> None:
        self._sent_all()
        if not self.inflight:
            self.finish()

    def _sent_all(self) -> None:
        """Nothing more to send: tell the part, once."""
        if self.sending:
            self.sending = False
            self.quota = 0
            self.part.device_sent_all()

    def finish(self) -> None:
        """Done: every message answered, or the connection failed, or the run ends.

        Says DISCONNECT and lets the broker hang up, which it does once it has read everything
        before it: so even a QoS 0 message counted as sent has reached the broker.
        """
        if self.finished:
            return
        self.finished = True
        self._sent_all()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_DISCONNECT)
        self.part.device_finished()


class _Part:
    """One process's share of the fleet: devices `first` to `stop`, its counters and pacing."""

    def __init__(self, options: FleetOptions, first: int, stop: int, run_id: str) -> None:
        self.options = options
        self.run_id = run_id
        self.loop = asyncio.get_running_loop()
        self.mix = Mix(options.malformed, options.spoofed)
        self.payloads = Payloads(run_id, options.readings)
        self.sent = [0, 0, 0]  # per kind
        self.acked = [0, 0, 0]
        self.refused = [0, 0, 0]
        self.reasons: dict[int, int] = {}  # non-success PUBACK reason codes
        self.errors: list[str] = []
        self.devices = [_Device(self, index) for index in range(first, stop)]
        self.rate = options.rate * len(self.devices) / options.devices
        self.sent_all: asyncio.Future[None] = self.loop.create_future()
        self.done: asyncio.Future[None] = self.loop.create_future()
        self._active_changed = True
        self._active: list[_Device] = []
        self._sending = self._unfinished = len(self.devices)
        self._cursor = 0

    def progress(self) -> Progress:
        return Progress(sum(self.sent), sum(self.acked), sum(self.refused))

    def device_sent_all(self) -> None:
        self._sending -= 1
        self._active_changed = True
        if self._sending == 0 and not self.sent_all.done():
            self.sent_all.set_result(None)

    def device_finished(self) -> None:
        self._unfinished -= 1
        if self._unfinished == 0 and not self.done.done():
            self.done.set_result(None)

    async def connect(self) -> None:
        """Connect every device; raises FleetError naming a device that failed, if any."""
        limit = asyncio.Semaphore(_CONNECTING)
        results = await asyncio.gather(
            *(self._connect(device, limit) for device in self.devices), return_exceptions=True
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await self.close()
            first = failures[0]
            if not isinstance(first, FleetError):
                raise first
            more = f" (and {len(failures) - 1} other devices)" if len(failures) > 1 else ""
            raise FleetError(f"{first}{more}")

    async def _connect(self, device: _Device, limit: asyncio.Semaphore) -> None:
        options = self.options
        where = f"{options.host}:{options.port}"
        async with limit:
            try:
                async with asyncio.timeout(options.connect_timeout):
                    await self.loop.create_connection(lambda: device, options.host, options.port)
                    connack = await asyncio.shield(device.connack)
            except TimeoutError:
                raise FleetError(
                    f"{device.name}: no CONNACK from the broker at {where} "
                    f"within {options.connect_timeout:g}s"
                ) from None
            except OSError as exc:
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                raise FleetError(
                    f"{device.name}: cannot reach the broker at {where}: {reason}"
                ) from None
        if connack is None:
            raise FleetError(f"{device.name}: the broker at {where} closed the connection")
        code = connack.reason_code
        if code != mqtt5.ConnAckReasonCode.SUCCESS:
            raise FleetError(
                f"{device.name}: the broker refused the connection: "
                f"{code.name.replace('_', ' ').lower()} ({int(code)})"
            )
        if options.qos:
            device.window = min(device.window, connack.receive_max)

    async def publish(self, stopped: Callable[[], bool], on_tick: Callable[[], None]) -> float:
        """Publish until the quotas, the duration or a stop; then wait for the last answers.

        Returns the seconds from the first publish to the last answer.
        """
        options = self.options
        started = self.loop.time()
        for device in self.devices:
            device.credit = 0 if self.rate else _UNLIMITED
            device.pump()
        granted = 0
        tick = _PACE_TICK if self.rate else _POLL_TICK
        while not self.sent_all.done():
            await asyncio.wait([self.sent_all], timeout=tick)
            on_tick()
            elapsed = self.loop.time() - started
            if stopped() or (options.duration is not None and elapsed >= options.duration):
                break
            if self.rate:
                target = int(self.rate * elapsed)
                if target > granted:
                    self._grant(target - granted)
                    granted = target
        for device in self.devices:
            device.stop_sending()
        if not self.done.done():
            await asyncio.wait([self.done], timeout=options.drain_timeout)
        on_tick()
        return self.loop.time() - started

    def _grant(self, credit: int) -> None:
        """Share `credit` messages among the devices that still send, round-robin."""
        if self._active_changed:
            self._active = [d for d in self.devices if d.sending]
            self._active_changed = False
        active = self._active
        if not active:
            return
        each, extra = divmod(credit, len(active))
        if each:
            for device in active:
                device.credit += each
        start = self._cursor % len(active)
        lucky = [active[(start + n) % len(active)] for n in range(extra)]
        for device in lucky:
            device.credit += 1
        self._cursor = start + extra
        for device in active if each else lucky:
            device.pump()

    async def close(self) -> None:
        """Disconnect every device; wait for the broker to hang up, or hang up after a while."""
        for device in self.devices:
            device.finish()
        waiting = [d.closed for d in self.devices if d.transport is not None]
        if waiting:
            await asyncio.wait(waiting, timeout=_HANG_UP_TIMEOUT)
        for device in self.devices:
            if device.transport is not None and not device.closed.done():
                device.transport.abort()

    def report(self, duration: float) -> FleetReport:
        reasons = dict(self.reasons)
        successes = sum(self.acked) - sum(n for code, n in reasons.items() if code < 0x80)
        if successes:
            reasons[0] = successes
        return FleetReport(
            devices=len(self.devices),
            processes=1,
            qos=self.options.qos,
            protocol=self.options.protocol,
            readings=self.options.readings,
            planned=self.options.count,
            duration=duration,
            kinds={
                name: KindCounts(self.sent[k], self.acked[k], self.refused[k])
                for k, name in enumerate(KINDS)
            },
            reasons=reasons,
            errors=self.errors,
        )


def _slices(devices: int, processes: int) -> list[tuple[int, int]]:
    """Contiguous device ranges, as equal as can be."""
    bounds = [devices * n // processes for n in range(processes + 1)]
    return list(itertools.pairwise(bounds))


class Fleet:
    """One run of the fleet, which another task may stop early or watch while it runs.

    With `processes` > 1 the devices are split over child processes started with `spawn`
    (forking a running event loop is unsafe), which import the caller's main module again: a
    script must keep its entry point under `if __name__ == "__main__":`.
    """

    def __init__(self, options: FleetOptions) -> None:
        self.options = options
        self.run_id = secrets.token_hex(4)
        """Part of every message id, so runs never repeat one another's ids."""
        self._stopped = False
        self._part: _Part | None = None
        self._shared: _Shared | None = None

    def stop(self) -> None:
        """Stop sending; messages in flight still get their answers, then `run` returns."""
        self._stopped = True
        if self._shared is not None:
            self._shared.stop.set()

    def progress(self) -> Progress:
        if self._part is not None:
            return self._part.progress()
        if self._shared is not None:
            totals = self._shared.counters
            return Progress(*(sum(totals[k::3]) for k in range(3)))
        return Progress(0, 0, 0)

    async def run(self) -> FleetReport:
        """Connect every device, publish, collect the answers; raises FleetError on a refusal."""
        if self.options.processes == 1:
            return await self._run_here()
        return await self._run_processes()

    async def _run_here(self) -> FleetReport:
        part = self._part = _Part(self.options, 0, self.options.devices, self.run_id)
        await part.connect()
        try:
            duration = await part.publish(lambda: self._stopped, lambda: None)
        finally:
            await part.close()
        return part.report(duration)

    async def _run_processes(self) -> FleetReport:
        processes = self.options.processes
        context = multiprocessing.get_context("spawn")
        shared = self._shared = _Shared(
            barrier=context.Barrier(processes),
            stop=context.Event(),
            counters=cast(Any, context.Array("q", 3 * processes, lock=False)),
        )
        if self._stopped:
            shared.stop.set()
        children: list[tuple[multiprocessing.process.BaseProcess, Connection[Any, Any]]] = []
        try:
            for slot, (first, stop) in enumerate(_slices(self.options.devices, processes)):
                receiver, sender = context.Pipe(duplex=False)
                child = context.Process(
                    target=_child_main,
                    args=(self.options, first, stop, self.run_id, slot, shared, sender),
                    name=f"gateway-simulate-{slot}",
                    daemon=True,
                )
                child.start()
                sender.close()  # so that a child that dies shows as EOF on our end
                children.append((child, receiver))
            outcomes = await asyncio.to_thread(_collect, [r for _, r in children], shared)
        finally:
            shared.stop.set()
            shared.barrier.abort()
            for process, receiver in children:
                await asyncio.to_thread(process.join, 10)
                if process.is_alive():
                    process.kill()
                receiver.close()
        # A child's own error says more than the "aborted" of the others it stopped.
        failures = [v for s, v in outcomes if s == "error"] or [v for s, v in outcomes if s != "ok"]
        if failures:
            more = f" (and {len(failures) - 1} more processes)" if len(failures) > 1 else ""
            raise FleetError(f"{failures[0]}{more}")
        return FleetReport.merge(
            [cast(FleetReport, value) for _, value in outcomes], processes=processes
        )


async def run_fleet(options: FleetOptions) -> FleetReport:
    """Run a fleet to the end of its count or duration and report what happened."""
    return await Fleet(options).run()


@dataclass(frozen=True, slots=True)
class _Shared:
    """What the fleet's processes share: a start line, a stop flag and progress counters."""

    barrier: multiprocessing.synchronize.Barrier
    stop: multiprocessing.synchronize.Event
    counters: Any  # a shared array of (sent, acked, refused) per process


def _collect(receivers: list[Connection[Any, Any]], shared: _Shared) -> list[tuple[str, object]]:
    """Each child's outcome, in order; the first failure stops the others at once."""
    outcomes: list[tuple[str, object] | None] = [None] * len(receivers)
    pending = dict(enumerate(receivers))
    while pending:
        ready = multiprocessing.connection.wait(list(pending.values()))
        for slot in [s for s, r in pending.items() if r in ready]:
            receiver = pending.pop(slot)
            try:
                outcome = cast(tuple[str, object], receiver.recv())
            except EOFError:
                outcome = (
                    "error",
                    f"simulator process {slot} ended without a report (see its stderr)",
                )
            outcomes[slot] = outcome
            if outcome[0] != "ok":
                shared.barrier.abort()
                shared.stop.set()
    return [o for o in outcomes if o is not None]


def _child_main(
    options: FleetOptions,
    first: int,
    stop: int,
    run_id: str,
    slot: int,
    shared: _Shared,
    sender: Connection[Any, Any],
) -> None:
    """A child process: runs its slice of the fleet and sends back its report or its error."""
    # Ctrl-C reaches the whole process group; the parent decides, through `shared.stop`.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    outcome: tuple[str, object]
    try:
        outcome = ("ok", uvloop.run(_child_run(options, first, stop, run_id, slot, shared)))
    except threading.BrokenBarrierError:
        outcome = ("aborted", "another process of the fleet failed")
    except Exception as exc:
        outcome = ("error", str(exc) if isinstance(exc, GatewayError) else repr(exc))
    with contextlib.suppress(OSError):
        sender.send(outcome)
    sender.close()


async def _child_run(
    options: FleetOptions, first: int, stop: int, run_id: str, slot: int, shared: _Shared
) -> FleetReport:
    part = _Part(options, first, stop, run_id)
    try:
        await part.connect()
    except BaseException:
        shared.barrier.abort()
        raise
    counters = shared.counters

    def publish_progress() -> None:
        counters[3 * slot : 3 * slot + 3] = part.progress()

    try:
        # Every process connects first, then all start publishing together.
        await asyncio.to_thread(shared.barrier.wait, 60 + options.connect_timeout)
        duration = await part.publish(shared.stop.is_set, publish_progress)
    finally:
        await part.close()
    return part.report(duration)
