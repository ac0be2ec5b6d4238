"""Fleets as code: a declared inventory of identities, planned and applied like roles.

An inventory file (CSV or JSON Lines, the import format) lists every identity of one scope, a
label such as a service's name. The plan, computed in the database against a staged copy of the
file, provisions what is new, reassigns what changed role, and retires what the registry holds
in that scope and the file no longer lists; identities of another scope, or of none, are never
touched: listing one of them is an error, as is listing a retired one (retirement is final).
The scope is kept in each identity's attributes (`scope`), so an inventory only ever governs
what it provisioned. Apply recomputes the plan in its own transaction, refuses it unless it has
the digest that was reviewed (`--expect`), and writes every change with its audit record.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from gateway.identities.importer import (
    ImportFileError,
    LineError,
    Progress,
    detect_format,
    parse,
    read,
)
from gateway.identities.model import IdentityError

__all__ = ["InventoryChange", "InventoryPlan", "apply_inventory", "plan_inventory"]

SCOPE_KEY = "scope"
LOCK = "gateway.inventory"

STAGE = """
CREATE TEMPORARY TABLE inventory (
    line       integer NOT NULL,
    name       text PRIMARY KEY,
    kind       text NOT NULL,
    role       text NOT NULL,
    attributes jsonb NOT NULL
) ON COMMIT DROP
"""
# Every difference in one pass: each listed name against the registry, and each identity of
# the scope the file no longer lists. Names are ordered, so the digest is stable.
DIFF = """
SELECT 'provision' AS action, t.name, NULL::text AS before, t.role AS after, t.line
  FROM inventory t LEFT JOIN gateway.identities i ON i.name = t.name
 WHERE i.name IS NULL
UNION ALL
SELECT 'reassign', t.name, r.name, t.role, t.line
  FROM inventory t JOIN gateway.identities i ON i.name = t.name
  JOIN gateway.roles r ON r.id = i.role_id
 WHERE i.status = 'active' AND i.attributes->>'scope' = $1 AND r.name <> t.role
UNION ALL
SELECT 'foreign', t.name, coalesce(i.attributes->>'scope', ''), $1, t.line
  FROM inventory t JOIN gateway.identities i ON i.name = t.name
 WHERE i.attributes->>'scope' IS DISTINCT FROM $1
UNION ALL
SELECT 'retired', t.name, NULL, NULL, t.line
  FROM inventory t JOIN gateway.identities i ON i.name = t.name
 WHERE i.status = 'retired' AND i.attributes->>'scope' = $1
UNION ALL
SELECT 'retire', i.name, r.name, NULL, NULL
  FROM gateway.identities i JOIN gateway.roles r ON r.id = i.role_id
 WHERE i.attributes->>'scope' = $1 AND i.status = 'active'
   AND NOT EXISTS (SELECT 1 FROM inventory t WHERE t.name = i.name)
ORDER BY 2, 1
"""
ROLES = "SELECT name, id FROM gateway.roles WHERE removed_at IS NULL"
PROVISION = """
WITH added AS (
    INSERT INTO gateway.identities (name, kind, role_id, attributes)
    SELECT t.name, t.kind, r.id, t.attributes
      FROM inventory t JOIN gateway.roles r ON r.name = t.role AND r.removed_at IS NULL
     WHERE t.name = ANY($3::text[])
     ORDER BY t.name
    RETURNING name, kind, role_id, status, attributes
)
SELECT count(gateway.append_audit(
           $1, 'identity.inventory.provision', a.name, NULL,
           jsonb_build_object('kind', a.kind, 'role', r.name, 'role_id', a.role_id,
                              'status', a.status, 'attributes', a.attributes,
                              'source', $2::text)))
  FROM added a JOIN gateway.roles r ON r.id = a.role_id
"""
REASSIGN = """
WITH moved AS (
    UPDATE gateway.identities i SET role_id = r.id
      FROM inventory t JOIN gateway.roles r ON r.name = t.role AND r.removed_at IS NULL
     WHERE i.name = t.name AND i.name = ANY($3::text[])
    RETURNING i.name, i.role_id
)
SELECT count(gateway.append_audit(
           $1, 'identity.inventory.assign', m.name, NULL,
           jsonb_build_object('role', r.name, 'role_id', m.role_id, 'source', $2::text)))
  FROM moved m JOIN gateway.roles r ON r.id = m.role_id
"""
RETIRE = """
WITH retired AS (
    UPDATE gateway.identities SET status = 'retired', retired_at = now()
     WHERE name = ANY($3::text[]) AND status = 'active'
    RETURNING name, retired_at
)
SELECT count(gateway.append_audit(
           $1, 'identity.inventory.retire', name, '{"status": "active"}'::jsonb,
           jsonb_build_object('status', 'retired', 'retired_at', retired_at,
                              'source', $2::text)))
  FROM retired
