"""Memberships with more than one grantor, and an admin option already used: one apply still
takes every undeclared membership away, whoever granted it and in whatever order."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from gateway.roles.apply import apply_roles, plan_roles
from gateway.roles.audit import run_audit
from gateway.roles.declaration import Declaration, load_declaration
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


PLANTED = {
    # the login's admin option used to pass the group on to a role sorting after it
    "admin option passed on": (
        f"GRANT {GROUP} TO {LOGIN} WITH ADMIN OPTION; GRANT {GROUP} TO zz_holder GRANTED BY {LOGIN}"
    ),
    # the same membership granted twice, by two grantors: each grant must go
    "granted by two grantors": (
        f"GRANT {GROUP} TO zz_deputy WITH ADMIN OPTION; "
        f"GRANT {GROUP} TO zz_holder; GRANT {GROUP} TO zz_holder GRANTED BY zz_deputy"
    ),
}


@pytest.mark.parametrize("case", PLANTED)
async def test_undeclared_memberships_go_in_one_apply(conn: asyncpg.Connection, case: str) -> None:
    await conn.execute(
        "CREATE ROLE zz_holder LOGIN CONNECTION LIMIT 1; CREATE ROLE zz_deputy NOLOGIN"
    )
    try:
        await conn.execute(PLANTED[case])
        await apply_roles(conn, example(), actor="tests")
        again = await plan_roles(conn, example())
        assert again.empty, again.render()
        assert not await conn.fetchval(f"SELECT pg_has_role('zz_holder', '{GROUP}', 'MEMBER')")
        assert await run_audit(conn, example(), stale_after_days=30) == []
    finally:
        await conn.execute("DROP ROLE IF EXISTS zz_holder; DROP ROLE IF EXISTS zz_deputy")
