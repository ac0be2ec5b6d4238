"""Whether a route can be written: by a declared role (the declaration alone), and into the table
the database really has (its catalog), named path by path before anything starts.

An upsert (a state route) is written in two statements (see `gateway.sinks.postgres`): the
keys not there yet are inserted, then the rows whose version is older are updated. So it needs
INSERT, UPDATE on every column but the key, and SELECT on the key and version columns (the
update reads them in the table), and nothing else: a state writer cannot read the states.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.config import GatewayConfig, RouteConfig
from gateway.db import Conn
from gateway.decoder import COLUMNS, DEDUP_COLUMNS
from gateway.roles.declaration import Declaration, Privilege

__all__ = ["check_routes", "route_problems"]

# How PostgreSQL's `format_type` names each type a column may be declared with. Nothing else is
# taken for equal: text is not varchar, float8 is not numeric (a COPY would convert, or refuse
# rows one by one, at the worst time).
CATALOG_TYPES = {
    "timestamptz": "timestamp with time zone",
    "float8": "double precision",
    "int8": "bigint",
    "int4": "integer",
    "bool": "boolean",
    "text": "text",
    "jsonb": "jsonb",
    "uuid": "uuid",
}


@dataclass
class _Held:
    """What a role holds on one table, through its grants and the roles it inherits."""

    table: set[Privilege] = field(default_factory=set)
    columns: dict[Privilege, set[str]] = field(default_factory=dict)

    def missing(self, privilege: Privilege, columns: list[str]) -> list[str]:
        """The columns `privilege` does not reach (none when granted on the whole table)."""
        if privilege in self.table:
            return []
        granted = self.columns.get(privilege, set())
        return [column for column in columns if column not in granted]


def _held(doc: Declaration, role: str, table: str) -> _Held:
    held = _Held()
    seen: set[str] = set()
    todo = [role]
    while todo:
        name = todo.pop()
        if name in seen or name not in doc.roles:
            continue
        seen.add(name)
        spec = doc.roles[name]
        for grant in spec.grants:
            if grant.table != table:
                continue
            if grant.columns is None:
                held.table.update(grant.privileges)
            else:
                for privilege in grant.privileges:
                    held.columns.setdefault(privilege, set()).update(grant.columns)
        todo.extend(spec.inherits)
    return held


def written_columns(route: RouteConfig) -> list[str]:
    """The columns the route's rows fill."""
    if route.kind == "telemetry":
        return list(DEDUP_COLUMNS if route.dedup else COLUMNS)
    return [column.name for column in route.columns]


def route_problems(doc: Declaration, role: str, route: RouteConfig) -> list[str]:
    """What the declaration lacks for `role` to write `route`, as sentences; none: it may."""
    if role not in doc.roles:
        return [f"role {role} is not declared"]
    held = _held(doc, role, route.table)
    columns = written_columns(route)
    problems = []
    missing = held.missing(Privilege.INSERT, columns)
    if missing:
        partly = f" ({', '.join(missing)})" if Privilege.INSERT in held.columns else ""
        problems.append(f"role {role} lacks INSERT on {route.table}{partly}: the route adds rows")
    if route.kind != "state":
        return problems
    key = list(route.key)
    updated = [column for column in columns if column not in key]
    needs = [
        (Privilege.UPDATE, updated, "an upsert sets every column but the key"),
        (Privilege.SELECT, key, "an upsert finds the row by its key"),
        (Privilege.SELECT, [route.version or ""], "an upsert compares versions"),
    ]
    for privilege, wanted, why in needs:
        missing = held.missing(privilege, wanted)
        if missing:
            problems.append(
                f"role {role} lacks {privilege.value} on {route.table} ({', '.join(missing)}): "
                f"{why}"
            )
    return problems


@dataclass(frozen=True)
class _Column:
    type: str
    required: bool  # NOT NULL, without a default


TABLE_COLUMNS = """
SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type,
       a.attnotnull AND NOT a.atthasdef AND a.attidentity = '' AND a.attgenerated = ''
           AS required
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')
  AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

TABLE_EXISTS = """
SELECT EXISTS (
    SELECT FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p'))
"""

# Unique indexes an ON CONFLICT could infer: valid, not partial, on plain columns only.
UNIQUE_KEYS = """
SELECT array_agg(a.attname::text) AS columns
FROM pg_catalog.pg_index i
JOIN pg_catalog.pg_class c ON c.oid = i.indrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey)
WHERE n.nspname = $1 AND c.relname = $2 AND i.indisunique AND i.indisvalid
  AND i.indpred IS NULL AND i.indexprs IS NULL
GROUP BY i.indexrelid
"""


async def check_routes(
    conn: Conn, config: GatewayConfig, doc: Declaration
) -> list[tuple[str, str]]:
    """(path, problem) for every table or state route the database or the declaration cannot
    take. Reads the catalog only, which any login may."""
    problems: list[tuple[str, str]] = []
    for index, route in enumerate(config.routes):
        if route.kind == "telemetry":
            continue
        where = f"routes[{index}]"
        problems += [(f"{where}{path}", text) for path, text in await _table_problems(conn, route)]
        roles = [route.role] if route.role is not None else list(doc.roles)
        found = {role: route_problems(doc, role, route) for role in roles}
        if all(found.values()):
            every = "; ".join(problem for role in roles for problem in found[role])
            problems.append((where, f"no role may write it: {every or 'no role is declared'}"))
    return problems


async def _table_problems(conn: Conn, route: RouteConfig) -> list[tuple[str, str]]:
    """Paths under the route, and what the live table lacks for it."""
    schema, name = route.table.split(".")
    live = {
        record["name"]: _Column(record["type"], record["required"])
        for record in await conn.fetch(TABLE_COLUMNS, schema, name)
    }
    if not live and not await conn.fetchval(TABLE_EXISTS, schema, name):
        return [(".table", f"table {route.table} does not exist")]
    problems = []
    for j, declared in enumerate(route.columns):
        column = live.get(declared.name)
        if column is None:
            problems.append(
                (f".columns[{j}].name", f'table {route.table} has no column "{declared.name}"')
            )
        elif column.type != CATALOG_TYPES[declared.type]:
            exact = " (types must match exactly)" if declared.type == "text" else ""
            problems.append(
                (
                    f".columns[{j}].type",
                    f"column {declared.name} is {column.type}, declared {declared.type}{exact}",
                )
            )
    written = {declared.name for declared in route.columns}
    for column_name, column in live.items():
        if column.required and column_name not in written:
            problems.append((".columns", f"misses NOT NULL column {column_name}"))
    keys: list[set[str]] = []
    if route.kind == "state" or route.dedup:
        keys = [set(record["columns"]) for record in await conn.fetch(UNIQUE_KEYS, schema, name)]
    if route.dedup and not any(key <= written for key in keys):
        # Without one, ON CONFLICT DO NOTHING has nothing to conflict on: duplicates land.
        problems.append(
            (
                ".dedup",
                f"{route.table} has no unique index on columns the route writes: a redelivered "
                "message would land twice",
            )
        )
    if route.kind == "state" and set(route.key) not in keys:
        problems.append(
            (
                ".key",
                f"{route.table} has no unique index or primary key on exactly "
                f"({', '.join(route.key)}): an upsert needs one",
            )
        )
    return problems
