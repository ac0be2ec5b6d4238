"""One shape for both sides of a roles plan: what the declaration wants and what the catalog has.

Both the desired state (from `config/roles.toml`) and the live state (from `pg_roles`,
`pg_auth_members`, ACLs and role settings) are expressed as these plain values, so the plan is a
set difference and nothing else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import asyncpg

from gateway.roles.declaration import (
    BATCH_WRITERS,
    CONTROL_SCHEMA,
    LOGIN_SUFFIX,
    Declaration,
    Tier,
)

__all__ = [
    "MARKER",
    "ClusterRole",
    "Grant",
    "Membership",
    "RegistryRow",
    "RoleState",
    "Shadow",
    "State",
    "desired_state",
    "join_names",
    "parse_marker",
    "split_names",
]

MARKER = "managed by m2m-gateway"
_MARKER_RE = re.compile(rf"^{MARKER}; id=(?P<id>[^;]+); part=(?P<part>group|login)\b")


def marker(role_id: str, part: str) -> str:
    """The comment that tells a managed role from a hand-made one, and which declared id it is."""
    return f"{MARKER}; id={role_id}; part={part}"


def parse_marker(comment: str | None) -> tuple[str, str] | None:
    """(id, part) from a managed role's comment, or None for roles we do not manage."""
    match = _MARKER_RE.match(comment or "")
    return (match["id"], match["part"]) if match else None


_BARE = re.compile(r"[A-Za-z0-9_]*")


def join_names(*parts: str, sep: str = ".") -> str:
    """One string for a path of names, quoting any part that could hold `sep` or a quote, so
    `split_names` gives the very parts back (a table may be named `x.y`)."""
    return sep.join(
        part if _BARE.fullmatch(part) else '"' + part.replace('"', '""') + '"' for part in parts
    )


def split_names(text: str, sep: str = ".") -> list[str]:
    """The parts `join_names` joined."""
    parts = []
    i = 0
    while True:
        if text.startswith('"', i):
            part, i = [], i + 1
            while not (text[i] == '"' and not text.startswith('""', i)):
                part.append(text[i])
                i += 2 if text.startswith('""', i) else 1
            parts.append("".join(part))
            i += 1
        else:
            end = text.find(sep, i)
            end = len(text) if end < 0 else end
            parts.append(text[i:end])
            i = end
        if i >= len(text):
            return parts
        i += len(sep)


@dataclass(frozen=True)
class RoleState:
    """A role's attributes and settings; the defaults are what every managed role must have."""

    name: str
    login: bool
    createrole: bool = False
    connection_limit: int = -1
    comment: str | None = None
    settings: frozenset[tuple[str, str]] = frozenset()
    superuser: bool = False
    createdb: bool = False
    replication: bool = False
    bypassrls: bool = False
    inherit: bool = True
    # None is "never expires" (no VALID UNTIL, or 'infinity'); otherwise the time as text
    valid_until: str | None = None
    # settings for this role in the current database only (ALTER ROLE ... IN DATABASE ... SET)
    database_settings: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True, order=True)
class Membership:
    """`member` belongs to `role`; `inherit` passes privileges on, `set` allows SET ROLE."""

    role: str
    member: str
    inherit: bool = True
    set: bool = False
    admin: bool = False
    grantor: str = field(default="", compare=False)

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Membership:
        """From a catalog row of role, member, its three options and the grantor."""
        return cls(
            role=row["role"],
            member=row["member"],
            inherit=row["inherit_option"],
            set=row["set_option"],
            admin=row["admin_option"],
            grantor=row["grantor"],
        )


@dataclass(frozen=True, order=True)
class Grant:
    """One privilege of one grantee on one object.

    `kind` is `table`, `column` (then `column` names it), `schema`, `database`, `sequence`,
    `routine` (a function or procedure) or `default` (default privileges). `target` is the
    schema's or database's name, `schema.table`, a routine's signature as the catalog renders
    it, or `owner:schema:objtype`, joined by `join_names`. The grantee `PUBLIC` means everyone.
    `grantable` is the grant option: the grantee may pass the privilege on, so none is declared.
    """

    grantee: str
    kind: str
    target: str
    privilege: str
    column: str = ""
    grantable: bool = False


