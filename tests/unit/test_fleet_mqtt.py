"""The MQTT fleet's pure parts: quotas, names and topics, options, credentials, command line."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from gateway.cli.simulate import options_from_args, register
from gateway.fleet.common import FleetError, device_quota, load_credentials
from gateway.fleet.options import FleetOptions
from gateway.validation import ConfigError


def test_quotas_spread_the_count_over_devices() -> None:
    quotas = [device_quota(1003, 10, i) for i in range(10)]
    assert quotas == [101, 101, 101] + [100] * 7
    assert device_quota(None, 10, 0) is None


def test_names_topics_and_victims() -> None:
    options = FleetOptions(devices=3, prefix="s-", password="p", stream="events")
    assert options.names() == ["s-0000", "s-0001", "s-0002"]
    assert options.topic("s-0001") == "devices/s-0001/events"
    assert [options.victim(i) for i in range(3)] == ["s-0001", "s-0002", "s-0000"]
    assert FleetOptions(devices=1, password="p").victim(0) == "sensor-0001"
    assert FleetOptions(devices=12_345, password="p").name(7) == "sensor-00007"


def test_a_mixed_firmware_fleet_packs_every_other_device_on_its_own_stream() -> None:
    options = FleetOptions(devices=3, prefix="env-", password="p", stream="env")
    assert not any(options.packs(i) for i in range(3))
    options = FleetOptions(
        devices=3, prefix="env-", password="p", stream="env", packed_stream="envpack"
    )
    assert [options.packs(i) for i in range(3)] == [False, True, False]
    assert options.topic("env-0001", packed=True) == "devices/env-0001/envpack"
    assert options.topic("env-0000") == "devices/env-0000/env"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"devices": 0}, "devices must be at least 1"),
        ({"processes": 11}, "processes must be between"),
        ({"malformed": 0.7, "spoofed": 0.4}, "must not exceed 1"),
        ({"spoofed": -0.1}, "shares between 0 and 1"),
        ({"qos": 2}, "qos must be 0 or 1"),
        ({"window": 70_000}, "window must be between"),
        ({"readings": 0}, "readings must be at least 1"),
        ({"stream": "a/b"}, "a stream must be one topic level"),
        ({"packed_stream": "a/+"}, "a stream must be one topic level"),
        ({"shape": "wide"}, "shape must be one of telemetry, environment"),
        ({"password": None}, "give a password or credentials"),
        ({"password": None, "credentials": {"sensor-0000": "x"}}, "for 9: sensor-0001"),
    ],
)
def test_invalid_options_are_refused(changes: dict[str, object], message: str) -> None:
    settings: dict[str, object] = {"devices": 10, "password": "p", **changes}
    with pytest.raises(FleetError, match=message):
        FleetOptions(**settings)  # type: ignore[arg-type]


def test_a_template_without_identity_is_refused() -> None:
    with pytest.raises(ConfigError, match="identity"):
        FleetOptions(password="p", topic_template="devices/{stream}")


def test_credentials_file(tmp_path: Path) -> None:
    path = tmp_path / "creds"
    path.write_text("# fleet\nsensor-0000:pa:ss\n\nsensor-0001: two\n")
    assert load_credentials(path) == {"sensor-0000": "pa:ss", "sensor-0001": " two"}
    path.write_text("sensor-0000:x\nno-password-here\n")
    with pytest.raises(FleetError, match=r"creds:2: expected `name:password`"):
        load_credentials(path)
    with pytest.raises(FleetError, match="cannot read credentials file"):
        load_credentials(tmp_path / "missing")


def parse(*argv: str) -> argparse.Namespace:
    root = argparse.ArgumentParser()
    register(root.add_subparsers(dest="command", required=True))
    return root.parse_args(["simulate", *argv])


def test_command_line_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_SECRET", "s3cret")
    args = parse(
        *("--port", "1884", "--devices", "5", "--prefix", "m-", "--password-env", "FLEET_SECRET"),
        *("--rate", "100", "--count", "50", "--readings", "3", "--malformed", "0.1"),
        *("--spoofed", "0.2", "--qos", "0", "--processes", "2", "--stream", "events"),
    )
    options = options_from_args(args)
    assert (options.port, options.devices, options.prefix) == (1884, 5, "m-")
    assert options.password_for("m-0000") == "s3cret"
    assert (options.rate, options.count, options.duration, options.readings) == (100, 50, None, 3)
    assert (options.malformed, options.spoofed, options.qos, options.processes) == (
        0.1,
        0.2,
        0,
        2,
    )
    assert options.topic("m-0001") == "devices/m-0001/events"


def test_command_line_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_SECRET", raising=False)
    with pytest.raises(FleetError, match=r"\$NO_SUCH_SECRET is not set"):
        options_from_args(parse("--password-env", "NO_SUCH_SECRET"))
    creds = tmp_path / "creds"
    creds.write_text("d0000:pw0\nd0001:pw1\n")
    options = options_from_args(
        parse("--devices", "2", "--prefix", "d", "--credentials", str(creds))
    )
    assert options.password_for("d0001") == "pw1"
    with pytest.raises(FleetError, match="no password in the credentials for 2"):
        options_from_args(parse("--devices", "2", "--credentials", str(creds)))
    with pytest.raises(SystemExit):
        parse("--devices", "2")  # a password is required
