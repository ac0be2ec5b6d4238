"""Appending to the audit trail: every lifecycle and role change says who, what, before, after.

Entries go through `gateway.append_audit`, which stamps the login role, the server time and the
entry's place in the hash chain itself: the caller can state what happened, never who or when.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
import orjson

__all__ = ["default_actor", "record", "record_many"]

APPEND = "SELECT gateway.append_audit($1, $2, $3, $4::jsonb, $5::jsonb)"

AuditEntry = tuple[str, str, Mapping[str, Any] | None, Mapping[str, Any] | None]


def default_actor() -> str:
    """Who is acting: `GATEWAY_ACTOR` when set (CI, operators' tooling), else the OS user."""
    return os.environ.get("GATEWAY_ACTOR") or getpass.getuser()


def _json(value: Mapping[str, Any] | None) -> str | None:
    return None if value is None else orjson.dumps(value, default=str).decode()


async def record(
    conn: asyncpg.Connection,
    actor: str,
    action: str,
    subject: str,
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
) -> None:
    """Append one entry; call it inside the transaction that makes the change."""
    await conn.execute(APPEND, actor, action, subject, _json(before), _json(after))


async def record_many(conn: asyncpg.Connection, actor: str, entries: Sequence[AuditEntry]) -> None:
    """Append many entries (action, subject, before, after) in one round trip."""
    await conn.executemany(
        APPEND, [(actor, action, subject, _json(b), _json(a)) for action, subject, b, a in entries]
    )
