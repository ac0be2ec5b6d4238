"""The admin client changes what a real broker enforces: ACLs it creates grant and their deletion
revokes, SCRAM users it stores log in, and deleted or replaced credentials are refused.

Changes are committed by the controller before the broker applies them, so each check polls
until the broker's view settles (within a bound) rather than sleeping.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import TopicAuthorizationFailedError

from gateway.config import KafkaConnection, Secret
from gateway.kafka_admin import (
    AclBinding,
    KafkaAdmin,
    KafkaAdminError,
    ScramCredential,
)
from gateway.services.kafka import Kafka

pytestmark = pytest.mark.integration

SETTLE = 30.0


@pytest.fixture(scope="module")
async def kafka() -> AsyncIterator[Kafka]:
    async with Kafka(users={"mallory": "mallory-secret"}) as broker:
        yield broker


@pytest.fixture
async def admin(kafka: Kafka) -> AsyncIterator[KafkaAdmin]:
    async with kafka.admin() as client:
        yield client


def unique(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(4)}"


async def settles(check: Callable[[], Awaitable[bool]]) -> bool:
    """Whether `check` comes true within SETTLE seconds (the broker follows the controller)."""
    async with asyncio.timeout(SETTLE):
        while not await check():  # noqa: ASYNC110 (the broker's state, not an event of ours)
            await asyncio.sleep(0.05)
    return True


async def produces(kafka: Kafka, user: str, password: str, topic: str) -> bool:
    producer = AIOKafkaProducer(**kafka.client_kwargs(user, password), request_timeout_ms=10_000)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b'{"metric": "t", "value": 1}')
    except TopicAuthorizationFailedError:
        return False
    finally:
        await producer.stop()
    return True


def write(topic: str, user: str, pattern: str = "literal") -> AclBinding:
    return AclBinding("topic", topic, pattern, f"User:{user}", "write")


async def test_acls_are_created_described_by_filter_and_deleted(admin: KafkaAdmin) -> None:
    user = unique("acl-")
    principal = f"User:{user}"
    exact = write(f"telemetry.{user}", user)
    prefixed = write("telemetry.", user, "prefixed")
    wildcard = AclBinding("topic", "*", "literal", principal, "read")
    elsewhere = write("events.", user, "prefixed")
    denied = AclBinding("group", user, "literal", principal, "read", permission="deny")
    everything = {exact, prefixed, wildcard, elsewhere, denied}

    await admin.create_acls(sorted(everything, key=str))

    async def all_there() -> bool:
        return set(await admin.describe_acls(principal=principal)) == everything

    assert await settles(all_there)
    assert set(await admin.describe_acls(pattern_type="literal", principal=principal)) == {
        exact,
        wildcard,
        denied,
    }
    assert set(await admin.describe_acls(pattern_type="prefixed", principal=principal)) == {
        elsewhere,
        prefixed,
    }
    assert await admin.describe_acls(permission="deny", principal=principal) == [denied]
    assert await admin.describe_acls(resource_name=exact.resource_name) == [exact]
    # MATCH: whatever applies to the topic named, by its name, a prefix of it or the wildcard.
    applying = await admin.describe_acls(
        resource_type="topic",
        resource_name=exact.resource_name,
        pattern_type="match",
        principal=principal,
    )
    assert set(applying) == {exact, prefixed, wildcard}
    assert str(prefixed) == f"ALLOW {principal} WRITE on topic prefix 'telemetry.' from *"

    await admin.delete_acls([exact, wildcard, write("never.made", user)])

    async def deleted() -> bool:
        return set(await admin.describe_acls(principal=principal)) == {prefixed, elsewhere, denied}

    assert await settles(deleted)


@pytest.mark.parametrize("shape", ["plain", "registry"])
async def test_scram_user_produces_where_its_acl_allows_and_nowhere_else(
    kafka: Kafka, admin: KafkaAdmin, shape: str
) -> None:
    # The registry's names may hold `.`, `:`, `@` and `=` (SCRAM escapes `=` on the wire), and
    # run to 128 characters.
    user = unique("sensor-") if shape == "plain" else unique("svc.eu:billing@site=").ljust(128, "x")
    password = secrets.token_urlsafe(16)
    own, other = f"telemetry.{secrets.token_hex(4)}", f"telemetry.{secrets.token_hex(4)}"
    await kafka.create_topic(own)
    await kafka.create_topic(other)

    await admin.upsert_scram([ScramCredential(user, password)])
    await admin.create_acls(
        [write(own, user), AclBinding("topic", own, "literal", f"User:{user}", "describe")]
    )

    assert await settles(lambda: kafka.logs_in(user, password))
    assert await settles(lambda: produces(kafka, user, password, own))
    assert not await produces(kafka, user, password, other)
    assert (await admin.scram_users())[user] == ("SCRAM-SHA-256",)


async def test_deleted_credential_is_refused_and_no_longer_listed(
    kafka: Kafka, admin: KafkaAdmin
) -> None:
    user, password = unique("retired-"), secrets.token_urlsafe(16)
    await admin.upsert_scram([ScramCredential(user, password)])
    assert await settles(lambda: kafka.logs_in(user, password))

    await admin.delete_scram([user, unique("never-existed-")])

    async def refused() -> bool:
        return not await kafka.logs_in(user, password)

    assert await settles(refused)
    assert user not in await admin.scram_users()


async def test_rotation_refuses_the_old_password_and_accepts_the_new(
    kafka: Kafka, admin: KafkaAdmin
) -> None:
    user, old, new = unique("rotated-"), secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    await admin.upsert_scram([ScramCredential(user, old)])
    assert await settles(lambda: kafka.logs_in(user, old))

    await admin.upsert_scram([ScramCredential(user, new)])

    assert await settles(lambda: kafka.logs_in(user, new))
    assert not await kafka.logs_in(user, old)
    assert (await admin.scram_users())[user] == ("SCRAM-SHA-256",)


async def test_bulk_upsert_lists_every_user_and_each_logs_in(
    kafka: Kafka, admin: KafkaAdmin
) -> None:
    # Above the process-pool threshold and across more than one request batch.
    prefix = unique("bulk-")
    credentials = [ScramCredential(f"{prefix}-{i}", f"pw-{i}") for i in range(1_200)]
    await admin.upsert_scram(credentials)

    async def listed() -> bool:
        return {c.user for c in credentials} <= set(await admin.scram_users())

    assert await settles(listed)
    for credential in (credentials[0], credentials[999], credentials[-1]):
        assert await settles(partial(kafka.logs_in, credential.user, credential.password))


async def test_launcher_adds_users_after_start_and_grants_cluster_describe(
    kafka: Kafka, tmp_path: Path
) -> None:
    reader = unique("reader@")
    await kafka.add_users({reader: "reader-secret"})
    assert await kafka.logs_in(reader, "reader-secret")

    secret = tmp_path / "password"
    secret.write_text("reader-secret\n")
    connection = KafkaConnection(
        bootstrap_servers=kafka.sasl_bootstrap,
        security_protocol="SASL_PLAINTEXT",
        username=reader,
        password=Secret(file=secret),
    )
    async with KafkaAdmin(connection) as as_reader:
        with pytest.raises(KafkaAdminError, match="ClusterAuthorizationFailed"):
            await as_reader.describe_acls()
        await kafka.allow(reader, ["Describe"], cluster=True)
        assert AclBinding(
            "cluster", "kafka-cluster", "literal", f"User:{reader}", "describe"
        ) in await as_reader.describe_acls(principal=f"User:{reader}")


async def test_a_principal_without_alter_on_the_cluster_is_refused_clearly(
    kafka: Kafka, tmp_path: Path
) -> None:
    secret = tmp_path / "password"
    secret.write_text(kafka.users["mallory"])
    connection = KafkaConnection(
        bootstrap_servers=kafka.sasl_bootstrap,
        security_protocol="SASL_PLAINTEXT",
        username="mallory",
        password=Secret(file=secret),
    )
    async with KafkaAdmin(connection) as as_mallory:
        with pytest.raises(KafkaAdminError) as refused:
            await as_mallory.create_acls([write("telemetry.", "mallory", "prefixed")])
        assert "creating ACL ALLOW User:mallory WRITE on topic prefix 'telemetry.'" in str(
            refused.value
        )
        assert "ClusterAuthorizationFailed" in str(refused.value)
        assert refused.value.code == 31

        with pytest.raises(KafkaAdminError, match="storing SCRAM credentials") as refused:
            await as_mallory.upsert_scram([ScramCredential("mallory-2", "x")])
        assert refused.value.code == 31


async def test_a_wrong_password_is_a_clear_error(kafka: Kafka, tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("not-the-password")
    connection = KafkaConnection(
        bootstrap_servers=kafka.sasl_bootstrap,
        security_protocol="SASL_PLAINTEXT",
        username="mallory",
        password=Secret(file=secret),
    )
    with pytest.raises(KafkaAdminError, match=r"cannot connect to .* as mallory"):
        async with KafkaAdmin(connection):
            pass
