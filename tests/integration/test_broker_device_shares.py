"""What a device may do on Mosquitto is the plugin's alone: publish one level under its own name,
and nothing else, above all no subscription (a device in the gateway's shared-subscription
group would take its turn of every device's messages, which then reach nobody)."""

from __future__ import annotations

import asyncio
import itertools

import aiomqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode

from gateway.services.mosquitto import Mosquitto

from .raw_mqtt import published

V5 = aiomqtt.ProtocolVersion.V5
_names = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


def client(broker: Mosquitto, username: str, password: str) -> aiomqtt.Client:
    return aiomqtt.Client(
        broker.host, broker.port, username=username, password=password,
        identifier=username, protocol=V5,
    )  # fmt: skip


async def test_a_device_joining_the_gateways_share_group_loses_no_message(
    mosquitto: Mosquitto,
) -> None:
    pod = mosquitto.add_gateway("share-gw")
    sender, thief = mosquitto.add_user("share-sender"), mosquitto.add_user("share-thief")
    shared = "$share/gateways/devices/+/#"
    async with client(mosquitto, pod.username, pod.password) as gateway:
        await gateway.subscribe(shared, qos=1)
        async with client(mosquitto, thief.username, thief.password) as device:
            await device.subscribe(shared, qos=1)
            async with client(mosquitto, sender.username, sender.password) as publisher:
                for i in range(20):
                    await publisher.publish(f"devices/{sender.username}/t", str(i).encode(), qos=1)
            got = []
            async with asyncio.timeout(20):
                async for message in gateway.messages:
                    got.append(message.payload)
                    if len(got) == 20:
                        break
    assert len(got) == 20


@pytest.mark.parametrize(
    "topic", ["devices/#", "devices/+/t", "$share/gateways/devices/+/#", "$share/any/devices/#"]
)
async def test_a_device_may_subscribe_to_no_device_topic(mosquitto: Mosquitto, topic: str) -> None:
    nosy, other = mosquitto.add_user(unique("nosy")), mosquitto.add_user(unique("other"))
    pod = mosquitto.add_gateway(unique("pod"))
    async with client(mosquitto, pod.username, pod.password) as gateway:
        await gateway.subscribe("$share/gateways/devices/#", qos=1)
        async with client(mosquitto, nosy.username, nosy.password) as device:
            (granted,) = await device.subscribe(topic, qos=1)
            assert isinstance(granted, ReasonCode)
            assert granted.is_failure and granted.getName() == "Not authorized", topic
            async with client(mosquitto, other.username, other.password) as sender:
                await sender.publish(f"devices/{other.username}/t", b"private", qos=1)
            # The gateway got it, so it was sent before the device's silence is read.
            async with asyncio.timeout(10):
                message = await anext(gateway.messages)
            assert message.payload == b"private"
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):
                    await anext(device.messages)


async def test_a_device_publishes_one_level_under_its_own_name_only(mosquitto: Mosquitto) -> None:
    own, other = unique("own"), unique("other")
    device = mosquitto.add_user(own)
    mosquitto.add_user(other)
    taken = await published(
        mosquitto,
        device,
        [
            f"devices/{own}/x",
            f"devices/{own}/x/y",
            f"devices/{own}",
            f"devices/{other}/x",
            f"elsewhere/{own}/x",
        ],
    )
    assert taken == {
        f"devices/{own}/x": True,
        f"devices/{own}/x/y": False,
        f"devices/{own}": False,
        f"devices/{other}/x": False,
        f"elsewhere/{own}/x": False,
    }


async def test_a_device_named_like_a_topic_cannot_write_as_another(mosquitto: Mosquitto) -> None:
    victim = unique("victim")
    device = mosquitto.add_user(f"{victim}/telemetry")
    taken = await published(
        mosquitto, device, [f"devices/{victim}/telemetry", f"devices/{victim}/telemetry/x"]
    )
    assert taken == {f"devices/{victim}/telemetry": False, f"devices/{victim}/telemetry/x": True}


async def test_two_pods_sharing_the_stream_receive_every_devices_messages(
    mosquitto: Mosquitto,
) -> None:
    pods = [mosquitto.add_gateway(unique("pod")) for _ in range(2)]
    devices = [mosquitto.add_user(unique("fleet")) for _ in range(3)]
    group = f"$share/{unique('group')}/devices/+/#"
    sent = {f"{d.username}:{i}".encode() for d in devices for i in range(10)}
    got: list[bytes] = []
    everything = asyncio.Event()

    async def receive(gateway: aiomqtt.Client) -> None:
        async for message in gateway.messages:
            assert isinstance(message.payload, bytes)
            got.append(message.payload)
            if len(got) >= len(sent):
                everything.set()

    async with (
        client(mosquitto, pods[0].username, pods[0].password) as first,
        client(mosquitto, pods[1].username, pods[1].password) as second,
    ):
        for gateway in (first, second):
            (granted,) = await gateway.subscribe(group, qos=1)
            assert isinstance(granted, ReasonCode) and not granted.is_failure
        readers = [asyncio.create_task(receive(g)) for g in (first, second)]
        for device in devices:
            async with client(mosquitto, device.username, device.password) as sender:
                for i in range(10):
                    await sender.publish(
                        f"devices/{device.username}/t", f"{device.username}:{i}".encode(), qos=1
                    )
        async with asyncio.timeout(20):
            await everything.wait()
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    assert sorted(got) == sorted(sent)
