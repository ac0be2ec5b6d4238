"""Connect, subscribe and reconnect decisions of MqttClient, against a scripted fake broker.

Mosquitto cannot be made to answer every reason code (it says "not authorized" for a bad
password, for instance), so a small loopback server plays the broker here, one script per test.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import mqtt5
import pytest

from gateway.config import MqttSourceConfig
from gateway.errors import MqttConnectError, MqttError, MqttSubscribeError
from gateway.sources.mqtt import MqttClient, MqttOptions, MqttSource
from gateway.sources.mqtt.options import DEFAULT_PACKET_LIMIT, PACKET_HEADROOM, packet_limit

Script = Callable[["BrokerConnection"], Awaitable[None]]


class BrokerConnection:
    """One client connection to the fake broker: read packets, write packets."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._buffer = b""

    async def read(self) -> mqtt5.Packet:
        while True:
            try:
                packet, size = mqtt5.read(memoryview(self._buffer))
            except IndexError:
                chunk = await self.reader.read(65536)
                if not chunk:
                    raise EOFError from None
                self._buffer += chunk
                continue
            self._buffer = self._buffer[size:]
            if isinstance(packet, mqtt5.DisconnectPacket):
                raise EOFError  # a broker closes the connection on DISCONNECT
            return packet

    async def send(self, *packets: mqtt5.Packet) -> None:
        self.writer.write(b"".join(p.write() for p in packets))
        await self.writer.drain()

    async def accept(self, *, session_present: bool = False) -> mqtt5.ConnectPacket:
        connect = await self.read()
        assert isinstance(connect, mqtt5.ConnectPacket)
        await self.send(mqtt5.ConnAckPacket(session_present=session_present))
        return connect

    async def grant(self) -> None:
        subscribe = await self.read()
        assert isinstance(subscribe, mqtt5.SubscribePacket)
        codes = [mqtt5.SubAckReasonCode(int(f.max_qos)) for f in subscribe.topic_filters]
        await self.send(mqtt5.SubAckPacket(subscribe.packet_id, codes))


