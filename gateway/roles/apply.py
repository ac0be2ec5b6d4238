"""Planning against the live database, and applying a plan in one transaction with its history.

Apply takes an advisory lock, recomputes the plan inside its transaction (so what runs is what
the catalog needs at that instant), refuses when it differs from the reviewed digest, runs it,
and appends the version to `gateway.role_changes` and each change to `gateway.audit_log`.
"""

from __future__ import annotations

from dataclasses import replace

import asyncpg
import orjson

from gateway import trail
from gateway.roles.catalog import read_catalog
from gateway.roles.declaration import Declaration, shipped_tables
from gateway.roles.guards import (
    blocked_drops,
    refuse_missing_tables,
    refuse_self_demotion,
    refuse_takeovers,
)
from gateway.roles.plan import Plan, PlanError, make_plan
from gateway.roles.state import State, desired_state

__all__ = ["apply_roles", "plan_roles", "plan_with_live"]

RELOADS_CACHES = frozenset({"rename_role", "register_role", "retire_role"})

# "gw-roles" in ASCII: shared by every process that applies roles.
ROLES_LOCK = 0x67772D726F6C6573


def managed_schemas(doc: Declaration) -> list[str]:
    return sorted({table.split(".")[0] for table in shipped_tables() | set(doc.tables)})


def read_passwords(doc: Declaration) -> dict[str, str | None]:
    return {doc.login_role(name): spec.password.read() for name, spec in doc.roles.items()}


async def plan_roles(conn: asyncpg.Connection, doc: Declaration) -> Plan:
    """The plan that would make the database match `doc`, without changing anything."""
    plan, _ = await plan_with_live(conn, doc)
    return plan


async def plan_with_live(conn: asyncpg.Connection, doc: Declaration) -> tuple[Plan, State]:
    """The plan and the catalog reading it was made from, for whoever judges the same reading
    (the audit's shadow access): two readings could disagree on what the plan leaves open."""
    try:
        live = await read_catalog(conn, desired_state(doc).roles, managed_schemas(doc))
    except asyncpg.UndefinedTableError as exc:
        raise PlanError(
            f"the control schema is missing ({exc}): run `gateway migrate` first"
        ) from exc
    refuse_takeovers(doc, live)
    refuse_self_demotion(doc, live)
    refuse_missing_tables(doc, live)
    plan = make_plan(doc, live, passwords=read_passwords(doc))
    return replace(plan, blocked=await blocked_drops(conn, plan, live)), live


async def apply_roles(
    conn: asyncpg.Connection,
    doc: Declaration,
    *,
    actor: str,
    expect: str | None = None,
    allow_drop_with_identities: bool = False,
) -> tuple[Plan, int | None]:
    """Apply the plan; returns it and the new version number (None when nothing changed).

    A plan that drops a role active identities still use is refused unless
    `allow_drop_with_identities` says the operator means it.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", ROLES_LOCK)
        plan = await plan_roles(conn, doc)
        if expect is not None and plan.digest != expect:
            raise PlanError(
                f"the plan changed since it was reviewed (expected {expect}, now {plan.digest}); "
                "run `gateway roles plan` again"
            )
        if plan.blocked and not allow_drop_with_identities:
            raise PlanError("refused:\n" + "\n".join(plan.blocked))
        if plan.empty:
            return plan, None
        for change in plan.changes:
            for statement in change.executable:
                await conn.execute(statement)
        if any(change.kind in RELOADS_CACHES for change in plan.changes):
            # Identity caches hold role names; a renamed or removed role touches no identity
            # row, so no trigger tells them: the change feed asks every gateway to reload.
            await conn.execute("SELECT gateway.identity_roles_changed()")
        version: int = await conn.fetchval(
            "SELECT gateway.append_role_change($1, $2::jsonb, $3, $4)",
            doc.digest,
            orjson.dumps(plan.as_json()).decode(),
            [statement for change in plan.changes for statement in change.sql],
            actor,
        )
        await trail.record_many(
            conn,
            actor,
            [
                (
                    f"role.{change.kind}",
                    change.subject,
                    None,
                    {**change.as_json(), "version": version},
                )
                for change in plan.changes
            ],
        )
    return plan, version
