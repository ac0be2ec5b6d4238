"""Where an integration test gets its PostgreSQL, one way for all of them.

The session's server is the one `GATEWAY_TEST_PG_DSN` names, else one launched for the session
(conftest's `postgres` fixture); a test gets a fresh database on it. Only a test that changes
cluster-wide roles, or stops the server, takes a cluster of its own (`own_cluster`).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from gateway.services.postgres import DSN_ENV, ExternalPostgres, Postgres, PostgresAddress

__all__ = ["Server", "fresh_database", "own_cluster", "session_server"]

Server = Postgres | ExternalPostgres


def session_server() -> Server:
    """The server `GATEWAY_TEST_PG_DSN` names, else a launched one (enter it to start it)."""
    dsn = os.environ.get(DSN_ENV)
    return ExternalPostgres(dsn) if dsn else Postgres()


@asynccontextmanager
async def fresh_database(server: Server) -> AsyncIterator[PostgresAddress]:
    """A new, empty database on `server`, dropped afterwards; roles stay cluster-wide."""
    name = f"test_{secrets.token_hex(4)}"
    await _admin(server, f'CREATE DATABASE "{name}"')
    address = server.address
    yield PostgresAddress(address.host, address.port, address.superuser, address.password, name)
    # A new connection: the test may have restarted a server of its own meanwhile.
    await _admin(server, f'DROP DATABASE "{name}" WITH (FORCE)')


async def _admin(server: Server, statement: str) -> None:
    conn = await asyncpg.connect(server.dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def own_cluster() -> Postgres:
    """A PostgreSQL of the caller's own (enter it to start it), for a test that changes
    cluster-wide roles or stops the server: on the session's server it would disturb the rest."""
    return Postgres()
