"""Kafka identity claims are bound to who writes (real KRaft broker, SCRAM, StandardAuthorizer).

A principal may write only as the identities the cluster's ACLs bind it to: its own topic with
topic claims, any identity only as a trusted producer with key claims. The gateway refuses to
start otherwise, and stops taking records in while an ACL widened at run time lasts, or while
it cannot read the ACLs.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import TopicAuthorizationFailedError

from gateway.app import Gateway
from gateway.config import GatewayConfig, KafkaConnection, KafkaSourceConfig, Secret, SourcesConfig
from gateway.errors import GatewayError
from gateway.kafka_admin import CLUSTER, AclBinding, KafkaAdmin
from gateway.services.kafka import Kafka

from .stack import Stack, reading

ALICE, BOB = "claims-alice", "claims-bob"
USERS = ("gateway", "bridge", "mallory", ALICE, BOB)
PASSWORDS = {user: secrets.token_urlsafe(12) for user in USERS}
OWN_TOPICS = [f"telemetry.{ALICE}", f"telemetry.{BOB}"]
BRIDGED = "bridged"  # key claims: only the bridge writes here
LIVE = "bridged-live"
WAIT = 60


@dataclass
class ClaimsStack:
    stack: Stack
    kafka: Kafka

    def config(self, topics: Sequence[str], group: str, **source: Any) -> GatewayConfig:
        os.environ["TEST_KAFKA_CLAIMS_GATEWAY"] = PASSWORDS["gateway"]
        kafka = KafkaSourceConfig(
            name="kafka",
            bootstrap_servers=self.kafka.sasl_bootstrap,
            security_protocol="SASL_PLAINTEXT",
            username=source.pop("username", "gateway"),
            password=Secret(env="TEST_KAFKA_CLAIMS_GATEWAY"),
            group_id=group,
            topics=list(topics),
            **source,
        )
        return self.stack.config(sources=SourcesConfig(kafka=[kafka]))

    async def produce(
        self, user: str, topic: str, records: Sequence[tuple[bytes | None, bytes]]
    ) -> None:
        producer = AIOKafkaProducer(**self.kafka.client_kwargs(user), acks="all")
        await producer.start()
        try:
            for key, value in records:
                await producer.send_and_wait(topic, value, key=key)
        finally:
            await producer.stop()

    async def rows(self, identity: str, metric: str) -> int:
        return await self.stack.count(
            "SELECT count(*) FROM ingest.telemetry WHERE identity = $1 AND metric = $2",
            identity,
            metric,
        )

    async def wait_rows(self, identity: str, metric: str, expected: int) -> None:
        async def landed() -> bool:
            return await self.rows(identity, metric) >= expected

        await self.stack.wait_for(landed, WAIT, f"{expected} {metric} rows of {identity}")

    def admin(self) -> KafkaAdmin:
        """On the PLAINTEXT listener, where the broker's anonymous principal is a superuser."""
        return KafkaAdmin(KafkaConnection(bootstrap_servers=self.kafka.bootstrap))

    async def revoke(self, binding: AclBinding) -> None:
        """Delete an ACL and return once the broker no longer lists it."""
        async with self.admin() as admin:
            await admin.delete_acls([binding])

            async def gone() -> bool:
                return binding not in await admin.describe_acls(resource_type=binding.resource_type)

            await self.stack.wait_for(gone, WAIT, f"{binding} gone")


def write(topic: str, user: str) -> AclBinding:
    return AclBinding("topic", topic, "literal", f"User:{user}", "write")


@pytest.fixture(scope="module")
async def env(deployment: Stack) -> AsyncIterator[ClaimsStack]:
    async with Kafka(users=PASSWORDS) as kafka:
        await deployment.add_devices([ALICE, BOB])
        for topic in [*OWN_TOPICS, BRIDGED, LIVE]:
            await kafka.create_topic(topic)
            await kafka.allow("gateway", ["Read", "Describe"], topic=topic)
        for identity in (ALICE, BOB):
            await kafka.allow(identity, ["Write"], topic=f"telemetry.{identity}")
        for topic in (BRIDGED, LIVE):
            await kafka.allow("bridge", ["Write"], topic=topic)
        await kafka.allow("gateway", ["Describe"], cluster=True)  # to read the ACLs
        for group in ("claims-topic", "claims-key", "claims-live"):
            await kafka.allow("gateway", ["Read"], group=group)
        yield ClaimsStack(deployment, kafka)


async def refused(config: GatewayConfig) -> str:
    with pytest.raises(GatewayError) as raised:
        await Gateway(config).start()  # which stops what it started
    return str(raised.value)


def sample(gateway: Gateway, name: str) -> float | None:
    return gateway.metrics.registry.get_sample_value(name, {"source": "kafka"})


async def test_topic_claims_one_principal_cannot_write_as_another(env: ClaimsStack) -> None:
    config = env.config(OWN_TOPICS, "claims-topic", identity_from="topic:telemetry.{identity}")
    gateway = Gateway(config)
    await gateway.start()
    try:
        await env.produce(ALICE, f"telemetry.{ALICE}", [(None, reading("own"))] * 5)
        await env.wait_rows(ALICE, "own", 5)
        with pytest.raises(TopicAuthorizationFailedError):
            await env.produce(ALICE, f"telemetry.{BOB}", [(None, reading("spoofed"))])
        assert sample(gateway, "gateway_kafka_unbound_writers") == 0
    finally:
        await gateway.stop()
    assert await env.rows(BOB, "spoofed") == 0
    # Someone grants alice Write on bob's topic: the gateway will not take claims from it.
    await env.kafka.allow(ALICE, ["Write"], topic=f"telemetry.{BOB}")
    try:
        error = await refused(config)
    finally:
        await env.revoke(write(f"telemetry.{BOB}", ALICE))
    assert f"User:{ALICE} may write topic telemetry.{BOB}, which claims identity {BOB}" in error
    assert f"ALLOW User:{ALICE} WRITE on topic 'telemetry.{BOB}'" in error


