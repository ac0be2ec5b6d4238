"""The amqtt launcher (the demo's broker without Mosquitto) enforces passwords and the same
device rule as Mosquitto's ACL, over MQTT 3.1.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiomqtt
import pytest

from gateway.services.amqtt import Amqtt
from gateway.services.mosquitto import MqttUser

V311 = aiomqtt.ProtocolVersion.V311


@pytest.fixture(scope="module")
async def amqtt() -> AsyncIterator[Amqtt]:
    async with Amqtt() as broker:
        yield broker


def client(broker: Amqtt, user: MqttUser) -> aiomqtt.Client:
    return aiomqtt.Client(
        broker.host, broker.port, username=user.username, password=user.password, protocol=V311
    )


async def test_own_topic_is_delivered_and_a_spoof_is_dropped(amqtt: Amqtt) -> None:
    victim = amqtt.add_user("sensor-a1")
    spoofer = amqtt.add_user("sensor-a2")
    async with client(amqtt, amqtt.gateway) as gateway:
        await gateway.subscribe("devices/#", qos=1)
        async with client(amqtt, spoofer) as sensor:
            await sensor.publish("devices/sensor-a1/telemetry", b"spoofed", qos=1)
        # Sent after the spoof on the same broker: the first message delivered must be it.
        async with client(amqtt, victim) as sensor:
            await sensor.publish("devices/sensor-a1/telemetry", b"marker", qos=1)
        async with asyncio.timeout(10):
            message = await anext(gateway.messages)
    assert str(message.topic) == "devices/sensor-a1/telemetry"
    assert message.payload == b"marker"


async def test_wrong_password_unknown_user_and_anonymous_are_refused(amqtt: Amqtt) -> None:
    device = amqtt.add_user("sensor-a3")
    for user in (MqttUser(device.username, "wrong"), MqttUser("nobody", "x")):
        with pytest.raises(aiomqtt.MqttCodeError, match=r"[Nn]ot authorized|[Bb]ad user"):
            async with client(amqtt, user):
                pass
    with pytest.raises(aiomqtt.MqttCodeError):
        async with aiomqtt.Client(amqtt.host, amqtt.port, protocol=V311):
            pass


async def test_devices_cannot_read_other_devices(amqtt: Amqtt) -> None:
    nosy = amqtt.add_user("sensor-a4")
    writer = amqtt.add_user("sensor-a5")
    async with client(amqtt, nosy) as reader:
        await reader.subscribe("devices/#", qos=1)
        async with client(amqtt, writer) as sensor:
            await sensor.publish("devices/sensor-a5/telemetry", b"private", qos=1)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1):
                await anext(reader.messages)


async def test_password_change_applies_to_the_running_broker(amqtt: Amqtt) -> None:
    device = amqtt.add_user("sensor-a6", "first")
    amqtt.add_user(device.username, "second")
    with pytest.raises(aiomqtt.MqttCodeError):
        async with client(amqtt, device):
            pass
    async with client(amqtt, MqttUser(device.username, "second")):
        pass
