"""The difference between the declared roles and the live catalog, as ordered SQL changes.

A plan is computed, shown, and applied as the very same list of changes; its digest lets an
operator apply exactly the plan they reviewed (`gateway roles apply --expect DIGEST`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from gateway.errors import GatewayError
from gateway.roles.catalog import managed_ids
from gateway.roles.declaration import Declaration
from gateway.roles.passwords import scram_verifier, verifier_matches
from gateway.roles.shadow import cuts, undeclared_superusers
from gateway.roles.sql import (
    ATTRIBUTES,
    attribute_sql,
    grant_sql,
    ident,
    known,
    literal,
    membership_options,
    revoke_membership_sql,
    role_options,
    setting_sql,
    table_sql,
)
from gateway.roles.state import (
    Grant,
    Membership,
    RoleState,
    State,
    desired_state,
    parse_marker,
    split_names,
)

__all__ = ["Change", "Plan", "PlanError", "make_plan"]


class PlanError(GatewayError):
    """The declaration cannot be reconciled with the database as it is."""


@dataclass(frozen=True)
class Change:
    """One step of a plan: what it does, to what, and the SQL that does it."""

    kind: str
    subject: str
    summary: str
    sql: tuple[str, ...]
    # The statements actually run when they differ from `sql` (a password's verifier is never
    # shown or stored; `sql` names its source instead).
    secret_sql: tuple[str, ...] | None = field(default=None, compare=False)

    @property
    def executable(self) -> tuple[str, ...]:
        return self.secret_sql or self.sql

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "subject": self.subject,
            "summary": self.summary,
            "sql": self.sql,
        }


@dataclass(frozen=True)
class Plan:
    changes: tuple[Change, ...]
    notes: tuple[str, ...] = ()
    # Changes apply refuses unless told explicitly (see `gateway.roles.guards`); not part of
    # the digest, which names the changes themselves.
    blocked: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.changes

    @property
    def digest(self) -> str:
        body = orjson.dumps([c.as_json() for c in self.changes], option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(body).hexdigest()[:16]

    def as_json(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "changes": [c.as_json() for c in self.changes],
            "notes": list(self.notes),
            "blocked": list(self.blocked),
        }

    def render(self) -> str:
        if self.empty:
            lines = ["No changes: the database matches the declaration."]
        else:
            # Every statement apply runs is shown under its change (a password as its source).
            lines = [f"{len(self.changes)} change(s), plan {self.digest}:"]
            for c in self.changes:
                lines.append(f"  {SIGNS.get(c.kind.split('_')[0], '~')} {c.summary}")
                lines += [f"      {statement};" for statement in c.sql]
        lines += [f"note: {note}" for note in self.notes]
        lines += [f"blocked: {reason}" for reason in self.blocked]
        return "\n".join(lines)


SIGNS = {
    "create": "+",
    "grant": "+",
    "register": "+",
    "drop": "-",
    "revoke": "-",
    "retire": "-",
    "demote": "-",
}


# Attributes that give a role power beyond its grants: one found on a managed role is a way in.
# LOGIN too: a group role holds every privilege its members use, and never logs in itself.
ESCALATIONS = frozenset(
    {"login", "superuser", "createdb", "createrole", "replication", "bypassrls"}
)


def describe_grant(grant: Grant) -> str:
    if grant.kind == "default":
        owner, schema, objtype = split_names(grant.target, ":")
        where = f"future {objtype!r} objects of {owner}" + (
            f" in schema {schema}" if schema else ""
        )
    else:
        where = f"{grant.kind} {grant.target}" + (f"({grant.column})" if grant.column else "")
    option = " with grant option" if grant.grantable else ""
    return f"{grant.privilege} on {where} for {grant.grantee}{option}"


def make_plan(doc: Declaration, live: State, *, passwords: dict[str, str | None]) -> Plan:
    """The changes that turn `live` into what `doc` declares.

    `passwords` maps each login role to its password from its credential source (None when the
    source is empty); `live` is modified as renames are planned.
    """
    want = desired_state(doc)
    changes: list[Change] = []
    notes: list[str] = []
    _check_ids(doc, live)

    # Renames first: every later comparison is by name, and a renamed role keeps its grants.
    managed = managed_ids(live)
    for name, spec in doc.roles.items():
        for part, wanted in (("group", name), ("login", doc.login_role(name))):
            current = managed.get((spec.id, part))
            if current is not None and current != wanted and wanted not in live.roles:
                changes.append(
                    Change(
                        "rename_role",
                        wanted,
                        f"rename role {current} to {wanted} (id {spec.id})",
                        (f"ALTER ROLE {ident(current)} RENAME TO {ident(wanted)}",),
                    )
                )
                live.rename(current, wanted)

    for name, role in sorted(want.roles.items()):
        have = live.roles.get(name)
        if have is None:
            changes.append(
                Change(
                    "create_role",
                    name,
                    f"create role {name} ({'LOGIN' if role.login else 'NOLOGIN'})",
                    (f"CREATE ROLE {ident(name)} {role_options(role)}",),
                )
            )
        else:
            changes.extend(_attributes(name, have, role))
        if have is None or have.comment != role.comment:
            changes.append(
                Change(
                    "mark_role",
                    name,
                    f"mark role {name} as managed ({role.comment})",
                    (f"COMMENT ON ROLE {ident(name)} IS {literal(role.comment or '')}",),
                )
            )
        changes.extend(_settings(name, have, role))
        if have is not None:
            changes.extend(_database_settings(name, have, live.database))
        if role.login:
            changes.extend(_password(doc, name, have, live, passwords, notes))

    # Owners first: a grant to an object's owner would be folded into its owner's rights and
    # lost with them when the object changes hands.
    for kind, name, owner, schema_owner in sorted(live.foreign_owners, key=lambda owned: owned[:3]):
        if schema_owner is None:
            notes.append(
                f"{kind.lower()} {name} is owned by {owner}, and the database by a managed role "
                "too: nobody to give it back to; give both to the role that runs migrations"
            )
            continue
        changes.append(
            Change(
                "reown",
                name,
                f"give {kind.lower()} {name} back to {schema_owner}: owned by {owner}, which "
                "so holds every privilege on it",
                (f"ALTER {kind} {name} OWNER TO {ident(schema_owner)}",),
            )
        )
    changes.extend(_reconcile(want.memberships, live.memberships, _membership_change))
    for grant in sorted(g for g in live.grants if not known(g)):
        notes.append(
            f"{describe_grant(grant)} is undeclared, but this version cannot revoke default "
            "privileges on that kind of object: revoke it by hand (ALTER DEFAULT PRIVILEGES)"
        )
    changes.extend(_reconcile(want.grants, {g for g in live.grants if known(g)}, _privilege_change))

    wanted_names = set(want.roles)
    orphans = sorted(
        (name for name, role in live.roles.items() if parse_marker(role.comment)),
        key=lambda n: (not live.roles[n].login, n),  # login roles before their groups
    )
    for name in orphans:
        if name not in wanted_names:
            changes.append(
                Change(
                    "drop_role",
                    name,
                    f"drop role {name} (managed, no longer declared)",
                    (f"DROP OWNED BY {ident(name)}", f"DROP ROLE {ident(name)}"),
                )
            )

    for table, trigger in sorted(live.disabled_triggers):
        changes.append(
            Change(
                "enable_trigger",
                table,
                f"enable trigger {trigger} on {table}: it does not fire as the product relies on",
                (f"ALTER TABLE {table_sql(table)} ENABLE TRIGGER {ident(trigger)}",),
            )
        )
    changes.extend(_shadow(doc, live))
    changes.extend(_registry(want, live))
    return Plan(tuple(changes), tuple(notes))


def _shadow(doc: Declaration, live: State) -> list[Change]:
    """Undo what roles outside the declaration reach: demote undeclared LOGIN superusers and
    revoke the memberships `cuts` picks. Memberships into a managed role are undeclared
    memberships the plan revokes already; grants in the managed schemas are revoked whoever
    holds them."""
    demoted = undeclared_superusers(live.shadow, doc)
    changes = [
        Change(
            "demote_superuser",
            name,
            f"demote superuser {name}: not one of the declared superusers "
            f"({', '.join(doc.superusers)})",
            (f"ALTER ROLE {ident(name)} NOSUPERUSER",),
        )
        for name in demoted
    ]
    managed = {name for name, role in live.shadow.roles.items() if role.managed}
    for cut in cuts(live.shadow, doc, demoted=demoted):
        if cut.role in managed or cut.role in live.roles:
            continue
        sources = ", ".join(cut.sources)
        changes.append(
            Change(
                "revoke_shadow_membership",
                cut.member,
                f"revoke membership of {cut.member} in {cut.role}: the last edge into "
                f"{cut.role} on the way in of {sources}, the fewest revokes that cut it",
                tuple(revoke_membership_sql(m) for m in cut.grants),
            )
        )
    return changes


def _check_ids(doc: Declaration, live: State) -> None:
    """A declared role whose id changed would orphan its identities: refuse, say how to rename."""
    declared_ids = doc.by_id()
    problems = []
    for row in live.registry.values():
        spec = doc.roles.get(row.name)
        renamed_elsewhere = row.id in declared_ids
        if not row.removed and spec is not None and spec.id != row.id and not renamed_elsewhere:
            problems.append(
                f"roles.{row.name}.id: changed from {row.id!r} to {spec.id!r}; ids are "
                "immutable (to rename a role keep its id and change its name)"
            )
    if problems:
        raise PlanError("\n".join(problems))


def _attributes(name: str, have: RoleState, want: RoleState) -> list[Change]:
    """Escalations taken back first, on their own (the audit ranks them apart), then the rest."""
    differ = [
        a
        for a in [a[0] for a in ATTRIBUTES] + ["connection_limit", "valid_until"]
        if getattr(have, a) != getattr(want, a)
    ]
    escalated = [a for a in differ if a in ESCALATIONS and getattr(have, a)]
    rest = [a for a in differ if a not in escalated]
    changes = []
    if escalated:
        taken = ", ".join(attribute_sql(have, a) for a in escalated)
        changes.append(
            Change(
                "revoke_attribute",
                name,
                f"revoke {taken} from role {name} (undeclared)",
                (_alter(name, want, escalated),),
            )
        )
    if rest:
        shown = ", ".join(
            f"{a.replace('_', ' ')} {getattr(have, a)} -> {getattr(want, a)}" for a in rest
        )
        changes.append(
            Change(
                "alter_role",
                name,
                f"alter role {name}: {shown}",
                (_alter(name, want, rest),),
            )
        )
    return changes


def _alter(name: str, want: RoleState, attributes: list[str]) -> str:
    return f"ALTER ROLE {ident(name)} " + " ".join(attribute_sql(want, a) for a in attributes)


def _settings(name: str, have: RoleState | None, want: RoleState) -> list[Change]:
    current = dict(have.settings) if have else {}
    wanted = dict(want.settings)
    changes = []
    for key, value in sorted(wanted.items()):
        if current.get(key) != value:
            changes.append(
                Change(
                    "set_setting",
                    name,
                    f"set {key} = {value} for {name} (was {current.get(key, 'unset')})",
                    (f"ALTER ROLE {ident(name)} SET {setting_sql(key)} = {literal(value)}",),
                )
            )
    for key in sorted(set(current) - set(wanted)):
        changes.append(
            Change(
                "reset_setting",
                name,
                f"reset {key} for {name} (undeclared value {current[key]})",
                (f"ALTER ROLE {ident(name)} RESET {setting_sql(key)}",),
            )
        )
    return changes


def _database_settings(name: str, have: RoleState, database: str) -> list[Change]:
    """Settings for the role in this database only: none are declared, and each would override
    the role's own (a statement timeout of 0, say) wherever the gateway connects."""
    return [
        Change(
            "reset_setting",
            name,
            f"reset {key} for {name} in database {database} (undeclared value {value})",
            (f"ALTER ROLE {ident(name)} IN DATABASE {ident(database)} RESET {setting_sql(key)}",),
        )
        for key, value in sorted(have.database_settings)
    ]


