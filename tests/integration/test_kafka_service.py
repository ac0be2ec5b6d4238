"""The Kafka launcher gives a real broker whose SCRAM logins and ACLs hold, across restarts.

The gateway trusts Kafka ACLs to decide who may write identity-bearing topics, so these tests
prove the broker enforces them on the SASL port, not only that it starts.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.conn import create_conn
from aiokafka.errors import SaslAuthenticationFailed, TopicAuthorizationFailedError

from gateway.services._process import ServiceError
from gateway.services.kafka import Kafka

pytestmark = pytest.mark.integration

USERS = {"alice": "alice-secret", "mallory": "mallory-secret"}


@pytest.fixture(scope="module")
async def kafka() -> AsyncIterator[Kafka]:
    async with Kafka(users=USERS) as broker:
        yield broker


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


async def grant_produce_and_consume(kafka: Kafka, user: str, topic: str, group: str) -> None:
    await kafka.allow(user, ["Write", "Describe"], topic=topic)
    await kafka.allow(user, ["Read"], topic=topic, group=group)


async def produce(client: dict[str, str], topic: str, *values: bytes) -> None:
    producer = AIOKafkaProducer(**client)
    try:
        await producer.start()
        for value in values:
            await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()


async def consume(client: dict[str, str], topic: str, group: str, count: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic, group_id=group, auto_offset_reset="earliest", enable_auto_commit=False, **client
    )
    values: list[bytes] = []
    try:
        await consumer.start()
        async with asyncio.timeout(60):
            while len(values) < count:
                record = await consumer.getone()
                values.append(record.value)
        await consumer.commit()
    finally:
        await consumer.stop()
    return values


async def test_user_with_acls_produces_and_consumes_over_scram(kafka: Kafka) -> None:
    topic, group = unique("telemetry"), unique("gateway")
    await kafka.create_topic(topic)
    await grant_produce_and_consume(kafka, "alice", topic, group)

    await produce(kafka.client_kwargs("alice"), topic, b'{"metric": "temp", "value": 21.5}')

    values = await consume(kafka.client_kwargs("alice"), topic, group, 1)
    assert values == [b'{"metric": "temp", "value": 21.5}']


async def test_user_without_acls_may_neither_produce_nor_consume(kafka: Kafka) -> None:
    topic = unique("telemetry")
    await kafka.create_topic(topic)
    await grant_produce_and_consume(kafka, "alice", topic, unique("gateway"))

    with pytest.raises(TopicAuthorizationFailedError):
        await produce(kafka.client_kwargs("mallory"), topic, b"spoofed")
    with pytest.raises(TopicAuthorizationFailedError):
        await consume(kafka.client_kwargs("mallory"), topic, unique("snoop"), 1)


async def test_wrong_scram_password_is_refused(kafka: Kafka) -> None:
    # Clients hide the broker's answer behind "Unable to bootstrap"; a bare connection shows it.
    async def login(password: str) -> None:
        connection = await create_conn(
            kafka.host,
            kafka.sasl_port,
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="SCRAM-SHA-256",
            sasl_plain_username="alice",
            sasl_plain_password=password,
        )
        connection.close()

    await login(USERS["alice"])
    with pytest.raises(SaslAuthenticationFailed):
        await login("not-" + USERS["alice"])


async def test_restarts_keep_topics_records_users_and_acls(kafka: Kafka) -> None:
    topic, group = unique("telemetry"), unique("gateway")
    await kafka.create_topic(topic)
    await grant_produce_and_consume(kafka, "alice", topic, group)
    alice = kafka.client_kwargs("alice")

    await produce(alice, topic, b"before stop")
    await kafka.stop()
    await kafka.start()
    await produce(alice, topic, b"before kill")
    await kafka.kill()
    await kafka.start()

    assert await consume(alice, topic, group, 2) == [b"before stop", b"before kill"]


async def test_broker_that_cannot_start_fails_with_its_log() -> None:
    broker = Kafka()
    with socket.socket() as squatter:
        squatter.bind((broker.host, broker.controller_port))
        squatter.listen()
        with pytest.raises(ServiceError, match="exited with code") as failure:
            async with broker:
                pass
    assert "Address already in use" in str(failure.value)
