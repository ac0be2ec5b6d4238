"""One report for both fleets: totals, what the gateway should record, problems, JSON, text."""

from __future__ import annotations

from gateway.fleet.payloads import KINDS
from gateway.fleet.report import FleetReport, KindCounts


def mqtt_report(protocol: str = "5", **kinds: tuple[int, int, int]) -> FleetReport:
    counts = {name: KindCounts(*kinds.get(name, (0, 0, 0))) for name in KINDS}
    return FleetReport(
        devices=2,
        processes=1,
        qos=1,
        readings=3,
        protocol=protocol,
        planned=None,
        duration=2.0,
        kinds=counts,
        reasons={0: 10, 135: 2},
        errors=[],
    )


def test_report_totals_and_expected_outcome() -> None:
    done = mqtt_report(valid=(8, 8, 0), malformed=(2, 2, 0), spoofed=(2, 0, 2))
    assert (done.sent, done.acked, done.refused, done.unanswered) == (12, 10, 2, 0)
    assert done.rate == 6.0
    assert done.expected() == {
        "valid_messages": 8,
        "rows": 24,
        "malformed_messages": 2,
        "spoofed_messages": 0,
    }
    assert done.ok
    summary = done.as_json()
    assert summary["malformed_sent"] == 2 and summary["spoofed_sent"] == 2
    assert summary["reasons"] == {"success": 10, "not_authorized": 2}
    text = done.render()
    assert "sent        12 in 2.00 s (6 msg/s)" in text
    assert "spoofed   2 sent: 0 acked, 2 refused" in text
    assert "8 valid messages (24 rows), 2 malformed rejects" in text


def test_report_problems() -> None:
    assert mqtt_report(valid=(5, 3, 0)).problems() == ["2 of 5 messages got no PUBACK"]
    assert "accepted 1 spoofed" in mqtt_report(spoofed=(1, 1, 0)).problems()[0]
    # MQTT 3.1.1 cannot refuse a publish: a broker drops spoofs after acknowledging them.
    assert mqtt_report("3.1.1", spoofed=(1, 1, 0)).problems() == []
    refused = mqtt_report(valid=(2, 0, 2)).problems()
    assert refused == [
        "the broker refused 2 messages the devices sent to their own topics: "
        "not_authorized (135) x2"
    ]


def test_reports_of_processes_merge() -> None:
    one = mqtt_report(valid=(8, 8, 0), spoofed=(1, 0, 1))
    two = mqtt_report(valid=(4, 4, 0))
    two.duration = 3.0
    two.errors = ["sensor-0003: connection lost"]
    merged = FleetReport.merge([one, two], processes=2)
    assert (merged.devices, merged.processes, merged.duration) == (4, 2, 3.0)
    assert merged.kinds["valid"] == KindCounts(12, 12, 0)
    assert merged.reasons == {0: 20, 135: 4}
    assert merged.errors == ["sensor-0003: connection lost"]


def kafka_report(**changes: object) -> FleetReport:
    values: dict[str, object] = {
        "transport": "kafka",
        "topic": "telemetry",
        "partitions": 4,
        "devices": 10,
        "identity_from": "key",
        "acks": "all",
        "readings": 3,
        "planned": 100,
        "duration": 2.0,
        "kinds": {"valid": KindCounts(90, 90, 0), "malformed": KindCounts(10, 10, 0)},
        "errors": [],
    }
    values.update(changes)
    return FleetReport(**values)  # type: ignore[arg-type]


def test_a_clean_kafka_report() -> None:
    clean = kafka_report()
    assert (clean.sent, clean.acked, clean.refused, clean.unanswered) == (100, 100, 0, 0)
    assert clean.rate == 50.0 and clean.malformed_sent == 10
    assert clean.ok and clean.problems() == []
    assert clean.expected() == {"valid_messages": 90, "rows": 270, "malformed_messages": 10}
    summary = clean.as_json()
    assert summary["transport"] == "kafka" and summary["ok"] is True
    assert summary["kinds"]["malformed"] == {"sent": 10, "acked": 10, "failed": 0}
    assert {"sent", "acked", "failed", "errors", "rate", "identity_from"} <= set(summary)
    text = clean.render()
    assert "sent        100 of 100 in 2.00 s (50 msg/s)" in text
    assert "expected    90 valid messages (270 rows), 10 malformed rejects" in text


def test_kafka_failures_and_silence_are_problems() -> None:
    failed = kafka_report(
        kinds={"valid": KindCounts(90, 40, 45), "malformed": KindCounts(10, 5, 5)},
        errors=["delivery failed: TopicAuthorizationFailedError('telemetry')"],
    )
    assert (failed.acked, failed.refused, failed.unanswered) == (45, 50, 5)
    assert failed.expected() == {"valid_messages": 40, "rows": 120, "malformed_messages": 5}
    assert failed.problems() == [
        "delivery failed: TopicAuthorizationFailedError('telemetry')",
        "50 of 100 records were not delivered",
        "5 of 100 records got no answer in time",
    ]
    assert not failed.ok and failed.as_json()["ok"] is False
    assert kafka_report(duration=0.0).rate == 0.0
