"""The Mosquitto launcher enforces passwords and the device rights the gateway's identity rests on.

Device accounts are bound to their name as client id, so every device here connects with it.
"""

from __future__ import annotations

import asyncio

import aiomqtt
import mqtt5
import pytest

from gateway.services.mosquitto import Mosquitto, MqttUser

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


async def raw_publish(broker: Mosquitto, user: MqttUser, topic: str) -> mqtt5.PubAckPacket:
    """Publish QoS 1 over a bare socket and return the broker's PUBACK, reason code and all."""
    reader, writer = await asyncio.open_connection(broker.host, broker.port)
    try:
        writer.write(
            mqtt5.ConnectPacket(
                user.username, username=user.username, password=user.password.encode()
            ).write()
        )
        connack, _ = mqtt5.read(memoryview(await reader.read(1024)))
        assert isinstance(connack, mqtt5.ConnAckPacket)
        assert connack.reason_code == mqtt5.ConnAckReasonCode.SUCCESS
        packet = mqtt5.PublishPacket(topic, b"{}", qos=mqtt5.QoS.AT_LEAST_ONCE, packet_id=1)
        writer.write(packet.write())
        puback, _ = mqtt5.read(memoryview(await reader.read(1024)))
        assert isinstance(puback, mqtt5.PubAckPacket)
        return puback
    finally:
        writer.close()
        await writer.wait_closed()


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
        puback = await raw_publish(mosquitto, spoofer, "devices/sensor-victim/telemetry")
        assert puback.reason_code == mqtt5.PubAckReasonCode.NOT_AUTHORIZED
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