def _password(
    doc: Declaration,
    login: str,
    have: RoleState | None,
    live: State,
    passwords: dict[str, str | None],
    notes: list[str],
) -> list[Change]:
    group = login.removesuffix("_login")
    source = doc.roles[group].password.describe()
    password = passwords.get(login)
    if password is None:
        if have is None:
            raise PlanError(f"role {login} must be created but its password ({source}) is not set")
        notes.append(f"password of {login} not checked: {source} is not set")
        return []
    if have is not None:
        if login not in live.verifiers:
            return []  # not readable without superuser: only set at creation
        if verifier_matches(live.verifiers[login], password):
            return []
    reason = "initial password" if have is None else "password differs from its source"
    shown = f"ALTER ROLE {ident(login)} PASSWORD '<{source}>'"
    return [
        Change(
            "set_password",
            login,
            f"set password of {login} from {source} ({reason})",
            (shown,),
            (f"ALTER ROLE {ident(login)} PASSWORD {literal(scram_verifier(password))}",),
        )
    ]


_Held = TypeVar("_Held", Membership, Grant)


def _reconcile(
    want: Collection[_Held], have: Collection[_Held], change: Callable[[_Held, str], Change]
) -> list[Change]:
    """REVOKE what is held but undeclared, then GRANT what is declared but missing. A membership
    granted by several grantors is in `have` once for each, and each grant is revoked."""
    wanted, held = set(want), set(have)
    revokes = [change(h, "REVOKE") for h in sorted(have) if h not in wanted]
    return revokes + [change(w, "GRANT") for w in sorted(wanted - held)]


