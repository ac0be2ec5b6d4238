"""Connecting the command line to the database, with errors a person can act on."""

from __future__ import annotations

import os
from pathlib import Path

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from gateway.errors import GatewayError

__all__ = ["ADMIN_DSN_ENV", "ADMIN_DSN_FILE_ENV", "Conn", "DatabaseError", "admin_dsn", "connect"]

ADMIN_DSN_ENV = "GATEWAY_ADMIN_DSN"
# A file holding the DSN (a mounted Secret): the password then appears in no process listing
# and no environment a child process inherits.
ADMIN_DSN_FILE_ENV = "GATEWAY_ADMIN_DSN_FILE"

# A connection of one's own or one borrowed from a pool: both answer the same calls.
Conn = asyncpg.Connection | PoolConnectionProxy


class DatabaseError(GatewayError):
    """The database could not be reached or refused the login."""


def admin_dsn(explicit: str | None, file: Path | None = None) -> str:
    """The DSN of the role that runs migrations and manages roles and identities: given on
    the command line, else read from a file (`file`, else `$GATEWAY_ADMIN_DSN_FILE`), else
    `$GATEWAY_ADMIN_DSN`."""
    if explicit:
        return explicit
    path = file or (Path(p) if (p := os.environ.get(ADMIN_DSN_FILE_ENV)) else None)
    if path is not None:
        try:
            dsn = path.read_text().strip()
        except OSError as exc:
            raise DatabaseError(f"cannot read the admin DSN from {path}: {exc.strerror}") from exc
        if not dsn:
            raise DatabaseError(f"the admin DSN file {path} is empty")
        return dsn
    from_env = os.environ.get(ADMIN_DSN_ENV)
    if not from_env:
        raise DatabaseError(
            f"no database given: set {ADMIN_DSN_FILE_ENV} (a file holding the DSN), "
            f"{ADMIN_DSN_ENV}, or pass --dsn-file"
        )
    return from_env


async def connect(dsn: str) -> asyncpg.Connection:
    """Open one connection, turning driver errors into a sentence naming host and cause."""
    try:
        conn: asyncpg.Connection = await asyncpg.connect(dsn, timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise DatabaseError(f"cannot connect to PostgreSQL: {exc}") from exc
    return conn
