"""Secrets stay secret: no password the gateway holds (its roles', its broker account's, the
broker admin's, the devices', the database superuser's) shows in a log record, the JSON log, the
metrics, the message of a failure, a command's output or a row of the audit trail, as given nor
URL-encoded. Each failure is provoked for real: a wrong role password, a refused broker login,
a DSN nobody answers."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import logging
import os
import sys
import traceback
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

import pytest

from gateway import cli
from gateway.app import Gateway
from gateway.cli.database import PASSWORD_WARNING
from gateway.config import BrokersConfig
from gateway.db import ADMIN_DSN_ENV, ADMIN_DSN_FILE_ENV
from gateway.identities.reconcile import sync_accounts
from gateway.identities.registry import Registry
from gateway.logs import JsonFormatter
from gateway.roles.declaration import load_declaration
from gateway.services.mosquitto import MqttUser

from .stack import EXAMPLE_ROLES, MQTT_PASSWORD_ENV, Stack, publish, reading

# Characters a URL, a DSN or a shell would quote, so the encoded forms differ from the plain ones.
DEVICES = {"leak-a": "dev-A/x@y%z+1 q", "leak-b": "dev-B:p?w&d=2#"}
WRONG_ROLE_PASSWORD = "wrong-R0le/p@ss%word"
WRONG_BROKER_PASSWORD = "wrong-Br0ker:p@ss"
CLI_DSN_PASSWORD = "cli-Dsn-s3cret/@%"


def forms(secret: str) -> set[str]:
    """The secret as given and as a URL, a query string or a DSN would carry it."""
    return {
        secret,
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote(secret),
        urllib.parse.quote_plus(secret),
    }


def leaked(text: str, secrets: dict[str, str]) -> list[str]:
    """The names of the secrets found in `text`, in any of their forms."""
    return sorted(name for name, secret in secrets.items() if any(f in text for f in forms(secret)))


def test_the_search_finds_a_secret_in_each_form() -> None:
    secrets = {"device": DEVICES["leak-a"]}
    for form in forms(DEVICES["leak-a"]):
        assert leaked(f"...{form}...", secrets) == ["device"]
    assert len(forms(DEVICES["leak-a"])) == 4
    assert leaked("dev-A", secrets) == []


@pytest.fixture(scope="module")
async def env(deployment: Stack) -> Stack:
    """The module's stack with two devices whose passwords are the known ones above."""
    conn = await deployment.admin()
    try:
        registry = Registry(conn, "tests")
        for name in DEVICES:
            await registry.add(name, "telemetry_ingest")
        await sync_accounts(
            conn,
            BrokersConfig(mosquitto=deployment.broker.accounts_config()),
            "tests",
            names=list(DEVICES),
            supplied=dict(DEVICES),
            credentials_out=None,
        )
    finally:
        await conn.close()
    for name, password in DEVICES.items():
        deployment.devices[name] = MqttUser(name, password)
    return deployment


@pytest.fixture
def known(env: Stack, role_passwords: dict[str, str]) -> dict[str, str]:
    """Every secret this stack holds, by a name that says whose it is."""
    found = {f"role {role}": password for role, password in role_passwords.items()}
    found["database superuser"] = env.database.password
    found["broker admin"] = env.broker.admin.password
    found["gateway broker account"] = env.broker.gateway.password
    found |= {f"device {name}": password for name, password in DEVICES.items()}
    found["wrong role password"] = WRONG_ROLE_PASSWORD
    found["wrong broker password"] = WRONG_BROKER_PASSWORD
    found["password of a DSN on the command line"] = CLI_DSN_PASSWORD
    return found


@contextlib.contextmanager
def json_log() -> Iterator[io.StringIO]:
    """The gateway's own JSON log lines, as `gateway run` writes them, at DEBUG."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)


def everything_logged(records: Iterable[logging.LogRecord]) -> str:
    """Each record's message, its raw arguments and extras, and its traceback."""
    parts = []
    for record in records:
        parts.append(record.getMessage())
        parts.append(repr(record.args))
        parts.append(repr(record.__dict__))
        if record.exc_info and record.exc_info[1] is not None:
            parts.extend(traceback.format_exception(record.exc_info[1]))
    return "\n".join(parts)


def failure_text(error: BaseException) -> str:
    """All a person could see of an error: its message, repr, causes and traceback."""
    return "".join(traceback.format_exception(error)) + repr(error) + repr(error.__cause__)


def metrics(gateway: Gateway) -> str:
    assert gateway.http is not None
    url = f"http://127.0.0.1:{gateway.http.port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


@contextlib.asynccontextmanager
async def running(gateway: Gateway) -> AsyncIterator[Gateway]:
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


