"""MqttClient against a real Mosquitto 2.0.11, with aiomqtt as the independent publisher.

Each test uses its own device user and topic subtree, so persistent sessions left by one test
never see another's messages. Where a test must show that something did NOT arrive, it
publishes a marker afterwards: the broker delivers a session's queued and redelivered messages
before new ones, so the first message after the marker-free ones tells, with no timing guess.
A small TCP relay in front of the broker stands in for a network that breaks or goes silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import ssl
from collections.abc import AsyncIterator

import aiomqtt
import mqtt5
import pytest

from gateway.errors import MqttConnectError, MqttSubscribeError
from gateway.services.mosquitto import Mosquitto, MqttUser
from gateway.sources.mqtt import Message, MqttClient, MqttOptions

V5 = aiomqtt.ProtocolVersion.V5
WAIT = 20  # seconds: generous bounds for a loaded 2-core machine, never a performance claim
_ids = itertools.count()


@pytest.fixture(scope="module")
async def broker() -> AsyncIterator[Mosquitto]:
    """A broker of our own: the tests restart it, and they need its TLS listener."""
    async with Mosquitto(tls=True) as server:
        yield server


class Relay:
    """A TCP relay to the broker that a test can cut (a network failure) or freeze (silence)."""

    def __init__(self, broker: Mosquitto) -> None:
        self.broker = broker
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._pumps: set[asyncio.Task[None]] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        pumps = list(self._pumps)
        self.cut()
        await asyncio.gather(*self._handlers, *pumps, return_exceptions=True)
        await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.append(writer)
        try:
            upstream_reader, upstream = await asyncio.open_connection(
                self.broker.host, self.broker.port
            )
        except OSError:
            writer.transport.abort()
            return
        finally:
            self._handlers.discard(task)
        self._writers.append(upstream)
        for source, sink in ((reader, upstream), (upstream_reader, writer)):
            pump = asyncio.create_task(self._pump(source, sink))
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)

    @staticmethod
    async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        sink.close()

    def freeze(self) -> None:
        """Stop relaying on the open connections but keep their sockets open."""
        for pump in list(self._pumps):
            pump.cancel()

    def cut(self) -> None:
        """Drop every open connection at once, as a broken network would."""
        self.freeze()
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_ids)}-{secrets.token_hex(3)}"


def gateway_options(
    broker: Mosquitto, client_id: str, subscriptions: list[tuple[str, int]], **overrides: object
) -> MqttOptions:
    settings: dict[str, object] = {
        "client_id": client_id,
        "host": broker.host,
        "port": broker.port,
        "username": broker.gateway.username,
        "password": broker.gateway.password,
        "subscriptions": subscriptions,
        "reconnect_min_delay": 0.05,
        "reconnect_max_delay": 1.0,
    }
    settings.update(overrides)
    return MqttOptions(**settings)  # type: ignore[arg-type]


async def publish(broker: Mosquitto, device: MqttUser, payloads: list[bytes]) -> None:
    """Publish QoS 1 as the device to its telemetry topic, each PUBACK awaited."""
    async with aiomqtt.Client(
        broker.host,
        broker.port,
        username=device.username,
        password=device.password,
        identifier=device.username,  # the broker binds a device's account to its name
        protocol=V5,
    ) as publisher:
        for payload in payloads:
            await publisher.publish(f"devices/{device.username}/telemetry", payload, qos=1)


async def collect(client: MqttClient, count: int) -> list[Message]:
    """Receive until `count` messages have arrived (more would also be returned)."""
    messages: list[Message] = []
    async with asyncio.timeout(WAIT):
        while len(messages) < count:
            messages += await client.receive()
    return messages


async def next_after(client: MqttClient, broker: Mosquitto, device: MqttUser) -> list[Message]:
    """Everything that arrives before a fresh marker, which shows the stream is caught up.

    All of it is acked as it comes, so that a small receive maximum cannot hold the marker back.
    """
    marker = b"marker-" + secrets.token_hex(4).encode()
    await publish(broker, device, [marker])
    before: list[Message] = []
    async with asyncio.timeout(WAIT):
        while True:
            batch = await client.receive()
            client.ack_many(batch)
            for message in batch:
                if message.payload == marker:
                    return before
                before.append(message)


def payloads(n: int) -> list[bytes]:
    return [f'{{"seq": {i}}}'.encode() for i in range(n)]


@pytest.mark.parametrize("who", ["bad password", "unknown user"])
async def test_refused_credentials_are_a_clear_final_error(broker: Mosquitto, who: str) -> None:
    username = broker.gateway.username if who == "bad password" else unique("nobody")
    options = MqttOptions(
        client_id=unique("gw"), host=broker.host, port=broker.port, username=username, password="x"
    )
    with pytest.raises(MqttConnectError) as raised:
        async with asyncio.timeout(WAIT), MqttClient(options):
            pass
    # Mosquitto 2.0.11 answers both with "not authorized" (135), never with 134 (bad user name
    # or password); the unit tests prove that 134 is reported as clearly.
    assert raised.value.reason_code == mqtt5.ConnAckReasonCode.NOT_AUTHORIZED
    assert str(raised.value) == "broker refused connection: not authorized (135)"
    assert not raised.value.retriable


async def test_a_device_subscription_is_refused_as_a_final_error(broker: Mosquitto) -> None:
    """The plugin alone decides, and no device role may subscribe: refused at SUBACK, so a
    device can neither read another's messages nor join the gateway's shared group."""
    writer = broker.add_user(unique("sensor"))
    nosy = broker.add_user(unique("sensor"))
    spy_options = MqttOptions(
        client_id=nosy.username,
        host=broker.host,
        port=broker.port,
        username=nosy.username,
        password=nosy.password,
        subscriptions=[(f"devices/{writer.username}/#", 1), ("$share/g/devices/#", 1)],
    )
    with pytest.raises(MqttSubscribeError) as raised:
        async with asyncio.timeout(WAIT), MqttClient(spy_options):
            pass
    assert raised.value.refused == (
        (f"devices/{writer.username}/#", mqtt5.SubAckReasonCode.NOT_AUTHORIZED),
        ("$share/g/devices/#", mqtt5.SubAckReasonCode.NOT_AUTHORIZED),
    )
    assert not raised.value.retriable


async def test_receive_and_ack_then_nothing_is_redelivered(broker: Mosquitto) -> None:
    device = broker.add_user(unique("sensor"))
    options = gateway_options(broker, unique("gw"), [(f"devices/{device.username}/#", 1)])
    async with MqttClient(options) as client:
        await publish(broker, device, payloads(20))
        messages = await collect(client, 20)
        assert [m.payload for m in messages] == payloads(20)
        assert all(m.qos == 1 and not m.duplicate for m in messages)
        assert all(m.topic == f"devices/{device.username}/telemetry" for m in messages)
        client.ack_many(messages)
    async with MqttClient(options) as client:
        assert client.session_present
        assert await next_after(client, broker, device) == []


async def test_acks_sent_just_before_disconnect_survive_an_immediate_reconnect(
    broker: Mosquitto,
) -> None:
    """disconnect() returns only when the broker has read everything: a takeover loses nothing."""
    device = broker.add_user(unique("sensor"))
    options = gateway_options(
        broker, unique("gw"), [(f"devices/{device.username}/#", 1)], receive_maximum=10
    )
    async with MqttClient(options):
        pass
    await publish(broker, device, payloads(300))  # a backlog: the broker is busy sending
    async with MqttClient(options) as client:
        received: list[Message] = []
        async with asyncio.timeout(WAIT):
            while len(received) < 300:
                batch = await client.receive()
                client.ack_many(batch)
                received += batch
    async with MqttClient(options) as client:
        assert await next_after(client, broker, device) == []


async def test_persistent_session_redelivers_exactly_the_unacked(broker: Mosquitto) -> None:
    device = broker.add_user(unique("sensor"))
    options = gateway_options(broker, unique("gw"), [(f"devices/{device.username}/#", 1)])
    async with MqttClient(options) as client:
        await publish(broker, device, payloads(30))
        messages = await collect(client, 30)
        client.ack_many(messages[:12])
    async with MqttClient(options) as client:
        redelivered = await next_after(client, broker, device)
        assert [m.payload for m in redelivered] == payloads(30)[12:]
        assert all(m.duplicate for m in redelivered)


async def test_out_of_order_acks_put_pubacks_on_the_wire_in_receive_order(
    broker: Mosquitto,
) -> None:
    """Acks for m3..m9 and m0, m1 but not m2: only m0 and m1 may be acked on the wire."""
    device = broker.add_user(unique("sensor"))
    async with Relay(broker) as relay:
        options = gateway_options(
            broker, unique("gw"), [(f"devices/{device.username}/#", 1)], port=relay.port
        )
        async with MqttClient(options) as client:
            await publish(broker, device, payloads(10))
            m = await collect(client, 10)
            client.ack_many(reversed(m[3:]))
            client.ack(m[0])
            client.ack(m[1])
            await asyncio.sleep(0.2)  # the acks that may go out have gone out
            generation = client.generation
            relay.cut()  # no DISCONNECT, no chance to send anything more
            redelivered = await next_after(client, broker, device)
            assert client.generation > generation  # it reconnected by itself
            assert [x.payload for x in redelivered] == payloads(10)[2:]
            client.ack_many(m)  # acks from the dead connection are ignored, not sent
            client.ack_many(redelivered)
        async with MqttClient(options) as client:
            assert await next_after(client, broker, device) == []


async def test_shared_subscription_splits_messages_between_two_clients(broker: Mosquitto) -> None:
    device = broker.add_user(unique("sensor"))
    group = unique("share")
    shared = [(f"$share/{group}/devices/{device.username}/#", 1)]
    first = MqttClient(gateway_options(broker, unique("gw-a"), shared))
    second = MqttClient(gateway_options(broker, unique("gw-b"), shared))
    received: dict[str, list[bytes]] = {"a": [], "b": []}
    everything = asyncio.Event()

    async def drain(name: str, client: MqttClient) -> None:
        while True:
            batch = await client.receive()
            received[name] += [m.payload for m in batch]
            client.ack_many(batch)
            if len(received["a"]) + len(received["b"]) >= 100:
                everything.set()

    async with first, second:
        tasks = [asyncio.create_task(drain("a", first)), asyncio.create_task(drain("b", second))]
        await publish(broker, device, payloads(100))
        async with asyncio.timeout(WAIT):
            await everything.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert received["a"] and received["b"]
    assert sorted(received["a"] + received["b"]) == sorted(payloads(100))


async def test_keep_alive_holds_an_idle_connection(broker: Mosquitto) -> None:
    device = broker.add_user(unique("sensor"))
    options = gateway_options(
        broker, unique("gw"), [(f"devices/{device.username}/#", 1)], keep_alive=1
    )
    async with MqttClient(options) as client:
        generation = client.generation
        await asyncio.sleep(4)  # four keep-alive periods without a single message
        assert client.connected
        assert client.generation == generation  # never dropped, never reconnected
        await publish(broker, device, [b"after the idle time"])
        (message,) = await collect(client, 1)
        assert message.payload == b"after the idle time"
        client.ack(message)


async def test_silent_broker_is_declared_dead_and_replaced(broker: Mosquitto) -> None:
    device = broker.add_user(unique("sensor"))
    async with Relay(broker) as relay:
        options = gateway_options(
            broker,
            unique("gw"),
            [(f"devices/{device.username}/#", 1)],
            port=relay.port,
            keep_alive=1,
        )
        changes: list[bool] = []
        reconnected = asyncio.Event()

        def on_change(connected: bool) -> None:
            changes.append(connected)
            if changes[:3] == [True, False, True]:
                reconnected.set()

        async with MqttClient(options, on_connection_change=on_change) as client:
            generation = client.generation
            relay.freeze()  # the socket stays open; nothing moves either way
            async with asyncio.timeout(WAIT):
                await reconnected.wait()
            assert client.generation > generation
            assert await next_after(client, broker, device) == []


async def test_broker_restart_resumes_the_persistent_session(broker: Mosquitto) -> None:
    device = broker.add_user(unique("sensor"))
    options = gateway_options(broker, unique("gw"), [(f"devices/{device.username}/#", 1)])
    async with MqttClient(options) as client:
        await publish(broker, device, payloads(5))
        first = await collect(client, 5)
        client.ack_many(first[:2])
        await asyncio.sleep(0.2)  # the two PUBACKs reach the broker before it stops
        generation = client.generation
        await broker.restart()
        redelivered = await next_after(client, broker, device)
        assert client.generation > generation and client.connected
        assert client.session_present
        assert [m.payload for m in redelivered] == payloads(5)[2:]
        client.ack_many(redelivered)


async def test_receive_maximum_bounds_unacked_messages_in_flight(broker: Mosquitto) -> None:
    device = broker.add_user(unique("sensor"))
    options = gateway_options(
        broker, unique("gw"), [(f"devices/{device.username}/#", 1)], receive_maximum=10
    )
    async with MqttClient(options) as client:
        await publish(broker, device, payloads(30))
        held = await collect(client, 10)
        assert len(held) == 10
        # Nothing more may come while these ten are unacked: an "at most" check, so waiting
        # longer can only make it stricter.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1):
                held += await client.receive()
        assert len(held) == 10
        # Mosquitto 2.0.11 keeps the limit only until the first PUBACK: each ack then releases
        # up to receive_maximum more. The client holds the excess unparsed, so the bound holds.
        everything = list(held)
        while len(everything) < 30:
            client.ack_many(held)
            held = await collect(client, 10)
            assert len(held) <= 10
            everything += held
        client.ack_many(held)
    assert [m.payload for m in everything] == payloads(30)


async def test_tls_with_the_right_ca_connects(broker: Mosquitto) -> None:
    assert broker.tls_port is not None
    device = broker.add_user(unique("sensor"))
    context = ssl.create_default_context(cafile=str(broker.ca_file))
    options = gateway_options(
        broker,
        unique("gw"),
        [(f"devices/{device.username}/#", 1)],
        port=broker.tls_port,
        ssl=context,
    )
    async with MqttClient(options) as client:
        await publish(broker, device, [b"over tls"])
        (message,) = await collect(client, 1)
        assert message.payload == b"over tls"
        client.ack(message)


async def test_tls_without_the_ca_fails_cleanly(broker: Mosquitto) -> None:
    assert broker.tls_port is not None
    options = gateway_options(
        broker, unique("gw"), [], port=broker.tls_port, ssl=ssl.create_default_context()
    )
    with pytest.raises(MqttConnectError, match="certificate verify failed") as raised:
        async with asyncio.timeout(WAIT), MqttClient(options):
            pass
    assert not raised.value.retriable
    assert raised.value.reason_code is None
