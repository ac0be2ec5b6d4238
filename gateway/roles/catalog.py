"""Reading the live roles, memberships, privileges and settings from PostgreSQL's catalog.

In scope are managed roles (their comment carries our marker), roles named like declared ones,
and every grant on the gateway's schemas, whoever the grantee: a hand-made `GRANT` to an
unmanaged role is exactly the drift an audit must see.
"""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg

from gateway.roles.state import Grant, Membership, RegistryRow, RoleState, State, parse_marker

__all__ = ["read_catalog"]

ROLES = """
SELECT r.rolname, r.rolcanlogin, r.rolcreaterole, r.rolconnlimit,
       shobj_description(r.oid, 'pg_authid') AS comment,
       coalesce((SELECT s.setconfig FROM pg_db_role_setting s
                 WHERE s.setrole = r.oid AND s.setdatabase = 0), '{}') AS settings
FROM pg_roles r
WHERE r.rolname = ANY($1::text[]) OR shobj_description(r.oid, 'pg_authid') LIKE $2
"""

MEMBERSHIPS = """
SELECT g.rolname AS role, m.rolname AS member, a.inherit_option, a.set_option,
       a.admin_option, gr.rolname AS grantor
FROM pg_auth_members a
JOIN pg_roles g ON g.oid = a.roleid
JOIN pg_roles m ON m.oid = a.member
JOIN pg_roles gr ON gr.oid = a.grantor
WHERE g.rolname = ANY($1::text[]) OR m.rolname = ANY($1::text[])
"""

# Grants on tables and columns in the managed schemas, to anyone but the owner and superusers,
# plus grants anywhere in this database to the roles in scope.
TABLE_GRANTS = """
WITH acl AS (
    SELECT n.nspname || '.' || c.relname AS target, c.relowner AS owner, n.nspname,
           (aclexplode(c.relacl)).*
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND c.relacl IS NOT NULL
)
SELECT target, coalesce(r.rolname, 'PUBLIC') AS grantee, privilege_type
FROM acl LEFT JOIN pg_roles r ON r.oid = acl.grantee
WHERE acl.grantee <> acl.owner AND NOT coalesce(r.rolsuper, false)
  AND (acl.nspname = ANY($2::text[]) OR r.rolname = ANY($1::text[]))
"""

COLUMN_GRANTS = """
WITH acl AS (
    SELECT n.nspname || '.' || c.relname AS target, a.attname, c.relowner AS owner, n.nspname,
           (aclexplode(a.attacl)).*
    FROM pg_attribute a
    JOIN pg_class c ON c.oid = a.attrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE a.attacl IS NOT NULL AND NOT a.attisdropped
)
SELECT target, attname, coalesce(r.rolname, 'PUBLIC') AS grantee, privilege_type
FROM acl LEFT JOIN pg_roles r ON r.oid = acl.grantee
WHERE acl.grantee <> acl.owner AND NOT coalesce(r.rolsuper, false)
  AND (acl.nspname = ANY($2::text[]) OR r.rolname = ANY($1::text[]))
"""

SCHEMA_GRANTS = """
WITH acl AS (
    SELECT n.nspname, n.nspowner AS owner, (aclexplode(n.nspacl)).*
    FROM pg_namespace n WHERE n.nspacl IS NOT NULL
)
SELECT nspname AS target, coalesce(r.rolname, 'PUBLIC') AS grantee, privilege_type
FROM acl LEFT JOIN pg_roles r ON r.oid = acl.grantee
WHERE acl.grantee <> acl.owner AND NOT coalesce(r.rolsuper, false)
  AND (acl.nspname = ANY($2::text[]) OR r.rolname = ANY($1::text[]))
"""

DEFAULT_GRANTS = """
WITH acl AS (
    SELECT d.defaclrole, d.defaclnamespace, d.defaclobjtype, (aclexplode(d.defaclacl)).*
    FROM pg_default_acl d
)
SELECT o.rolname || ':' || coalesce(n.nspname, '') || ':' || acl.defaclobjtype::text AS target,
       coalesce(r.rolname, 'PUBLIC') AS grantee, privilege_type
FROM acl
JOIN pg_roles o ON o.oid = acl.defaclrole
LEFT JOIN pg_namespace n ON n.oid = acl.defaclnamespace
LEFT JOIN pg_roles r ON r.oid = acl.grantee
WHERE acl.grantee <> acl.defaclrole
  AND (n.nspname = ANY($2::text[]) OR r.rolname = ANY($1::text[]))
"""

REGISTRY = "SELECT id, name, tier, login_role, removed_at IS NOT NULL AS removed FROM gateway.roles"

VERIFIERS = "SELECT rolname, rolpassword FROM pg_authid WHERE rolname = ANY($1::text[])"


async def read_catalog(
    conn: asyncpg.Connection, names: Iterable[str], schemas: Iterable[str]
) -> State:
    """The live state of the roles in scope (declared `names` and anything managed)."""
    state = State()
    for row in await conn.fetch(ROLES, list(names), "managed by m2m-gateway%"):
        settings = frozenset(tuple(item.split("=", 1)) for item in row["settings"] if "=" in item)
        state.roles[row["rolname"]] = RoleState(
            name=row["rolname"],
            login=row["rolcanlogin"],
            createrole=row["rolcreaterole"],
            connection_limit=row["rolconnlimit"],
            comment=row["comment"],
            settings=settings,
        )
    scope = sorted(state.roles)
    schema_list = sorted(set(schemas))
    for row in await conn.fetch(MEMBERSHIPS, scope):
        state.memberships.add(
            Membership(
                role=row["role"],
                member=row["member"],
                inherit=row["inherit_option"],
                set=row["set_option"],
                admin=row["admin_option"],
                grantor=row["grantor"],
            )
        )
    for row in await conn.fetch(TABLE_GRANTS, scope, schema_list):
        state.grants.add(Grant(row["grantee"], "table", row["target"], row["privilege_type"]))
    for row in await conn.fetch(COLUMN_GRANTS, scope, schema_list):
        state.grants.add(
            Grant(row["grantee"], "column", row["target"], row["privilege_type"], row["attname"])
        )
    for row in await conn.fetch(SCHEMA_GRANTS, scope, schema_list):
        state.grants.add(Grant(row["grantee"], "schema", row["target"], row["privilege_type"]))
    for row in await conn.fetch(DEFAULT_GRANTS, scope, schema_list):
        state.grants.add(Grant(row["grantee"], "default", row["target"], row["privilege_type"]))
    for row in await conn.fetch(REGISTRY):
        state.registry[row["id"]] = RegistryRow(
            row["id"], row["name"], row["tier"], row["login_role"], row["removed"]
        )
    state.verifiers = await _verifiers(conn, [n for n, r in state.roles.items() if r.login])
    return state


async def _verifiers(conn: asyncpg.Connection, logins: list[str]) -> dict[str, str | None]:
    """Password verifiers, readable only by a superuser; without them passwords go unchecked."""
    if not await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
        return {}
    return {row["rolname"]: row["rolpassword"] for row in await conn.fetch(VERIFIERS, logins)}


def managed_ids(state: State) -> dict[tuple[str, str], str]:
    """(declared id, part) -> live role name, for every role carrying our marker."""
    found = {}
    for name, role in state.roles.items():
        parsed = parse_marker(role.comment)
        if parsed is not None:
            found[parsed] = name
    return found