"""


@dataclass(frozen=True, slots=True)
class InventoryChange:
    """One difference: provision (new), reassign (role changed), retire (no longer listed)."""

    action: str
    name: str
    before: str | None
    after: str | None

    def __str__(self) -> str:
        if self.action == "provision":
            return f"provision {self.name} with role {self.after}"
        if self.action == "reassign":
            return f"reassign {self.name}: role {self.before} -> {self.after}"
        return f"retire {self.name} (role {self.before}): no longer in the inventory"

    def as_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "name": self.name,
            "before": self.before,
            "after": self.after,
        }


@dataclass(frozen=True)
class InventoryPlan:
    """What apply would change for one scope, and its digest for review."""

    scope: str
    changes: tuple[InventoryChange, ...]

    @property
    def digest(self) -> str:
        body = orjson.dumps([self.scope, [c.as_json() for c in self.changes]])
        return hashlib.sha256(body).hexdigest()[:16]

    def counts(self) -> dict[str, int]:
        found = {"provision": 0, "reassign": 0, "retire": 0}
        for change in self.changes:
            found[change.action] += 1
        return found

    def as_json(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "digest": self.digest,
            "counts": self.counts(),
            "changes": [c.as_json() for c in self.changes],
        }

    def render(self, limit: int = 50) -> str:
        if not self.changes:
            return f"Inventory of scope {self.scope!r} matches the registry: no changes."
        counts = ", ".join(f"{n} to {a}" for a, n in self.counts().items() if n)
        lines = [
            f"{len(self.changes)} change(s) in scope {self.scope!r} ({counts}), plan {self.digest}:"
        ]
        lines += [f"  - {c}" for c in self.changes[:limit]]
        if len(self.changes) > limit:
            lines.append(f"  ... and {len(self.changes) - limit} more")
        lines.append(f"\nApply exactly this plan with: --expect {self.digest}")
        return "\n".join(lines)


async def _stage(
    conn: asyncpg.Connection, path: Path, scope: str, progress: Progress | None
) -> None:
    """The file, checked line by line (every bad line reported), staged with its scope."""
    text = read(path)
    # An empty inventory is a decommissioned scope: everything in it is retired.
    parsed = parse(text, detect_format(path, text), progress, allow_empty=True)
    errors = list(parsed.errors)
    roles = {row["name"] for row in await conn.fetch(ROLES)}
    seen: dict[str, int] = {}
    staged = []
    for row in parsed.rows:
        if row.name in seen:
            errors.append(
                LineError(row.line, f"{row.name!r} is listed again (line {seen[row.name]})")
            )
            continue
        seen[row.name] = row.line
        if row.role not in roles:
            errors.append(LineError(row.line, f"unknown role {row.role!r}"))
            continue
        attributes = orjson.loads(row.attributes)
        attributes[SCOPE_KEY] = scope
        staged.append((row.line, row.name, row.kind, row.role, orjson.dumps(attributes).decode()))
    if errors:
        raise ImportFileError(str(path), errors)
    await conn.execute(STAGE)
    await conn.copy_records_to_table("inventory", records=staged, schema_name="pg_temp")


async def _diff(conn: asyncpg.Connection, path: Path, scope: str) -> InventoryPlan:
    rows = await conn.fetch(DIFF, scope)
    refused = [
        LineError(
            row["line"],
            f"{row['name']!r} is retired; retirement is final"
            if row["action"] == "retired"
            else f"{row['name']!r} belongs to "
            + (f"scope {row['before']!r}" if row["before"] else "no scope")
            + f", not {scope!r}: an inventory governs only what it provisioned",
        )
        for row in rows
        if row["action"] in ("foreign", "retired")
    ]
    if refused:
        raise ImportFileError(str(path), sorted(refused, key=lambda e: e.line))
    return InventoryPlan(
        scope,
        tuple(
            InventoryChange(row["action"], row["name"], row["before"], row["after"]) for row in rows
        ),
    )


def _check_scope(scope: str) -> None:
    if not scope or len(scope) > 128:
        raise IdentityError("an inventory's scope is 1-128 characters, e.g. the service's name")


async def plan_inventory(
    conn: asyncpg.Connection, path: Path, scope: str, progress: Progress | None = None
) -> InventoryPlan:
    """The changes that make the registry's identities of `scope` what the file lists."""
    _check_scope(scope)
    async with conn.transaction():
        await _stage(conn, path, scope, progress)
        plan = await _diff(conn, path, scope)
        # Nothing planned is kept: the staging table goes with the transaction.
    return plan


async def apply_inventory(
    conn: asyncpg.Connection,
    path: Path,
    scope: str,
    actor: str,
    *,
    expect: str | None = None,
    progress: Progress | None = None,
) -> InventoryPlan:
    """Apply the plan in one transaction, under a lock that serializes inventories; refused
    unless the plan computed now has the digest `expect` (when given)."""
    _check_scope(scope)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", LOCK)
        await _stage(conn, path, scope, progress)
        plan = await _diff(conn, path, scope)
        if expect is not None and plan.digest != expect:
            raise IdentityError(
                f"the inventory plan changed since it was reviewed (expected {expect}, now "
                f"{plan.digest}); run `gateway identities plan` again"
            )
        source = f"inventory {path} (scope {scope})"
        for action, sql in (("provision", PROVISION), ("reassign", REASSIGN), ("retire", RETIRE)):
            names = _names(plan.changes, action)
            if names:
                await conn.execute(sql, actor, source, names)
    return plan


def _names(changes: Sequence[InventoryChange], action: str) -> list[str]:
    return [c.name for c in changes if c.action == action]
