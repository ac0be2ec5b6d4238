"""`gateway demo`'s options, its fleet and routes, and the commands it prints, which must run
as printed."""

from __future__ import annotations

import dataclasses
import shlex
import sysconfig
from pathlib import Path

import pytest

from gateway.cli.demo import (
    PACKED_STREAM,
    DemoOptions,
    demo_fleets,
    demo_names,
    demo_routes,
    environment_devices,
    gateway_command,
    hold_commands,
)
from gateway.cli.main import parser
from gateway.config import load_config
from gateway.services.amqtt import Amqtt

REPOSITORY = Path(__file__).parents[2]


def test_help_shows_every_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["demo", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for default in ["(default: 50)", "(default: 2000)", "(default: 10)", "(default: 1)"]:
        assert default in out
    assert "(default: auto)" in out


def test_the_parser_defaults_are_the_demos() -> None:
    args = parser().parse_args(["demo"])
    for field in ["devices", "rate", "duration", "readings", "hold", "broker"]:
        assert getattr(args, field) == getattr(DemoOptions(), field), field
    assert {f.name for f in dataclasses.fields(DemoOptions)} >= {"devices", "hold", "broker"}


def test_outside_the_virtualenv_the_commands_activate_it_first(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    scripts = Path(sysconfig.get_path("scripts"))
    if not (scripts / "activate").exists():
        pytest.fail(f"the tests run in a virtualenv with an activate script, not {scripts}")
    monkeypatch.chdir(scripts.parents[1])
    monkeypatch.setenv("PATH", str(tmp_path))
    assert gateway_command() == (f". {scripts.relative_to(Path.cwd())}/activate", "gateway")
    monkeypatch.setenv("PATH", str(scripts))
    assert gateway_command() == (None, "gateway")


def test_held_services_are_queried_by_commands_that_name_everything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(REPOSITORY)
    dsn = "postgresql://postgres:s3cret@127.0.0.1:5555/postgres"
    lines = hold_commands(dsn, "http://127.0.0.1:9/metrics", REPOSITORY / "config/roles.toml")
    assert f"export GATEWAY_ADMIN_DSN={dsn}" in lines
    assert any(line.endswith(" roles plan") for line in lines)
    psql = next(shlex.split(line)[0] for line in lines if "psql" in line)
    assert Path(psql).name == "psql" and (REPOSITORY / psql).exists()  # the wheel's own client


def test_the_demo_runs_the_example_routes_and_one_more_for_messagepack() -> None:
    example = load_config(REPOSITORY / "config/gateway.toml").routes
    routes = demo_routes()
    assert routes[:-1] == example
    assert {route.kind for route in routes} == {"telemetry", "table", "state"}
    (packed,) = (route for route in routes if route.format == "msgpack")
    (env,) = (route for route in example if route.stream == "env")
    assert (packed.stream, packed.columns) == (PACKED_STREAM, env.columns)


@pytest.mark.parametrize(("sensors", "environment"), [(1, 2), (10, 2), (20, 4), (50, 10)])
def test_environment_sensors_beside_the_sensors(sensors: int, environment: int) -> None:
    assert environment_devices(sensors) == environment
    names = demo_names(DemoOptions(devices=sensors))
    assert len(set(names)) == len(names) == sensors + environment
    assert names[sensors:] == [f"env-{i:04d}" for i in range(environment)]


def test_every_demo_device_publishes_on_a_routed_stream() -> None:
    options = DemoOptions(devices=10)
    fleets = demo_fleets(options, Amqtt(), dict.fromkeys(demo_names(options), "p"))
    routed = {route.stream for route in demo_routes()}
    for fleet in fleets.fleets.values():
        fleet_options = fleet.options
        for index, name in enumerate(fleet_options.names()):
            stream = fleet_options.topic(name, fleet_options.packs(index)).split("/")[2]
            assert stream in routed, name
    assert [f.options.shape for f in fleets.fleets.values()] == ["telemetry", "environment"]
