"""Where a Kafka record's identity comes from: its key, a header, or its topic; else no claim."""

from __future__ import annotations

from typing import Any

from aiokafka import ConsumerRecord, TopicPartition

from gateway.config import KafkaSourceConfig
from gateway.sources.kafka import KafkaRecord, Partition, identity_claim


def record(
    key: bytes | None = None, headers: list[tuple[str, bytes]] | None = None, topic: str = "t"
) -> KafkaRecord:
    raw: ConsumerRecord[bytes, bytes] = ConsumerRecord(
        topic, 0, 7, 0, 0, key, b"{}", None, 0, 0, headers or []
    )
    return KafkaRecord(raw, 0, Partition(TopicPartition(topic, 0)))


def claim(identity_from: str, **config: Any) -> Any:
    source = KafkaSourceConfig(
        name="k", bootstrap_servers="k:9092", group_id="g", identity_from=identity_from, **config
    )
    return identity_claim(source)


def test_from_the_key() -> None:
    by_key = claim("key", topics=["t"])
    assert by_key(record(b"sensor-1")) == ("sensor-1", "telemetry")
    assert by_key(record(None)) is None
    assert by_key(record(b"")) is None
    assert by_key(record(b"\xff\xfe")) is None  # not UTF-8


def test_from_a_header() -> None:
    by_header = claim("header:device", topics=["t"])
    assert by_header(record(headers=[("other", b"x"), ("device", b"sensor-2")])) == (
        "sensor-2",
        "telemetry",
    )
    assert by_header(record(b"sensor-1")) is None  # the key is not looked at
    assert by_header(record(headers=[("device", b"")])) is None
    assert by_header(record(headers=[("device", b"\xff")])) is None


def test_from_the_topic() -> None:
    by_topic = claim("topic:telemetry.{identity}", topic_pattern=r"telemetry\..*")
    assert by_topic(record(topic="telemetry.sensor-3")) == ("sensor-3", "telemetry")
    assert by_topic(record(topic="other.sensor-3")) is None
