"""Routes with declared shapes on Kafka (real broker, SASL/SCRAM, ACLs), with the guarantees of
every kind against the real PostgreSQL: wide rows from JSON and MessagePack, one record feeding
telemetry and the newest state, shape rejects by path, offsets committed only once every route
of a record has committed, rows the database refuses bisected out of a wide batch, and the write
log, identity activity and metrics per route."""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from gateway.app import Gateway
from gateway.config import GatewayConfig, KafkaSourceConfig, Secret, SourcesConfig
from gateway.services.kafka import Kafka

from .stack import Stack
from .test_shaped_routes import ROUTES

WAIT = 60
STREAMS = ("telemetry", "env", "envpack", "tpack", "statepack")
PASSWORDS = {user: secrets.token_urlsafe(12) for user in ("gateway", "bridge")}
DEVICES = ["kfan", "kwide", "kbad", "kheld", "klocked", "kbisect", "kcount", "kpack"]
PASSWORD_ENV = "TEST_SHAPED_KAFKA_GATEWAY"


def topic(stream: str) -> str:
    return f"shaped.{stream}"


def group(stream: str) -> str:
    return f"shaped-{stream}"


@dataclass
class KafkaStack:
    stack: Stack
    kafka: Kafka

    def config(self) -> GatewayConfig:
        """Every route of the MQTT example; one source per stream, identities from the key."""
        os.environ[PASSWORD_ENV] = PASSWORDS["gateway"]
        sources = [
            KafkaSourceConfig(
                name=f"kafka-{stream}",
                bootstrap_servers=self.kafka.sasl_bootstrap,
                security_protocol="SASL_PLAINTEXT",
                username="gateway",
                password=Secret(env=PASSWORD_ENV),
                group_id=group(stream),
                topics=[topic(stream)],
                identity_from="key",
                stream=stream,
                trusted_producers=["User:bridge"],
            )
            for stream in STREAMS
        ]
        return self.stack.config(routes=ROUTES, sources=SourcesConfig(kafka=sources))

    async def produce(self, stream: str, key: str, values: Sequence[bytes]) -> None:
        producer = AIOKafkaProducer(**self.kafka.client_kwargs("bridge"), acks="all")
        await producer.start()
        try:
            for value in values:  # one at a time: the order is the test's
                await producer.send_and_wait(topic(stream), value, key=key.encode())
        finally:
            await producer.stop()

    async def committed(self, stream: str) -> int:
        consumer = AIOKafkaConsumer(**self.kafka.client_kwargs("gateway"), group_id=group(stream))
        await consumer.start()
        try:
            return await consumer.committed(TopicPartition(topic(stream), 0)) or 0
        finally:
            await consumer.stop()

    async def end(self, stream: str) -> int:
        consumer = AIOKafkaConsumer(**self.kafka.client_kwargs("gateway"))
        await consumer.start()
        try:
            partition = TopicPartition(topic(stream), 0)
            ends = await consumer.end_offsets([partition])
            return int(ends[partition])
        finally:
            await consumer.stop()

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        conn = await self.stack.admin()
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    async def execute(self, sql: str) -> None:
        conn = await self.stack.admin()
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def wait_count(self, sql: str, name: str, expected: int) -> None:
        async def enough() -> bool:
            return await self.stack.count(sql, name) >= expected

        await self.stack.wait_for(enough, WAIT, f"{expected} of {sql} for {name}")

    async def last_log_id(self) -> int:
        rows = await self.fetch("SELECT coalesce(max(id), 0) AS id FROM gateway.write_log")
        last: int = rows[0]["id"]
        return last


@pytest.fixture(scope="module")
async def env(deployment: Stack) -> AsyncIterator[KafkaStack]:
    async with Kafka(users=PASSWORDS) as kafka:
        await deployment.add_devices(DEVICES)
        await kafka.allow("gateway", ["Describe"], cluster=True)  # to read the ACLs
        for stream in STREAMS:
            await kafka.create_topic(topic(stream), 1)
            await kafka.allow("bridge", ["Write", "Describe"], topic=topic(stream))
            await kafka.allow("gateway", ["Read", "Describe"], topic=topic(stream))
            await kafka.allow("gateway", ["Read"], group=group(stream))
        yield KafkaStack(deployment, kafka)


def ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def written(gateway: Gateway, role: str, table: str) -> float:
    value = gateway.metrics.registry.get_sample_value(
        "gateway_rows_written_total", {"role": role, "table": table}
    )
    return value or 0.0


async def activity(env: KafkaStack, name: str) -> tuple[int, int]:
    """Rows and rejects recorded for an identity, over every minute."""
    (row,) = await env.fetch(
        "SELECT coalesce(sum(rows), 0) AS rows, coalesce(sum(rejects), 0) AS rejects "
        "FROM gateway.identity_activity WHERE identity = $1",
        name,
    )
    return int(row["rows"]), int(row["rejects"])


