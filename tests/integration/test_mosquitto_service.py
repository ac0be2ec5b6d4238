"""The Mosquitto launcher enforces passwords and the device rights the gateway's identity rests on.

Device accounts are bound to their name as client id, so every device here connects with it.
"""

from __future__ import annotations

import asyncio

import aiomqtt
import pytest

from gateway.services.mosquitto import Mosquitto, MqttUser

from .raw_mqtt import published

V5 = aiomqtt.ProtocolVersion.V5
REFUSED = r"[Bb]ad user name or password|[Nn]ot authorized"


def client(broker: Mosquitto, user: MqttUser, **kwargs: object) -> aiomqtt.Client:
    kwargs.setdefault("identifier", user.username)
    return aiomqtt.Client(
        broker.host,
        broker.port,
        username=user.username,
        password=user.password,
        protocol=V5,
        **kwargs,  # type: ignore[arg-type]
    )


async def test_device_publishes_to_its_own_topic_and_gateway_receives(mosquitto: Mosquitto) -> None:
    device = mosquitto.add_user("sensor-own")
    async with client(mosquitto, mosquitto.gateway) as gateway:
        await gateway.subscribe("devices/#", qos=1)
        async with client(mosquitto, device) as sensor:
            await sensor.publish("devices/sensor-own/telemetry", b'{"value": 1}', qos=1)
        async with asyncio.timeout(10):
            message = await anext(gateway.messages)
    assert str(message.topic) == "devices/sensor-own/telemetry"
    assert message.payload == b'{"value": 1}'
    assert message.qos == 1


async def test_device_cannot_publish_as_another_device(mosquitto: Mosquitto) -> None:
    victim = mosquitto.add_user("sensor-victim")
    spoofer = mosquitto.add_user("sensor-spoofer")
    async with client(mosquitto, mosquitto.gateway) as gateway:
        await gateway.subscribe("devices/#", qos=1)
        topic = "devices/sensor-victim/telemetry"
        assert await published(mosquitto, spoofer, [topic]) == {topic: False}
        # A marker from the victim itself proves the subscriber is live and that the spoofed
        # message, sent earlier on the same broker, was never delivered.
        async with client(mosquitto, victim) as sensor:
            await sensor.publish("devices/sensor-victim/telemetry", b"marker", qos=1)
        async with asyncio.timeout(10):
            message = await anext(gateway.messages)
    assert message.payload == b"marker"


async def test_anonymous_and_wrong_password_are_refused(mosquitto: Mosquitto) -> None:
    device = mosquitto.add_user("sensor-locked")
    with pytest.raises(aiomqtt.MqttCodeError, match=REFUSED):
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, protocol=V5):
            pass
    with pytest.raises(aiomqtt.MqttCodeError, match=REFUSED):
        async with client(mosquitto, MqttUser(device.username, "wrong")):
            pass


async def test_devices_cannot_read_other_devices(mosquitto: Mosquitto) -> None:
    reader = mosquitto.add_user("sensor-reader")
    writer = mosquitto.add_user("sensor-writer")
    async with client(mosquitto, reader) as nosy:
        await nosy.subscribe("devices/#", qos=1)
        async with client(mosquitto, writer) as sensor:
            await sensor.publish("devices/sensor-writer/telemetry", b"private", qos=1)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1):
                await anext(nosy.messages)


def test_the_plugin_alone_decides(mosquitto: Mosquitto) -> None:
    # Beside the plugin, an ACL file grants any SUBSCRIBE in Mosquitto 2.0.
    lines = mosquitto.config_file.read_text().splitlines()
    assert not [line for line in lines if line.startswith(("acl_file", "password_file"))]
    assert any(line.startswith("plugin_opt_config_file") for line in lines)
