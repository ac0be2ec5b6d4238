"""The Kafka fleet against a real KRaft broker, checked by a consumer that reads every partition.

Each test produces to a topic of its own, so the count of records in it is exactly what the fleet
delivered; the consumer reads up to the partitions' end offsets, so it knows it has everything.
The last test runs the gateway on what the fleet sent, to prove the two agree on keys, headers
and what counts as malformed.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import secrets
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from gateway import pgtime
from gateway.app import Gateway
from gateway.cli.simulate import register
from gateway.config import KafkaSourceConfig, Secret, SourcesConfig
from gateway.decoder import DecodeLimits, Reject, decode
from gateway.fleet.common import KafkaFleetError, device_quota
from gateway.fleet.kafka import KafkaFleet, device_partitions, run_kafka_fleet
from gateway.fleet.options import KafkaFleetOptions
from gateway.fleet.report import FleetReport
from gateway.services.kafka import Kafka

from .databases import Server
from .stack import stack

WAIT = 60  # seconds: generous bounds for a loaded 2-core machine, never a performance claim
USERS = {user: secrets.token_urlsafe(12) for user in ("bridge", "gateway", "stranger", "describer")}
_topics = itertools.count()
PARTITIONS: dict[str, int] = {}  # of the topics the tests created

Record = ConsumerRecord[bytes, bytes]


@pytest.fixture(scope="module")
async def kafka() -> AsyncIterator[Kafka]:
    async with Kafka(users=USERS) as broker:
        yield broker


async def new_topic(kafka: Kafka, partitions: int) -> str:
    """A topic of the test's own that the bridge may produce to."""
    topic = f"sim-{next(_topics)}-{secrets.token_hex(3)}"
    await kafka.create_topic(topic, partitions)
    PARTITIONS[topic] = partitions
    await kafka.allow("bridge", ["Write", "Describe"], topic=topic)
    return topic


def sasl(kafka: Kafka, topic: str, **changes: Any) -> KafkaFleetOptions:
    """Options for the fleet producing as the `bridge` user on the SCRAM listener."""
    return KafkaFleetOptions(
        bootstrap_servers=kafka.sasl_bootstrap,
        security_protocol="SASL_PLAINTEXT",
        username="bridge",
        password=USERS["bridge"],
        topic=topic,
        **changes,
    )


async def read_all(kafka: Kafka, topic: str) -> list[Record]:
    """Every record in the topic, partition by partition in offset order (PLAINTEXT, superuser)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS[topic])]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: dict[TopicPartition, list[Record]] = {tp: [] for tp in partitions}
        async with asyncio.timeout(WAIT):
            while any(len(records[tp]) < ends[tp] for tp in partitions):  # nothing deleted
                for tp, batch in (await consumer.getmany(timeout_ms=500)).items():
                    records[tp].extend(batch)
        return [record for tp in partitions for record in records[tp]]
    finally:
        await consumer.stop()


def body_index(value: bytes) -> tuple[int, int]:
    """(device index, seq) from a body's id, even from a malformed body."""
    message_id = value.split(b'"id":"', 1)[1].split(b'"', 1)[0].decode()
    _run, index, seq = message_id.rsplit("-", 2)
    return int(index), int(seq)


def assert_delivered(report: FleetReport, records: list[Record], planned: int) -> None:
    assert report.ok, report.problems()
    assert report.sent == report.acked == len(records) == planned
    assert report.refused == report.unanswered == 0


def assert_in_device_order(
    options: KafkaFleetOptions, report: FleetReport, records: list[Record]
) -> None:
    """Each device's records sit in one partition, the one promised, in the order sent."""
    partitions = device_partitions(options, range(report.partitions))
    seqs: dict[int, list[int]] = {}
    for record in records:
        index, seq = body_index(record.value or b"")
        assert record.partition == partitions[index]
        seqs.setdefault(index, []).append(seq)
    for index, sent in seqs.items():
        assert sent == list(range(device_quota(options.count, options.devices, index) or 0))


async def test_identity_in_the_key_and_an_exact_malformed_share(kafka: Kafka) -> None:
    topic = await new_topic(kafka, 3)
    options = sasl(kafka, topic, devices=7, prefix="kd-", count=1001, malformed=0.1)
    started = datetime.now(UTC)
    report = await run_kafka_fleet(options)
    records = await read_all(kafka, topic)

    assert_delivered(report, records, 1001)
    assert (report.partitions, report.identity_from, report.acks) == (3, "key", "all")
    assert report.malformed_sent == report.kinds["malformed"].acked == 100
    assert report.expected() == {"valid_messages": 901, "rows": 901, "malformed_messages": 100}
    keys = Counter((record.key or b"").decode() for record in records)
    assert keys == {options.name(i): device_quota(1001, 7, i) for i in range(7)}
    assert all(not record.headers for record in records)
    assert_in_device_order(options, report, records)

    malformed = 0
    ids = set()
    for record in records:
        index, _seq = body_index(record.value or b"")
        assert record.key == options.name(index).encode()
        try:
            rows = decode(record.value or b"", "x", pgtime.now(), DecodeLimits())
        except Reject as reject:
            assert reject.reason == "malformed_json"
            malformed += 1
            continue
        assert len(rows) == 1 and started <= pgtime.to_datetime(rows[0][0]) <= datetime.now(UTC)
        body = orjson.loads(record.value or b"")
        assert set(body) == {"id", "ts", "metric", "value", "tags"}
        assert record.timestamp == body["ts"]  # the record's time is the body's send time
        ids.add(body["id"])
    assert malformed == 100
    assert len(ids) == 901