@dataclass(frozen=True)
class RegistryRow:
    """A row of `gateway.roles`: the ids identities point at."""

    id: str
    name: str
    tier: str
    login_role: str
    removed: bool = False


@dataclass(frozen=True)
class ClusterRole:
    """Any role of the cluster, as far as reaching managed data goes."""

    name: str
    login: bool
    superuser: bool
    # carries our marker
    managed: bool = False
    # the superuser initdb made (oid 10), which PostgreSQL never lets lose SUPERUSER
    bootstrap: bool = False


@dataclass
class Shadow:
    """Every role and membership of the cluster, and what each role holds in the managed
    schemas: what roles outside the declaration are judged on (see `gateway.roles.shadow`)."""

    roles: dict[str, ClusterRole] = field(default_factory=dict)
    # one per grantor: each is revoked on its own
    edges: tuple[Membership, ...] = ()
    # role -> (object, privilege), OWNER included
    held: dict[str, frozenset[tuple[str, str]]] = field(default_factory=dict)
    # who runs the plan: it must never plan to demote itself
    session_user: str = ""


@dataclass
class State:
    roles: dict[str, RoleState] = field(default_factory=dict)
    # one per grantor: a membership granted twice is held until each grant is revoked
    memberships: list[Membership] = field(default_factory=list)
    grants: set[Grant] = field(default_factory=set)
    registry: dict[str, RegistryRow] = field(default_factory=dict)
    # the database whose per-database role settings `RoleState.database_settings` holds
    database: str = ""
    # login role name -> SCRAM verifier, when the catalog let us read it (superuser only)
    verifiers: dict[str, str | None] = field(default_factory=dict)
    # (table, trigger) of the product's own triggers that do not fire: the append-only trail,
    # the identity counts and change feed rely on them
    disabled_triggers: set[tuple[str, str]] = field(default_factory=set)
    # the managed schemas owned by a role in scope, and objects in them not owned by their
    # schema's owner, as (SQL object kind, quoted name, owner, who should own it, None when
    # nobody outside the roles in scope could): an owner holds every privilege, granted or not
    foreign_owners: set[tuple[str, str, str, str | None]] = field(default_factory=set)
    shadow: Shadow = field(default_factory=Shadow)
    # `schema.table` -> its columns, for every relation in the managed schemas
    relations: dict[str, frozenset[str]] = field(default_factory=dict)

    def rename(self, old: str, new: str) -> None:
        """Follow a role rename through every reference, as PostgreSQL does."""
        self.roles[new] = replace(self.roles.pop(old), name=new)

        def swap(name: str) -> str:
            return new if name == old else name

        self.memberships = [
            replace(m, role=swap(m.role), member=swap(m.member)) for m in self.memberships
        ]
        self.grants = {replace(g, grantee=swap(g.grantee)) for g in self.grants}
        if old in self.verifiers:
            self.verifiers[new] = self.verifiers.pop(old)


def desired_state(doc: Declaration) -> State:
    state = State()
    for name, spec in doc.roles.items():
        login = f"{name}{LOGIN_SUFFIX}"
        state.roles[name] = RoleState(name, login=False, comment=marker(spec.id, "group"))
        state.roles[login] = RoleState(
            login,
            login=True,
            createrole=spec.tier is Tier.ADMIN,
            connection_limit=spec.connection_limit,
            comment=marker(spec.id, "login"),
            settings=frozenset({("statement_timeout", str(spec.statement_timeout_ms))}),
        )
        state.memberships.append(Membership(role=name, member=login))
        state.memberships.extend(Membership(role=parent, member=name) for parent in spec.inherits)
        if spec.tier in BATCH_WRITERS:
            # to call `gateway.append_write_log`, which checks the caller itself
            state.grants.add(Grant(name, "schema", CONTROL_SCHEMA, "USAGE"))
        for grant in spec.grants:
            schema = grant.table.split(".")[0]
            state.grants.add(Grant(name, "schema", schema, "USAGE"))
            for privilege in grant.privileges:
                if grant.columns is None:
                    state.grants.add(Grant(name, "table", grant.table, privilege.value))
                else:
                    state.grants.update(
                        Grant(name, "column", grant.table, privilege.value, column)
                        for column in grant.columns
                    )
        state.registry[spec.id] = RegistryRow(spec.id, name, spec.tier.value, login)
    return state