async def test_one_record_feeds_telemetry_and_the_newest_state(env: KafkaStack) -> None:
    name = "kfan"
    now = datetime.now(UTC)
    stamps = [now - timedelta(seconds=s) for s in (1, 3, 2)]  # newest first, then out of order
    payloads = [
        orjson.dumps({"ts": ms(at), "metric": "temp", "value": float(n), "mode": f"m{n}"})
        for n, at in enumerate(stamps)
    ]
    since = await env.last_log_id()
    gateway = Gateway(env.config())
    await gateway.start()
    try:
        await env.produce("telemetry", name, payloads)
        await env.produce("telemetry", name, payloads[:1])  # the newest again: a redelivery
        await env.wait_count("SELECT count(*) FROM ingest.telemetry WHERE identity = $1", name, 4)

        async def settled() -> bool:
            rows = await env.fetch(
                "SELECT state->>'mode' AS mode FROM ingest.device_state WHERE identity = $1",
                name,
            )
            return bool(rows) and rows[0]["mode"] == "m0"

        await env.stack.wait_for(settled, WAIT, "the newest state")
        end = await env.end("telemetry")

        async def committed() -> bool:
            return await env.committed("telemetry") >= end

        await env.stack.wait_for(committed, WAIT, "offsets past every record")
    finally:
        await gateway.stop()
    (row,) = await env.fetch(
        "SELECT state, updated_at FROM ingest.device_state WHERE identity = $1", name
    )
    assert orjson.loads(row["state"])["value"] == 0.0
    assert abs(row["updated_at"] - stamps[0]) < timedelta(milliseconds=1)
    # Each route's batches are logged by its own role, one entry per committed batch.
    logged = await env.fetch(
        "SELECT role, db_user, target, count(*) AS batches, sum(rows) AS rows "
        "FROM gateway.write_log WHERE id > $1 GROUP BY 1, 2, 3 ORDER BY 3",
        since,
    )
    assert [(r["role"], r["db_user"], r["target"]) for r in logged] == [
        ("state_writer", "state_writer_login", "ingest.device_state"),
        ("telemetry_ingest", "telemetry_ingest_login", "ingest.telemetry"),
    ]
    batches = gateway.metrics.registry.get_sample_value("gateway_batch_rows_count")
    assert sum(r["batches"] for r in logged) == batches
    # The log says what each table gained or changed: one state, the newest, set once; the
    # metric counts every row committed, a state applied or superseded by a newer one.
    assert [r["rows"] for r in logged] == [1, 4]
    assert written(gateway, "telemetry_ingest", "ingest.telemetry") == 4
    assert written(gateway, "state_writer", "ingest.device_state") == 4


async def test_a_msgpack_state_keeps_the_newest(env: KafkaStack) -> None:
    name = "kpack"
    now = datetime.now(UTC)
    stamps = [now - timedelta(seconds=s) for s in (2, 5, 3)]  # newest first, then older
    payloads = [
        msgspec.msgpack.encode({"ts": ms(at), "mode": f"m{n}"}) for n, at in enumerate(stamps)
    ]
    payloads.append(payloads[0])  # the newest again: a redelivery
    gateway = Gateway(env.config())
    await gateway.start()
    try:
        await env.produce("statepack", name, payloads)
        end = await env.end("statepack")

        async def committed() -> bool:
            return await env.committed("statepack") >= end

        await env.stack.wait_for(committed, WAIT, "offsets past every record")
    finally:
        await gateway.stop()
    (row,) = await env.fetch(
        "SELECT state->>'mode' AS mode, updated_at FROM ingest.device_state WHERE identity = $1",
        name,
    )
    assert row["mode"] == "m0"
    assert abs(row["updated_at"] - stamps[0]) < timedelta(milliseconds=1)