class FakeBroker:
    """Runs the next script for each new connection; the last one repeats."""

    def __init__(self, *scripts: Script) -> None:
        self.scripts = list(scripts)
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._run_script(reader, writer)
        finally:
            self._handlers.discard(task)

    async def _run_script(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        script = self.scripts[min(self.connections, len(self.scripts) - 1)]
        self.connections += 1
        try:
            with contextlib.suppress(EOFError, ConnectionError):
                await script(BrokerConnection(reader, writer))
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def __aenter__(self) -> FakeBroker:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        # Python 3.11's Server does not close the connections it accepted: cancel their scripts.
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()


def options(port: int, **overrides: object) -> MqttOptions:
    settings: dict[str, object] = {
        "client_id": "unit",
        "port": port,
        "username": "gateway",
        "password": "secret",
        "subscriptions": [("devices/#", 1)],
        "reconnect_min_delay": 0.01,
        "reconnect_max_delay": 0.05,
        "connect_timeout": 5,
    }
    settings.update(overrides)
    return MqttOptions(**settings)  # type: ignore[arg-type]


def refuse(code: mqtt5.ConnAckReasonCode) -> Script:
    async def script(conn: BrokerConnection) -> None:
        await conn.read()
        await conn.send(mqtt5.ConnAckPacket(reason_code=code))

    return script


async def serve_forever(conn: BrokerConnection) -> None:
    await conn.accept()
    await conn.grant()
    while True:
        await conn.read()


@contextlib.asynccontextmanager
async def broker(*scripts: Script) -> AsyncIterator[FakeBroker]:
    async with FakeBroker(*scripts) as fake:
        yield fake


async def test_bad_credentials_are_a_clear_final_error() -> None:
    async with broker(refuse(mqtt5.ConnAckReasonCode.BAD_USER_NAME_OR_PASSWORD)) as fake:
        client = MqttClient(options(fake.port))
        with pytest.raises(MqttConnectError) as raised:
            await client.start()
    assert str(raised.value) == "broker refused connection: bad user name or password (134)"
    assert raised.value.reason_code == mqtt5.ConnAckReasonCode.BAD_USER_NAME_OR_PASSWORD
    assert not raised.value.retriable
    assert fake.connections == 1  # not retried
    with pytest.raises(MqttConnectError):
        await client.receive()


async def test_busy_broker_is_retried_until_it_accepts() -> None:
    busy = refuse(mqtt5.ConnAckReasonCode.SERVER_UNAVAILABLE)
    async with broker(busy, busy, serve_forever) as fake, MqttClient(options(fake.port)) as client:
        assert client.connected
        assert fake.connections == 3
        assert client.generation == 3


async def test_unreachable_broker_is_retried_and_start_can_be_abandoned() -> None:
    async with broker(serve_forever) as fake:
        port = fake.port
    client = MqttClient(options(port))
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await client.start()
    assert client.generation > 1
    assert not client.connected


async def test_refused_subscription_is_a_clear_final_error() -> None:
    async def script(conn: BrokerConnection) -> None:
        await conn.accept()
        subscribe = await conn.read()
        assert isinstance(subscribe, mqtt5.SubscribePacket)
        codes = [
            mqtt5.SubAckReasonCode.GRANTED_QOS_AT_LEAST_ONCE,
            mqtt5.SubAckReasonCode.NOT_AUTHORIZED,
        ]
        await conn.send(mqtt5.SubAckPacket(subscribe.packet_id, codes))
        await conn.read()

    subscriptions = [("devices/#", 1), ("$share/g/secret/#", 1)]
    async with broker(script) as fake:
        with pytest.raises(MqttSubscribeError) as raised:
            async with MqttClient(options(fake.port, subscriptions=subscriptions)):
                pass
    assert str(raised.value) == (
        "broker refused subscription: $share/g/secret/# (not authorized (135))"
    )
    assert raised.value.refused == (("$share/g/secret/#", 135),)
    assert not raised.value.retriable


async def test_connect_packet_asks_for_a_persistent_session() -> None:
    seen: list[mqtt5.ConnectPacket] = []

    async def script(conn: BrokerConnection) -> None:
        seen.append(await conn.accept())
        await conn.grant()
        await conn.read()

    async with broker(script) as fake:
        opts = options(fake.port, receive_maximum=77, keep_alive=9, session_expiry_interval=600)
        async with MqttClient(opts):
            pass
    (connect,) = seen
    assert (connect.client_id, connect.username, connect.password) == ("unit", "gateway", b"secret")
    assert not connect.clean_start
    assert (connect.receive_max, connect.keep_alive, connect.session_expiry_interval) == (
        77,
        9,
        600,
    )


async def test_broker_disconnect_reconnects_and_old_acks_are_ignored() -> None:
    first_done = asyncio.Event()
    acks_on_second: list[int] = []

    async def first(conn: BrokerConnection) -> None:
        await conn.accept()
        await conn.grant()
        await conn.send(
            mqtt5.PublishPacket("devices/a/t", b"1", qos=mqtt5.QoS.AT_LEAST_ONCE, packet_id=1)
        )
        await first_done.wait()
        await conn.send(
            mqtt5.DisconnectPacket(reason_code=mqtt5.DisconnectReasonCode.SERVER_SHUTTING_DOWN)
        )

    async def second(conn: BrokerConnection) -> None:
        await conn.accept(session_present=True)
        await conn.grant()
        await conn.send(
            mqtt5.PublishPacket(
                "devices/a/t", b"1", qos=mqtt5.QoS.AT_LEAST_ONCE, packet_id=5, duplicate=True
            )
        )
        while True:
            packet = await conn.read()
            if isinstance(packet, mqtt5.PubAckPacket):
                acks_on_second.append(packet.packet_id)

    changes: list[bool] = []
    async with (
        broker(first, second) as fake,
        MqttClient(options(fake.port), on_connection_change=changes.append) as client,
    ):
        (old,) = await client.receive()
        first_done.set()
        (again,) = await client.receive()
        assert again.duplicate and again.generation > old.generation
        assert client.session_present
        client.ack(old)  # its packet id means nothing on the new connection
        client.ack(again)
        await asyncio.sleep(0.05)
    assert acks_on_second == [5]
    assert changes == [True, False, True, False]


async def test_receive_after_disconnect_says_closed() -> None:
    async with broker(serve_forever) as fake:
        client = MqttClient(options(fake.port))
        async with client:
            waiting = asyncio.create_task(client.receive())
            await asyncio.sleep(0.01)
        with pytest.raises(MqttError, match="closed"):
            await waiting


async def test_a_failing_observer_does_not_break_the_connection() -> None:
    def observer(connected: bool) -> None:
        raise RuntimeError("observer bug")

    async with (
        broker(serve_forever) as fake,
        MqttClient(options(fake.port), on_connection_change=observer) as client,
    ):
        assert client.connected


async def test_an_internal_failure_is_raised_not_hung(monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(self: MqttClient) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(MqttClient, "_connect_once", broken)
    client = MqttClient(options(1883))
    with pytest.raises(MqttError, match="the MQTT client failed: RuntimeError"):
        await client.start()
    with pytest.raises(MqttError, match="the MQTT client failed"):
        await client.receive()


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({"client_id": ""}, "client_id"),
        ({"subscriptions": [("devices/#/x", 1)]}, "'#' must be a whole last level"),
        ({"subscriptions": [("devices/a+", 1)]}, r"'\+' must be a whole level"),
        ({"subscriptions": [("$share//devices/#", 1)]}, "share name"),
        ({"subscriptions": [("$share/g", 1)]}, "no topic filter"),
        ({"subscriptions": [("devices/#", 2)]}, "QoS 2 is not supported"),
        ({"receive_maximum": 0}, "receive_maximum"),
        ({"max_packet_size": 63}, "max_packet_size"),
        ({"max_packet_size": 268_435_461}, "max_packet_size"),
        ({"reconnect_min_delay": 5, "reconnect_max_delay": 1}, "reconnect delays"),
        ({"server_hostname": "localhost"}, "only meaningful with ssl"),
    ],
)
def test_bad_options_are_refused_at_construction(
    overrides: dict[str, object], complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        options(1883, **overrides)


async def test_connect_advertises_the_packet_limit_of_the_payload_limit() -> None:
    """Maximum Packet Size (property 0x27) in the encoded CONNECT: payload limit plus headroom."""
    seen: list[bytes] = []

    async def script(conn: BrokerConnection) -> None:
        seen.append(bytes(await conn.reader.read(65536)))
        await conn.send(mqtt5.ConnAckPacket())
        await conn.grant()
        await conn.read()

    config = MqttSourceConfig(client_id="unit", port=1883)
    async with broker(script) as fake:
        source = MqttSource(config.model_copy(update={"port": fake.port}), max_payload_bytes=1000)
        await source.start()
        await source.close()
    (wire,) = seen
    assert b"\x27" + (1000 + PACKET_HEADROOM).to_bytes(4, "big") in wire
    connect, size = mqtt5.read(memoryview(wire))
    assert isinstance(connect, mqtt5.ConnectPacket) and size == len(wire)
    assert connect.max_packet_size == 1000 + PACKET_HEADROOM == packet_limit(1000)
    # The default payload limit (256 KiB) gives 266,240 bytes, what deploy/ configures too.
    assert MqttOptions(client_id="x").max_packet_size == DEFAULT_PACKET_LIMIT == 266_240
