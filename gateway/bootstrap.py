"""A database made ready for the gateway in one call: schema, roles, identities.

Tests, benchmarks and the demo all start the same way, so they share this rather than each
repeating the steps. Every step is idempotent: on a database already set up, nothing changes.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from gateway import trail
from gateway.identities.model import UnknownRoleError, validate_identity_name
from gateway.migrate import Migration, migrate
from gateway.roles.apply import apply_roles
from gateway.roles.declaration import Declaration, load_declaration
from gateway.roles.plan import Plan

__all__ = [
    "EXAMPLE_ROLES",
    "INGEST_ROLE",
    "Bootstrapped",
    "bootstrap",
    "example_passwords",
]

EXAMPLE_ROLES = Path(__file__).resolve().parents[1] / "config" / "roles.toml"
INGEST_ROLE = "telemetry_ingest"

# One statement for any number of names: a demo fleet or a benchmark registers thousands.
PROVISION = """
INSERT INTO gateway.identities (name, role_id)
SELECT n.name, r.id FROM unnest($1::text[]) AS n(name), gateway.roles r
 WHERE r.name = $2 AND r.removed_at IS NULL
ON CONFLICT (name) DO NOTHING
RETURNING name, role_id
"""


@dataclass(frozen=True)
class Bootstrapped:
    """What one call changed: an empty result means the database was already as asked."""

    migrations: list[Migration]
    plan: Plan
    version: int | None
    provisioned: list[str] = field(default_factory=list)


def example_passwords(doc: Declaration) -> dict[str, str]:
    """A fresh password for every role whose variable is unset; returns each LOGIN role's.

    Only for throwaway databases: real deployments set the variables or secret files themselves.
    """
    passwords = {}
    for name, spec in doc.roles.items():
        if spec.password.env is not None:
            os.environ.setdefault(spec.password.env, secrets.token_urlsafe(16))
        password = spec.password.read()
        if password is not None:
            passwords[doc.login_role(name)] = password
    return passwords


async def bootstrap(
    admin: asyncpg.Connection | str,
    *,
    roles: Declaration | Path = EXAMPLE_ROLES,
    identities: Iterable[str] = (),
    role: str = INGEST_ROLE,
    actor: str = "bootstrap",
) -> Bootstrapped:
    """Migrate, apply `roles`, and register `identities` as active devices of `role`.

    `admin` is a connection or DSN of a role allowed to do all three (the superuser of a
    throwaway server). Role passwords come from where the declaration says; see
    `example_passwords` for throwaway ones.
    """
    doc = roles if isinstance(roles, Declaration) else load_declaration(roles)
    names = [validate_identity_name(name) for name in identities]
    conn = await asyncpg.connect(admin) if isinstance(admin, str) else admin
    try:
        applied = await migrate(conn)
        plan, version = await apply_roles(conn, doc, actor=actor)
        provisioned = await _provision(conn, names, role, actor) if names else []
    finally:
        if isinstance(admin, str):
            await conn.close()
    return Bootstrapped(applied, plan, version, provisioned)


async def _provision(
    conn: asyncpg.Connection, names: list[str], role: str, actor: str
) -> list[str]:
    """Register the names not registered yet, each with its audit record, in one transaction."""
    async with conn.transaction():
        known = await conn.fetch("SELECT name FROM gateway.roles WHERE removed_at IS NULL")
        if role not in {row["name"] for row in known}:
            raise UnknownRoleError(role, sorted(row["name"] for row in known))
        rows = await conn.fetch(PROVISION, names, role)
        after = {"kind": "device", "role": role, "status": "active", "attributes": {}}
        await trail.record_many(
            conn,
            actor,
            [
                ("identity.add", row["name"], None, {**after, "role_id": row["role_id"]})
                for row in rows
            ],
        )
    return [row["name"] for row in rows]
