"""How fast does a consumer drain a persistent session, with a PUBACK for every message?

The backlog is built while the consumer is offline (a gateway restart, a broker that kept
queueing), by a raw asyncio publisher that pipelines pre-encoded QoS 1 PUBLISH packets and counts
the broker's PUBACKs, so every message is known to be queued before the clock starts. Then the
consumer reconnects and the clock runs until every message was received and acked and the client
disconnected; a second connection checks that nothing is redelivered, i.e. that the acks landed.

Compared: our `MqttClient` (asyncio loop, and uvloop); a bare asyncio protocol over the codec that
acks inside `data_received` (the ceiling, with no API around it); and aiomqtt 2.5 with manual acks
through its paho client (smaller backlog: it is much slower). Prints one JSON object.

    .venv/bin/python benchmarks/mqtt_drain.py [--messages 200000] [--aiomqtt-messages 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import struct
import sys
import time
from typing import Any, cast

import aiomqtt
import mqtt5
import uvloop
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.services.mosquitto import Mosquitto, MqttUser
from gateway.sources.mqtt import MqttClient, MqttOptions

TOPIC = "devices/bench-device/telemetry"
SESSION_EXPIRY = 3600


def payload(seq: int) -> bytes:
    """About 120 bytes of JSON, like one telemetry reading; `seq` makes each one unique."""
    return (
        b'{"ts":1732500000000,"metric":"temperature","value":21.5,'
        b'"tags":{"site":"plant-7","line":"l3","unit":"C"},"seq":%08d}' % seq
    )


class Publisher(asyncio.Protocol):
    """Writes pre-encoded QoS 1 PUBLISH packets, at most `window` unacked, and counts PUBACKs."""

    def __init__(self, device: MqttUser, packets: list[bytes], window: int) -> None:
        self._connect = mqtt5.ConnectPacket(
            device.username, username=device.username, password=device.password.encode()
        ).write()
        self._packets = packets
        self._window = window
        self._sent = 0
        self.acked = 0
        self.refused = 0
        self._rest = b""
        self._transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(self._connect)

    def _send_more(self) -> None:
        assert self._transport is not None
        end = min(len(self._packets), self.acked + self._window)
        if end > self._sent:
            self._transport.write(b"".join(self._packets[self._sent : end]))
            self._sent = end

    def data_received(self, data: bytes) -> None:
        data = self._rest + data
        view = memoryview(data)
        offset = 0
        while offset < len(data):
            try:
                packet, size = mqtt5.read(view[offset:])
            except IndexError:
                break
            offset += size
            if isinstance(packet, mqtt5.PubAckPacket):
                self.acked += 1
                if int(packet.reason_code) >= 0x80:
                    self.refused += 1
            elif (
                isinstance(packet, mqtt5.ConnAckPacket)
                and packet.reason_code != mqtt5.ConnAckReasonCode.SUCCESS
            ):
                self.done.set_exception(RuntimeError(f"publisher refused: {packet}"))
                return
        self._rest = data[offset:]
        if self.acked == len(self._packets):
            if not self.done.done():
                self.done.set_result(None)
        elif self.acked + self._window // 2 >= self._sent:
            self._send_more()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(RuntimeError(f"publisher lost its connection: {exc}"))


async def publish_backlog(broker: Mosquitto, device: MqttUser, count: int) -> float:
    """Queue `count` QoS 1 messages; returns the publish rate. Every PUBACK is awaited."""
    packets = [
        mqtt5.PublishPacket(
            TOPIC, payload(seq), qos=mqtt5.QoS.AT_LEAST_ONCE, packet_id=seq % 65535 + 1
        ).write()
        for seq in range(count)
    ]
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    transport, publisher = await loop.create_connection(
        lambda: Publisher(device, packets, window=20_000), broker.host, broker.port
    )
    try:
        await asyncio.wait_for(publisher.done, 600)
    finally:
        transport.write(mqtt5.DisconnectPacket().write())
        transport.close()
    if publisher.refused:
        raise RuntimeError(f"the broker refused {publisher.refused} of {count} messages")
    return count / (time.perf_counter() - started)


class BareConsumer(asyncio.Protocol):
    """The codec's ceiling: parse in data_received and PUBACK there at once, nothing else."""

    def __init__(self, connect: bytes, count: int) -> None:
        self._connect = connect
        self._count = count
        self.received = 0
        self._rest = b""
        self._transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(self._connect)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        data = self._rest + data
        view = memoryview(data)
        offset = 0
        acks = []
        while offset < len(data):
            try:
                packet, size = mqtt5.read(view[offset:])
            except IndexError:
                break
            offset += size
            if type(packet) is mqtt5.PublishPacket:
                assert packet.packet_id is not None
                acks.append(0x4002_0000 | packet.packet_id)
        self._rest = data[offset:]
        if acks:
            self.received += len(acks)
            self._transport.write(struct.pack(f">{len(acks)}I", *acks))
        if self.received >= self._count and not self.done.done():
            self.done.set_result(None)


