"""The Kafka source's own logic: where a record's identity comes from (key, header or topic),
and what a commit refused after a rebalance leaves behind."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError

from gateway.config import KafkaSourceConfig
from gateway.metrics import Metrics
from gateway.sources.kafka import (
    RECORD_HEADROOM,
    KafkaRecord,
    KafkaSource,
    Partition,
    identity_claim,
)


def record(
    key: bytes | None = None, headers: list[tuple[str, bytes]] | None = None, topic: str = "t"
) -> KafkaRecord:
    return KafkaRecord(topic, 7, key, b"{}", headers or [], 0, Partition(TopicPartition(topic, 0)))


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


class RefusingConsumer:
    """Stands in for a consumer whose group moved on: every commit is refused."""

    def __init__(self) -> None:
        self.offsets: list[dict[TopicPartition, int]] = []

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.offsets.append(offsets)
        raise CommitFailedError("the group has rebalanced")

    async def committed(self, tp: TopicPartition) -> int | None:
        return None


async def test_a_refused_commit_is_counted_and_nothing_counts_as_committed() -> None:
    metrics = Metrics()
    config = KafkaSourceConfig(name="k", bootstrap_servers="k:9092", group_id="g", topics=["t"])
    source = KafkaSource(config, metrics=metrics, flush=lambda: asyncio.sleep(0))
    tp = TopicPartition("t", 0)
    await source.partitions_assigned([tp])
    consumer = RefusingConsumer()
    source._consumer = consumer  # type: ignore[assignment]
    raw = [ConsumerRecord("t", 0, n, 0, 0, b"s", b"{}", None, 0, 0, []) for n in range(5)]
    records = source._register({tp: raw})
    source.ack(records[:3])
    await source._commit([tp])
    assert consumer.offsets == [{tp: 3}]  # one past the acknowledged prefix
    assert source.commit_failures == 1
    assert metrics.registry.get_sample_value("gateway_kafka_commit_failures_total", {"source": "k"})
    assert source._partitions[tp].committed is None  # the next owner re-reads from the last commit


def consumer_arguments(**kwargs: Any) -> dict[str, Any]:
    sizes = {k: kwargs.pop(k) for k in ("max_payload_bytes", "batch_bytes") if k in kwargs}
    config = KafkaSourceConfig(
        name="k", bootstrap_servers="k:9092", group_id="g", topics=["t"], **kwargs
    )
    source = KafkaSource(config, metrics=Metrics(), flush=lambda: asyncio.sleep(0), **sizes)
    return source.consumer_arguments()


def test_fetches_are_sized_in_bytes_from_the_payload_limit_and_the_batch() -> None:
    defaults = consumer_arguments()
    # A partition's share is Kafka's 1 MiB (a 256 KiB record fits); a fetch one 4 MiB batch.
    assert defaults["max_partition_fetch_bytes"] == 1024 * 1024
    assert defaults["fetch_max_bytes"] == 4 * 1024 * 1024
    assert defaults["max_poll_records"] == 10_000
    assert defaults["enable_auto_commit"] is False
    large = consumer_arguments(max_payload_bytes=8 * 1024 * 1024, batch_bytes=2 * 1024 * 1024)
    # One largest acceptable record always fits, in the partition's share and in the fetch.
    assert large["max_partition_fetch_bytes"] == 8 * 1024 * 1024 + RECORD_HEADROOM
    assert large["fetch_max_bytes"] == 8 * 1024 * 1024 + RECORD_HEADROOM
    small = consumer_arguments(max_payload_bytes=1024, batch_bytes=64 * 1024)
    assert (small["fetch_max_bytes"], small["max_partition_fetch_bytes"]) == (1 << 20, 1 << 20)


def test_configured_fetch_sizes_are_kept() -> None:
    arguments = consumer_arguments(
        fetch_max_bytes=50 * 1024 * 1024, max_partition_fetch_bytes=2048, max_poll_records=7
    )
    assert arguments["fetch_max_bytes"] == 50 * 1024 * 1024
    assert arguments["max_partition_fetch_bytes"] == 2048
    assert arguments["max_poll_records"] == 7