async def test_identity_in_a_header_with_batched_readings(kafka: Kafka) -> None:
    topic = await new_topic(kafka, 4)
    options = KafkaFleetOptions(
        bootstrap_servers=kafka.bootstrap,  # PLAINTEXT
        topic=topic,
        devices=5,
        prefix="hd-",
        count=400,
        readings=3,
        identity_header="device",
        acks=1,
        batch_bytes=1024,  # many small batches: fills, windows and queues get exercised
    )
    report = await run_kafka_fleet(options)
    records = await read_all(kafka, topic)

    assert_delivered(report, records, 400)
    assert (report.identity_from, report.acks) == ("header:device", "1")
    assert report.expected()["rows"] == 1200
    assert_in_device_order(options, report, records)
    for record in records:
        index, _seq = body_index(record.value or b"")
        assert record.key is None
        assert list(record.headers) == [("device", options.name(index).encode())]
        assert record.partition == index % 4
        assert len(decode(record.value or b"", "x", pgtime.now(), DecodeLimits())) == 3


async def test_the_rate_roughly_holds(kafka: Kafka) -> None:
    topic = await new_topic(kafka, 2)
    options = sasl(kafka, topic, devices=20, rate=2000, duration=3.0)
    report = await run_kafka_fleet(options)
    records = await read_all(kafka, topic)

    assert report.ok and report.sent == len(records)
    assert 0.85 * 6000 <= report.sent <= 6000 + 40  # a busy machine may fall behind, never ahead
    stamps = sorted(orjson.loads(record.value or b"")["ts"] for record in records)
    assert 2500 <= stamps[-1] - stamps[0] <= 3100  # spread over the run, not sent in a burst
    per_second = Counter((ts - stamps[0]) // 1000 for ts in stamps)
    assert all(1200 <= per_second[second] <= 2800 for second in (0, 1))  # a stall catches up

    counted = await run_kafka_fleet(replace(options, duration=None, count=1500, rate=1000))
    assert counted.ok and counted.sent == 1500
    assert 1.4 <= counted.duration < 10  # 1.5 s at 1000/s; a busy machine only slows it


async def test_unlimited_until_stopped(kafka: Kafka) -> None:
    topic = await new_topic(kafka, 2)
    fleet = KafkaFleet(sasl(kafka, topic, devices=50))
    running = asyncio.create_task(fleet.run())
    await asyncio.sleep(1.5)
    fleet.stop()
    report = await asyncio.wait_for(running, WAIT)
    records = await read_all(kafka, topic)

    assert report.ok and report.sent == report.acked == len(records) > 1000
    assert report.planned is None
    assert fleet.progress() == (report.sent, report.acked, 0)


async def test_refusals_are_explained(kafka: Kafka) -> None:
    topic = await new_topic(kafka, 1)
    await kafka.allow("describer", ["Describe"], topic=topic)
    with pytest.raises(KafkaFleetError, match=r"cannot connect to Kafka at .*user name and pass"):
        await run_kafka_fleet(replace(sasl(kafka, topic, count=10), password="wrong"))
    stranger = replace(
        sasl(kafka, topic, count=10), username="stranger", password=USERS["stranger"]
    )
    with pytest.raises(KafkaFleetError, match=r"not authorized for topic .* Write and Describe"):
        await run_kafka_fleet(stranger)
    with pytest.raises(KafkaFleetError, match=r"^cannot connect to Kafka at 127\.0\.0\.1:1 "):
        await run_kafka_fleet(KafkaFleetOptions(bootstrap_servers="127.0.0.1:1", count=1))
    missing = KafkaFleetOptions(
        bootstrap_servers=kafka.bootstrap, topic="no-such-topic", count=1, drain_timeout=2
    )
    with pytest.raises(KafkaFleetError, match="topic 'no-such-topic' does not exist"):
        await run_kafka_fleet(missing)

    # Describe but not Write: the metadata is there, every record is refused.
    describer = replace(stranger, username="describer", password=USERS["describer"], count=50)
    report = await run_kafka_fleet(describer)
    assert not report.ok and report.acked == 0 and report.refused == report.sent > 0
    assert any("TopicAuthorizationFailedError" in error for error in report.errors)
    assert f"{report.refused} of {report.sent} records were not delivered" in report.problems()
    assert await read_all(kafka, topic) == []


def parse_command(*argv: str) -> argparse.Namespace:
    root = argparse.ArgumentParser()
    register(root.add_subparsers(dest="command", required=True))
    return root.parse_args(["simulate", *argv])


async def test_command(
    kafka: Kafka, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = await new_topic(kafka, 2)
    monkeypatch.setenv("BRIDGE_SECRET", USERS["bridge"])
    args = parse_command(
        *("--kafka", "--bootstrap-servers", kafka.sasl_bootstrap, "--topic", topic),
        *("--security-protocol", "SASL_PLAINTEXT", "--username", "bridge"),
        *("--sasl-password-env", "BRIDGE_SECRET", "--identity-header", "dev"),
        *("--devices", "3", "--prefix", "cli-", "--count", "30", "--malformed", "0.1", "--json"),
    )
    assert await args.handler(args) == 0
    summary = orjson.loads(capsys.readouterr().out)
    assert (summary["sent"], summary["acked"], summary["failed"]) == (30, 30, 0)
    assert summary["malformed_sent"] == 3 and summary["identity_from"] == "header:dev"
    assert summary["expected"] == {"valid_messages": 27, "rows": 27, "malformed_messages": 3}
    assert summary["ok"] is True and summary["errors"] == []
    assert set(summary) >= {"duration", "rate", "kinds", "partitions", "acks"}
    records = await read_all(kafka, topic)
    assert Counter(dict(r.headers)["dev"] for r in records) == {
        b"cli-0000": 10,
        b"cli-0001": 10,
        b"cli-0002": 10,
    }


async def test_the_installed_command(kafka: Kafka) -> None:
    """`gateway simulate --kafka` as a user runs it: a process, a summary, an exit status."""
    topic = await new_topic(kafka, 1)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "gateway.cli", "simulate", "--kafka", "--bootstrap-servers", kafka.bootstrap),
        *("--topic", topic, "--count", "20", "--devices", "2"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), WAIT)
    assert process.returncode == 0, err.decode()
    assert "sent        20 of 20" in out.decode()
    assert "answered    20 acked, 0 failed, 0 unanswered" in out.decode()
    assert len(await read_all(kafka, topic)) == 20

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "gateway.cli", "simulate", "--kafka", "--bootstrap-servers", kafka.bootstrap),
        *("--topic", topic, "--count", "1", "--spoofed", "0.1"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), WAIT)
    assert process.returncode == 1
    assert "gateway: --spoofed is an MQTT option, not for --kafka" in err.decode()


