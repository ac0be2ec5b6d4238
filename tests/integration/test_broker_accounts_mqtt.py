"""Broker accounts in Mosquitto's dynamic-security plugin: bound client ids, disable, rotate,
delete, and fleets written into the plugin's file while the broker is stopped."""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import AsyncIterator

import aiomqtt
import mqtt5
import pytest

from gateway.config import Secret
from gateway.identities.accounts import device_role, device_role_acls
from gateway.identities.dynsec import Dynsec, DynsecError, NewAccount
from gateway.identities.dynsec_file import write_accounts, write_roles
from gateway.services.mosquitto import GATEWAY_ACLS, GATEWAY_ROLE, Mosquitto, MqttUser
from gateway.sources.mqtt import MqttClient, MqttOptions

from .raw_mqtt import raw_session

V5 = aiomqtt.ProtocolVersion.V5
WAIT = 20
_ids = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_ids)}-{secrets.token_hex(3)}"


def device(broker: Mosquitto, user: MqttUser, client_id: str | None = None) -> aiomqtt.Client:
    return aiomqtt.Client(
        broker.host,
        broker.port,
        username=user.username,
        password=user.password,
        identifier=client_id or user.username,
        protocol=V5,
    )


async def refused(broker: Mosquitto, user: MqttUser, client_id: str | None = None) -> str:
    """The broker's refusal of this login (fails the test if it is accepted)."""
    with pytest.raises(aiomqtt.MqttCodeError) as raised:
        async with device(broker, user, client_id):
            pass
    return str(raised.value)


async def closed_by_broker(reader: asyncio.StreamReader) -> None:
    """Return once the broker has closed the connection (after a DISCONNECT, if it sends one)."""
    async with asyncio.timeout(WAIT):
        while await reader.read(1024):
            pass


@pytest.fixture
async def dynsec(mosquitto: Mosquitto) -> AsyncIterator[Dynsec]:
    async with Dynsec(mosquitto.accounts_config(client_id=unique("accounts"))) as session:
        yield session


async def test_a_device_logs_in_only_with_its_own_client_id(mosquitto: Mosquitto) -> None:
    user = mosquitto.add_user(unique("bound"))
    async with device(mosquitto, user) as client:
        await client.publish(f"devices/{user.username}/telemetry", b"{}", qos=1)
    assert "Not authorized" in await refused(mosquitto, user, client_id=unique("other"))


async def test_a_device_cannot_take_the_gateways_session(mosquitto: Mosquitto) -> None:
    pod = unique("gateway")
    account = mosquitto.add_gateway(pod)
    user = mosquitto.add_user(unique("thief"))
    options = MqttOptions(
        client_id=pod,
        host=mosquitto.host,
        port=mosquitto.port,
        username=account.username,
        password=account.password,
        subscriptions=[(f"devices/{user.username}/+", 1)],
    )
    async with MqttClient(options) as gateway:
        generation = gateway.generation
        assert "Not authorized" in await refused(mosquitto, user, client_id=pod)
        async with device(mosquitto, user) as client:
            await client.publish(f"devices/{user.username}/telemetry", b"after", qos=1)
        async with asyncio.timeout(WAIT):
            messages = await gateway.receive()
        gateway.ack_many(messages)
        assert [m.payload for m in messages] == [b"after"]
        assert gateway.connected and gateway.generation == generation  # never taken over


async def test_a_gateway_pod_subscribes_alone_and_in_a_shared_group(mosquitto: Mosquitto) -> None:
    pod = mosquitto.add_gateway(unique("gateway"))
    user = mosquitto.add_user(unique("shared"))
    async with device(mosquitto, pod) as gateway:
        await gateway.subscribe(f"$share/{unique('group')}/devices/+/telemetry", qos=1)
        await gateway.subscribe(f"devices/{user.username}/events", qos=1)
        async with device(mosquitto, user) as client:
            await client.publish(f"devices/{user.username}/telemetry", b"shared", qos=1)
            await client.publish(f"devices/{user.username}/events", b"alone", qos=1)
        got = []
        async with asyncio.timeout(WAIT):
            async for message in gateway.messages:
                got.append(message.payload)
                if len(got) == 2:
                    break
    assert sorted(got) == [b"alone", b"shared"]


async def test_disabling_kicks_the_connected_device_and_refuses_it(
    mosquitto: Mosquitto, dynsec: Dynsec
) -> None:
    user = mosquitto.add_user(unique("retired"))
    reader, writer = await raw_session(mosquitto, user)
    try:
        await dynsec.set_disabled([user.username], True)
        await closed_by_broker(reader)
    finally:
        writer.close()
    assert "Not authorized" in await refused(mosquitto, user)
    assert (await dynsec.accounts())[user.username].disabled
    await dynsec.set_disabled([user.username], False)
    async with device(mosquitto, user):
        pass


async def test_a_rotated_password_replaces_the_old_one(
    mosquitto: Mosquitto, dynsec: Dynsec
) -> None:
    user = mosquitto.add_user(unique("rotated"))
    new = MqttUser(user.username, secrets.token_urlsafe(12))
    await dynsec.set_password(user.username, new.password)
    await refused(mosquitto, user)
    async with device(mosquitto, new):
        pass


async def test_a_deleted_account_is_gone(mosquitto: Mosquitto, dynsec: Dynsec) -> None:
    user = mosquitto.add_user(unique("deleted"))
    await dynsec.delete([user.username])
    await refused(mosquitto, user)
    assert user.username not in await dynsec.accounts()


