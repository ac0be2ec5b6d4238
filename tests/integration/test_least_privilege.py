"""Each example role, logged in as its LOGIN member, can do what it is for and nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from gateway.services.postgres import Postgres

Login = Callable[[str], Awaitable[asyncpg.Connection]]

DENIED = (asyncpg.InsufficientPrivilegeError,)


@pytest.fixture
async def login(governed: Postgres, role_passwords: dict[str, str]) -> AsyncIterator[Login]:
    opened: list[asyncpg.Connection] = []

    async def connect(role: str) -> asyncpg.Connection:
        login_role = f"{role}_login"
        conn = await asyncpg.connect(
            governed.address.dsn_for(login_role, role_passwords[login_role])
        )
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        await conn.close()


def reading(identity: str = "sensor-1") -> tuple[datetime, str, str, float]:
    return (datetime.now(UTC), identity, "temp", 21.5)


async def copy_telemetry(conn: asyncpg.Connection) -> None:
    await conn.copy_records_to_table(
        "telemetry",
        schema_name="ingest",
        records=[reading()],
        columns=["ts", "identity", "metric", "value"],
    )


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT * FROM ingest.telemetry",
        "UPDATE ingest.telemetry SET value = 0",
        "DELETE FROM ingest.telemetry",
        "TRUNCATE ingest.telemetry",
        "INSERT INTO ingest.device_state (identity) VALUES ('sensor-1')",
        "INSERT INTO ingest.rejects (source, reason) VALUES ('x', 'y')",
        "SELECT * FROM gateway.identities",
        "SELECT * FROM gateway.audit_log",
        "CREATE TABLE ingest.mine (x int)",
        "CREATE TABLE public.mine (x int)",
        "CREATE SCHEMA mine",
        "SET ROLE telemetry_ingest",
        "SET ROLE state_writer",
        "ALTER ROLE telemetry_ingest_login CONNECTION LIMIT 100",
        "CREATE ROLE intruder LOGIN",
    ],
)
async def test_ingest_role_is_refused_everything_else(login: Login, statement: str) -> None:
    conn = await login("telemetry_ingest")
    with pytest.raises(DENIED):
        await conn.execute(statement)


async def test_ingest_role_cannot_grant_itself_more(login: Login) -> None:
    conn = await login("telemetry_ingest")
    # PostgreSQL answers a grant of privileges one does not hold with a warning, not an error:
    # what matters is that nothing was granted.
    await conn.execute("GRANT SELECT ON ingest.telemetry TO telemetry_ingest")
    assert not await conn.fetchval(
        "SELECT has_table_privilege('telemetry_ingest_login', 'ingest.telemetry', 'SELECT')"
    )


async def test_ingest_role_copies_and_inserts(login: Login, governed: Postgres) -> None:
    conn = await login("telemetry_ingest")
    await copy_telemetry(conn)
    await conn.execute(
        "INSERT INTO ingest.telemetry (ts, identity, metric, value) VALUES (now(), 'a', 'b', 1)"
    )
    admin = await asyncpg.connect(governed.dsn)
    try:
        assert await admin.fetchval("SELECT count(*) FROM ingest.telemetry") >= 2
    finally:
        await admin.close()
    with pytest.raises(DENIED):
        await conn.copy_from_table("telemetry", schema_name="ingest", output="/dev/null")


async def test_ingest_login_role_has_its_limits(login: Login) -> None:
    conn = await login("telemetry_ingest")
    assert await conn.fetchval("SHOW statement_timeout") == "30s"
    limit = await conn.fetchval(
        "SELECT rolconnlimit FROM pg_roles WHERE rolname = 'telemetry_ingest_login'"
    )
    assert limit == 8


async def test_rejects_writer_only_inserts_rejects(login: Login) -> None:
    conn = await login("rejects_writer")
    await conn.execute("INSERT INTO ingest.rejects (source, reason) VALUES ('mqtt', 'bad_json')")
    for statement in (
        "SELECT * FROM ingest.rejects",
        "DELETE FROM ingest.rejects",
        "INSERT INTO ingest.telemetry (ts, identity, metric) VALUES (now(), 'a', 'b')",
    ):
        with pytest.raises(DENIED):
            await conn.execute(statement)


async def test_state_writer_upserts_state_only(login: Login) -> None:
    conn = await login("state_writer")
    # A state route's two statements: new keys, then newer versions of the others.
    insert = (
        "INSERT INTO ingest.device_state (identity, state, updated_at) "
        "VALUES ($1, $2::jsonb, $3) ON CONFLICT DO NOTHING"
    )
    update = (
        "UPDATE ingest.device_state SET state = $2::jsonb, updated_at = $3 "
        "WHERE identity = $1 AND updated_at < $3"
    )
    now = datetime.now(UTC)
    await conn.execute(insert, "sensor-9", '{"on": true}', now)
    assert await conn.execute(update, "sensor-9", '{"on": false}', now + timedelta(seconds=1)) == (
        "UPDATE 1"
    )
    assert await conn.fetchval("SELECT max(updated_at) FROM ingest.device_state") is not None
    for statement in (
        "SELECT state FROM ingest.device_state",  # what it writes, it never reads
        "SELECT * FROM ingest.device_state",
        "DELETE FROM ingest.device_state",
        "SELECT * FROM ingest.telemetry",
        "INSERT INTO ingest.telemetry (ts, identity, metric) VALUES (now(), 'a', 'b')",
    ):
        with pytest.raises(DENIED):
            await conn.execute(statement)


async def test_reader_reads_and_never_writes(login: Login) -> None:
    conn = await login("analytics_reader")
    await conn.fetch("SELECT * FROM ingest.telemetry LIMIT 1")
    for statement in (
        "INSERT INTO ingest.telemetry (ts, identity, metric) VALUES (now(), 'a', 'b')",
        "UPDATE ingest.telemetry SET value = 0",
        "DELETE FROM ingest.telemetry",
        "SELECT * FROM ingest.rejects",
        "SELECT * FROM gateway.identities",
    ):
        with pytest.raises(DENIED):
            await conn.execute(statement)
    with pytest.raises(DENIED):
        await copy_telemetry(conn)


async def test_auditor_reads_the_trail_and_nothing_else(login: Login) -> None:
    conn = await login("auditor")
    assert await conn.fetchval("SELECT count(*) FROM gateway.role_changes") >= 1
    assert await conn.fetchval("SELECT count(*) FROM gateway.audit_log") >= 1
    for statement in (
        "INSERT INTO gateway.audit_log (actor, action, subject) VALUES ('me', 'x', 'y')",
        "DELETE FROM gateway.audit_log",
        "SELECT * FROM ingest.telemetry",
    ):
        with pytest.raises(DENIED):
            await conn.execute(statement)


async def test_audit_trail_is_append_only_even_for_admin(login: Login) -> None:
    conn = await login("gateway_admin")
    # Entries go through the trail's function, which stamps who and when itself ...
    await conn.execute("SELECT gateway.append_audit('me', 'test', 'x', NULL, NULL)")
    for statement in (
        # ... never directly, where a row could be shaped by hand ...
        "INSERT INTO gateway.audit_log (actor, action, subject) VALUES ('me', 'test', 'x')",
        # ... and what is written stays.
        "UPDATE gateway.audit_log SET actor = 'someone else'",
        "DELETE FROM gateway.audit_log",
        "TRUNCATE gateway.audit_log",
        "UPDATE gateway.role_changes SET applied_by = 'someone else'",
        "DELETE FROM gateway.role_changes",
    ):
        with pytest.raises(DENIED):
            await conn.execute(statement)


async def test_only_admin_may_create_roles(login: Login) -> None:
    for role in ("telemetry_ingest", "state_writer", "analytics_reader", "auditor"):
        conn = await login(role)
        with pytest.raises(DENIED):
            await conn.execute("CREATE ROLE someone_new NOLOGIN")
    admin = await login("gateway_admin")
    await admin.execute("CREATE ROLE made_by_admin NOLOGIN")
    await admin.execute("DROP ROLE made_by_admin")


async def test_wrong_password_is_refused(governed: Postgres) -> None:
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(governed.address.dsn_for("telemetry_ingest_login", "guess"))
