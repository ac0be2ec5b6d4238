"""The gateway end to end on Kafka (real KRaft broker, SASL/SCRAM, ACLs): commit after COPY."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from gateway.app import Gateway
from gateway.config import (
    BatchingConfig,
    GatewayConfig,
    KafkaSourceConfig,
    RouteConfig,
    Secret,
    SourcesConfig,
)
from gateway.errors import GatewayError
from gateway.fleet.kafka import run_kafka_fleet
from gateway.fleet.options import KafkaFleetOptions
from gateway.services.kafka import Kafka

from .databases import own_cluster
from .stack import GatewayProcess, Stack, reading, stack

TOPIC = "telemetry"
GROUP = "m2m-gateway"
PARTITIONS = {TOPIC: 4, "telemetry.sensor-k7": 1, "other": 1, "heavy": 4}
DEVICES = [f"sensor-k{i}" for i in range(10)]
PASSWORDS = {user: secrets.token_urlsafe(12) for user in ("gateway", "bridge", "stranger")}


@dataclass
class KafkaStack:
    stack: Stack
    kafka: Kafka

    def config(
        self, *, user: str = "gateway", topics: Sequence[str] = (TOPIC,), **kafka: Any
    ) -> Any:
        """Keyword arguments naming a gateway section override it; the rest go to the source."""
        os.environ[f"TEST_KAFKA_{user.upper()}"] = PASSWORDS[user]
        sections = {k: kafka.pop(k) for k in list(kafka) if k in GatewayConfig.model_fields}
        source = KafkaSourceConfig(
            name="kafka",
            bootstrap_servers=self.kafka.sasl_bootstrap,
            security_protocol="SASL_PLAINTEXT",
            username=user,
            password=Secret(env=f"TEST_KAFKA_{user.upper()}"),
            group_id=kafka.pop("group_id", GROUP),
            topics=list(topics),
            trusted_producers=kafka.pop("trusted_producers", ["User:bridge"]),
            **kafka,
        )
        return self.stack.config(sources=SourcesConfig(kafka=[source]), **sections)

    async def produce(
        self, records: Sequence[tuple[bytes | None, bytes]], topic: str = TOPIC, **send: Any
    ) -> None:
        producer = AIOKafkaProducer(**self.kafka.client_kwargs("bridge"), acks="all")
        await producer.start()
        try:
            await asyncio.gather(
                *[await producer.send(topic, value, key=key, **send) for key, value in records]
            )
        finally:
            await producer.stop()

    async def committed(self, topic: str = TOPIC, group: str = GROUP) -> int:
        consumer = AIOKafkaConsumer(**self.kafka.client_kwargs("gateway"), group_id=group)
        await consumer.start()
        try:
            total = 0
            for partition in range(PARTITIONS[topic]):
                total += await consumer.committed(TopicPartition(topic, partition)) or 0
            return total
        finally:
            await consumer.stop()


@pytest.fixture(scope="module")
async def env(role_passwords: dict[str, str]) -> AsyncIterator[KafkaStack]:
    # A cluster of its own: a test stops the server.
    async with (
        own_cluster() as server,
        stack(server) as deployment,
        Kafka(users=PASSWORDS) as kafka,
    ):
        await deployment.add_devices(DEVICES)
        await kafka.allow("gateway", ["Describe"], cluster=True)  # to read the ACLs
        for topic, partitions in PARTITIONS.items():
            await kafka.create_topic(topic, partitions)
        await kafka.allow("bridge", ["Write", "Describe"], topic=TOPIC)
        await kafka.allow("bridge", ["Write", "Describe"], topic="telemetry.sensor-k7")
        await kafka.allow("bridge", ["Write", "Describe"], topic="other")
        for topic in (TOPIC, "telemetry.sensor-k7"):
            await kafka.allow("gateway", ["Read", "Describe"], topic=topic)
        await kafka.allow("gateway", ["Read"], group=GROUP)
        await kafka.allow("gateway", ["Read"], group="by-topic")
        await kafka.allow("gateway", ["Read"], group="by-header")
        await kafka.allow("gateway", ["Read", "Describe"], topic="heavy")
        await kafka.allow("gateway", ["Read"], group="heavy-drain")
        yield KafkaStack(deployment, kafka)


async def rows_of(env: KafkaStack, device: str) -> int:
    return await env.stack.count(
        "SELECT count(*) FROM ingest.telemetry WHERE identity = $1", device
    )


async def wait_rows_of(env: KafkaStack, device: str, expected: int, timeout: float = 60) -> None:
    async def enough() -> bool:
        return await rows_of(env, device) >= expected

    await env.stack.wait_for(enough, timeout, f"{expected} rows of {device}")


async def test_records_land_and_offsets_commit_after_copy(env: KafkaStack) -> None:
    gateway = Gateway(env.config())
    await gateway.start()
    try:
        before = await env.committed()
        await env.produce([(b"sensor-k0", reading(value=i)) for i in range(200)])
        await wait_rows_of(env, "sensor-k0", 200)

        async def committed() -> bool:
            return await env.committed() >= before + 200

        await env.stack.wait_for(committed, what="offsets committed past every record")
        assert gateway.readiness()["source:kafka"] is True

        async def no_lag() -> bool:
            registry = gateway.metrics.registry
            lags = [
                registry.get_sample_value(
                    "gateway_kafka_consumer_lag", {"topic": TOPIC, "partition": str(p)}
                )
                for p in range(PARTITIONS[TOPIC])
            ]
            return all(lag == 0 for lag in lags)

        # Partitions this pod never wrote count from the group's committed offset, not zero.
        await env.stack.wait_for(no_lag, what="zero lag on every partition")
        conn = await env.stack.admin()
        try:
            positions = await conn.fetch(
                "SELECT positions FROM gateway.write_log WHERE positions::text LIKE '%telemetry%'"
            )
        finally:
            await conn.close()
        assert positions  # each batch names the partitions and offsets it covers
    finally:
        await gateway.stop()


async def test_identity_from_header_and_from_topic(env: KafkaStack) -> None:
    by_header = Gateway(env.config(group_id="by-header", identity_from="header:device"))
    await by_header.start()
    try:
        await env.produce([(None, reading())] * 5, headers=[("device", b"sensor-k1")])
        await wait_rows_of(env, "sensor-k1", 5)
    finally:
        await by_header.stop()
    by_topic = Gateway(
        env.config(
            group_id="by-topic",
            topics=["telemetry.sensor-k7"],
            identity_from="topic:telemetry.{identity}",
        )
    )
    await by_topic.start()
    try:
        await env.produce([(None, reading())] * 5, topic="telemetry.sensor-k7")
        await wait_rows_of(env, "sensor-k7", 5)
    finally:
        await by_topic.stop()


async def test_bad_records_are_rejected_and_committed_past(env: KafkaStack) -> None:
    gateway = Gateway(env.config())
    await gateway.start()
    try:
        before = await env.committed()
        await env.produce(
            [
                (None, reading()),  # no key: no identity
                (b"sensor-k2", b"{broken"),
                (b"nobody-registered", reading()),
                (b"sensor-k2", reading()),
            ]
        )
        await wait_rows_of(env, "sensor-k2", 1)

        async def rejected() -> bool:
            reasons = await env.stack.count(
                "SELECT count(DISTINCT reason) FROM ingest.rejects WHERE source = 'kafka' "
                "AND reason IN ('missing_identity', 'malformed_json', 'unknown_identity')"
            )
            return reasons == 3 and await env.committed() >= before + 4

        await env.stack.wait_for(rejected, what="three rejects and offsets past them")
    finally:
        await gateway.stop()


async def test_database_outage_pauses_and_loses_nothing(env: KafkaStack) -> None:
    gateway = Gateway(env.config(batching=BatchingConfig(max_rows=100, max_buffered_rows=300)))
    await gateway.start()
    try:
        await env.stack.postgres.stop()
        await env.produce([(b"sensor-k3", reading(value=i)) for i in range(2000)])
        await asyncio.sleep(3)
        source = gateway.sources[0]
        assert source._paused  # type: ignore[attr-defined]  # partitions paused, nothing dropped
        await asyncio.sleep(5)
        await env.stack.postgres.start()
        await wait_rows_of(env, "sensor-k3", 2000)
        assert await rows_of(env, "sensor-k3") == 2000
    finally:
        await gateway.stop()


async def test_sigkill_with_dedup_loses_and_duplicates_nothing(env: KafkaStack) -> None:
    config = env.config(
        routes=[RouteConfig(stream="telemetry", table="ingest.telemetry", dedup=True)]
    )
    first = GatewayProcess(config)
    await first.start()
    producing = asyncio.create_task(
        env.produce([(b"sensor-k4", reading(value=i, id=f"k4-{i}")) for i in range(20_000)])
    )
    await asyncio.sleep(1.5)
    await first.kill()
    await producing
    second = GatewayProcess(config)
    await second.start()
    try:
        await wait_rows_of(env, "sensor-k4", 20_000, timeout=120)
        await asyncio.sleep(1)
        assert await rows_of(env, "sensor-k4") == 20_000
    finally:
        await second.signal(signal.SIGTERM)
        assert await second.wait() == 0


async def test_two_gateways_split_partitions_and_take_over(env: KafkaStack) -> None:
    config = env.config()
    first, second = GatewayProcess(config), GatewayProcess(config)
    await first.start()
    await second.start()
    try:
        await asyncio.sleep(3)  # both in the group: the four partitions split between them
        await env.produce(
            [(f"sensor-k{5 + i % 2}".encode(), reading(value=i)) for i in range(4000)]
        )
        await asyncio.sleep(1)
        await second.kill()
        await env.produce(
            [(f"sensor-k{5 + i % 2}".encode(), reading(value=i)) for i in range(4000)]
        )
        await wait_rows_of(env, "sensor-k5", 4000, timeout=120)
        await wait_rows_of(env, "sensor-k6", 4000, timeout=120)
        assert "gateway_kafka_consumer_lag" in first.metrics()
    finally:
        await first.signal(signal.SIGTERM)
        assert await first.wait() == 0


async def test_a_rebalance_flushes_and_commits_before_partitions_move(env: KafkaStack) -> None:
    # Batches would wait a minute on their own: only the revoke can write them sooner.
    config = env.config(batching=BatchingConfig(max_rows=100_000, max_delay_ms=60_000))
    first, second = Gateway(config), Gateway(config)
    await first.start()
    try:
        await env.produce([(b"sensor-k8", reading(value=i)) for i in range(2000)])

        async def buffered() -> bool:
            assert first.pipeline is not None
            return first.pipeline.buffered_rows >= 2000

        await env.stack.wait_for(buffered, what="2000 rows held by the first pod")
        assert await rows_of(env, "sensor-k8") == 0
        before = await env.committed()
        await second.start()  # joining the group revokes the first pod's partitions
        await env.stack.wait_for(
            lambda: _at_least(env, "sensor-k8", 2000), timeout=20, what="the revoke's flush"
        )
        assert await env.committed() >= before + 2000  # committed before the partitions moved
        registry = first.metrics.registry
        assert registry.get_sample_value("gateway_kafka_rebalances_total", {"source": "kafka"})
        await env.produce([(b"sensor-k8", reading(value=i)) for i in range(2000)])

        async def held_again() -> bool:
            pods = (first.pipeline, second.pipeline)
            return sum(pod.buffered_rows for pod in pods if pod is not None) >= 2000

        await env.stack.wait_for(held_again, what="the next 2000 rows held by their new owner")
    finally:
        await second.stop()
        await first.stop()
    # Without dedup, a partition handed over uncommitted would be read twice.
    assert await rows_of(env, "sensor-k8") == 4000


async def _at_least(env: KafkaStack, device: str, rows: int) -> bool:
    return await rows_of(env, device) >= rows


async def test_broker_restart_makes_the_pod_unready_and_then_resumes(env: KafkaStack) -> None:
    gateway = Gateway(env.config())
    await gateway.start()
    try:
        await env.produce([(b"sensor-k9", reading()) for _ in range(10)])
        await wait_rows_of(env, "sensor-k9", 10)
        assert gateway.readiness()["source:kafka"] is True
        await env.kafka.stop()

        async def unready() -> bool:
            return gateway.readiness()["source:kafka"] is False

        await env.stack.wait_for(unready, timeout=30, what="not ready without the broker")
        await env.kafka.start()

        async def ready() -> bool:
            return gateway.readiness()["source:kafka"] is True

        await env.stack.wait_for(ready, timeout=60, what="ready again with the broker back")
        await env.produce([(b"sensor-k9", reading()) for _ in range(10)])
        await wait_rows_of(env, "sensor-k9", 20)
        assert await rows_of(env, "sensor-k9") == 20
    finally:
        await gateway.stop()


async def test_heartbeats_keep_the_membership_through_a_long_drain(env: KafkaStack) -> None:
    devices = [f"hv-{i:04d}" for i in range(10)]
    await env.stack.add_devices(devices)
    report = await run_kafka_fleet(
        KafkaFleetOptions(
            bootstrap_servers=env.kafka.bootstrap,
            topic="heavy",
            devices=10,
            prefix="hv-",
            count=300_000,
        )
    )
    assert report.ok, report.errors
    # The broker's shortest session: a pipeline that kept the loop busy for six seconds would
    # be thrown out of the group, its partitions reassigned and their records read again.
    gateway = Gateway(env.config(group_id="heavy-drain", topics=["heavy"], session_timeout_ms=6000))
    await gateway.start()
    try:
        source = gateway.sources[0]
        joined = source.rebalances  # type: ignore[attr-defined]

        async def drained() -> bool:
            rows = await env.stack.count(
                "SELECT count(*) FROM ingest.telemetry WHERE identity LIKE 'hv-%'"
            )
            return rows >= 300_000

        await env.stack.wait_for(drained, 180, "300,000 rows from the heavy topic")
        assert source.rebalances == joined  # type: ignore[attr-defined]
    finally:
        await gateway.stop()
    assert (
        await env.stack.count("SELECT count(*) FROM ingest.telemetry WHERE identity LIKE 'hv-%'")
        == 300_000
    )
    assert await env.committed("heavy", "heavy-drain") == 300_000


async def test_acl_denial_and_bad_password_are_clear_errors(env: KafkaStack) -> None:
    denied = Gateway(env.config(user="stranger"))
    with pytest.raises(GatewayError, match="not authorized"):
        await denied.start()
    os.environ["TEST_KAFKA_GATEWAY_WRONG"] = "wrong"
    config = env.config()
    wrong = config.sources.kafka[0].model_copy(
        update={"password": Secret(env="TEST_KAFKA_GATEWAY_WRONG")}
    )
    refused = Gateway(config.model_copy(update={"sources": SourcesConfig(kafka=[wrong])}))
    with pytest.raises(GatewayError, match="cannot join"):
        await refused.start()
