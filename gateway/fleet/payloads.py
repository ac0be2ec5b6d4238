"""The fleets' message bodies and their mix of kinds: valid, malformed, spoofed.

Each message is one of three kinds, so that a test can compare with what the gateway recorded:
*valid*; *malformed* (truncated JSON, which the gateway must reject); *spoofed* (a valid body
published under another device's topic, which the broker's ACL must refuse; MQTT only, since
Kafka's ACLs bind producers to topics). Every body carries a unique `id`
(`<run>-<device index>-<seq>`) and `ts`, the send time in epoch ms.
"""

from __future__ import annotations

import random
from typing import Any

import orjson

__all__ = ["KINDS", "MALFORMED", "SPOOFED", "VALID", "Mix", "Payloads"]

VALID, MALFORMED, SPOOFED = 0, 1, 2
KINDS = ("valid", "malformed", "spoofed")
METRICS = ("temperature", "humidity", "pressure", "voltage")
SITES = tuple({"site": f"site-{n}"} for n in range(10))

_SHARE_SCALE = 1_000_000


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
