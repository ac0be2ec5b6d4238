"""What a roles plan must refuse however valid the declaration: taking over a role nobody said
may be adopted, and dropping a role that identities still use.

Both depend on the live database, so neither can be checked when the declaration is parsed.
"""

from __future__ import annotations

import asyncpg

from gateway.roles.declaration import Declaration
from gateway.roles.plan import Plan, PlanError
from gateway.roles.state import State, parse_marker

__all__ = ["ALLOW_DROP_FLAG", "blocked_drops", "refuse_takeovers"]

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
