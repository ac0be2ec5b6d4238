"""`gateway demo`'s options and the commands it prints, which must run as printed."""

from __future__ import annotations

import dataclasses
import shlex
import sysconfig
from pathlib import Path

import pytest

from gateway.cli.demo import DemoOptions, gateway_command, hold_commands
from gateway.cli.main import parser

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
