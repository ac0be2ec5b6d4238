"""Connecting the command line to the database, with errors a person can act on."""

from __future__ import annotations

import os

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from gateway.errors import GatewayError

__all__ = ["ADMIN_DSN_ENV", "Conn", "DatabaseError", "admin_dsn", "connect"]

ADMIN_DSN_ENV = "GATEWAY_ADMIN_DSN"

# A connection of one's own or one borrowed from a pool: both answer the same calls.
Conn = asyncpg.Connection | PoolConnectionProxy


class DatabaseError(GatewayError):
    """The database could not be reached or refused the login."""


def admin_dsn(explicit: str | None) -> str:
    """The DSN of the role that runs migrations and manages roles and identities."""
    dsn = explicit or os.environ.get(ADMIN_DSN_ENV)
    if not dsn:
        raise DatabaseError(f"no database given: pass --dsn or set {ADMIN_DSN_ENV}")
    return dsn


async def connect(dsn: str) -> asyncpg.Connection:
    """Open one connection, turning driver errors into a sentence naming host and cause."""
    try:
        conn: asyncpg.Connection = await asyncpg.connect(dsn, timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise DatabaseError(f"cannot connect to PostgreSQL: {exc}") from exc
    return conn
