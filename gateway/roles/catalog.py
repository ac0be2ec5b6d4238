"""Reading the live roles, memberships, privileges and settings from PostgreSQL's catalog.

In scope are managed roles (their comment carries our marker), roles named like declared ones,
and every grant on the gateway's schemas, whoever the grantee: a hand-made `GRANT` to an
unmanaged role is exactly the drift an audit must see.
"""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg

from gateway.roles.shadow import read_shadow
from gateway.roles.state import (
    Grant,
    RegistryRow,
    RoleState,
    State,
    join_names,
    parse_marker,
)

__all__ = ["read_catalog"]

ROLES = """
SELECT r.rolname, r.rolcanlogin, r.rolcreaterole, r.rolconnlimit, r.rolsuper, r.rolcreatedb,
       r.rolreplication, r.rolbypassrls, r.rolinherit,
       CASE WHEN r.rolvaliduntil <> 'infinity' THEN r.rolvaliduntil::text END AS valid_until,
       shobj_description(r.oid, 'pg_authid') AS comment,
       coalesce((SELECT s.setconfig FROM pg_db_role_setting s
                 WHERE s.setrole = r.oid AND s.setdatabase = 0), '{}') AS settings,
       coalesce((SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_database d
                 ON d.oid = s.setdatabase AND d.datname = current_database()
                 WHERE s.setrole = r.oid), '{}') AS database_settings
FROM pg_roles r
WHERE r.rolname = ANY($1::text[]) OR shobj_description(r.oid, 'pg_authid') LIKE $2
"""

# Objects in temporary schemas live and die with one session: no plan can own them.
TEMPORARY = r"'^pg_(toast_)?temp_\d+$'"

# Grants on tables (and sequences) and columns in the managed schemas, to anyone but the
# owner, plus grants anywhere in this database to the roles in scope. Superusers are not left
# out: a superuser needs no grant, so one granted by hand is drift like any other, and a managed
# role made superuser must still show what it was given. The declaration grants no sequence, so
# each sequence grant found is drift: its UPDATE is a way around a table's grants.
TABLE_GRANTS = f"""
WITH acl AS (
    SELECT n.nspname, c.relname, c.relkind::text, c.relowner AS owner, (aclexplode(c.relacl)).*
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND c.relacl IS NOT NULL
      AND n.nspname !~ {TEMPORARY}
)
SELECT nspname, relname, relkind, coalesce(r.rolname, 'PUBLIC') AS grantee, privilege_type,
       is_grantable
FROM acl LEFT JOIN pg_roles r ON r.oid = acl.grantee
WHERE acl.grantee <> acl.owner
  AND (acl.nspname = ANY($2::text[]) OR r.rolname = ANY($1::text[]))
"""

COLUMN_GRANTS = f"""
WITH acl AS (
    SELECT n.nspname, c.relname, a.attname, c.relowner AS owner, (aclexplode(a.attacl)).*
    FROM pg_attribute a
    JOIN pg_class c ON c.oid = a.attrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE a.attacl IS NOT NULL AND NOT a.attisdropped AND n.nspname !~ {TEMPORARY}
)
SELECT nspname, relname, attname, coalesce(r.rolname, 'PUBLIC') AS grantee, privilege_type,
       is_grantable
FROM acl LEFT JOIN pg_roles r ON r.oid = acl.grantee
WHERE acl.grantee <> acl.owner
  AND (acl.nspname = ANY($2::text[]) OR r.rolname = ANY($1::text[]))
"""

SCHEMA_GRANTS = f"""
WITH acl AS (
    SELECT n.nspname, n.nspowner AS owner, (aclexplode(n.nspacl)).*
    FROM pg_namespace n WHERE n.nspacl IS NOT NULL AND n.nspname !~ {TEMPORARY}
)
SELECT nspname AS target, coalesce(r.rolname, 'PUBLIC') AS grantee, privilege_type,
       is_grantable
FROM acl LEFT JOIN pg_roles r ON r.oid = acl.grantee
WHERE acl.grantee <> acl.owner
  AND (acl.nspname = ANY($2::text[]) OR r.rolname = ANY($1::text[]))
"""

# Grants on this database to the roles in scope. None is declared: CONNECT comes from PUBLIC,
# CREATE makes schemas and TEMPORARY tables no plan can reach. PUBLIC's own (CONNECT and
# TEMPORARY unless revoked) are the database's business, not a role's.
DATABASE_GRANTS = """
WITH acl AS (
    SELECT d.datname, d.datdba AS owner, (aclexplode(d.datacl)).*
    FROM pg_database d WHERE d.datname = current_database() AND d.datacl IS NOT NULL
)
SELECT datname AS target, r.rolname AS grantee, privilege_type, is_grantable
FROM acl JOIN pg_roles r ON r.oid = acl.grantee
WHERE acl.grantee <> acl.owner AND r.rolname = ANY($1::text[])
"""