def _membership_change(m: Membership, verb: str) -> Change:
    if verb == "REVOKE":
        return Change(
            "revoke_membership",
            m.member,
            f"revoke membership of {m.member} in {m.role} {membership_options(m)} (undeclared)",
            (revoke_membership_sql(m),),
        )
    return Change(
        "grant_membership",
        m.member,
        f"grant {m.role} to {m.member} (inherit, no SET ROLE)",
        (f"GRANT {ident(m.role)} TO {ident(m.member)} {membership_options(m)}",),
    )


def _privilege_change(grant: Grant, verb: str) -> Change:
    undeclared = " (undeclared)" if verb == "REVOKE" else ""
    return Change(
        f"{verb.lower()}_privilege",
        grant.grantee,
        f"{verb.lower()} {describe_grant(grant)}{undeclared}",
        (grant_sql(grant, verb),),
    )


def _registry(want: State, live: State) -> list[Change]:
    changes = []
    for role_id, row in sorted(want.registry.items()):
        current = live.registry.get(role_id)
        if current == row:
            continue
        values = ", ".join(literal(v) for v in (row.id, row.name, row.tier, row.login_role))
        changes.append(
            Change(
                "register_role",
                row.name,
                f"register role {row.name} (id {row.id}, tier {row.tier}) in gateway.roles",
                (
                    "INSERT INTO gateway.roles (id, name, tier, login_role) "
                    f"VALUES ({values}) ON CONFLICT (id) DO UPDATE SET name = excluded.name, "
                    "tier = excluded.tier, login_role = excluded.login_role, removed_at = NULL",
                ),
            )
        )
    for role_id, current in sorted(live.registry.items()):
        if role_id not in want.registry and not current.removed:
            changes.append(
                Change(
                    "retire_role",
                    current.name,
                    f"mark role {current.name} (id {role_id}) removed in gateway.roles",
                    (f"UPDATE gateway.roles SET removed_at = now() WHERE id = {literal(role_id)}",),
                )
            )
    return changes
