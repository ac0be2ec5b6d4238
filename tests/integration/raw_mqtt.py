"""A device over a bare MQTT v5 socket: what the broker answers, reason codes and all, which a
client library refuses to send or hides (a refused publish is no error to aiomqtt)."""

from __future__ import annotations

import asyncio

import mqtt5

from gateway.services.mosquitto import Mosquitto, MqttUser

__all__ = ["published", "raw_session"]


async def raw_session(
    broker: Mosquitto, user: MqttUser
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A logged-in bare connection, with the user's name as client id."""
    reader, writer = await asyncio.open_connection(broker.host, broker.port)
    writer.write(
        mqtt5.ConnectPacket(
            user.username, username=user.username, password=user.password.encode()
        ).write()
    )
    connack, _ = mqtt5.read(memoryview(await reader.read(1024)))
    assert isinstance(connack, mqtt5.ConnAckPacket)
    assert connack.reason_code == mqtt5.ConnAckReasonCode.SUCCESS
    return reader, writer


async def published(broker: Mosquitto, user: MqttUser, topics: list[str]) -> dict[str, bool]:
    """For each topic, whether the broker took a QoS 1 message from this device: its PUBACK
    says success, or not authorized."""
    reader, writer = await raw_session(broker, user)
    try:
        taken = {}
        for packet_id, topic in enumerate(topics, start=1):
            packet = mqtt5.PublishPacket(
                topic, b"{}", qos=mqtt5.QoS.AT_LEAST_ONCE, packet_id=packet_id
            )
            writer.write(packet.write())
            puback, _ = mqtt5.read(memoryview(await reader.read(1024)))
            assert isinstance(puback, mqtt5.PubAckPacket) and puback.packet_id == packet_id
            taken[topic] = puback.reason_code != mqtt5.PubAckReasonCode.NOT_AUTHORIZED
        return taken
    finally:
        writer.close()
        await writer.wait_closed()
