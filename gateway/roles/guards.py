"""What a roles plan must refuse however valid the declaration: taking over a role nobody said
may be adopted, dropping a role that identities still use, demoting the superuser that runs
the plan, and granting on a table or column the database does not have.

Each depends on the live database, so none can be checked when the declaration is parsed.
"""

from __future__ import annotations

import asyncpg

from gateway.roles.declaration import Declaration
from gateway.roles.plan import Plan, PlanError
from gateway.roles.shadow import undeclared_superusers
from gateway.roles.state import State, join_names, parse_marker

__all__ = [
    "ALLOW_DROP_FLAG",
    "blocked_drops",
    "refuse_missing_tables",
    "refuse_self_demotion",
    "refuse_takeovers",
]

ALLOW_DROP_FLAG = "--allow-drop-with-identities"


def refuse_takeovers(doc: Declaration, live: State) -> None:
    """A declared name that already exists without our marker belongs to someone else (a DBA's
    own superuser, another application): applying would strip its attributes and later drop it,
    so it is taken over only when its declaration says `adopt = true`."""
    problems = []
    for name, spec in doc.roles.items():
        for role in (name, doc.login_role(name)):
            have = live.roles.get(role)
            if have is None or parse_marker(have.comment) is not None or spec.adopt:
                continue
            problems.append(
                f"roles.{name}: role {role} already exists and is not managed by the gateway; "
                f"set `adopt = true` on roles.{name} to take it over (its attributes, "
                "memberships and grants become the declared ones), or choose another name"
            )
    if problems:
        raise PlanError("\n".join(problems))


def refuse_self_demotion(doc: Declaration, live: State) -> None:
    """The plan demotes undeclared superusers, but never the role running it (it would lose the
    power to finish) nor the bootstrap superuser (PostgreSQL refuses): either must be declared."""
    problems = []
    for name in undeclared_superusers(live.shadow, doc):
        role = live.shadow.roles[name]
        if role.bootstrap:
            problems.append(
                f"superusers: {name} is the bootstrap superuser, which PostgreSQL never demotes, "
                f"and it is not declared; add {name!r} to `superusers` in the declaration"
            )
        elif name == live.shadow.session_user:
            problems.append(
                f"superusers: {name} runs this plan and is a superuser that is not declared; "
                f"add {name!r} to `superusers` in the declaration (a plan never demotes the "
                "role that runs it)"
            )
    if problems:
        raise PlanError("\n".join(problems))


def refuse_missing_tables(doc: Declaration, live: State) -> None:
    """A grant on a table or column the database does not have would fail halfway through
    apply: name each one by its place in the declaration instead."""
    problems = []
    for name, spec in doc.roles.items():
        for i, grant in enumerate(spec.grants):
            at = f"roles.{name}.grants[{i}]"
            columns = live.relations.get(join_names(*grant.table.split(".", 1)))
            if columns is None:
                problems.append(f"{at}.table: no table {grant.table} in database {live.database}")
                continue
            problems += [
                f'{at}.columns[{j}]: table {grant.table} has no column "{column}"'
                for j, column in enumerate(grant.columns or ())
                if column not in columns
            ]
    if problems:
        raise PlanError("\n".join(problems))


async def blocked_drops(conn: asyncpg.Connection, plan: Plan, live: State) -> tuple[str, ...]:
    """The planned role drops that would strand active identities, one line per declared id."""
    dropped: dict[str, str] = {}
    for change in plan.changes:
        if change.kind != "drop_role" or change.subject not in live.roles:
            continue
        parsed = parse_marker(live.roles[change.subject].comment)
        if parsed is not None and (parsed[0] not in dropped or parsed[1] == "group"):
            dropped[parsed[0]] = change.subject
    if not dropped:
        return ()
    rows = await conn.fetch(
        "SELECT role_id, count(*) AS n FROM gateway.identities "
        "WHERE status = 'active' AND role_id = ANY($1::text[]) GROUP BY role_id",
        sorted(dropped),
    )
    counts: dict[str, int] = {row["role_id"]: row["n"] for row in rows}
    return tuple(
        f"drop role {name} (id {role_id}): {counts[role_id]:,} active identities still use it; "
        f"retire or reassign them first, or apply with {ALLOW_DROP_FLAG}"
        for role_id, name in sorted(dropped.items(), key=lambda item: item[1])
        if counts.get(role_id)
    )