async def drain_bare(broker: Mosquitto, device: MqttUser, count: int) -> dict[str, Any]:
    options = our_options(broker, "bench-bare", 65535)
    async with MqttClient(options):
        pass
    await publish_backlog(broker, device, count)
    connect = mqtt5.ConnectPacket(
        options.client_id,
        username=broker.gateway.username,
        password=broker.gateway.password.encode(),
        session_expiry_interval=SESSION_EXPIRY,
    ).write()
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    transport, consumer = await loop.create_connection(
        lambda: BareConsumer(connect, count), broker.host, broker.port
    )
    try:
        await asyncio.wait_for(consumer.done, 600)
    finally:
        transport.write(mqtt5.DisconnectPacket().write())
        transport.close()
    elapsed = time.perf_counter() - started
    return {
        "messages": count,
        "received": consumer.received,
        "seconds": round(elapsed, 3),
        "msgs_per_s": round(consumer.received / elapsed),
    }


def our_options(broker: Mosquitto, client_id: str, receive_maximum: int) -> MqttOptions:
    return MqttOptions(
        client_id=client_id,
        host=broker.host,
        port=broker.port,
        username=broker.gateway.username,
        password=broker.gateway.password,
        subscriptions=[("devices/bench-device/#", 1)],
        session_expiry_interval=SESSION_EXPIRY,
        receive_maximum=receive_maximum,
    )


async def leftover(client: MqttClient, broker: Mosquitto, device: MqttUser) -> int:
    """Messages redelivered before a fresh marker: 0 when every ack reached the broker."""
    await publish_marker(broker, device)
    count = 0
    async with asyncio.timeout(60):
        while True:
            batch = await client.receive()
            client.ack_many(batch)
            for message in batch:
                if message.payload == b"marker":
                    return count
                count += 1


async def publish_marker(broker: Mosquitto, device: MqttUser) -> None:
    async with aiomqtt.Client(
        broker.host,
        broker.port,
        username=device.username,
        password=device.password,
        identifier=device.username,
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as publisher:
        await publisher.publish(TOPIC, b"marker", qos=1)


async def drain_ours(
    broker: Mosquitto, device: MqttUser, client_id: str, count: int, receive_maximum: int
) -> dict[str, Any]:
    options = our_options(broker, client_id, receive_maximum)
    async with MqttClient(options):
        pass  # creates the session and its subscription
    publish_rate = await publish_backlog(broker, device, count)

    received = 0
    batches = []  # kept to be checked after the clock stops
    started = time.perf_counter()
    client = MqttClient(options)
    await client.start()
    try:
        while received < count:
            batch = await client.receive()
            client.ack_many(batch)
            received += len(batch)
            batches.append(batch)
    finally:
        await client.disconnect()
    elapsed = time.perf_counter() - started
    distinct = len({message.payload for batch in batches for message in batch})
    async with MqttClient(options) as again:
        redelivered = await leftover(again, broker, device)
    return {
        "messages": count,
        "received": received,
        "distinct": distinct,
        "redelivered_after_acks": redelivered,
        "seconds": round(elapsed, 3),
        "msgs_per_s": round(received / elapsed),
        "publish_msgs_per_s": round(publish_rate),
        "receive_maximum": receive_maximum,
    }


async def drain_aiomqtt(broker: Mosquitto, device: MqttUser, count: int) -> dict[str, Any]:
    gateway = broker.gateway

    def client() -> aiomqtt.Client:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = SESSION_EXPIRY
        made = aiomqtt.Client(
            broker.host,
            broker.port,
            username=gateway.username,
            password=gateway.password,
            identifier="bench-aiomqtt",
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=properties,
        )
        # Set before connecting: a resumed session delivers right after CONNACK, and paho
        # would auto-ack whatever arrives before this call.
        made._client.manual_ack_set(True)
        return made

    async with client() as session:
        await session.subscribe("devices/bench-device/#", qos=1)
    publish_rate = await publish_backlog(broker, device, count)

    received = 0
    started = time.perf_counter()
    async with client() as consumer:
        async for message in consumer.messages:
            consumer._client.ack(message.mid, message.qos)
            received += 1
            if received == count:
                break
    elapsed = time.perf_counter() - started
    return {
        "messages": count,
        "received": received,
        "seconds": round(elapsed, 3),
        "msgs_per_s": round(received / elapsed),
        "publish_msgs_per_s": round(publish_rate),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--aiomqtt-messages", type=int, default=20_000)
    parser.add_argument("--receive-maximum", type=int, default=10_000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    results: dict[str, Any] = {
        "benchmark": "mqtt_drain",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "payload_bytes": len(payload(0)),
    }
    # The broker lives on a plain asyncio loop (uvloop cannot spawn it: the launcher passes
    # `user=` to create_subprocess_exec); each measurement runs on a loop of its own.
    broker = Mosquitto()
    with asyncio.Runner() as control:
        control.run(broker.__aenter__())
        try:
            device = broker.add_user("bench-device")
            with asyncio.Runner() as runner:
                results["mqtt5_client_asyncio"] = runner.run(
                    drain_ours(broker, device, "bench-asyncio", args.messages, args.receive_maximum)
                )
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                results["mqtt5_client_uvloop"] = runner.run(
                    drain_ours(broker, device, "bench-uvloop", args.messages, args.receive_maximum)
                )
            with asyncio.Runner() as runner:
                results["bare_protocol_baseline"] = runner.run(
                    drain_bare(broker, device, args.messages)
                )
            if args.aiomqtt_messages:
                with asyncio.Runner() as runner:
                    results["aiomqtt_manual_ack"] = runner.run(
                        drain_aiomqtt(broker, device, args.aiomqtt_messages)
                    )
        finally:
            control.run(broker.__aexit__(None, None, None))
    json.dump(results, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
