"""The whole privilege surface of a managed role, planted by hand as a superuser: `audit` reports
it, `plan` undoes it, `apply` converges, and odd objects (large-object default privileges, a
table named `x.y`, temporary tables) crash nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from gateway.roles.apply import apply_roles, plan_roles
from gateway.roles.audit import Finding, Severity, run_audit
from gateway.roles.declaration import Declaration, load_declaration
from gateway.roles.sql import ident
from gateway.services.postgres import Postgres

from .conftest import EXAMPLE_ROLES

LOGIN = "telemetry_ingest_login"
GROUP = "telemetry_ingest"


@pytest.fixture
async def conn(governed: Postgres) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(governed.dsn)
    yield connection
    await connection.close()


def example() -> Declaration:
    return load_declaration(EXAMPLE_ROLES)


async def findings(conn: asyncpg.Connection) -> list[Finding]:
    return await run_audit(conn, example(), stale_after_days=30)


async def converge(conn: asyncpg.Connection) -> None:
    """Apply once; then nothing is left to plan and the audit is clean."""
    doc = example()
    _, version = await apply_roles(conn, doc, actor="tests")
    assert version is not None
    again = await plan_roles(conn, doc)
    assert again.empty, again.render()
    assert await findings(conn) == []


# (statement planted as superuser, the audit's check, its severity, words the plan shows)
PLANTED = {
    "superuser": (f"ALTER ROLE {LOGIN} SUPERUSER", "role_escalation", Severity.HIGH, "SUPERUSER"),
    "createdb": (f"ALTER ROLE {LOGIN} CREATEDB", "role_escalation", Severity.HIGH, "CREATEDB"),
    "createrole": (
        f"ALTER ROLE {LOGIN} CREATEROLE",
        "role_escalation",
        Severity.HIGH,
        "CREATEROLE",
    ),
    "replication": (
        f"ALTER ROLE {LOGIN} REPLICATION",
        "role_escalation",
        Severity.HIGH,
        "REPLICATION",
    ),
    "bypassrls": (f"ALTER ROLE {GROUP} BYPASSRLS", "role_escalation", Severity.HIGH, "BYPASSRLS"),
    "noinherit": (
        f"ALTER ROLE {LOGIN} NOINHERIT",
        "role_attributes",
        Severity.MEDIUM,
        "inherit False -> True",
    ),
    "valid until": (
        f"ALTER ROLE {LOGIN} VALID UNTIL '2001-02-03 00:00:00+00'",
        "role_attributes",
        Severity.MEDIUM,
        "valid until 2001-02-03",
    ),
    "connection limit": (
        f"ALTER ROLE {LOGIN} CONNECTION LIMIT 500",
        "role_attributes",
        Severity.MEDIUM,
        "connection limit 500 -> 8",
    ),
    "setting in this database": (
        f"ALTER ROLE {LOGIN} IN DATABASE {{database}} SET statement_timeout = 0",
        "undeclared_setting",
        Severity.LOW,
        "reset statement_timeout for telemetry_ingest_login in database",
    ),
    "grant to a superuser": (
        "CREATE ROLE ops_root SUPERUSER; GRANT DELETE ON ingest.telemetry TO ops_root",
        "undeclared_grant",
        Severity.HIGH,
        "revoke DELETE on table ingest.telemetry for ops_root",
    ),
    "large objects by default": (
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {LOGIN} GRANT SELECT ON LARGE OBJECTS TO PUBLIC",
        "undeclared_grant",
        Severity.HIGH,
        f"revoke SELECT on future 'L' objects of {LOGIN} for PUBLIC",
    ),
    "append-only trail disabled": (
        "ALTER TABLE gateway.audit_log DISABLE TRIGGER append_only",
        "trigger_disabled",
        Severity.HIGH,
        "enable trigger append_only on gateway.audit_log",
    ),
    "change feed firing only for replicas": (
        "ALTER TABLE gateway.identities ENABLE REPLICA TRIGGER notify_update",
        "trigger_disabled",
        Severity.HIGH,
        "enable trigger notify_update on gateway.identities",
    ),
    "table owned by the ingest login": (
        f"ALTER TABLE ingest.telemetry OWNER TO {LOGIN}",
        "object_owner",
        Severity.HIGH,
        f"give table ingest.telemetry back to postgres: owned by {LOGIN}",
    ),
    "function owned by a managed role": (
        f"ALTER FUNCTION gateway.refuse_change() OWNER TO {GROUP}",
        "object_owner",
        Severity.HIGH,
        f"give function gateway.refuse_change() back to postgres: owned by {GROUP}",
    ),
    "execute on a security definer function": (
        "GRANT EXECUTE ON FUNCTION gateway.append_role_change(text, jsonb, text[], text) "
        f"TO {GROUP}",
        "undeclared_grant",
        Severity.HIGH,
        f"revoke EXECUTE on routine gateway.append_role_change(text,jsonb,text[],text) for {GROUP}",
    ),
    "a sequence of the trail": (
        f"GRANT UPDATE ON SEQUENCE gateway.audit_log_id_seq TO {LOGIN}",
        "undeclared_grant",
        Severity.HIGH,
        f"revoke UPDATE on sequence gateway.audit_log_id_seq for {LOGIN}",
    ),
    "login given to a group role": (
        f"ALTER ROLE {GROUP} LOGIN",
        "role_escalation",
        Severity.HIGH,
        f"revoke LOGIN from role {GROUP}",
    ),
    "statement timeout of the login": (
        f"ALTER ROLE {LOGIN} SET statement_timeout = 0",
        "role_setting",
        Severity.MEDIUM,
        f"set statement_timeout = 30000 for {LOGIN} (was 0)",
    ),
    "search path of the login": (
        f"ALTER ROLE {LOGIN} SET search_path = public, ingest",
        "undeclared_setting",
        Severity.LOW,
        f"reset search_path for {LOGIN}",
    ),
    "setting on the group role": (
        f"ALTER ROLE {GROUP} SET work_mem = '1GB'",
        "undeclared_setting",
        Severity.LOW,
        f"reset work_mem for {GROUP}",
    ),
    "member of another managed role": (
        f"GRANT state_writer TO {GROUP}",
        "undeclared_membership",
        Severity.HIGH,
        f"revoke membership of {GROUP} in state_writer",
    ),
    "member of pg_read_all_data": (
        "GRANT pg_read_all_data TO analytics_reader",
        "undeclared_membership",
        Severity.HIGH,
        "revoke membership of analytics_reader in pg_read_all_data",
    ),
    "member of pg_write_all_data": (
        f"GRANT pg_write_all_data TO {LOGIN}",
        "undeclared_membership",
        Severity.HIGH,
        f"revoke membership of {LOGIN} in pg_write_all_data",
    ),
    "member of pg_signal_backend": (
        f"GRANT pg_signal_backend TO {GROUP}",
        "undeclared_membership",
        Severity.HIGH,
        f"revoke membership of {GROUP} in pg_signal_backend",
    ),
    "declared membership with admin option": (
        f"GRANT {GROUP} TO {LOGIN} WITH ADMIN OPTION",
        "undeclared_membership",
        Severity.HIGH,
        f"revoke membership of {LOGIN} in {GROUP} WITH INHERIT TRUE, SET FALSE, ADMIN TRUE",
    ),
    "declared membership with set, without inherit": (
        f"GRANT {GROUP} TO {LOGIN} WITH INHERIT FALSE, SET TRUE",
        "undeclared_membership",
        Severity.HIGH,
        f"revoke membership of {LOGIN} in {GROUP} WITH INHERIT FALSE, SET TRUE, ADMIN FALSE",
    ),
    "create on the database": (
        f"GRANT CREATE ON DATABASE {{database}} TO {GROUP}",
        "undeclared_grant",
        Severity.HIGH,
        f"revoke CREATE on database {{name}} for {GROUP}",
    ),
    "temporary on the database": (
        f"GRANT TEMPORARY ON DATABASE {{database}} TO {LOGIN}",
        "undeclared_grant",
        Severity.HIGH,
        f"revoke TEMPORARY on database {{name}} for {LOGIN}",
    ),
    "connect on the database": (
        f"GRANT CONNECT ON DATABASE {{database}} TO {GROUP} WITH GRANT OPTION",
        "undeclared_grant",
        Severity.HIGH,
        f"revoke CONNECT on database {{name}} for {GROUP} with grant option",
    ),
    "create on a managed schema": (
        f"GRANT CREATE ON SCHEMA ingest TO {GROUP}",
        "undeclared_grant",
        Severity.HIGH,
        f"revoke CREATE on schema ingest for {GROUP}",
    ),
    "a column grant": (
        f"GRANT SELECT (value) ON ingest.telemetry TO {GROUP}",
        "undeclared_grant",
        Severity.HIGH,
        f"revoke SELECT on column ingest.telemetry(value) for {GROUP}",
    ),
    "execute on a procedure": (
        "CREATE PROCEDURE ingest.p() LANGUAGE sql AS 'SELECT 1'; "
        f"GRANT EXECUTE ON PROCEDURE ingest.p() TO {GROUP}",
        "undeclared_grant",
        Severity.HIGH,
        f"revoke EXECUTE on routine ingest.p() for {GROUP}",
    ),
    "a declared grant with grant option": (
        f"GRANT INSERT ON ingest.telemetry TO {GROUP} WITH GRANT OPTION",
        "undeclared_grant",
        Severity.HIGH,
        f"revoke INSERT on table ingest.telemetry for {GROUP} with grant option",
    ),
    "a grant option passed on": (
        f"GRANT INSERT ON ingest.telemetry TO {GROUP} WITH GRANT OPTION; "
        f"SET ROLE {GROUP}; GRANT INSERT ON ingest.telemetry TO state_writer; RESET ROLE",
        "undeclared_grant",
        Severity.HIGH,
        "revoke INSERT on table ingest.telemetry for state_writer",
    ),
    "a declared column grant with grant option": (
        "GRANT SELECT (state) ON ingest.device_state TO state_writer WITH GRANT OPTION",
        "undeclared_grant",
        Severity.HIGH,
        "revoke SELECT on column ingest.device_state(state) for state_writer with grant option",
    ),
    "sequences by default": (
        f"ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT USAGE ON SEQUENCES TO {GROUP}",
        "undeclared_grant",
        Severity.HIGH,
        f"revoke USAGE on future 'S' objects of postgres for {GROUP}",
    ),
    "sequences in a managed schema by default": (
        "ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA ingest "
        f"GRANT UPDATE ON SEQUENCES TO {GROUP}",
        "undeclared_grant",
        Severity.HIGH,
        f"revoke UPDATE on future 'S' objects of postgres in schema ingest for {GROUP}",
    ),
    "functions by default": (
        f"ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT EXECUTE ON FUNCTIONS TO {LOGIN}",
        "undeclared_grant",
        Severity.HIGH,
        f"revoke EXECUTE on future 'f' objects of postgres for {LOGIN}",
    ),
    "functions in a managed schema by default": (
        "ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA gateway "
        f"GRANT EXECUTE ON FUNCTIONS TO {GROUP}",
        "undeclared_grant",
        Severity.HIGH,
        f"revoke EXECUTE on future 'f' objects of postgres in schema gateway for {GROUP}",
    ),
    "types by default": (
        f"ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT USAGE ON TYPES TO {GROUP}",
        "undeclared_grant",
        Severity.HIGH,
        f"revoke USAGE on future 'T' objects of postgres for {GROUP}",
    ),
    "types in a managed schema by default": (
        "ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA ingest "
        f"GRANT USAGE ON TYPES TO {GROUP}",
        "undeclared_grant",
        Severity.HIGH,
        f"revoke USAGE on future 'T' objects of postgres in schema ingest for {GROUP}",
    ),
    "schemas by default": (
        f"ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT CREATE ON SCHEMAS TO {GROUP}",
        "undeclared_grant",
        Severity.HIGH,
        f"revoke CREATE on future 'n' objects of postgres for {GROUP}",
    ),
    "chained audit log unchained": (
        "ALTER TABLE gateway.audit_log DISABLE TRIGGER chain",
        "trigger_disabled",
        Severity.HIGH,
        "enable trigger chain on gateway.audit_log",
    ),
    "chained write log unchained": (
        "ALTER TABLE gateway.write_log DISABLE TRIGGER chain",
        "trigger_disabled",
        Severity.HIGH,
        "enable trigger chain on gateway.write_log",
    ),
    "append-only role history disabled": (
        "ALTER TABLE gateway.role_changes DISABLE TRIGGER append_only",
        "trigger_disabled",
        Severity.HIGH,
        "enable trigger append_only on gateway.role_changes",
    ),
    "truncating the write log allowed": (
        "ALTER TABLE gateway.write_log DISABLE TRIGGER append_only_truncate",
        "trigger_disabled",
        Severity.HIGH,
        "enable trigger append_only_truncate on gateway.write_log",
    ),
    "sequence owned by a managed role": (
        f"CREATE SEQUENCE ingest.s; ALTER SEQUENCE ingest.s OWNER TO {GROUP}",
        "object_owner",
        Severity.HIGH,
        f"give sequence ingest.s back to postgres: owned by {GROUP}",
    ),
    "view owned by a managed role": (
        f"CREATE VIEW ingest.v AS SELECT 1 AS one; ALTER VIEW ingest.v OWNER TO {LOGIN}",
        "object_owner",
        Severity.HIGH,
        f"give view ingest.v back to postgres: owned by {LOGIN}",
    ),
    "managed schema owned by a managed role": (
        f"ALTER SCHEMA ingest OWNER TO {GROUP}",
        "object_owner",
        Severity.HIGH,
        f"give schema ingest back to postgres: owned by {GROUP}",
    ),
    "table named x.y": (
        f'CREATE TABLE ingest."x.y" (v int); GRANT SELECT ON ingest."x.y" TO {GROUP}',
        "undeclared_grant",
        Severity.HIGH,
        'revoke SELECT on table ingest."x.y" for telemetry_ingest',
    ),
}


@pytest.mark.parametrize("case", PLANTED)
async def test_planted_drift_is_reported_and_undone(conn: asyncpg.Connection, case: str) -> None:
    statement, check, severity, shown = PLANTED[case]
    assert await findings(conn) == [], "the previous case left the database clean"
    name = await conn.fetchval("SELECT current_database()")
    await conn.execute(statement.format(database=ident(name)))
    try:
        found = [(f.check, f.severity) for f in await findings(conn)]
        assert (check, severity) in found
        assert max(s for _, s in found) == severity, found
        plan = await plan_roles(conn, example())
        assert shown.format(name=name) in "\n".join(change.summary for change in plan.changes)
        await converge(conn)
    finally:
        await conn.execute(
            'DROP ROLE IF EXISTS ops_root; DROP TABLE IF EXISTS ingest."x.y"; '
            "DROP PROCEDURE IF EXISTS ingest.p(); DROP SEQUENCE IF EXISTS ingest.s; "
            "DROP VIEW IF EXISTS ingest.v"
        )


async def test_the_escalated_login_is_back_to_its_grants(
    governed: Postgres, conn: asyncpg.Connection, role_passwords: dict[str, str]
) -> None:
    await conn.execute(f"ALTER ROLE {LOGIN} SUPERUSER BYPASSRLS CREATEDB")
    plan = await plan_roles(conn, example())
    assert [c.kind for c in plan.changes] == ["revoke_attribute"]
    await converge(conn)
    login = await asyncpg.connect(governed.address.dsn_for(LOGIN, role_passwords[LOGIN]))
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await login.execute("DELETE FROM ingest.telemetry")
    finally:
        await login.close()


async def test_temporary_objects_are_out_of_scope(conn: asyncpg.Connection) -> None:
    """A temporary table lives only in the session that made it: no plan can reach it."""
    await conn.execute(f'CREATE TEMP TABLE "x.y" (v int); GRANT SELECT ON "x.y" TO {GROUP}')
    temporary = await conn.fetchval("SELECT pg_my_temp_schema()::regnamespace::text")
    await conn.execute(
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {temporary} GRANT SELECT ON TABLES TO {GROUP}"
    )
    assert (await plan_roles(conn, example())).empty
    assert await findings(conn) == []
    _, version = await apply_roles(conn, example(), actor="tests")
    assert version is None


async def test_a_schema_with_nobody_to_give_it_back_to(conn: asyncpg.Connection) -> None:
    """The database and a managed schema both owned by a managed role: the plan cannot tell who
    should own the schema, says so, and gives nothing in it to that role."""
    database = ident(await conn.fetchval("SELECT current_database()"))
    await conn.execute(
        f"ALTER DATABASE {database} OWNER TO {GROUP}; ALTER SCHEMA ingest OWNER TO {GROUP}"
    )
    try:
        plan = await plan_roles(conn, example())
        assert f"schema ingest is owned by {GROUP}, and the database by a managed role" in (
            "\n".join(plan.notes)
        )
        assert [c for c in plan.changes if c.kind == "reown"] == []
    finally:
        await conn.execute(
            f"ALTER DATABASE {database} OWNER TO postgres; ALTER SCHEMA ingest OWNER TO postgres"
        )
    await converge(conn)
