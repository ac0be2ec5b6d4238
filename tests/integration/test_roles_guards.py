"""Plan and apply refuse to take over roles nobody said to adopt, and to drop roles identities
still use, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from gateway.roles.apply import apply_roles, plan_roles
from gateway.roles.declaration import load_declaration, parse_declaration
from gateway.roles.plan import PlanError
from gateway.services.postgres import Postgres

from .conftest import EXAMPLE_ROLES

DBA = """
[roles.dba]
id = "r-dba"
tier = "admin"
connection_limit = 2
password = { env = "DBA_PASSWORD" }
"""


@pytest.fixture
def dba_password() -> Iterator[None]:
    os.environ["DBA_PASSWORD"] = "dba-password"
    yield
    os.environ.pop("DBA_PASSWORD", None)


def without_role(name: str) -> str:
    text = EXAMPLE_ROLES.read_text()
    start = text.index(f"[roles.{name}]")
    end = text.find("[roles.", start + 1)
    return text[:start] + (text[end:] if end != -1 else "")


async def cli(*args: str, dsn: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "GATEWAY_ADMIN_DSN": dsn},
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("existing", ["dba", "dba_login"])
@pytest.mark.usefixtures("dba_password")
async def test_an_unmanaged_role_is_not_taken_over_unless_adopted(
    admin: asyncpg.Connection, existing: str
) -> None:
    await admin.execute(f"CREATE ROLE {existing} LOGIN SUPERUSER")
    text = EXAMPLE_ROLES.read_text() + DBA
    with pytest.raises(PlanError, match=rf"role {existing} already exists and is not managed"):
        await plan_roles(admin, parse_declaration(text))
    with pytest.raises(PlanError, match=r"roles\.dba: .*adopt = true"):
        await apply_roles(admin, parse_declaration(text), actor="tests")
    assert await admin.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = $1", existing)
    assert await admin.fetchval("SELECT count(*) FROM gateway.role_changes") == 0

    adopted = parse_declaration(text.replace('id = "r-dba"', 'id = "r-dba"\nadopt = true'))
    await apply_roles(admin, adopted, actor="tests")
    assert (await plan_roles(admin, adopted)).empty
    comment = await admin.fetchval(
        "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1", existing
    )
    assert comment.startswith("managed by m2m-gateway; id=r-dba;")


async def test_a_managed_role_needs_no_adoption(admin: asyncpg.Connection) -> None:
    doc = load_declaration(EXAMPLE_ROLES)
    await apply_roles(admin, doc, actor="tests")
    await admin.execute("ALTER ROLE telemetry_ingest_login CONNECTION LIMIT 99")
    assert not (await plan_roles(admin, doc)).empty  # drift is planned away, not refused


async def test_dropping_a_role_with_active_identities_is_blocked(
    fresh: Postgres, admin: asyncpg.Connection, tmp_path: Path
) -> None:
    await apply_roles(admin, load_declaration(EXAMPLE_ROLES), actor="tests")
    await admin.execute(
        """
        INSERT INTO gateway.identities (name, role_id)
            SELECT 'sensor-' || i, 'r-telemetry-ingest' FROM generate_series(1, 1203) i;
        INSERT INTO gateway.identities (name, role_id, status, retired_at)
            VALUES ('sensor-gone', 'r-rejects-writer', 'retired', now());
        """
    )
    smaller = without_role("telemetry_ingest")
    smaller = (
        smaller[: smaller.index("[roles.rejects_writer]")]
        + smaller[smaller.index("[roles.analytics_reader]") :]
    )
    roles = tmp_path / "roles.toml"
    roles.write_text(smaller)

    plan = await plan_roles(admin, parse_declaration(smaller))
    (blocked,) = plan.blocked  # rejects_writer has only a retired identity: not blocked
    assert "drop role telemetry_ingest (id r-telemetry-ingest): 1,203 active" in blocked
    assert {"telemetry_ingest", "telemetry_ingest_login", "rejects_writer"} <= {
        change.subject for change in plan.changes if change.kind == "drop_role"
    }

    shown = await cli("roles", "plan", "--roles", str(roles), dsn=fresh.dsn)
    assert shown.returncode == 2, shown.stderr
    assert "blocked: drop role telemetry_ingest" in shown.stdout

    refused = await cli("roles", "apply", "--roles", str(roles), dsn=fresh.dsn)
    assert refused.returncode == 1
    assert "telemetry_ingest" in refused.stderr and "1,203 active identities" in refused.stderr
    assert await admin.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = 'telemetry_ingest'")
    assert await admin.fetchval("SELECT count(*) FROM gateway.role_changes") == 1

    applied = await cli(
        "roles", "apply", "--roles", str(roles), "--allow-drop-with-identities", dsn=fresh.dsn
    )
    assert applied.returncode == 0, applied.stderr
    assert not await admin.fetchval(
        "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'telemetry_ingest%'"
    )


PROBE = """
[roles.probe]
id = "r-probe"
tier = "reader"
connection_limit = 1
password = { env = "DBA_PASSWORD" }
grants = [
    { table = "ingest.telemetry", privileges = ["SELECT"] },
    { table = "ingest.telemetri", privileges = ["SELECT"] },
    { table = "ingest.telemetry", privileges = ["SELECT"], columns = ["identity", "ts", "vaule"] },
]
"""


@pytest.mark.usefixtures("dba_password")
async def test_a_grant_on_a_missing_table_or_column_names_its_place(
    fresh: Postgres, admin: asyncpg.Connection, tmp_path: Path
) -> None:
    # Declared as an extra table, so the declaration itself is valid: only the database can
    # tell the table is not there.
    text = EXAMPLE_ROLES.read_text().replace(
        "version = 1\n", 'version = 1\ntables = ["ingest.telemetri"]\n', 1
    )
    doc = parse_declaration(text + PROBE)
    database = await admin.fetchval("SELECT current_database()")
    with pytest.raises(PlanError) as refused:
        await plan_roles(admin, doc)
    assert str(refused.value).splitlines() == [
        f"roles.probe.grants[1].table: no table ingest.telemetri in database {database}",
        'roles.probe.grants[2].columns[2]: table ingest.telemetry has no column "vaule"',
    ]
    with pytest.raises(PlanError, match=r"no table ingest\.telemetri"):
        await apply_roles(admin, doc, actor="tests")
    assert await admin.fetchval("SELECT count(*) FROM gateway.role_changes") == 0

    roles = tmp_path / "roles.toml"
    roles.write_text(text + PROBE)
    for command in ("plan", "apply"):
        done = await cli("roles", command, "--roles", str(roles), dsn=fresh.dsn)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "roles.probe.grants[1].table: no table ingest.telemetri" in done.stderr
        assert 'has no column "vaule"' in done.stderr
        assert "Traceback" not in done.stderr
