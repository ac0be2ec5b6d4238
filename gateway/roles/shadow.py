"""Roles outside the declaration that reach managed data: read once, judged in one place.

`gateway audit` reports each way in `reaches` finds, and `roles plan` cuts the memberships
`cuts` picks and demotes the superusers `undeclared_superusers` names, from the same reading,
so the audit never shows a way in the plan leaves open.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import asyncpg

from gateway.roles.declaration import Declaration
from gateway.roles.state import ClusterRole, Membership, Shadow, parse_marker

__all__ = [
    "PREDEFINED_ROLES",
    "SHADOW_CHANGES",
    "Cut",
    "Reach",
    "cuts",
    "managed_names",
    "membership_paths",
    "parents",
    "reaches",
    "read_shadow",
    "undeclared_superusers",
]

# Predefined roles that reach every table or the server itself, whatever the grants say, with
# what a member may do.
PREDEFINED_ROLES: dict[str, str] = {
    "pg_read_all_data": "may read every table, the registry included,",
    "pg_write_all_data": "may write every table, the registry included,",
    "pg_read_server_files": "may read any file the server can",
    "pg_write_server_files": "may write any file the server can",
    "pg_execute_server_program": "may run programs as the server's OS user",
}

# The kinds of plan change that undo shadow access: the audit reports their reason instead.
SHADOW_CHANGES = frozenset({"revoke_shadow_membership", "demote_superuser"})

SHADOW_ROLES = """
SELECT rolname, rolcanlogin AS login, rolsuper AS superuser, oid = 10 AS bootstrap,
       shobj_description(oid, 'pg_authid') AS comment
FROM pg_roles
"""

# Every membership is a way in: INHERIT uses the role's grants, SET ROLE becomes it, and ADMIN
# may grant itself the rest.
SHADOW_MEMBERSHIPS = """
SELECT g.rolname AS role, m.rolname AS member, a.inherit_option, a.set_option, a.admin_option,
       gr.rolname AS grantor
FROM pg_auth_members a
JOIN pg_roles g ON g.oid = a.roleid
JOIN pg_roles m ON m.oid = a.member
JOIN pg_roles gr ON gr.oid = a.grantor
"""

# What each role holds in the managed schemas: grants on relations (sequences included),
# columns, functions and the schemas, and ownership, which is every privilege at once.
SHADOW_HOLDINGS = """
WITH objects AS (
    SELECT n.nspname AS schema, n.nspname || '.' || c.relname AS name, c.relowner AS owner,
           c.relacl AS acl, false AS definer
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
    UNION ALL
    SELECT n.nspname, n.nspname || '.' || p.proname || '()', p.proowner, p.proacl, p.prosecdef
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    UNION ALL
    SELECT nspname, nspname, nspowner, nspacl, false FROM pg_namespace
), managed AS (
    SELECT * FROM objects WHERE schema = ANY($1::text[])
)
SELECT r.rolname AS holder, m.name AS object,
       a.privilege_type || CASE WHEN m.definer THEN ' (SECURITY DEFINER)' ELSE '' END AS privilege
