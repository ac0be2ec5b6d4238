"""Connecting the command line to the database, with errors a person can act on."""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from gateway.errors import GatewayError
from gateway.tls import password_exposure

__all__ = ["ADMIN_DSN_ENV", "ADMIN_DSN_FILE_ENV", "Conn", "DatabaseError", "admin_dsn", "connect"]

ADMIN_DSN_ENV = "GATEWAY_ADMIN_DSN"
# A file holding the DSN (a mounted Secret): the password then appears in no process listing
# and no environment a child process inherits.
ADMIN_DSN_FILE_ENV = "GATEWAY_ADMIN_DSN_FILE"
ALLOW_UNVERIFIED_ENV = "GATEWAY_ALLOW_UNVERIFIED_PASSWORD"

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
    """Open one connection, turning driver errors into a sentence naming host and cause.

    A DSN whose password would go to a server nobody verified, off loopback, is refused unless
    `$GATEWAY_ALLOW_UNVERIFIED_PASSWORD` is 1 (as `database.allow_unverified_password` for the
    gateway's own pools): give `sslmode=verify-full&sslrootcert=<CA file>` instead.
    """
    exposure = dsn_exposure(dsn)
    if exposure and os.environ.get(ALLOW_UNVERIFIED_ENV) != "1":
        raise DatabaseError(
            f"refusing to log in: {exposure}; add sslmode=verify-full&sslrootcert=<CA file> to "
            f"the DSN, or set {ALLOW_UNVERIFIED_ENV}=1 on a network you trust"
        )
    try:
        conn: asyncpg.Connection = await asyncpg.connect(dsn, timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise DatabaseError(f"cannot connect to PostgreSQL: {exc}") from exc
    except (ValueError, asyncpg.InterfaceError) as exc:
        # an unparsable DSN: its text may hold a password, so it is not repeated
        raise DatabaseError(f"the admin DSN is not valid: {type(exc).__name__}") from exc
    return conn


def dsn_exposure(dsn: str) -> str | None:
    """Why a password in `dsn` could reach someone posing as its server, or None (see
    `gateway.tls.password_exposure`); a DSN it cannot read is left to the driver."""
    try:
        parts = urllib.parse.urlsplit(dsn)
        query = urllib.parse.parse_qs(parts.query)
        hosts = [parts.hostname] if parts.hostname else query.get("host", [])
    except ValueError:
        return None
    if not hosts and "service" in query:
        # The driver takes the host from a service file: not known here to be this machine.
        hosts = [f"the host of service {query['service'][-1]}"]
    mode = (query.get("sslmode") or ["prefer"])[-1]
    for host in hosts or [os.environ.get("PGHOST", "localhost")]:
        exposure = password_exposure(host, mode)
        if exposure:
            return exposure
    return None
