"""Roles as code against a real PostgreSQL: plan, apply, history, drift, renames."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import orjson
import pytest

from gateway.roles.apply import apply_roles, plan_roles
from gateway.roles.declaration import Declaration, load_declaration, parse_declaration
from gateway.roles.plan import PlanError
from gateway.services.postgres import Postgres

from .conftest import EXAMPLE_ROLES


def example() -> Declaration:
    return load_declaration(EXAMPLE_ROLES)


async def gateway_cli(*args: str, dsn: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GATEWAY_ADMIN_DSN": dsn}
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway.cli", *args, "--roles", str(EXAMPLE_ROLES)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


async def test_plan_apply_then_plan_is_empty_with_history(
    fresh: Postgres, admin: asyncpg.Connection
) -> None:
    planned = await gateway_cli("roles", "plan", "--json", dsn=fresh.dsn)
    assert planned.returncode == 2, planned.stderr
    plan = orjson.loads(planned.stdout)
    kinds = {change["kind"] for change in plan["changes"]}
    assert {"create_role", "grant_membership", "grant_privilege", "register_role"} <= kinds
    assert not any("pw-" in sql or "SCRAM" in sql for c in plan["changes"] for sql in c["sql"])

    applied = await gateway_cli(
        "roles", "apply", "--expect", plan["digest"], "--actor", "ops-alice", dsn=fresh.dsn
    )
    assert applied.returncode == 0, applied.stderr
    assert "Applied as version 1" in applied.stdout

    again = await gateway_cli("roles", "plan", dsn=fresh.dsn)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "No changes" in again.stdout

    history = await admin.fetch("SELECT * FROM gateway.role_changes")
    assert len(history) == 1
    assert history[0]["applied_by"] == "ops-alice"
    assert history[0]["document_hash"] == example().digest
    assert orjson.loads(history[0]["diff"])["digest"] == plan["digest"]
    assert not any("SCRAM" in statement for statement in history[0]["statements"])
    audited = await admin.fetchval(
        "SELECT count(*) FROM gateway.audit_log WHERE actor = 'ops-alice' AND action LIKE 'role.%'"
    )
    assert audited == len(plan["changes"])
    registered = await admin.fetch("SELECT id, name FROM gateway.roles ORDER BY name")
    assert {r["name"]: r["id"] for r in registered}["telemetry_ingest"] == "r-telemetry-ingest"


async def test_drift_is_planned_away(admin: asyncpg.Connection) -> None:
    doc = example()
    await apply_roles(admin, doc, actor="tests")
    await admin.execute(
        """
        GRANT UPDATE ON ingest.telemetry TO telemetry_ingest;
        CREATE ROLE handmade LOGIN PASSWORD 'x';
        GRANT telemetry_ingest TO handmade;
        GRANT SELECT ON ingest.telemetry TO handmade;
        GRANT SELECT ON ingest.rejects TO PUBLIC;
        ALTER ROLE analytics_reader_login CONNECTION LIMIT -1;
        ALTER ROLE analytics_reader_login SET work_mem = '1GB';
        ALTER DEFAULT PRIVILEGES IN SCHEMA ingest GRANT SELECT ON TABLES TO analytics_reader;
        CREATE ROLE leftover NOLOGIN;
        COMMENT ON ROLE leftover IS 'managed by m2m-gateway; id=r-gone; part=group';
        """
    )
    plan = await plan_roles(admin, doc)
    summaries = "\n".join(change.summary for change in plan.changes)
    for expected in (
        "revoke UPDATE on table ingest.telemetry for telemetry_ingest",
        "revoke membership of handmade in telemetry_ingest",
        "revoke SELECT on table ingest.telemetry for handmade",
        "revoke SELECT on table ingest.rejects for PUBLIC",
        "connection limit -1 -> 10",
        "reset work_mem for analytics_reader_login",
        "revoke SELECT on future 'r' objects of postgres in schema ingest for analytics_reader",
        "drop role leftover",
    ):
        assert expected in summaries
    _, version = await apply_roles(admin, doc, actor="tests")
    assert version == 2
    assert (await plan_roles(admin, doc)).empty
    assert not await admin.fetchval(
        "SELECT has_table_privilege('telemetry_ingest_login', 'ingest.telemetry', 'UPDATE')"
    )
    assert not await admin.fetchval("SELECT pg_has_role('handmade', 'telemetry_ingest', 'USAGE')")
    assert not await admin.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = 'leftover'")


async def test_rename_keeps_id_identities_and_password(
    fresh: Postgres, admin: asyncpg.Connection, role_passwords: dict[str, str]
) -> None:
    doc = example()
    await apply_roles(admin, doc, actor="tests")
    await admin.execute(
        "INSERT INTO gateway.identities (name, role_id) VALUES ('sensor-1', 'r-telemetry-ingest')"
    )
    renamed_text = EXAMPLE_ROLES.read_text().replace(
        "[roles.telemetry_ingest]", "[roles.telemetry_writer]"
    )
    renamed = parse_declaration(renamed_text)
    plan = await plan_roles(admin, renamed)
    kinds = [change.kind for change in plan.changes]
    assert kinds.count("rename_role") == 2
    assert "create_role" not in kinds and "drop_role" not in kinds
    await apply_roles(admin, renamed, actor="tests")
    assert (await plan_roles(admin, renamed)).empty
    row = await admin.fetchrow("SELECT name FROM gateway.roles WHERE id = 'r-telemetry-ingest'")
    assert row is not None and row["name"] == "telemetry_writer"
    password = role_passwords["telemetry_ingest_login"]
    conn = await asyncpg.connect(fresh.address.dsn_for("telemetry_writer_login", password))
    assert await conn.fetchval("SELECT has_table_privilege('ingest.telemetry', 'INSERT')"), (
        "the renamed role keeps its grants"
    )
    await conn.close()


async def test_changing_an_id_is_refused(admin: asyncpg.Connection) -> None:
    await apply_roles(admin, example(), actor="tests")
    changed = parse_declaration(
        EXAMPLE_ROLES.read_text().replace('id = "r-telemetry-ingest"', 'id = "r-something-else"')
    )
    with pytest.raises(PlanError, match=r"roles\.telemetry_ingest\.id: changed from"):
        await plan_roles(admin, changed)


async def test_password_drift_is_detected_and_reset(
    fresh: Postgres, admin: asyncpg.Connection, role_passwords: dict[str, str]
) -> None:
    doc = example()
    await apply_roles(admin, doc, actor="tests")
    await admin.execute("ALTER ROLE auditor_login PASSWORD 'changed-by-hand'")
    plan = await plan_roles(admin, doc)
    assert [c.kind for c in plan.changes] == ["set_password"]
    await apply_roles(admin, doc, actor="tests")
    conn = await asyncpg.connect(
        fresh.address.dsn_for("auditor_login", role_passwords["auditor_login"])
    )
    await conn.close()


async def test_apply_refuses_a_plan_other_than_the_reviewed_one(admin: asyncpg.Connection) -> None:
    doc = example()
    reviewed = (await plan_roles(admin, doc)).digest
    await admin.execute("GRANT SELECT ON ingest.telemetry TO PUBLIC")  # the world moved on
    with pytest.raises(PlanError, match="changed since it was reviewed"):
        await apply_roles(admin, doc, actor="tests", expect=reviewed)
    assert await admin.fetchval("SELECT count(*) FROM gateway.role_changes") == 0


async def test_concurrent_applies_record_one_version(fresh: Postgres) -> None:
    doc = example()
    conns = [await asyncpg.connect(fresh.dsn) for _ in range(3)]
    try:
        results = await asyncio.gather(*(apply_roles(c, doc, actor="tests") for c in conns))
        versions = [version for _, version in results]
        assert sorted(versions, key=lambda v: v or 0) == [None, None, 1]
    finally:
        for conn in conns:
            await conn.close()


async def test_a_role_to_create_needs_its_credential(admin: asyncpg.Connection) -> None:
    env = example().roles["auditor"].password.env
    assert env is not None
    saved = os.environ.pop(env)
    try:
        with pytest.raises(PlanError, match=env):
            await plan_roles(admin, example())
    finally:
        os.environ[env] = saved


async def test_roles_show_lists_declared_live_and_identities(
    fresh: Postgres, admin: asyncpg.Connection
) -> None:
    await apply_roles(admin, example(), actor="tests")
    await admin.execute(
        "INSERT INTO gateway.identities (name, role_id) VALUES ('sensor-7', 'r-telemetry-ingest')"
    )
    shown = await gateway_cli("roles", "show", "telemetry_ingest", "--json", dsn=fresh.dsn)
    assert shown.returncode == 0, shown.stderr
    (role,) = orjson.loads(shown.stdout)
    assert role["id"] == "r-telemetry-ingest"
    assert role["live"]["exists"] and role["live"]["connection_limit"] == 8
    assert role["live"]["grants"] == ["INSERT ingest.environment", "INSERT ingest.telemetry"]
    assert role["identities"] == {"active": 1, "retired": 0}


def test_example_declaration_path_is_shipped() -> None:
    assert Path(EXAMPLE_ROLES).exists()