FROM managed m CROSS JOIN LATERAL aclexplode(m.acl) a JOIN pg_roles r ON r.oid = a.grantee
WHERE a.grantee <> m.owner
UNION
SELECT r.rolname, m.name, 'OWNER' FROM managed m JOIN pg_roles r ON r.oid = m.owner
UNION
SELECT r.rolname, n.nspname || '.' || c.relname || '(' || t.attname || ')', a.privilege_type
FROM pg_attribute t
JOIN pg_class c ON c.oid = t.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL aclexplode(t.attacl) a
JOIN pg_roles r ON r.oid = a.grantee
WHERE n.nspname = ANY($1::text[]) AND NOT t.attisdropped AND a.grantee <> c.relowner
"""


async def read_shadow(conn: asyncpg.Connection, schemas: Sequence[str]) -> Shadow:
    """Every role and membership of the cluster, and what each role holds in `schemas`."""
    roles = {
        row["rolname"]: ClusterRole(
            row["rolname"],
            login=row["login"],
            superuser=row["superuser"],
            managed=parse_marker(row["comment"]) is not None,
            bootstrap=row["bootstrap"],
        )
        for row in await conn.fetch(SHADOW_ROLES)
    }
    edges = tuple(
        sorted(
            (Membership.from_row(row) for row in await conn.fetch(SHADOW_MEMBERSHIPS)),
            key=lambda m: (m.role, m.member, m.grantor),
        )
    )
    held: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for row in await conn.fetch(SHADOW_HOLDINGS, list(schemas)):
        held[row["holder"]].add((row["object"], row["privilege"]))
    return Shadow(
        roles=roles,
        edges=edges,
        held={name: frozenset(found) for name, found in held.items()},
        session_user=await conn.fetchval("SELECT session_user"),
    )


@dataclass(frozen=True)
class Reach:
    """`source`, outside the declaration, reaches `target` along `path` (source first)."""

    kind: str
    source: str
    target: str
    path: tuple[str, ...]


@dataclass(frozen=True)
class Cut:
    """Revoking `role` from `member` (each grantor's grant of it) cuts the way in of `sources`."""

    role: str
    member: str
    grants: tuple[Membership, ...]
    sources: tuple[str, ...]


def managed_names(shadow: Shadow, doc: Declaration) -> set[str]:
    """Declared roles, their LOGIN members, and anything carrying our marker."""
    managed = {role for name in doc.roles for role in (name, doc.login_role(name))}
    return managed | {name for name, role in shadow.roles.items() if role.managed}


def parents(shadow: Shadow) -> dict[str, list[str]]:
    """member -> the roles it is a member of."""
    found: dict[str, list[str]] = defaultdict(list)
    for edge in shadow.edges:
        if edge.role not in found[edge.member]:
            found[edge.member].append(edge.role)
    return found


def _outside(name: str, doc: Declaration, managed: set[str]) -> bool:
    return not (name in managed or name.startswith("pg_") or name in doc.superusers)


def undeclared_superusers(shadow: Shadow, doc: Declaration) -> list[str]:
    """LOGIN superusers outside the declaration. A NOLOGIN one is no way in by itself: only a
    superuser could give it LOGIN, so its members are what `reaches` finds."""
    managed = managed_names(shadow, doc)
    return [
        name
        for name, role in sorted(shadow.roles.items())
        if role.superuser and role.login and _outside(name, doc, managed)
    ]


def reaches(shadow: Shadow, doc: Declaration, *, demoted: Iterable[str] = ()) -> list[Reach]:
    """Each way a non-superuser role outside the declaration reaches managed data, with the
    shortest path: a managed role, a superuser, a predefined role of `PREDEFINED_ROLES`, or
    (for a LOGIN role) grants in the managed schemas. `demoted` are superusers judged as the
    plain roles they become once demoted."""
    managed = managed_names(shadow, doc)
    down = set(demoted)
    up = parents(shadow)
    found = []
    for name, role in sorted(shadow.roles.items()):
        if not _outside(name, doc, managed) or (role.superuser and name not in down):
            continue
        for target, path in membership_paths(name, up, managed).items():
            kind = ""
            if target in managed:
                kind = "shadow_member"
            elif shadow.roles[target].superuser and target not in down:
                kind = "shadow_superuser"
            elif target in PREDEFINED_ROLES:
                kind = "shadow_predefined"
            elif role.login and shadow.held.get(target):
                kind = "shadow_grant"
            if kind:
                found.append(Reach(kind, name, target, tuple(path)))
    return found


def cuts(shadow: Shadow, doc: Declaration, *, demoted: Iterable[str] = ()) -> list[Cut]:
    """The memberships to revoke so that no role outside the declaration reaches a managed
    role, a superuser or a dangerous predefined role: on every such path, the edge into the
    first of these it meets. Each role on a path outside the declaration is a way in of its
    own, so each such edge must go, and no fewer edges cut them all."""
    managed = managed_names(shadow, doc)
    down = set(demoted)

    def target(name: str) -> bool:
        role = shadow.roles[name]
        return name in managed or name in PREDEFINED_ROLES or (role.superuser and name not in down)

    up = parents(shadow)
    # every role a source reaches without passing a target: the roles whose edges into a
    # target carry a way in, each with the sources it carries
    carries: dict[str, set[str]] = defaultdict(set)
    for reach in reaches(shadow, doc, demoted=down):
        if reach.kind == "shadow_grant":
            continue
        for name in _walk(reach.source, up, target):
            carries[name].add(reach.source)
    by_edge: dict[tuple[str, str], list[Membership]] = defaultdict(list)
    for edge in shadow.edges:
        if edge.member in carries and target(edge.role):
            by_edge[(edge.role, edge.member)].append(edge)
    return [
        Cut(role, member, tuple(grants), tuple(sorted(carries[member])))
        for (role, member), grants in sorted(by_edge.items())
    ]


def _walk(start: str, up: Mapping[str, Sequence[str]], stop: Callable[[str], bool]) -> set[str]:
    """`start` and the roles it reaches without walking through one `stop` says is a target."""
    seen = {start}
    todo = deque([start])
    while todo:
        for parent in up.get(todo.popleft(), ()):
            if parent not in seen and not stop(parent):
                seen.add(parent)
                todo.append(parent)
    return seen


def membership_paths(
    start: str, up: Mapping[str, Sequence[str]], stop: set[str]
) -> dict[str, list[str]]:
    """Every role `start` reaches through memberships (itself included), with the shortest path;
    roles in `stop` are reached but not walked through."""
    paths = {start: [start]}
    todo = deque([start])
    while todo:
        name = todo.popleft()
        if name in stop and name != start:
            continue
        for parent in up.get(name, ()):
            if parent not in paths:
                paths[parent] = [*paths[name], parent]
                todo.append(parent)
    return paths
