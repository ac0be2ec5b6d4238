"""`gateway audit` finds drift and identity problems, and fails a scheduled job when it should."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from gateway.bootstrap import bootstrap
from gateway.roles.apply import apply_roles
from gateway.roles.declaration import load_declaration, parse_declaration
from gateway.services.postgres import Postgres

from .conftest import EXAMPLE_ROLES
from .databases import own_cluster


@pytest.fixture
async def applied(role_passwords: dict[str, str]) -> AsyncIterator[Postgres]:
    async with own_cluster() as server:  # audit findings are about cluster-wide roles
        await bootstrap(server.dsn, actor="tests")
        yield server


async def audit(server: Postgres, *args: str) -> tuple[int, dict[str, Any]]:
    """Run the command as a scheduled job would; a later `--roles` overrides the example."""
    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "audit",
            "--json",
            "--roles",
            str(EXAMPLE_ROLES),
            *args,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "GATEWAY_ADMIN_DSN": server.dsn},
        timeout=120,
        check=False,
    )
    assert done.stderr == "", done.stderr
    return done.returncode, orjson.loads(done.stdout)


def checks(report: dict[str, Any]) -> set[tuple[str, str]]:
    return {(f["check"], f["subject"]) for f in report["findings"]}


async def test_clean_database_has_no_findings(applied: Postgres) -> None:
    code, report = await audit(applied)
    assert (code, report["findings"]) == (0, [])


async def test_handmade_grant_and_role_are_reported_then_undone(applied: Postgres) -> None:
    conn = await asyncpg.connect(applied.dsn)
    try:
        await conn.execute(
            """
            GRANT UPDATE ON ingest.telemetry TO telemetry_ingest;
            CREATE ROLE handmade LOGIN CONNECTION LIMIT 2;
            GRANT state_writer TO handmade;
            GRANT DELETE ON ingest.device_state TO handmade;
            """
        )
        code, report = await audit(applied)
        assert code == 3
        found = checks(report)
        assert ("undeclared_grant", "telemetry_ingest") in found
        assert ("undeclared_grant", "handmade") in found
        assert ("undeclared_membership", "handmade") in found
        assert {f["severity"] for f in report["findings"]} == {"high"}

        await apply_roles(conn, load_declaration(EXAMPLE_ROLES), actor="tests")
        code, report = await audit(applied)
        assert (code, report["findings"]) == (0, [])
        assert not await conn.fetchval(
            "SELECT has_table_privilege('handmade', 'ingest.device_state', 'DELETE')"
        )
    finally:
        await conn.close()


async def test_identity_findings(applied: Postgres, tmp_path: Path) -> None:
    conn = await asyncpg.connect(applied.dsn)
    try:
        await conn.execute(
            """
            INSERT INTO gateway.identities (name, role_id, created_at) VALUES
                ('sensor-old', 'r-telemetry-ingest', now() - interval '40 days'),
                ('sensor-new', 'r-telemetry-ingest', now()),
                ('reader-old', 'r-analytics-reader', now() - interval '40 days');
            CREATE ROLE unlimited_app LOGIN;
            """
        )
        code, report = await audit(applied, "--stale-after", "30")
        found = checks(report)
        assert ("stale_identity", "sensor-old") in found
        assert ("stale_identity", "sensor-new") not in found
        assert ("stale_identity", "reader-old") in found  # a dormant reader login is a way in
        assert ("unlimited_login", "unlimited_app") in found
        assert code == 3

        code, report = await audit(applied, "--stale-after", "60", "--fail-on", "high")
        assert ("stale_identity", "sensor-old") not in checks(report)
        assert ("stale_identity", "reader-old") in checks(report)  # privileged: 7 days
        assert code == 0  # only medium findings are left

        # The role of sensor-new is dropped from the declaration and applied away.
        text = EXAMPLE_ROLES.read_text()
        start = text.index("[roles.telemetry_ingest]")
        without = text[:start] + text[text.index("[roles.state_writer]") :]
        smaller = tmp_path / "roles.toml"
        smaller.write_text(without)
        await apply_roles(
            conn, parse_declaration(without), actor="tests", allow_drop_with_identities=True
        )
        code, report = await audit(applied, "--roles", str(smaller))
        assert ("identities_on_missing_role", "telemetry_ingest") in checks(report)
        assert code == 3
    finally:
        await conn.close()


async def test_missing_grants_and_orphaned_managed_roles(applied: Postgres, tmp_path: Path) -> None:
    conn = await asyncpg.connect(applied.dsn)
    try:
        await conn.execute("REVOKE INSERT ON ingest.telemetry FROM telemetry_ingest")
        code, report = await audit(applied)
        assert ("missing_grant", "telemetry_ingest") in checks(report)
        assert code == 3

        # A managed role the declaration no longer has, before anyone applied the change.
        text = EXAMPLE_ROLES.read_text()
        start = text.index("[roles.state_writer]")
        end = text.index("[roles.", start + 1)
        smaller = tmp_path / "roles.toml"
        smaller.write_text(text[:start] + text[end:])
        code, report = await audit(applied, "--roles", str(smaller))
        found = checks(report)
        assert ("orphaned_role", "state_writer") in found
        assert ("missing_grant", "telemetry_ingest") in found
        assert code == 3
    finally:
        await conn.close()