async def test_the_gateway_records_what_the_fleet_says(
    kafka: Kafka,
    postgres: Server,
    role_passwords: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Keys and headers the gateway reads as identities; the malformed share becomes rejects."""
    topics = [await new_topic(kafka, 2), await new_topic(kafka, 2)]
    group = f"sim-{secrets.token_hex(3)}"
    await kafka.allow("gateway", ["Read", "Describe"], topic=topics[0])
    await kafka.allow("gateway", ["Read", "Describe"], topic=topics[1])
    await kafka.allow("gateway", ["Read"], group=f"{group}-key")
    await kafka.allow("gateway", ["Read"], group=f"{group}-header")
    await kafka.allow("gateway", ["Describe"], cluster=True)  # to read the ACLs
    by_key = sasl(kafka, topics[0], devices=4, prefix="gw-", count=800, malformed=0.05)
    by_header = replace(by_key, topic=topics[1], count=300, readings=2, identity_header="device")
    monkeypatch.setenv("TEST_SIM_KAFKA_GATEWAY", USERS["gateway"])
    async with stack(postgres) as deployment:
        await deployment.add_devices(by_key.names())
        reports = [await run_kafka_fleet(by_key), await run_kafka_fleet(by_header)]
        sources = [
            KafkaSourceConfig(
                name=f"kafka-{n}",
                bootstrap_servers=kafka.sasl_bootstrap,
                security_protocol="SASL_PLAINTEXT",
                username="gateway",
                password=Secret(env="TEST_SIM_KAFKA_GATEWAY"),
                group_id=f"{group}-{'key' if options.identity_header is None else 'header'}",
                topics=[options.topic],
                identity_from=options.identity_from,
                trusted_producers=["User:bridge"],
            )
            for n, options in enumerate((by_key, by_header))
        ]
        gateway = Gateway(deployment.config(sources=SourcesConfig(kafka=sources)))
        await gateway.start()
        try:
            rows = sum(r.expected()["rows"] for r in reports)
            rejects = sum(r.expected()["malformed_messages"] for r in reports)
            assert (rows, rejects) == (760 + 2 * 285, 40 + 15)

            async def landed() -> bool:
                written = await deployment.count()
                refused = await deployment.count(
                    "SELECT count(*) FROM ingest.rejects WHERE reason = 'malformed_json'"
                )
                return written >= rows and refused >= rejects

            await deployment.wait_for(landed, WAIT, f"{rows} rows and {rejects} rejects")
            per_device = await deployment.count(
                "SELECT count(DISTINCT identity) FROM ingest.telemetry WHERE identity LIKE 'gw-%'"
            )
            assert per_device == 4
            assert await deployment.count() == rows
        finally:
            await gateway.stop()
