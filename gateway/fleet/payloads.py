"""The fleets' message bodies and their mix of kinds: valid, malformed, spoofed.

Bodies come in two shapes: `telemetry` (readings, the telemetry route's shape) and `environment`
(an environment sensor's wide reading, `{"ts", "env": {"temp", "hum"}, "battery", "fw", ...}`,
for a table route), as JSON or MessagePack. Each message is one of three kinds, so that a test
can compare with what the gateway recorded: *valid*; *malformed* (the body without its last
byte: truncated JSON or MessagePack, which the gateway must reject); *spoofed* (a valid body
published under another device's topic, which the broker's ACL must refuse; MQTT only, since
Kafka's ACLs bind producers to topics). Every body carries a unique `id`
(`<run>-<device index>-<seq>`) and `ts`, the send time in epoch ms.
"""

from __future__ import annotations

import random
from typing import Any, Literal

import msgspec
import orjson

__all__ = ["KINDS", "MALFORMED", "SHAPES", "SPOOFED", "VALID", "Mix", "Payloads", "Shape"]

VALID, MALFORMED, SPOOFED = 0, 1, 2
KINDS = ("valid", "malformed", "spoofed")
METRICS = ("temperature", "humidity", "pressure", "voltage")
SITES = tuple({"site": f"site-{n}"} for n in range(10))
Shape = Literal["telemetry", "environment"]
SHAPES: tuple[Shape, ...] = ("telemetry", "environment")
FIRMWARE = ("2.4.1", "2.5.0")
_pack = msgspec.msgpack.Encoder().encode

_SHARE_SCALE = 1_000_000


class Mix:
    """Chooses each next message's kind so the shares hold exactly (rounded) and evenly spread.

    Error diffusion on integers rather than random draws: a test then knows the counts, and
    a share of 0.01 gives one message in a hundred, not a cluster or none. `phase` (0 to 1) is
    where the diffusion starts: half-way rounds the totals to nearest; mixes of n senders with
    phases (i + 0.5) / n send, for equal counts, the rounded total between them.
    """

    __slots__ = ("_malformed", "_malformed_step", "_spoofed", "_spoofed_step")

    def __init__(self, malformed: float, spoofed: float, phase: float = 0.5) -> None:
        self._malformed_step = round(malformed * _SHARE_SCALE)
        self._spoofed_step = round(spoofed * _SHARE_SCALE)
        self._malformed = self._spoofed = int(phase * _SHARE_SCALE)

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
    """Message bodies in the shapes the gateway decodes: telemetry (one reading, or a batch of
    `readings`) or an environment sensor's wide reading."""

    __slots__ = ("_environment", "_random", "_readings", "_run_id")

    def __init__(self, run_id: str, readings: int, shape: Shape = "telemetry") -> None:
        self._run_id = run_id
        self._readings = readings
        self._environment = shape == "environment"
        self._random = random.Random()

    def build(self, index: int, seq: int, ts: int, malformed: bool, packed: bool = False) -> bytes:
        """The body of device `index`'s message `seq`, as MessagePack if `packed`; malformed
        ones lose their last byte."""
        message_id = f"{self._run_id}-{index}-{seq}"
        if self._environment:
            body = self._environment_body(message_id, index, seq, ts)
        elif self._readings == 1:
            body = {
                "id": message_id,
                "ts": ts,
                "metric": METRICS[seq % len(METRICS)],
                "value": round(self._random.random() * 100, 2),
                "tags": SITES[index % len(SITES)],
            }
        else:
            uniform = self._random.random
            tags = SITES[index % len(SITES)]
            body = {
                "id": message_id,
                "ts": ts,
                "readings": [
                    {"metric": metric, "value": round(uniform() * 100, 2), "tags": tags}
                    for metric in (METRICS[(seq + n) % len(METRICS)] for n in range(self._readings))
                ],
            }
        data = _pack(body) if packed else orjson.dumps(body)
        return data[:-1] if malformed else data

    def _environment_body(self, message_id: str, index: int, seq: int, ts: int) -> dict[str, Any]:
        """Temperature and humidity, with the battery draining and the uptime growing; the
        humidity probe fails now and then, and a door is reported only by some devices."""
        uniform = self._random.random
        env: dict[str, float] = {"temp": round(18 + uniform() * 8, 2)}
        if seq % 10:
            env["hum"] = round(35 + uniform() * 30, 1)
        body: dict[str, Any] = {
            "id": message_id,
            "ts": ts,
            "env": env,
            "battery": 3300 - (seq // 50) % 600,
            "uptime": seq,
            "fw": FIRMWARE[index % len(FIRMWARE)],
        }
        if index % 3 == 0:
            body["door"] = seq % 2 == 0
        return body