async def test_accounts_roles_and_default_access_are_listed(
    mosquitto: Mosquitto, dynsec: Dynsec
) -> None:
    user = mosquitto.add_user(unique("listed"))
    pod = mosquitto.add_gateway(unique("gateway"))
    accounts = await dynsec.accounts()
    assert accounts[user.username].client_id == user.username
    assert accounts[user.username].roles == (device_role(user.username),)
    assert not accounts[user.username].disabled
    assert accounts[pod.username].client_id == pod.username
    assert accounts[pod.username].roles == (GATEWAY_ROLE,)
    assert accounts["gateway"].client_id is None  # the test stack's shared account
    acls = await dynsec.role_acls()
    assert acls[device_role(user.username)] == (
        ("publishClientSend", f"devices/{user.username}/+", True),
    )
    assert sorted(acls[GATEWAY_ROLE]) == sorted((t, topic, True) for t, topic in GATEWAY_ACLS)
    access = await dynsec.default_access()
    assert access["publishClientSend"] is False and access["publishClientReceive"] is False


async def test_client_ids_and_roles_are_set_exactly(dynsec: Dynsec) -> None:
    name = unique("moved")
    await dynsec.create([NewAccount(name, "pw", name, roles=(GATEWAY_ROLE,))])
    await dynsec.set_client_id(name, f"{name}-b")
    await dynsec.set_roles(name, [])
    account = (await dynsec.accounts())[name]
    assert (account.client_id, account.roles, account.groups) == (f"{name}-b", (), ())
    role = unique("role")
    await dynsec.ensure_role(role, [("subscribePattern", "a/#"), ("subscribePattern", "b/#")])
    await dynsec.ensure_role(role, [("subscribePattern", "b/#"), ("publishClientReceive", "b/#")])
    acls = (await dynsec.role_acls())[role]
    assert sorted(acls) == [
        ("publishClientReceive", "b/#", True),
        ("subscribePattern", "b/#", True),
    ]
    await dynsec.set_roles(name, [role, GATEWAY_ROLE])
    assert set((await dynsec.accounts())[name].roles) == {role, GATEWAY_ROLE}


async def test_refused_commands_are_named_without_their_passwords(dynsec: Dynsec) -> None:
    name = unique("twice")
    secret = secrets.token_urlsafe(12)
    await dynsec.create([NewAccount(name, secret, name)])
    with pytest.raises(DynsecError) as raised:
        await dynsec.create([NewAccount(name, secret, name)])
    assert raised.value.failures == [("createClient", name, "Client already exists")]
    assert secret not in str(raised.value) and secret not in repr(raised.value.failures)
    assert secret not in repr(NewAccount(name, secret, name))


async def test_a_refused_admin_login_is_a_dynsec_error(
    mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DYNSEC_WRONG_PASSWORD", "wrong")
    config = mosquitto.accounts_config(password=Secret(env="DYNSEC_WRONG_PASSWORD"))
    with pytest.raises(DynsecError, match="refused the dynamic-security admin login 'admin'"):
        async with Dynsec(config):
            pass


async def test_a_user_named_like_a_topic_cannot_write_as_another(mosquitto: Mosquitto) -> None:
    victim = unique("victim")
    user = mosquitto.add_user(f"{victim}/telemetry")
    reader, writer = await raw_session(mosquitto, user)
    try:
        for topic, allowed in (
            (f"devices/{victim}/telemetry", False),
            (f"devices/{user.username}/x", True),
        ):
            packet = mqtt5.PublishPacket(topic, b"{}", qos=mqtt5.QoS.AT_LEAST_ONCE, packet_id=1)
            writer.write(packet.write())
            puback, _ = mqtt5.read(memoryview(await reader.read(1024)))
            assert isinstance(puback, mqtt5.PubAckPacket)
            # Allowed with nobody subscribed is "no matching subscribers", not "success".
            refused = puback.reason_code == mqtt5.PubAckReasonCode.NOT_AUTHORIZED
            assert refused is not allowed, topic
    finally:
        writer.close()


async def test_accounts_written_into_a_stopped_brokers_file_log_in() -> None:
    async with Mosquitto() as broker:
        await broker.stop()
        users = [MqttUser(unique("bulk"), secrets.token_urlsafe(12)) for _ in range(3)]
        config = broker.accounts_config()
        roles = write_roles(
            broker.dynsec_file,
            [(device_role(u.username), device_role_acls(config, u.username)) for u in users],
        )
        written = write_accounts(
            broker.dynsec_file,
            [
                NewAccount(u.username, u.password, u.username, roles=(device_role(u.username),))
                for u in users
            ],
            disabled=[users[2].username],
        )
        assert (roles, written) == (3, 3)
        late = broker.add_user(unique("late"))  # a stopped broker's accounts go to the file too
        assert broker.dynsec_file.stat().st_mode & 0o777 == 0o600
        await broker.start()
        async with device(broker, broker.gateway, "bulk-reader") as gateway:
            await gateway.subscribe("devices/#", qos=1)
            for user in (users[0], users[1], late):
                async with device(broker, user) as client:
                    await client.publish(f"devices/{user.username}/telemetry", b"{}", qos=1)
                async with asyncio.timeout(WAIT):
                    message = await anext(gateway.messages)
                assert str(message.topic) == f"devices/{user.username}/telemetry"
        await refused(broker, users[2])
