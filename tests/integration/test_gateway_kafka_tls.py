"""The gateway on Kafka's TLS listeners: SCRAM inside TLS, and client certificates as identity.

The source config promises SASL_SSL and SSL with client certificates; these tests hold it to
that against a real broker whose SSL listener requires a certificate and names the principal
after its CN, so ACLs granted to a CN are what let a gateway in. A wrong or missing CA, or a
missing certificate, must end `start` quickly with an error that says so, not hang.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from gateway.app import Gateway
from gateway.config import GatewayConfig, KafkaSourceConfig, Secret, SourcesConfig
from gateway.errors import GatewayError
from gateway.services.kafka import SCRAM, Kafka

from .stack import Stack, reading

TOPIC = "telemetry"
PARTITIONS = 2
DEVICES = ["tls-sasl", "tls-cert"]
PASSWORDS = {user: secrets.token_urlsafe(12) for user in ("gateway", "bridge")}
READER_CN = "gateway-reader"  # a certificate CN with ACLs: principal User:gateway-reader
STRANGER_CN = "stranger"  # a certificate CN the broker knows nothing about
FAIL_FAST = 30  # seconds: far above a refused start (well under one), far below any hang


@dataclass
class TlsStack:
    stack: Stack
    kafka: Kafka

    def config(self, **source: Any) -> GatewayConfig:
        """A gateway whose one source is Kafka with these settings (topics and name preset)."""
        if source.get("password") is None and "username" in source:
            os.environ["TEST_KAFKA_TLS_PASSWORD"] = PASSWORDS[source["username"]]
            source["password"] = Secret(env="TEST_KAFKA_TLS_PASSWORD")
        kafka = KafkaSourceConfig(
            name="kafka", topics=[TOPIC], trusted_producers=["User:bridge"], **source
        )
        return self.stack.config(sources=SourcesConfig(kafka=[kafka]))

    def sasl_ssl(self, group: str, **source: Any) -> GatewayConfig:
        return self.config(
            bootstrap_servers=self.kafka.sasl_ssl_bootstrap,
            security_protocol="SASL_SSL",
            username="gateway",
            group_id=group,
            **source,
        )

    def ssl(self, group: str, cn: str | None, **source: Any) -> GatewayConfig:
        pair = self.kafka.client_certificate(cn) if cn else None
        return self.config(
            bootstrap_servers=self.kafka.ssl_bootstrap,
            security_protocol="SSL",
            cert_file=pair.cert if pair else None,
            key_file=pair.key if pair else None,
            group_id=group,
            **source,
        )

    async def produce(self, device: str, count: int) -> None:
        """Records keyed by device, written over SASL_SSL as the bridge (TLS both ways)."""
        producer = AIOKafkaProducer(
            bootstrap_servers=self.kafka.sasl_ssl_bootstrap,
            security_protocol="SASL_SSL",
            sasl_mechanism=SCRAM,
            sasl_plain_username="bridge",
            sasl_plain_password=PASSWORDS["bridge"],
            ssl_context=self.kafka.ssl_context(),
            acks="all",
        )
        await producer.start()
        try:
            sent = [
                await producer.send(TOPIC, reading(value=i), key=device.encode())
                for i in range(count)
            ]
            await asyncio.gather(*sent)
        finally:
            await producer.stop()

    async def committed(self, group: str) -> int:
        """The group's committed offsets, read on the PLAINTEXT (superuser) listener."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.kafka.bootstrap, group_id=group)
        await consumer.start()
        try:
            offsets = [
                await consumer.committed(TopicPartition(TOPIC, p)) for p in range(PARTITIONS)
            ]
            return sum(offset or 0 for offset in offsets)
        finally:
            await consumer.stop()

    async def rows_of(self, device: str) -> int:
        return await self.stack.count(
            "SELECT count(*) FROM ingest.telemetry WHERE identity = $1", device
        )

    async def wait_rows_of(self, device: str, expected: int) -> None:
        async def enough() -> bool:
            return await self.rows_of(device) >= expected

        await self.stack.wait_for(enough, 60, f"{expected} rows of {device}")


