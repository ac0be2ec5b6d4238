"""The admin DSN on the command line: every database command takes it from a file as well, and a
password typed into `--dsn` earns a warning, since the process list shows it to every local user."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from gateway.cli.database import PASSWORD_WARNING, dsn_has_password, resolve_dsn
from gateway.cli.main import main, parser
from gateway.db import ADMIN_DSN_ENV, ADMIN_DSN_FILE_ENV

SECRET = "Kx9-unit-secret"


def _commands(
    node: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    found = [(path, node)]
    for action in node._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += _commands(child, (*path, name))
    return found


def _options(command: argparse.ArgumentParser) -> set[str]:
    return {flag for action in command._actions for flag in action.option_strings}


def test_every_command_that_takes_a_dsn_takes_a_dsn_file() -> None:
    with_dsn = [(path, cmd) for path, cmd in _commands(parser()) if "--dsn" in _options(cmd)]
    names = {" ".join(path) for path, _ in with_dsn}
    # The commands that reach the admin database, by area.
    assert {"migrate", "roles plan", "identities add", "brokers apply", "audit verify"} <= names
    for path, command in with_dsn:
        assert "--dsn-file" in _options(command), " ".join(path)


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://postgres:{SECRET}@127.0.0.1:5432/gateway",
        f"postgres://postgres:{SECRET}@db/gateway?sslmode=require",
        f"postgresql://me:{SECRET}@h1:5432,h2:5433/gateway",
        f"postgresql:///gateway?user=postgres&password={SECRET}",
        f"postgresql://db/gateway?sslmode=disable&password={SECRET}",
        # asyncpg splits at the first `@`: the rest of an unescaped password is the host.
        "postgresql://postgres:p@ss@db/gateway",
    ],
)
def test_a_password_in_the_dsn_is_seen(dsn: str) -> None:
    assert dsn_has_password(dsn)


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://postgres@127.0.0.1:5432/gateway",
        "postgresql://postgres:@db/gateway",
        "postgresql:///gateway?host=/run/postgresql",
        "postgresql://db/gateway?password=",
        "postgresql://db/gateway?passfile=/run/secrets/pgpass",
    ],
)
def test_a_dsn_without_a_password_is_left_alone(dsn: str) -> None:
    assert not dsn_has_password(dsn)


def _args(*argv: str) -> argparse.Namespace:
    return parser().parse_args(["roles", "plan", *argv])


def test_a_password_on_the_command_line_warns_once_without_repeating_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    dsn = f"postgresql://postgres:{SECRET}@127.0.0.1/gateway"
    assert resolve_dsn(_args("--dsn", dsn)) == dsn
    err = capsys.readouterr().err
    assert err.count(PASSWORD_WARNING) == 1
    assert ADMIN_DSN_FILE_ENV in err and "--dsn-file" in err
    assert SECRET not in err


def test_a_dsn_without_a_password_or_from_a_file_warns_not(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ADMIN_DSN_FILE_ENV, raising=False)
    monkeypatch.delenv(ADMIN_DSN_ENV, raising=False)
    assert resolve_dsn(_args("--dsn", "postgresql://postgres@db/gateway")).endswith("@db/gateway")
    file = tmp_path / "dsn"
    dsn = f"postgresql://postgres:{SECRET}@db/gateway"
    file.write_text(dsn + "\n")
    assert resolve_dsn(_args("--dsn-file", str(file))) == dsn
    assert capsys.readouterr().err == ""


def test_the_dsn_file_option_wins_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / "from-env"
    env_file.write_text("postgresql://env-file/gateway")
    monkeypatch.setenv(ADMIN_DSN_FILE_ENV, str(env_file))
    monkeypatch.setenv(ADMIN_DSN_ENV, "postgresql://env/gateway")
    given = tmp_path / "given"
    given.write_text("postgresql://given/gateway\n")
    assert resolve_dsn(_args("--dsn-file", str(given))) == "postgresql://given/gateway"
    assert resolve_dsn(_args()) == "postgresql://env-file/gateway"


def test_dsn_and_dsn_file_together_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        _args("--dsn", "postgresql://db/x", "--dsn-file", "/nonexistent")
    assert exit_.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_a_missing_dsn_file_is_one_line_naming_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "nope"
    assert main(["migrate", "--dsn-file", str(missing)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gateway: ") and str(missing) in err and err.count("\n") == 1