async def test_a_running_gateway_logs_and_exports_no_secret(
    env: Stack, known: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    before = await env.count()
    with json_log() as lines:
        async with running(Gateway(env.config())) as gateway:
            for name in DEVICES:
                async with env.device(name) as device:
                    good = [reading(value=i) for i in range(20)]
                    await publish(device, f"devices/{name}/telemetry", good)
                    bad = [b'{"metric": ', b'{"ts": 1, "metric": "t", "value": "hot"}', reading()]
                    await publish(device, f"devices/{name}/nosuchstream", bad)
            await env.wait_rows(before + 2 * 20)
            exported = await asyncio.to_thread(metrics, gateway)
    assert "gateway_rows_written_total" in exported
    assert caplog.records and lines.getvalue()
    assert leaked(everything_logged(caplog.records), known) == []
    assert leaked(lines.getvalue(), known) == []
    assert leaked(exported, known) == []


async def test_a_wrong_role_password_fails_without_showing_either(
    env: Stack,
    known: dict[str, str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    doc = load_declaration(EXAMPLE_ROLES)
    variable = doc.roles["telemetry_ingest"].password.env
    assert variable is not None
    monkeypatch.setenv(variable, WRONG_ROLE_PASSWORD)
    with json_log() as lines, pytest.raises(Exception) as refused:
        await Gateway(env.config()).start()
    seen = failure_text(refused.value)
    assert "password authentication failed" in seen
    assert leaked(seen, known) == []
    assert leaked(everything_logged(caplog.records), known) == []
    assert leaked(lines.getvalue(), known) == []


async def test_a_refused_broker_login_is_reported_without_its_password(
    env: Stack,
    known: dict[str, str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    config = env.config()
    monkeypatch.setenv(MQTT_PASSWORD_ENV, WRONG_BROKER_PASSWORD)

    async def refusal_logged() -> bool:
        return "MQTT connect" in caplog.text

    with json_log() as lines:
        gateway = Gateway(config)
        try:
            await gateway.start()
            await env.wait_for(refusal_logged, 30, "the refused login in the log")
            seen = ""
        except Exception as error:  # a refusal at start is as good as one logged while retrying
            seen = failure_text(error)
        finally:
            await gateway.stop()
        seen += lines.getvalue() + everything_logged(caplog.records)
    assert "MQTT" in seen
    assert leaked(seen, known) == []


async def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """The command line in this process (its own event loop, so in a thread): exit code and
    everything it printed."""
    code = await asyncio.to_thread(cli.main, list(argv))
    out, err = capsys.readouterr()
    return code, out + err


async def test_a_dsn_nobody_answers_fails_without_showing_its_password(
    env: Stack,
    known: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ADMIN_DSN_ENV, raising=False)
    monkeypatch.delenv(ADMIN_DSN_FILE_ENV, raising=False)
    secret = urllib.parse.quote(CLI_DSN_PASSWORD, safe="")
    host = env.database.host
    unanswered = f"postgresql://postgres:{secret}@127.0.0.1:1/x"
    refused = f"postgresql://postgres:{secret}@{host}:{env.database.port}/{env.database.database}"
    mangled = f"postgresql://postgres:{secret}@{host}:notaport/x"
    plan = ["roles", "plan", "--roles", str(EXAMPLE_ROLES)]
    for dsn in (unanswered, refused):
        code, printed = await run_cli(capsys, *plan, "--dsn", dsn)
        assert code == 1, printed
        assert PASSWORD_WARNING in printed
        assert leaked(printed, known) == [], dsn
        file = tmp_path / "dsn"
        file.write_text(dsn)
        code, printed = await run_cli(capsys, "migrate", "--dsn-file", str(file))
        assert code == 1 and printed.startswith("gateway: "), printed
        assert leaked(printed, known) == [], dsn
    # As a person runs it: a process of its own, whose stderr is all they see.
    environment = {
        k: v for k, v in os.environ.items() if k not in {ADMIN_DSN_ENV, ADMIN_DSN_FILE_ENV}
    }
    for dsn in (unanswered, mangled):
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", *plan, "--dsn", dsn, env=environment,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await process.communicate()
        assert process.returncode != 0
        assert PASSWORD_WARNING in err.decode()
        assert leaked(out.decode() + err.decode(), known) == [], dsn


async def test_lifecycle_commands_write_no_secret_to_the_trail_or_their_output(
    env: Stack,
    known: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dsn_file = tmp_path / "admin-dsn"
    dsn_file.write_text(env.database.dsn + "\n")
    monkeypatch.delenv(ADMIN_DSN_ENV, raising=False)
    monkeypatch.setenv(ADMIN_DSN_FILE_ENV, str(dsn_file))
    accounts = env.broker.accounts_config()
    assert accounts.password is not None and accounts.password.file is not None
    config = tmp_path / "gateway.toml"
    config.write_text(
        "[brokers.mosquitto]\n"
        f'host = "{accounts.host}"\nport = {accounts.port}\n'
        f'username = "{accounts.username}"\n'
        f'password = {{ file = "{accounts.password.file}" }}\n'
        f'gateway_role = "{accounts.gateway_role}"\n'
    )
    out = tmp_path / "new-accounts.csv"
    brokers = ["--config", str(config), "--credentials-out", str(out)]
    roles = ["--roles", str(EXAMPLE_ROLES)]
    printed = ""
    for argv in (
        ["identities", "add", "leak-c", "--role", "telemetry_ingest", *brokers],
        ["identities", "rotate", "leak-c", *brokers],
        ["identities", "rotate", "leak-a", *brokers],
        ["identities", "assign", "leak-c", "--role", "state_writer", *brokers],
        ["identities", "retire", "leak-c", *brokers],
        ["identities", "show", "leak-c", "--json"],
        ["roles", "plan", *roles],
        ["roles", "apply", *roles],
        ["audit", *roles],
        ["audit", "verify"],
    ):
        code, text = await run_cli(capsys, *argv)
        assert code in (0, 3) if argv[0] == "audit" else code == 0, f"{argv}: {text}"
        printed += text
    with out.open(newline="") as handle:
        generated = [row["password"] for row in csv.DictReader(handle)]
    assert len(generated) == 3, "add and each rotation write a new password"
    secrets = known | {f"generated password #{i}": p for i, p in enumerate(generated)}
    assert leaked(printed, secrets) == []
    conn = await env.admin()
    try:
        for table in ("audit_log", "role_changes", "write_log"):
            rows = await conn.fetch(f"SELECT to_jsonb(t)::text AS row FROM gateway.{table} t")
            assert rows or table == "write_log", f"gateway.{table} is empty"
            text = "\n".join(row["row"] for row in rows)
            assert leaked(text, secrets) == [], table
    finally:
        await conn.close()