@pytest.fixture(scope="module")
async def env(deployment: Stack) -> AsyncIterator[TlsStack]:
    async with Kafka(users=PASSWORDS, tls=True) as kafka:
        await deployment.add_devices(DEVICES)
        await kafka.create_topic(TOPIC, PARTITIONS)
        await kafka.allow("bridge", ["Write", "Describe"], topic=TOPIC)
        for principal, group in (("gateway", "tls-sasl"), (READER_CN, "tls-cert")):
            await kafka.allow(principal, ["Describe"], cluster=True)  # to read the ACLs
            await kafka.allow(principal, ["Read", "Describe"], topic=TOPIC)
            await kafka.allow(principal, ["Read"], group=group)
        yield TlsStack(deployment, kafka)


async def refused(config: GatewayConfig) -> GatewayError:
    """Start a gateway that must fail: fast, with a GatewayError, and leaving no task behind."""
    before = asyncio.all_tasks()
    gateway = Gateway(config)
    with pytest.raises(GatewayError) as raised:
        async with asyncio.timeout(FAIL_FAST):
            await gateway.start()
    await asyncio.sleep(0.1)  # let closed transports and cancelled tasks finish
    assert {t for t in asyncio.all_tasks() - before if not t.done()} == set()
    return raised.value


async def test_sasl_ssl_records_land_and_offsets_commit(env: TlsStack) -> None:
    gateway = Gateway(env.sasl_ssl("tls-sasl", ca_file=env.kafka.ca_file))
    await gateway.start()
    try:
        before = await env.committed("tls-sasl")
        await env.produce("tls-sasl", 100)
        await env.wait_rows_of("tls-sasl", 100)

        async def committed() -> bool:
            return await env.committed("tls-sasl") >= before + 100

        await env.stack.wait_for(committed, what="offsets committed past every record")
        assert gateway.readiness()["source:kafka"] is True
    finally:
        await gateway.stop()


async def test_ssl_client_certificate_with_acls_consumes(env: TlsStack) -> None:
    gateway = Gateway(env.ssl("tls-cert", READER_CN, ca_file=env.kafka.ca_file))
    await gateway.start()
    try:
        before = await env.committed("tls-cert")
        await env.produce("tls-cert", 50)
        await env.wait_rows_of("tls-cert", 50)

        async def committed() -> bool:
            return await env.committed("tls-cert") >= before + 50

        await env.stack.wait_for(committed, what="offsets committed by the certificate's CN")
    finally:
        await gateway.stop()


async def test_certificate_cn_without_acls_is_not_authorized(env: TlsStack) -> None:
    error = await refused(env.ssl("tls-stranger", STRANGER_CN, ca_file=env.kafka.ca_file))
    assert "not authorized" in str(error)
    assert f"client-{STRANGER_CN}.crt" in str(error)  # names the certificate, not a user None


@pytest.mark.parametrize("listener", ["SASL_SSL", "SSL"])
async def test_client_without_the_ca_fails_cleanly(env: TlsStack, listener: str) -> None:
    # No ca_file: the system's CAs, which never signed the broker's certificate.
    config = env.sasl_ssl("tls-sasl") if listener == "SASL_SSL" else env.ssl("tls-cert", READER_CN)
    error = await refused(config)
    assert "cannot join" in str(error)
    assert "certificate verify failed" in str(error)


async def test_ssl_without_a_client_certificate_fails_cleanly(env: TlsStack) -> None:
    error = await refused(env.ssl("tls-cert", None, ca_file=env.kafka.ca_file))
    assert "cannot join" in str(error)
    # The broker's alert: "bad certificate" under TLS 1.2, "certificate required" under 1.3.
    assert "ALERT_BAD_CERTIFICATE" in str(error) or "CERTIFICATE_REQUIRED" in str(error)


async def test_unreadable_tls_files_are_a_clear_error(env: TlsStack, tmp_path: Path) -> None:
    missing = tmp_path / "missing-ca.crt"
    error = await refused(env.ssl("tls-cert", READER_CN, ca_file=missing))
    assert "cannot load its TLS files" in str(error)
    assert str(missing) in str(error)