# Grants on functions and procedures, in the managed schemas or to the roles in scope. The
# declaration grants none, so each one found is drift: EXECUTE on a SECURITY DEFINER function
# is a way around a table's grants. PUBLIC's EXECUTE is every function's default and not
# listed: the product's own functions check who calls them or are revoked from PUBLIC in their
# migration.
FUNCTION_GRANTS = f"""
WITH acl AS (
    SELECT p.oid, n.nspname, p.proowner AS owner, (aclexplode(p.proacl)).*
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE p.proacl IS NOT NULL AND n.nspname !~ {TEMPORARY}
)
SELECT acl.oid::regprocedure::text AS target, r.rolname AS grantee, privilege_type,
       is_grantable
FROM acl JOIN pg_roles r ON r.oid = acl.grantee
WHERE acl.grantee <> acl.owner
  AND (acl.nspname = ANY($2::text[]) OR r.rolname = ANY($1::text[]))
"""

# Default privileges in the managed schemas, to the roles in scope, and those a role in scope
# set up for its own future objects (whoever it gives them to).
DEFAULT_GRANTS = f"""
WITH acl AS (
    SELECT d.defaclrole, d.defaclnamespace, d.defaclobjtype, (aclexplode(d.defaclacl)).*
    FROM pg_default_acl d
)
SELECT o.rolname AS owner, coalesce(n.nspname, '') AS nspname, acl.defaclobjtype::text AS objtype,
       coalesce(r.rolname, 'PUBLIC') AS grantee, privilege_type, is_grantable
FROM acl
JOIN pg_roles o ON o.oid = acl.defaclrole
LEFT JOIN pg_namespace n ON n.oid = acl.defaclnamespace
LEFT JOIN pg_roles r ON r.oid = acl.grantee
WHERE acl.grantee <> acl.defaclrole AND coalesce(n.nspname, '') !~ {TEMPORARY}
  AND (n.nspname = ANY($2::text[]) OR r.rolname = ANY($1::text[]) OR o.rolname = ANY($1::text[]))
"""

REGISTRY = "SELECT id, name, tier, login_role, removed_at IS NOT NULL AS removed FROM gateway.roles"

VERIFIERS = "SELECT rolname, rolpassword FROM pg_authid WHERE rolname = ANY($1::text[])"


# The product's own triggers on its control tables (not internal ones, such as foreign keys')
# that no longer fire in normal sessions: 'D' disabled, 'R' firing only under
# session_replication_role = replica ('A', always, still fires).
DISABLED_TRIGGERS = """
SELECT n.nspname, c.relname, t.tgname
  FROM pg_trigger t
  JOIN pg_class c ON c.oid = t.tgrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE NOT t.tgisinternal AND t.tgenabled IN ('D', 'R') AND n.nspname = 'gateway'
"""


# Relations and functions in the managed schemas whose owner is not the schema's: whoever owns
# a table may delete from it, truncate or drop it whatever the grants say. A managed schema owned
# by a role in scope may be filled and emptied by it: it goes to the database's owner, who then
# is what its objects are measured against. When that is a role in scope too there is nobody to
# give it to: the schema is listed without a new owner and its objects are not judged.
FOREIGN_OWNERS = """
WITH schemas AS (
    SELECT n.oid, n.nspname, n.nspowner AS actual,
           CASE WHEN NOT so.rolname = ANY($2::text[]) THEN n.nspowner
                WHEN NOT dba.rolname = ANY($2::text[]) THEN d.datdba END AS owner
      FROM pg_namespace n
      JOIN pg_roles so ON so.oid = n.nspowner
      JOIN pg_database d ON d.datname = current_database()
      JOIN pg_roles dba ON dba.oid = d.datdba
     WHERE n.nspname = ANY($1::text[])
)
SELECT 'SCHEMA' AS kind, quote_ident(s.nspname) AS object, a.rolname AS owner,
       o.rolname AS schema_owner
  FROM schemas s
  JOIN pg_roles a ON a.oid = s.actual
  LEFT JOIN pg_roles o ON o.oid = s.owner
 WHERE s.actual IS DISTINCT FROM s.owner
UNION ALL
SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                      WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END,
       quote_ident(s.nspname) || '.' || quote_ident(c.relname), o.rolname, so.rolname
  FROM pg_class c
  JOIN schemas s ON s.oid = c.relnamespace
  JOIN pg_roles o ON o.oid = c.relowner
  JOIN pg_roles so ON so.oid = s.owner
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND c.relowner <> s.owner
   -- a sequence owned by a column follows its table's owner: the table is what is reported
   AND NOT (c.relkind = 'S' AND EXISTS (
       SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('a', 'i')))
UNION ALL
SELECT 'FUNCTION', p.oid::regprocedure::text, o.rolname, so.rolname
  FROM pg_proc p
  JOIN schemas s ON s.oid = p.pronamespace
  JOIN pg_roles o ON o.oid = p.proowner
  JOIN pg_roles so ON so.oid = s.owner
 WHERE p.proowner <> s.owner
"""


