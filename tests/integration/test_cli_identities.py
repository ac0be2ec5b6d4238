"""`gateway identities ...` end to end against real PostgreSQL."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from gateway import cli
from gateway.db import ADMIN_DSN_ENV
from gateway.services.postgres import PostgresAddress

from .test_registry import prepare


@pytest.fixture
async def dsn(database: PostgresAddress) -> AsyncIterator[str]:
    conn = await asyncpg.connect(database.dsn)
    try:
        await prepare(conn)
    finally:
        await conn.close()
    yield database.dsn


async def gateway(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the command line as a user would; it runs its own event loop, so in a thread."""
    code = await asyncio.to_thread(cli.main, ["identities", *argv])
    out, err = capsys.readouterr()
    return code, out, err


async def test_add_list_show_assign_retire(
    dsn: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ADMIN_DSN_ENV, dsn)
    monkeypatch.setenv("GATEWAY_ACTOR", "ops-bot")
    code, out, _ = await gateway(
        capsys,
        "add",
        "sensor-1",
        "--role",
        "telemetry_ingest",
        "--attr",
        "site=berlin",
        "--attr",
        "floor:=3",
    )
    assert code == 0 and out == "added sensor-1 (device) with role telemetry_ingest\n"
    for number in range(2, 5):
        await gateway(capsys, "add", f"sensor-{number}", "--role", "telemetry_ingest")
    await gateway(capsys, "add", "svc-1", "--role", "state_writer", "--kind", "service")

    code, out, _ = await gateway(capsys, "list", "--role", "telemetry_ingest", "--limit", "3")
    lines = out.splitlines()
    assert code == 0
    assert lines[0].split() == ["NAME", "KIND", "ROLE", "STATUS", "CREATED", "LAST", "SEEN"]
    assert [line.split()[0] for line in lines[1:4]] == ["sensor-1", "sensor-2", "sensor-3"]
    assert lines[4:] == ["3 shown, 4 in total", "next page: --after sensor-3"]

    code, out, _ = await gateway(
        capsys, "list", "--role", "telemetry_ingest", "--after", "sensor-3", "--json"
    )
    page = orjson.loads(out)
    assert page["total"] == 4 and page["next_after"] is None
    assert [identity["name"] for identity in page["identities"]] == ["sensor-4"]

    code, out, _ = await gateway(capsys, "assign", "sensor-1", "--role", "state_writer")
    assert out == "sensor-1: role telemetry_ingest -> state_writer\n"
    code, out, _ = await gateway(capsys, "retire", "sensor-1")
    assert code == 0 and out.startswith("retired sensor-1 at ")

    code, out, _ = await gateway(capsys, "show", "sensor-1", "--json")
    shown: dict[str, Any] = orjson.loads(out)
    assert shown["role"] == "state_writer" and shown["status"] == "retired"
    assert shown["attributes"] == {"site": "berlin", "floor": 3}
    assert [(h["action"], h["actor"]) for h in shown["history"]] == [
        ("identity.retire", "ops-bot"),
        ("identity.assign", "ops-bot"),
        ("identity.add", "ops-bot"),
    ]
    code, out, _ = await gateway(capsys, "show", "sensor-1")
    assert "status:     retired" in out
    assert "identity.assign" in out and '{"role":"telemetry_ingest"' in out

    code, out, _ = await gateway(capsys, "list", "--status", "retired", "--json")
    assert orjson.loads(out)["total"] == 1


async def test_errors_are_one_line_and_exit_1(
    dsn: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # From a file, as a password in --dsn adds a warning line of its own.
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text(dsn)
    given = ("--dsn-file", str(dsn_file))
    code, out, err = await gateway(capsys, "add", "sensor-1", "--role", "nope", *given)
    assert code == 1 and out == ""
    assert err == ("gateway: unknown role 'nope' (known roles: state_writer, telemetry_ingest)\n")
    code, _, err = await gateway(capsys, "retire", "ghost", *given)
    assert (code, err) == (1, "gateway: unknown identity 'ghost'\n")
    code, _, err = await gateway(capsys, "add", "a#b", "--role", "state_writer", *given)
    assert code == 1 and "'#'" in err
    code, _, err = await gateway(
        capsys, "add", "x", "--role", "state_writer", "--attr", "oops", *given
    )
    assert code == 1 and "KEY=VALUE" in err

    monkeypatch.delenv(ADMIN_DSN_ENV, raising=False)
    code, _, err = await gateway(capsys, "list")
    assert code == 1 and ADMIN_DSN_ENV in err


async def test_import_with_progress_and_bad_lines(
    dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "fleet.jsonl"
    good.write_text(
        "".join(
            orjson.dumps({"name": f"dev-{n}", "role": "telemetry_ingest"}).decode() + "\n"
            for n in range(5000)
        )
    )
    code, out, err = await gateway(capsys, "import", str(good), "--dsn", dsn, "--actor", "me")
    assert code == 0 and out == f"imported 5000 identities from {good}\n"
    # Not a terminal: plain percentage lines, a few per phase.
    assert "reading 100%" in err.splitlines() and "inserting 100%" in err.splitlines()
    assert len(err.splitlines()) < 40

    code, out, err = await gateway(capsys, "import", str(good), "--dsn", dsn, "--skip-existing")
    assert out == f"imported 0 identities from {good} (5000 already registered, skipped)\n"

    bad = tmp_path / "bad.csv"
    bad.write_text("name,role\nok-1,telemetry_ingest\nbad name,telemetry_ingest\nok-2,\n")
    code, out, err = await gateway(capsys, "import", str(bad), "--dsn", dsn)
    assert code == 1
    assert f"gateway: {bad}: 2 bad lines, nothing was imported:" in err
    assert "  line 3: identity name 'bad name' has ' ' at position 4" in err
    assert "  line 4: role is missing" in err
    code, out, _ = await gateway(capsys, "list", "--json", "--dsn", dsn)
    assert orjson.loads(out)["total"] == 5000


def test_installed_entry_point_runs(dsn: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "identities", "list", "--json", "--dsn", dsn],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout) == {"total": 0, "identities": [], "next_after": None}