async def test_key_claims_only_trusted_producers_may_write(env: ClaimsStack) -> None:
    config = env.config([BRIDGED], "claims-key", trusted_producers=["User:bridge"])
    gateway = Gateway(config)
    await gateway.start()
    try:
        records = [(ALICE.encode(), reading("bridged")), (BOB.encode(), reading("bridged"))]
        await env.produce("bridge", BRIDGED, records * 3)
        await env.wait_rows(ALICE, "bridged", 3)
        await env.wait_rows(BOB, "bridged", 3)
    finally:
        await gateway.stop()
    await env.kafka.allow("mallory", ["Write"], topic=BRIDGED)
    try:
        error = await refused(config)
        untrusted = await refused(config.model_copy(update={"sources": _untrusted(config)}))
    finally:
        await env.revoke(write(BRIDGED, "mallory"))
    assert "User:mallory may write topic bridged" in error and "trusted" in error
    assert "The check sees only ALLOW bindings of Write or All on topics" in error
    assert "User:bridge may write topic bridged" in untrusted  # nobody is trusted by default


def _untrusted(config: GatewayConfig) -> SourcesConfig:
    source = config.sources.kafka[0].model_copy(update={"trusted_producers": []})
    return SourcesConfig(kafka=[source])


async def test_an_acl_widened_at_run_time_stops_intake_until_it_is_gone(
    env: ClaimsStack,
) -> None:
    config = env.config(
        [LIVE], "claims-live", trusted_producers=["User:bridge"], acl_check_interval=0.5
    )
    gateway = Gateway(config)
    await gateway.start()
    try:
        await env.produce("bridge", LIVE, [(ALICE.encode(), reading("before"))] * 5)
        await env.wait_rows(ALICE, "before", 5)
        assert gateway.readiness()["source:kafka"] is True

        await env.kafka.allow("mallory", ["Write"], topic=LIVE)

        async def refusing() -> bool:
            unbound = sample(gateway, "gateway_kafka_unbound_writers")
            return unbound == 1 and gateway.readiness()["source:kafka"] is False

        await env.stack.wait_for(refusing, WAIT, "the source refusing records")
        await env.produce("bridge", LIVE, [(ALICE.encode(), reading("during"))] * 5)
        assert await env.rows(ALICE, "during") == 0
        assert not gateway.readiness()["source:kafka"]  # still refusing: nothing was taken in
        assert await env.rows(ALICE, "during") == 0

        await env.revoke(write(LIVE, "mallory"))

        async def taking() -> bool:
            unbound = sample(gateway, "gateway_kafka_unbound_writers")
            return unbound == 0 and gateway.readiness()["source:kafka"] is True

        await env.stack.wait_for(taking, WAIT, "the source taking records again")
        await env.wait_rows(ALICE, "during", 5)  # held in the topic, not lost
        await env.produce("bridge", LIVE, [(ALICE.encode(), reading("after"))] * 5)
        await env.wait_rows(ALICE, "after", 5)
    finally:
        await gateway.stop()


async def test_acls_that_cannot_be_read_stop_intake_until_they_can(env: ClaimsStack) -> None:
    # Someone with admin rights revokes the gateway's Describe (so it cannot see a widened ACL):
    # once no check has succeeded for three check intervals the source takes nothing in, as if
    # such an ACL were there.
    config = env.config(
        [LIVE], "claims-live", trusted_producers=["User:bridge"], acl_check_interval=0.5
    )
    gateway = Gateway(config)
    await gateway.start()
    describe = AclBinding("cluster", CLUSTER, "literal", "User:gateway", "describe")
    try:
        await env.produce("bridge", LIVE, [(ALICE.encode(), reading("readable"))] * 5)
        await env.wait_rows(ALICE, "readable", 5)
        await env.revoke(describe)

        async def stopped() -> bool:
            unchecked = sample(gateway, "gateway_kafka_claims_unchecked")
            return unchecked == 1 and gateway.readiness()["source:kafka"] is False

        await env.stack.wait_for(stopped, WAIT, "the source stopping without Describe")
        assert sample(gateway, "gateway_kafka_unbound_writers") == 0  # no binding was found
        await env.produce("bridge", LIVE, [(ALICE.encode(), reading("unread"))] * 5)
        # Without Describe on the cluster a new pod cannot check, so it does not start.
        error = await refused(config)
        assert "not authorized to describe the cluster's ACLs" in error
        assert "user 'gateway' needs Describe on the cluster" in error
        assert await env.rows(ALICE, "unread") == 0
        assert gateway.readiness()["source:kafka"] is False  # still stopped

        await env.kafka.allow("gateway", ["Describe"], cluster=True)

        async def taking() -> bool:
            unchecked = sample(gateway, "gateway_kafka_claims_unchecked")
            return unchecked == 0 and gateway.readiness()["source:kafka"] is True

        await env.stack.wait_for(taking, WAIT, "the source taking records again")
        await env.wait_rows(ALICE, "unread", 5)  # held in the topic, not lost
    finally:
        await env.kafka.allow("gateway", ["Describe"], cluster=True)
        await gateway.stop()