# What a grant may name: each relation in the managed schemas, with its columns.
RELATIONS = """
SELECT n.nspname, c.relname,
       coalesce(array_agg(a.attname) FILTER (WHERE a.attnum > 0 AND NOT a.attisdropped), '{}')
       AS columns
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_attribute a ON a.attrelid = c.oid
 WHERE n.nspname = ANY($1::text[]) AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
 GROUP BY n.nspname, c.relname
"""


async def read_catalog(
    conn: asyncpg.Connection, names: Iterable[str], schemas: Iterable[str]
) -> State:
    """The live state of the roles in scope (declared `names` and anything managed)."""
    state = State(database=await conn.fetchval("SELECT current_database()"))
    for row in await conn.fetch(ROLES, list(names), "managed by m2m-gateway%"):
        state.roles[row["rolname"]] = RoleState(
            name=row["rolname"],
            login=row["rolcanlogin"],
            createrole=row["rolcreaterole"],
            connection_limit=row["rolconnlimit"],
            comment=row["comment"],
            settings=_settings(row["settings"]),
            superuser=row["rolsuper"],
            createdb=row["rolcreatedb"],
            replication=row["rolreplication"],
            bypassrls=row["rolbypassrls"],
            inherit=row["rolinherit"],
            valid_until=row["valid_until"],
            database_settings=_settings(row["database_settings"]),
        )
    scope = sorted(state.roles)
    schema_list = sorted(set(schemas))
    # The shadow reads every membership of the cluster: those touching a role in scope are
    # the ones the plan compares with the declaration.
    state.shadow = await read_shadow(conn, schema_list)
    state.memberships = [
        m for m in state.shadow.edges if m.role in state.roles or m.member in state.roles
    ]
    for row in await conn.fetch(TABLE_GRANTS, scope, schema_list):
        table = join_names(row["nspname"], row["relname"])
        kind = "sequence" if row["relkind"] == "S" else "table"
        state.grants.add(_grant(row, kind, table))
    for row in await conn.fetch(COLUMN_GRANTS, scope, schema_list):
        table = join_names(row["nspname"], row["relname"])
        state.grants.add(_grant(row, "column", table, row["attname"]))
    for row in await conn.fetch(FUNCTION_GRANTS, scope, schema_list):
        state.grants.add(_grant(row, "routine", row["target"]))
    for row in await conn.fetch(SCHEMA_GRANTS, scope, schema_list):
        state.grants.add(_grant(row, "schema", row["target"]))
    for row in await conn.fetch(DATABASE_GRANTS, scope):
        state.grants.add(_grant(row, "database", row["target"]))
    for row in await conn.fetch(DEFAULT_GRANTS, scope, schema_list):
        target = join_names(row["owner"], row["nspname"], row["objtype"], sep=":")
        state.grants.add(_grant(row, "default", target))
    for row in await conn.fetch(FOREIGN_OWNERS, schema_list, scope):
        state.foreign_owners.add((row["kind"], row["object"], row["owner"], row["schema_owner"]))
    for row in await conn.fetch(DISABLED_TRIGGERS):
        state.disabled_triggers.add((join_names(row["nspname"], row["relname"]), row["tgname"]))
    for row in await conn.fetch(REGISTRY):
        state.registry[row["id"]] = RegistryRow(
            row["id"], row["name"], row["tier"], row["login_role"], row["removed"]
        )
    for row in await conn.fetch(RELATIONS, schema_list):
        state.relations[join_names(row["nspname"], row["relname"])] = frozenset(row["columns"])
    state.verifiers = await _verifiers(conn, [n for n, r in state.roles.items() if r.login])
    return state


def _grant(row: asyncpg.Record, kind: str, target: str, column: str = "") -> Grant:
    return Grant(row["grantee"], kind, target, row["privilege_type"], column, row["is_grantable"])


def _settings(config: list[str]) -> frozenset[tuple[str, str]]:
    return frozenset((key, value) for key, _, value in (item.partition("=") for item in config))


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
