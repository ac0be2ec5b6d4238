"""The audit trail is a hash chain the server stamps: nobody forges who or when, and whatever a
superuser edits, deletes or inserts behind the gateway's back, `gateway audit verify` names."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import asyncpg
import orjson
import pytest

from gateway import trail
from gateway.services.postgres import Postgres
from gateway.trail_verify import verify

DENIED = asyncpg.InsufficientPrivilegeError


async def verify_command(server: Postgres) -> tuple[int, dict[str, Any]]:
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway.cli", "audit", "verify", "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "GATEWAY_ADMIN_DSN": server.dsn},
        timeout=120,
        check=False,
    )
    assert done.stderr == "", done.stderr
    return done.returncode, orjson.loads(done.stdout)


async def test_a_clean_trail_verifies(governed: Postgres) -> None:
    code, report = await verify_command(governed)
    assert (code, report["breaks"]) == (0, [])
    # bootstrap applied the roles: one version and its audit entries are in the chains
    assert report["rows"]["gateway.role_changes"] >= 1
    assert report["rows"]["gateway.audit_log"] >= 1


async def test_control_cannot_forge_who_or_when_nor_insert_directly(
    governed: Postgres, role_passwords: dict[str, str]
) -> None:
    control = await asyncpg.connect(
        governed.address.dsn_for("gateway_control_login", role_passwords["gateway_control_login"])
    )
    try:
        with pytest.raises(DENIED):
            await control.execute(
                "INSERT INTO gateway.audit_log (actor, db_user, at, action, subject) "
                "VALUES ('me', 'postgres', '2000-01-01', 'x', 'y')"
            )
        with pytest.raises(DENIED):
            await control.execute("SELECT gateway.append_role_change('h', '{}'::jsonb, '{}', 'me')")
        await trail.record(control, "ops-bob", "identity.test", "forged?", None, {"a": 1})
    finally:
        await control.close()
    admin = await asyncpg.connect(governed.dsn)
    try:
        row = await admin.fetchrow(
            "SELECT actor, db_user, at > now() - interval '1 hour' AS recent "
            "FROM gateway.audit_log WHERE subject = 'forged?'"
        )
        assert dict(row) == {"actor": "ops-bob", "db_user": "gateway_control_login", "recent": True}
        # a direct INSERT, by a role still allowed one, is stamped the same way
        await admin.execute(
            "INSERT INTO gateway.audit_log (id, actor, db_user, at, action, subject) "
            "VALUES (1, 'me', 'someone else', '2000-01-01', 'x', 'direct')"
        )
        row = await admin.fetchrow(
            "SELECT id, db_user, at > '2001-01-01' AS now FROM gateway.audit_log "
            "WHERE subject = 'direct'"
        )
        assert row["id"] != 1 and row["now"]
        assert row["db_user"] == await admin.fetchval("SELECT session_user")
        assert await verify(admin) == (
            [],
            {
                "gateway.audit_log": await admin.fetchval("SELECT count(*) FROM gateway.audit_log"),
                "gateway.role_changes": await admin.fetchval(
                    "SELECT count(*) FROM gateway.role_changes"
                ),
                "gateway.write_log": await admin.fetchval("SELECT count(*) FROM gateway.write_log"),
            },
        )
    finally:
        await admin.close()


async def test_ingest_and_auditor_cannot_append(
    governed: Postgres, role_passwords: dict[str, str]
) -> None:
    for role in ("telemetry_ingest_login", "auditor_login", "analytics_reader_login"):
        conn = await asyncpg.connect(governed.address.dsn_for(role, role_passwords[role]))
        try:
            with pytest.raises(DENIED):
                await trail.record(conn, "me", "x", "y", None, None)
        finally:
            await conn.close()


async def test_verify_names_rows_edited_deleted_and_inserted(governed: Postgres) -> None:
    admin = await asyncpg.connect(governed.dsn)
    try:
        await trail.record_many(
            admin, "tests", [("test.entry", f"entry-{n}", None, {"n": n}) for n in range(6)]
        )
        ids = [
            r["id"]
            for r in await admin.fetch(
                "SELECT id FROM gateway.audit_log WHERE action = 'test.entry' ORDER BY id"
            )
        ]
        edited, deleted = ids[1], ids[3]
        async with admin.transaction():
            await admin.execute("ALTER TABLE gateway.audit_log DISABLE TRIGGER USER")
            await admin.execute(
                "UPDATE gateway.audit_log SET actor = 'someone else' WHERE id = $1", edited
            )
            await admin.execute("DELETE FROM gateway.audit_log WHERE id = $1", deleted)
            # in the middle of the chain, where it looks most like a real entry
            inserted = ids[4] + 1_000_000
            await admin.execute(
                "INSERT INTO gateway.audit_log (id, actor, action, subject, prev_hash, hash) "
                "SELECT $1, 'tests', 'test.entry', 'planted', hash, sha256(hash) "
                "FROM gateway.audit_log WHERE id = $2",
                inserted,
                ids[5],
            )
            await admin.execute("ALTER TABLE gateway.audit_log ENABLE TRIGGER USER")
        # the forged row now ends the chain; a later entry chains onto it
        await trail.record(admin, "tests", "test.entry", "after", None, None)
    finally:
        await admin.close()

    code, report = await verify_command(governed)
    assert code == 3
    named = {(b["row"], b["problem"].split(":")[0]) for b in report["breaks"]}
    assert (edited, "altered") in named
    assert (ids[4], f"does not follow row {ids[2]}") in named  # rows deleted before it
    assert (inserted, f"does not follow row {ids[5]}") not in named  # it does follow ids[5]...
    assert (inserted, "altered") in named  # ...but its hash is not its content's
    assert {b["table"] for b in report["breaks"]} == {"gateway.audit_log"}
