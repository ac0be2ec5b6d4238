"""Each kind of shadow access, planted by hand as a superuser: `audit` reports it, `plan` undoes
it, and once applied the planted role really lost its way in."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from gateway.bootstrap import bootstrap
from gateway.roles.apply import apply_roles, plan_roles
from gateway.roles.audit import run_audit
from gateway.roles.declaration import Declaration, load_declaration, parse_declaration
from gateway.roles.plan import PlanError
from gateway.roles.shadow import SHADOW_CHANGES
from gateway.services.postgres import Postgres

from .conftest import EXAMPLE_ROLES
from .databases import own_cluster

SHADOW = {"shadow_grant", "shadow_member", "shadow_predefined", "shadow_superuser"}
SHADOW |= {"undeclared_superuser"}
PASSWORD = "planted-secret"


@pytest.fixture
async def governed_cluster(role_passwords: dict[str, str]) -> AsyncIterator[Postgres]:
    async with own_cluster() as server:  # superusers and predefined roles are cluster-wide
        await bootstrap(server.dsn, actor="tests")
        yield server


def example() -> Declaration:
    return load_declaration(EXAMPLE_ROLES)


# kind -> (statements planted as superuser, the role logging in, what it could do, the plan's
# change kinds that undo it, words the plan shows)
PLANTED = {
    "shadow_member": (
        "CREATE ROLE sidecar LOGIN CONNECTION LIMIT 1; GRANT state_writer TO sidecar",
        "sidecar",
        "UPDATE ingest.device_state SET state = '{}'",
        {"revoke_membership"},
        'REVOKE "state_writer" FROM "sidecar" GRANTED BY "postgres"',
    ),
    "shadow_superuser": (
        "CREATE ROLE climber LOGIN CONNECTION LIMIT 1; GRANT postgres TO climber",
        "climber",
        # the bootstrap superuser owns the tables, and its members inherit what it owns
        "SELECT count(*) FROM gateway.identities",
        {"revoke_shadow_membership"},
        'REVOKE "postgres" FROM "climber" GRANTED BY "postgres"',
    ),
    "undeclared_superuser": (
        "CREATE ROLE shadow_admin SUPERUSER LOGIN CONNECTION LIMIT 1",
        "shadow_admin",
        "SELECT count(*) FROM gateway.identities",
        {"demote_superuser"},
        'ALTER ROLE "shadow_admin" NOSUPERUSER',
    ),
    "shadow_predefined": (
        # a group that may grant what it holds, and a login it passed it to: the group's own
        # grant is revoked with what depends on it
        "CREATE ROLE files NOLOGIN; GRANT pg_read_all_data TO files WITH ADMIN OPTION;"
        "CREATE ROLE rogue LOGIN CONNECTION LIMIT 1; GRANT files TO rogue;"
        "GRANT pg_read_all_data TO rogue GRANTED BY files; GRANT pg_write_all_data TO rogue",
        "rogue",
        "SELECT count(*) FROM gateway.identities",
        {"revoke_shadow_membership"},
        'REVOKE "pg_read_all_data" FROM "files" GRANTED BY "postgres" CASCADE',
    ),
    "shadow_grant": (
        "CREATE ROLE fixer LOGIN CONNECTION LIMIT 1; GRANT USAGE ON SCHEMA ingest TO fixer;"
        "GRANT UPDATE ON ingest.device_state TO fixer",
        "fixer",
        "UPDATE ingest.device_state SET state = '{}'",
        {"revoke_privilege"},
        'REVOKE UPDATE ON TABLE "ingest"."device_state" FROM "fixer"',
    ),
}


async def shadow_found(conn: asyncpg.Connection) -> set[tuple[str, str]]:
    findings = await run_audit(conn, example(), stale_after_days=30)
    return {(f.check, f.subject) for f in findings if f.check in SHADOW}


@pytest.mark.parametrize("kind", sorted(PLANTED))
async def test_each_kind_of_shadow_access_is_undone(governed_cluster: Postgres, kind: str) -> None:
    planted, login, way_in, kinds, shown = PLANTED[kind]
    conn = await asyncpg.connect(governed_cluster.dsn)
    try:
        await conn.execute(planted)
        await conn.execute(f"ALTER ROLE {login} PASSWORD '{PASSWORD}'")
        planted_as = governed_cluster.address.dsn_for(login, PASSWORD)
        planted_conn = await asyncpg.connect(planted_as)
        try:
            await planted_conn.execute(way_in)  # the way in is real
        finally:
            await planted_conn.close()

        assert (kind, login) in await shadow_found(conn)
        plan = await plan_roles(conn, example())
        assert {c.kind for c in plan.changes} == kinds, plan.render()
        assert shown in plan.render()
        # the undoing change is reported once, by the shadow finding with its path
        drift = {f.check for f in await run_audit(conn, example(), stale_after_days=30)}
        assert not drift & SHADOW_CHANGES

        _, version = await apply_roles(conn, example(), actor="tests")
        assert version is not None
        again = await plan_roles(conn, example())
        assert again.empty, again.render()
        assert await shadow_found(conn) == set()

        planted_conn = await asyncpg.connect(planted_as)
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await planted_conn.execute(way_in)
        finally:
            await planted_conn.close()
    finally:
        await conn.close()


async def test_the_last_edge_cuts_every_role_behind_it(governed_cluster: Postgres) -> None:
    conn = await asyncpg.connect(governed_cluster.dsn)
    try:
        await conn.execute(
            """
            CREATE ROLE files NOLOGIN;
            GRANT pg_execute_server_program TO files;
            CREATE ROLE operator_a LOGIN CONNECTION LIMIT 1;
            CREATE ROLE operator_b LOGIN CONNECTION LIMIT 1;
            GRANT files TO operator_a, operator_b;
            """
        )
        plan = await plan_roles(conn, example())
        (change,) = plan.changes
        assert change.sql == (
            'REVOKE "pg_execute_server_program" FROM "files" GRANTED BY "postgres"',
        )
        assert "files, operator_a, operator_b" in change.summary
        await apply_roles(conn, example(), actor="tests")
        assert (await plan_roles(conn, example())).empty
        assert await shadow_found(conn) == set()
    finally:
        await conn.close()


async def test_a_plan_never_demotes_the_superuser_running_it(governed_cluster: Postgres) -> None:
    conn = await asyncpg.connect(governed_cluster.dsn)
    try:
        await conn.execute(f"CREATE ROLE ops SUPERUSER LOGIN PASSWORD '{PASSWORD}'")
    finally:
        await conn.close()
    ops = await asyncpg.connect(governed_cluster.address.dsn_for("ops", PASSWORD))
    try:
        with pytest.raises(PlanError, match=r"superusers: ops runs this plan .* add 'ops' to"):
            await plan_roles(ops, example())
        with pytest.raises(PlanError, match="ops runs this plan"):
            await apply_roles(ops, example(), actor="tests")
        assert await ops.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = 'ops'")

        text = EXAMPLE_ROLES.read_text()
        only_ops = parse_declaration(
            text.replace("version = 1\n", 'version = 1\nsuperusers = ["ops"]\n', 1)
        )
        with pytest.raises(PlanError, match="postgres is the bootstrap superuser"):
            await plan_roles(ops, only_ops)

        both = parse_declaration(
            text.replace("version = 1\n", 'version = 1\nsuperusers = ["postgres", "ops"]\n', 1)
        )
        assert (await plan_roles(ops, both)).empty
    finally:
        await ops.close()
