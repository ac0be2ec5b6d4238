"""The simulated fleet against a real Mosquitto, checked by a subscriber as the gateway user.

Each test publishes on a stream of its own, so the shared broker's other traffic never counts.
The subscriber knows it has everything when a marker arrives that was published after the
fleet's last PUBACK: Mosquitto routes a publish to its subscribers before it answers it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiomqtt
import mqtt5
import orjson
import pytest

from gateway.cli.simulate import register
from gateway.fleet.common import FleetError
from gateway.fleet.mqtt import Fleet, run_fleet
from gateway.fleet.options import FleetOptions
from gateway.fleet.report import FleetReport
from gateway.services.mosquitto import Mosquitto, MqttUser

V5 = aiomqtt.ProtocolVersion.V5
WAIT = 60  # seconds: generous bounds for a loaded 2-core machine, never a performance claim
MARKER = b"marker"
_ids = itertools.count()


@dataclass
class Arrivals:
    """What the subscriber saw: parsed bodies by topic identity, and unparseable ones."""

    valid: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    malformed: list[tuple[str, bytes]] = field(default_factory=list)


def fleet_options(broker: Mosquitto, **changes: object) -> FleetOptions:
    """Options for a fleet of its own: a fresh prefix and stream, a password for every device."""
    run = next(_ids)
    settings: dict[str, object] = {
        "host": broker.host,
        "port": broker.port,
        "devices": 10,
        "prefix": f"sim{run}-",
        "password": "device-secret",
        "stream": f"t{run}",
        "count": 500,
        **changes,
    }
    options = FleetOptions(**settings)  # type: ignore[arg-type]
    if options.credentials is None:
        broker.add_users([MqttUser(name, "device-secret") for name in options.names()])
    return options


async def wait_for_users(broker: Mosquitto, options: FleetOptions) -> None:
    """Mosquitto reloads its password file on SIGHUP, asynchronously: wait until it has."""
    name = options.names()[-1]
    async with asyncio.timeout(WAIT):
        while True:
            try:
                async with client(broker, MqttUser(name, options.password_for(name))):
                    return
            except aiomqtt.MqttError:
                await asyncio.sleep(0.05)


def client(broker: Mosquitto, user: MqttUser) -> aiomqtt.Client:
    return aiomqtt.Client(
        broker.host,
        broker.port,
        username=user.username,
        password=user.password,
        protocol=V5,
        # A device's account is bound to its name; the shared gateway account to none.
        identifier=(f"gateway-{secrets.token_hex(3)}" if user == broker.gateway else user.username),
    )


@pytest.fixture
async def subscriber(mosquitto: Mosquitto) -> AsyncIterator[aiomqtt.Client]:
    async with client(mosquitto, mosquitto.gateway) as gateway:
        yield gateway


async def observe(
    broker: Mosquitto, gateway: aiomqtt.Client, options: FleetOptions
) -> tuple[FleetReport, Arrivals]:
    """Run the fleet with `gateway` subscribed to its stream; collect until the marker."""
    await wait_for_users(broker, options)
    await gateway.subscribe(f"devices/+/{options.stream}", qos=1)
    report = await run_fleet(options)
    name = options.names()[0]
    async with client(broker, MqttUser(name, options.password_for(name))) as device:
        await device.publish(options.topic(name), MARKER, qos=1)
    arrivals = Arrivals()
    async with asyncio.timeout(WAIT):
        async for message in gateway.messages:
            identity = str(message.topic).split("/")[1]
            payload = message.payload
            assert isinstance(payload, bytes)
            if payload == MARKER:
                break
            try:
                arrivals.valid.append((identity, orjson.loads(payload)))
            except orjson.JSONDecodeError:
                arrivals.malformed.append((identity, payload))
    await gateway.unsubscribe(f"devices/+/{options.stream}")
    return report, arrivals


def assert_from_own_devices(options: FleetOptions, arrivals: Arrivals) -> None:
    """Every arrival sits under the topic of the device that sent it: no spoof got through."""
    for identity, body in arrivals.valid:
        _run, index, _seq = str(body["id"]).split("-")[-3:]
        assert identity == options.name(int(index))
    for identity, raw in arrivals.malformed:
        message_id = raw.split(b'"id":"', 1)[1].split(b'"', 1)[0]
        assert identity == options.name(int(message_id.split(b"-")[-2]))


async def test_valid_malformed_and_spoofed_messages(
    mosquitto: Mosquitto, subscriber: aiomqtt.Client
) -> None:
    options = fleet_options(mosquitto, count=2000, malformed=0.05, spoofed=0.05)
    report, arrivals = await observe(mosquitto, subscriber, options)

    assert report.ok, report.problems()
    assert (report.sent, report.malformed_sent, report.spoofed_sent) == (2000, 100, 100)
    assert report.kinds["spoofed"].refused == 100  # PUBACK 135, not authorized
    assert report.reasons.get(135) == 100
    assert report.acked == 1900 and report.unanswered == 0
    expected = report.expected()
    assert len(arrivals.valid) == expected["valid_messages"] == 1800
    assert len(arrivals.malformed) == expected["malformed_messages"] == 100
    ids = [body["id"] for _, body in arrivals.valid]
    assert len(set(ids)) == len(ids)
    assert_from_own_devices(options, arrivals)
    for _, body in arrivals.valid:
        assert set(body) == {"id", "ts", "metric", "value", "tags"}


async def test_batches_and_two_processes(mosquitto: Mosquitto, subscriber: aiomqtt.Client) -> None:
    options = fleet_options(
        mosquitto, devices=6, count=1200, readings=4, spoofed=0.1, malformed=0.02, processes=2
    )
    report, arrivals = await observe(mosquitto, subscriber, options)

    assert report.ok, report.problems()
    assert (report.processes, report.devices, report.sent) == (2, 6, 1200)
    assert report.kinds["spoofed"].refused == report.spoofed_sent > 0
    assert len(arrivals.valid) == report.expected()["valid_messages"]
    assert len(arrivals.malformed) == report.expected()["malformed_messages"] > 0
    rows = sum(len(body["readings"]) for _, body in arrivals.valid)
    assert rows == report.expected()["rows"] == 4 * len(arrivals.valid)
    assert len({body["id"] for _, body in arrivals.valid}) == len(arrivals.valid)
    assert_from_own_devices(options, arrivals)
    senders = Counter(identity for identity, _ in arrivals.valid)
    assert set(senders) == set(options.names())  # both processes' devices published


async def test_mqtt_311_fleet(mosquitto: Mosquitto, subscriber: aiomqtt.Client) -> None:
    options = fleet_options(mosquitto, count=1000, malformed=0.05, spoofed=0.05, protocol="3.1.1")
    report, arrivals = await observe(mosquitto, subscriber, options)

    assert report.ok, report.problems()
    # MQTT 3.1.1 has no refusal: the broker acknowledges a spoof and drops it.
    assert (report.acked, report.refused, report.spoofed_sent) == (1000, 0, 50)
    assert len(arrivals.valid) == report.expected()["valid_messages"] == 900
    assert len(arrivals.malformed) == report.expected()["malformed_messages"] == 50
    assert_from_own_devices(options, arrivals)
    wrong = replace(options, password=None, credentials=dict.fromkeys(options.names(), "wrong"))
    with pytest.raises(FleetError, match=r"the broker refused the connection: not authorized"):
        await run_fleet(wrong)


async def test_qos0(mosquitto: Mosquitto, subscriber: aiomqtt.Client) -> None:
    options = fleet_options(mosquitto, count=300, qos=0)
    report, arrivals = await observe(mosquitto, subscriber, options)

    assert report.ok and report.sent == 300 and report.acked == 0 and report.unanswered == 0
    assert len(arrivals.valid) == 300


@pytest.mark.parametrize("processes", [1, 2])
async def test_bad_credentials_name_the_device(mosquitto: Mosquitto, processes: int) -> None:
    options = fleet_options(mosquitto, devices=4)
    await wait_for_users(mosquitto, options)
    credentials = {name: "device-secret" for name in options.names()}
    credentials[options.name(3)] = "wrong"
    wrong = replace(options, password=None, credentials=credentials, processes=processes)
    with pytest.raises(
        FleetError,
        match=rf"^{options.name(3)}: the broker refused the connection: "
        # Mosquitto 2.0.11 answers a wrong password with 135 rather than 134.
        r"(bad user name or password \(134\)|not authorized \(135\))$",
    ):
        await run_fleet(wrong)


async def test_unreachable_broker(mosquitto: Mosquitto) -> None:
    options = FleetOptions(port=1, devices=2, password="x", count=1)
    with pytest.raises(
        FleetError,
        match=r"^sensor-0000: cannot reach the broker at 127.0.0.1:1: Connection refused",
    ):
        await run_fleet(options)


async def test_rate_limit_roughly_holds(mosquitto: Mosquitto) -> None:
    options = fleet_options(mosquitto, count=300, rate=300)
    await wait_for_users(mosquitto, options)
    report = await run_fleet(options)
    assert report.ok and report.sent == 300
    assert 0.7 < report.duration < 10  # a second at 300/s; loose, a busy machine only slows it


async def test_duration_and_stop(mosquitto: Mosquitto) -> None:
    options = fleet_options(mosquitto, count=None, duration=1.0, rate=200)
    await wait_for_users(mosquitto, options)
    report = await run_fleet(options)
    assert report.ok and 50 < report.sent <= 200 + 10

    fleet = Fleet(replace(options, duration=None))
    running = asyncio.create_task(fleet.run())
    await asyncio.sleep(1)  # connecting, then publishing at 200/s until stopped
    fleet.stop()
    stopped = await asyncio.wait_for(running, WAIT)
    assert stopped.ok and stopped.acked == stopped.sent > 0
    assert fleet.progress() == (stopped.sent, stopped.acked, 0)


async def test_command(
    mosquitto: Mosquitto, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    options = fleet_options(mosquitto, devices=3)
    await wait_for_users(mosquitto, options)
    credentials = tmp_path / "fleet.txt"
    credentials.write_text("".join(f"{name}:device-secret\n" for name in options.names()))
    args = parse_command(
        *("--port", str(mosquitto.port), "--devices", "3", "--prefix", options.prefix),
        *("--credentials", str(credentials), "--count", "60", "--spoofed", "0.1", "--json"),
    )
    assert await args.handler(args) == 0
    summary = orjson.loads(capsys.readouterr().out)
    assert summary["sent"] == 60 and summary["spoofed_sent"] == 6 and summary["refused"] == 6
    assert summary["ok"] is True
    assert summary["expected"] == {
        "valid_messages": 54,
        "rows": 54,
        "malformed_messages": 0,
        "spoofed_messages": 0,
    }
    assert set(summary) >= {"acked", "malformed_sent", "duration", "rate", "kinds", "reasons"}

    args = parse_command(
        *("--port", str(mosquitto.port), "--prefix", "nobody-", "--password", "x"),
        *("--count", "1"),
    )
    with pytest.raises(FleetError, match="nobody-0000: the broker refused the connection"):
        await args.handler(args)


class FakeBroker:
    """Accepts every CONNECT, then never answers a PUBLISH, or hangs up at the first one.

    Like a real broker it closes the connection on DISCONNECT.
    """

    def __init__(self, *, hang_up: bool) -> None:
        self.hang_up = hang_up
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> FakeBroker:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = b""
        connected = False
        while data := await reader.read(65536):
            buffer += data
            while True:
                try:
                    packet, size = mqtt5.read(memoryview(buffer))
                except IndexError:
                    break
                buffer = buffer[size:]
                if isinstance(packet, mqtt5.ConnectPacket) and not connected:
                    connected = True
                    writer.write(mqtt5.ConnAckPacket().write())
                elif isinstance(packet, mqtt5.PublishPacket) and self.hang_up:
                    writer.transport.abort()
                    return
                elif isinstance(packet, mqtt5.DisconnectPacket):
                    writer.close()
                    return
        writer.close()


async def test_unanswered_messages_fail_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    async with FakeBroker(hang_up=False) as broker:
        args = parse_command(
            *("--port", str(broker.port), "--devices", "2", "--password", "x"),
            *("--count", "10", "--drain-timeout", "0.5"),
        )
        assert await args.handler(args) == 1
    captured = capsys.readouterr()
    assert "gateway simulate: 10 of 10 messages got no PUBACK" in captured.err
    assert "answered    0 acked, 0 refused, 10 unanswered" in captured.out


async def test_a_dropped_connection_is_reported() -> None:
    async with FakeBroker(hang_up=True) as broker:
        report = await run_fleet(FleetOptions(port=broker.port, devices=2, password="x", count=4))
    errors = sorted(report.errors)
    assert len(errors) == 2
    for name, error in zip(("sensor-0000", "sensor-0001"), errors, strict=True):
        assert error.startswith(f"{name}: connection lost")  # perhaps with the reset's errno
    assert report.unanswered == 4 and not report.ok


def parse_command(*argv: str) -> argparse.Namespace:
    root = argparse.ArgumentParser()
    register(root.add_subparsers(dest="command", required=True))
    return root.parse_args(["simulate", *argv])