async def test_wide_rows_from_json_and_msgpack(env: KafkaStack) -> None:
    name = "kwide"
    now = datetime.now(UTC)
    body: dict[str, Any] = {
        "ts": ms(now),
        "env": {"temp": 21.5, "hum": 40},
        "battery": 3300,
        "uptime": 2**40,
        "fw": "1.2.3",
        "door": True,
        "id": str(uuid.uuid4()),
        "extra": {"site": "berlin", "floor": [1, 2]},
    }
    packed = msgspec.msgpack.encode({**body, "fw": "1.2.4"})
    telemetry = msgspec.msgpack.encode({"ts": ms(now), "metric": "temp", "value": 7.5})
    gateway = Gateway(env.config())
    await gateway.start()
    try:
        await env.produce("env", name, [orjson.dumps(body)])
        await env.produce("envpack", name, [packed])
        await env.produce("tpack", name, [telemetry])
        await env.wait_count("SELECT count(*) FROM ingest.environment WHERE identity = $1", name, 2)
        await env.wait_count("SELECT count(*) FROM ingest.telemetry WHERE identity = $1", name, 1)
    finally:
        await gateway.stop()
    rows = await env.fetch(
        "SELECT temperature, humidity, battery_mv, uptime_s, firmware, door_open, "
        "reading_id::text AS id, extra, pressure, rssi FROM ingest.environment "
        "WHERE identity = $1 ORDER BY firmware",
        name,
    )
    (value,) = await env.fetch("SELECT value FROM ingest.telemetry WHERE identity = $1", name)
    assert [r["firmware"] for r in rows] == ["1.2.3", "1.2.4"]
    for row in rows:
        assert (row["temperature"], row["humidity"], row["battery_mv"]) == (21.5, 40.0, 3300)
        assert (row["uptime_s"], row["door_open"], row["id"]) == (2**40, True, body["id"])
        assert orjson.loads(row["extra"]) == body["extra"]
        assert (row["pressure"], row["rssi"]) == (None, None)  # not routed: the table's NULL
    assert value["value"] == 7.5
    # Activity counts the rows each route wrote for the device: two wide, one telemetry.
    assert await activity(env, name) == (3, 0)


async def test_shape_errors_are_rejected_by_their_path(env: KafkaStack) -> None:
    name = "kbad"
    now = ms(datetime.now(UTC))
    payloads = [
        orjson.dumps({"ts": now, "env": {"hum": 40}}),  # no temperature
        orjson.dumps({"ts": now, "env": {"temp": 20}, "battery": "full"}),
        orjson.dumps({"ts": now, "env": {"temp": 20}, "battery": 2**40}),  # beyond int4
        orjson.dumps({"ts": now, "env": {"temp": 20}, "id": "not-a-uuid"}),
        orjson.dumps({"ts": now, "env": {"temp": 19.5}}),  # good: lands
    ]
    gateway = Gateway(env.config())
    await gateway.start()
    try:
        await env.produce("env", name, payloads)
        await env.produce("envpack", name, [b"\xc1"])  # a byte MessagePack never uses
        await env.wait_count("SELECT count(*) FROM ingest.rejects WHERE identity = $1", name, 5)
        await env.wait_count("SELECT count(*) FROM ingest.environment WHERE identity = $1", name, 1)
        ends = {stream: await env.end(stream) for stream in ("env", "envpack")}

        async def committed() -> bool:
            return all([await env.committed(s) >= end for s, end in ends.items()])

        await env.stack.wait_for(committed, WAIT, "offsets past the rejects")
    finally:
        await gateway.stop()
    found = await env.fetch(
        "SELECT reason, detail, source FROM ingest.rejects WHERE identity = $1", name
    )
    reasons = sorted((r["reason"], r["detail"].split(":")[0], r["source"]) for r in found)
    assert reasons == [
        ("malformed_msgpack", "MessagePack data is malformed", "kafka-envpack"),
        ("missing_field", "/env/temp", "kafka-env"),
        ("wrong_type", "/battery", "kafka-env"),
        ("wrong_type", "/battery", "kafka-env"),
        ("wrong_type", "/id", "kafka-env"),
    ]
    assert await activity(env, name) == (1, 5)


async def test_a_record_whose_state_cannot_be_written_is_kept_whole(env: KafkaStack) -> None:
    """The state's table refuses the role: the telemetry rows land, the state part becomes a
    reject keeping the whole payload, and the offset commits once both have."""
    name = "kheld"
    payload = orjson.dumps({"ts": ms(datetime.now(UTC)), "metric": "temp", "value": 3.5})
    gateway = Gateway(env.config())
    await gateway.start()
    await env.execute("REVOKE INSERT ON ingest.device_state FROM state_writer")
    try:
        await env.produce("telemetry", name, [payload])
        await env.wait_count("SELECT count(*) FROM ingest.telemetry WHERE identity = $1", name, 1)
        await env.wait_count(
            "SELECT count(*) FROM ingest.rejects WHERE identity = $1 "
            "AND reason = 'route_unavailable'",
            name,
            1,
        )
        end = await env.end("telemetry")

        async def committed() -> bool:
            return await env.committed("telemetry") >= end

        await env.stack.wait_for(committed, WAIT, "the offset past the record")
    finally:
        await env.execute("GRANT INSERT ON ingest.device_state TO state_writer")
        await gateway.stop()
    (reject,) = await env.fetch(
        "SELECT payload_prefix, detail FROM ingest.rejects WHERE identity = $1", name
    )
    assert bytes(reject["payload_prefix"]) == payload
    assert "ingest.device_state refuses writes as state_writer: 42501" in reject["detail"]
    assert not await env.fetch("SELECT 1 FROM ingest.device_state WHERE identity = $1", name)


