"""What a fleet run sent and how the broker answered, with what the gateway should have recorded.

One report for both fleets. Per kind of message it counts what was sent, what the broker took
(`acked`) and what it did not (`refused`: an MQTT PUBACK reason >= 0x80, a failed Kafka
delivery). MQTT runs add their processes, QoS, protocol and PUBACK reason codes; Kafka runs their
topic, partitions, where the identity travels and the acks setting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import mqtt5

from gateway.fleet.payloads import KINDS

__all__ = ["FleetReport", "KindCounts"]


@dataclass(slots=True)
class KindCounts:
    """Messages of one kind: sent, taken by the broker, refused by it."""

    sent: int = 0
    acked: int = 0
    refused: int = 0


@dataclass(slots=True)
class FleetReport:
    """A run's counts and what they mean; `problems()` says why a run did not go as it must.

    MQTT `reasons` counts PUBACK reason codes (QoS 1). At QoS 0 nothing is answered, so what was
    sent stands for what was delivered and spoofs are assumed dropped. A Kafka record counts as
    acked once the broker confirmed it (with acks=0: once handed to the socket).
    """

    devices: int
    readings: int
    planned: int | None
    duration: float
    kinds: dict[str, KindCounts]
    errors: list[str]
    transport: Literal["mqtt", "kafka"] = "mqtt"
    # MQTT only
    processes: int = 1
    qos: int | None = None
    protocol: str | None = None
    reasons: dict[int, int] = field(default_factory=dict)
    # Kafka only
    topic: str | None = None
    partitions: int | None = None
    identity_from: str | None = None
    acks: str | None = None

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
    def answered(self) -> bool:
        """Whether each message gets an answer: always but for MQTT QoS 0."""
        return self.qos != 0

    @property
    def unanswered(self) -> int:
        return self.sent - self.acked - self.refused if self.answered else 0

    @property
    def malformed_sent(self) -> int:
        return self.kinds["malformed"].sent

    @property
    def spoofed_sent(self) -> int:
        spoofed = self.kinds.get("spoofed")
        return spoofed.sent if spoofed is not None else 0

    @property
    def rate(self) -> float:
        """Messages sent per second over the whole run, the last answers included."""
        return self.sent / self.duration if self.duration > 0 else 0.0

    @property
    def _refusals(self) -> str:
        """The word for messages the broker did not take: Kafka's deliveries fail."""
        return "failed" if self.transport == "kafka" else "refused"

    def expected(self) -> dict[str, int]:
        """What a consumer (the gateway) should receive, per kind, and the rows it writes."""

        def delivered(kind: str) -> int:
            counts = self.kinds[kind]
            return counts.acked if self.answered else counts.sent

        valid = delivered("valid")
        expected = {
            "valid_messages": valid,
            "rows": valid * self.readings,
            "malformed_messages": delivered("malformed"),
        }
        if self.transport == "mqtt":
            expected["spoofed_messages"] = 0
        return expected

    def problems(self) -> list[str]:
        """Why the run did not go as it must: empty when every message got its expected answer."""
        if self.transport == "kafka":
            return self.errors + self._kafka_problems()
        return self.errors + self._mqtt_problems()

    def _kafka_problems(self) -> list[str]:
        problems = []
        if self.refused:
            problems.append(f"{self.refused} of {self.sent} records were not delivered")
        if self.unanswered:
            problems.append(f"{self.unanswered} of {self.sent} records got no answer in time")
        return problems

    def _mqtt_problems(self) -> list[str]:
        problems = []
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
        refusals = self._refusals
        summary: dict[str, Any]
        if self.transport == "kafka":
            summary = {
                "transport": "kafka",
                "topic": self.topic,
                "partitions": self.partitions,
                "devices": self.devices,
                "identity_from": self.identity_from,
                "acks": self.acks,
            }
        else:
            summary = {
                "devices": self.devices,
                "processes": self.processes,
                "qos": self.qos,
                "protocol": self.protocol,
            }
        summary.update(
            readings=self.readings,
            planned=self.planned,
            sent=self.sent,
            acked=self.acked,
            **{refusals: self.refused},
            unanswered=self.unanswered,
            malformed_sent=self.malformed_sent,
        )
        if self.transport == "mqtt":
            summary["spoofed_sent"] = self.spoofed_sent
        summary.update(duration=round(self.duration, 3), rate=round(self.rate, 1))
        if self.transport == "mqtt":
            summary["reasons"] = {_reason_name(c): n for c, n in sorted(self.reasons.items())}
        summary["kinds"] = {
            name: {"sent": k.sent, "acked": k.acked, refusals: k.refused}
            for name, k in self.kinds.items()
        }
        summary.update(expected=self.expected(), errors=self.errors, ok=self.ok)
        return summary

    def render(self) -> str:
        planned = f" of {self.planned}" if self.planned is not None else ""
        refusals = self._refusals
        if self.transport == "kafka":
            setup = (
                f"{self.devices} devices -> Kafka topic {self.topic} ({self.partitions} "
                f"partitions), identity from {self.identity_from}, acks={self.acks}"
            )
        else:
            plural = "es" if self.processes > 1 else ""
            setup = f"{self.devices} devices, {self.processes} process{plural}, QoS {self.qos}"
        lines = [
            f"{setup}, {self.readings} reading(s) per message",
            f"sent        {self.sent}{planned} in {self.duration:.2f} s ({self.rate:,.0f} msg/s)",
        ]
        if self.answered:
            lines.append(
                f"answered    {self.acked} acked, {self.refused} {refusals}, "
                f"{self.unanswered} unanswered"
            )
        for name, k in self.kinds.items():
            answers = f": {k.acked} acked, {k.refused} {refusals}" if self.answered else ""
            lines.append(f"  {name:<10}{k.sent} sent{answers}")
        if self.reasons:
            reasons = ", ".join(f"{_reason_name(c)} {n}" for c, n in sorted(self.reasons.items()))
            lines.append(f"reasons     {reasons}")
        expected = self.expected()
        spoofs = ", no spoofed message" if self.transport == "mqtt" else ""
        lines.append(
            f"expected    {expected['valid_messages']} valid messages "
            f"({expected['rows']} rows), {expected['malformed_messages']} malformed rejects{spoofs}"
        )
        return "\n".join(lines)

    @classmethod
    def merge(cls, parts: Sequence[FleetReport], processes: int) -> FleetReport:
        """One report from the reports of an MQTT fleet's processes; they all started together."""
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


def _reason_name(code: int) -> str:
    """`not_authorized`, for a PUBACK reason code; the number itself when the codec has none."""
    try:
        return mqtt5.PubAckReasonCode(code).name.lower()
    except ValueError:
        return str(code)
