"""One shape for both sides of a roles plan: what the declaration wants and what the catalog has.

Both the desired state (from `config/roles.toml`) and the live state (from `pg_roles`,
`pg_auth_members`, ACLs and role settings) are expressed as these plain values, so the plan is a
set difference and nothing else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from gateway.roles.declaration import LOGIN_SUFFIX, Declaration, Tier

__all__ = [
    "MARKER",
    "Grant",
    "Membership",
    "RegistryRow",
    "RoleState",
    "State",
    "desired_state",
    "parse_marker",
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


@dataclass(frozen=True)
class RoleState:
    name: str
    login: bool
    createrole: bool = False
    connection_limit: int = -1
    comment: str | None = None
    settings: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True, order=True)
class Membership:
    """`member` belongs to `role`; `inherit` passes privileges on, `set` allows SET ROLE."""

    role: str
    member: str
    inherit: bool = True
    set: bool = False
    admin: bool = False
    grantor: str = field(default="", compare=False)


@dataclass(frozen=True, order=True)
class Grant:
    """One privilege of one grantee on one object.

    `kind` is `table`, `column` (then `column` names it), `schema`, or `default` (default
    privileges; `target` is `owner:schema:objtype`). The grantee `PUBLIC` means everyone.
    """

    grantee: str
    kind: str
    target: str
    privilege: str
    column: str = ""


@dataclass(frozen=True)
class RegistryRow:
    """A row of `gateway.roles`: the ids identities point at."""

    id: str
    name: str
    tier: str
    login_role: str
    removed: bool = False


@dataclass
class State:
    roles: dict[str, RoleState] = field(default_factory=dict)
    memberships: set[Membership] = field(default_factory=set)
    grants: set[Grant] = field(default_factory=set)
    registry: dict[str, RegistryRow] = field(default_factory=dict)
    # login role name -> SCRAM verifier, when the catalog let us read it (superuser only)
    verifiers: dict[str, str | None] = field(default_factory=dict)

    def rename(self, old: str, new: str) -> None:
        """Follow a role rename through every reference, as PostgreSQL does."""
        self.roles[new] = replace(self.roles.pop(old), name=new)

        def swap(name: str) -> str:
            return new if name == old else name

        self.memberships = {
            replace(m, role=swap(m.role), member=swap(m.member)) for m in self.memberships
        }
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
        state.memberships.add(Membership(role=name, member=login))
        state.memberships.update(Membership(role=parent, member=name) for parent in spec.inherits)
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