async def test_the_offset_waits_for_the_state_to_commit(env: KafkaStack) -> None:
    """The state's write waits on a lock: the telemetry rows of the record have landed, yet
    its offset is not committed until the state has been too."""
    name = "klocked"
    payload = orjson.dumps({"ts": ms(datetime.now(UTC)), "metric": "temp", "value": 4.5})
    before = await env.committed("telemetry")
    gateway = Gateway(env.config())
    await gateway.start()
    lock = await env.stack.admin()
    try:
        transaction = lock.transaction()
        await transaction.start()
        await lock.execute("LOCK TABLE ingest.device_state IN ACCESS EXCLUSIVE MODE")
        await env.produce("telemetry", name, [payload])
        await env.wait_count("SELECT count(*) FROM ingest.telemetry WHERE identity = $1", name, 1)

        async def state_waits() -> bool:
            waiting = await env.stack.count(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                "WHERE NOT l.granted AND a.usename = $1",
                "state_writer_login",
            )
            return waiting > 0

        await env.stack.wait_for(state_waits, WAIT, "the state's write waiting on the lock")
        # The telemetry part has committed; the record's other part cannot have.
        assert await env.committed("telemetry") == before
        await transaction.rollback()
        end = await env.end("telemetry")

        async def committed() -> bool:
            return await env.committed("telemetry") >= end

        await env.stack.wait_for(committed, WAIT, "the offset once the state committed")
        await env.wait_count(
            "SELECT count(*) FROM ingest.device_state WHERE identity = $1", name, 1
        )
    finally:
        await lock.close()
        await gateway.stop()


async def refuse_one_of_ten(env: KafkaStack, name: str) -> tuple[Gateway, int]:
    """Ten wide rows in one stream, one of which a CHECK constraint refuses; the gateway that
    wrote them (stopped, its activity recorded) and the last write-log entry before it."""
    now = ms(datetime.now(UTC))
    payloads = [
        orjson.dumps({"ts": now + n, "env": {"temp": 5000.0 if n == 6 else float(n)}})
        for n in range(10)
    ]
    await env.execute(
        "ALTER TABLE ingest.environment ADD CONSTRAINT plausible_temperature "
        "CHECK (temperature < 1000) NOT VALID"
    )
    since = await env.last_log_id()
    gateway = Gateway(env.config())
    await gateway.start()
    try:
        await env.produce("env", name, payloads)
        await env.wait_count("SELECT count(*) FROM ingest.environment WHERE identity = $1", name, 9)
        await env.wait_count("SELECT count(*) FROM ingest.rejects WHERE identity = $1", name, 1)
        end = await env.end("env")

        async def committed() -> bool:
            return await env.committed("env") >= end

        await env.stack.wait_for(committed, WAIT, "offsets past the batch")
    finally:
        await gateway.stop()  # and the identity activity with it
        await env.execute(
            "ALTER TABLE ingest.environment DROP CONSTRAINT IF EXISTS plausible_temperature"
        )
    return gateway, since


async def test_a_refused_row_is_bisected_out_of_a_wide_batch(env: KafkaStack) -> None:
    name = "kbisect"
    gateway, since = await refuse_one_of_ten(env, name)
    temperatures = await env.fetch(
        "SELECT temperature FROM ingest.environment WHERE identity = $1 ORDER BY ts", name
    )
    assert [r["temperature"] for r in temperatures] == [float(n) for n in range(10) if n != 6]
    (reject,) = await env.fetch(
        "SELECT reason, source, topic, detail FROM ingest.rejects WHERE identity = $1", name
    )
    assert (reject["reason"], reject["source"], reject["topic"]) == (
        "database_refused",
        "database",
        "ingest.environment",
    )
    assert reject["detail"].startswith("23514")
    assert "plausible_temperature" in reject["detail"]
    logged = await env.fetch(
        "SELECT role, db_user, sum(rows) AS rows FROM gateway.write_log "
        "WHERE id > $1 AND target = 'ingest.environment' GROUP BY 1, 2",
        since,
    )
    assert [tuple(r) for r in logged] == [("telemetry_ingest", "telemetry_ingest_login", 9)]
    assert written(gateway, "telemetry_ingest", "ingest.environment") == 9
    assert (await activity(env, name))[1] == 1


async def test_activity_counts_only_the_rows_that_landed(env: KafkaStack) -> None:
    name = "kcount"
    await refuse_one_of_ten(env, name)
    assert await activity(env, name) == (9, 1)
