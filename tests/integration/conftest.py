"""Real services for integration tests, one of each per test session.

A service that cannot start fails the tests that need it, with the service's log in the error:
nothing here skips. PostgreSQL comes one way (see `databases`): the session's server, which
`GATEWAY_TEST_PG_DSN` may name, and a fresh database on it per test or per stack.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from gateway.app import Gateway
from gateway.bootstrap import EXAMPLE_ROLES, bootstrap
from gateway.migrate import migrate
from gateway.roles.declaration import load_declaration
from gateway.services.mosquitto import Mosquitto
from gateway.services.postgres import Postgres, PostgresAddress

from .databases import Server, fresh_database, own_cluster, session_server

# The source contract suite's fixtures, kept beside its per-source adapters.
from .sources import contract_kafka, contract_mosquitto, harness, source_kind  # noqa: F401
from .stack import Stack, stack

__all__ = ["EXAMPLE_ROLES"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
async def postgres() -> AsyncIterator[Server]:
    async with session_server() as server:
        yield server


@pytest.fixture
async def database(postgres: Server) -> AsyncIterator[PostgresAddress]:
    """A fresh, empty database for one test; roles are cluster-wide, so name them uniquely."""
    async with fresh_database(postgres) as address:
        yield address


@pytest.fixture(scope="session")
async def mosquitto() -> AsyncIterator[Mosquitto]:
    async with Mosquitto() as broker:
        yield broker


@pytest.fixture(scope="module")
async def deployment(postgres: Server, role_passwords: dict[str, str]) -> AsyncIterator[Stack]:
    """The module's service stack: its own database on the session's PostgreSQL, bootstrapped
    with the example roles, and its own Mosquitto."""
    async with stack(postgres) as deployed:
        yield deployed


@pytest.fixture(scope="session")
def role_passwords() -> Iterator[dict[str, str]]:
    """A password for every example role's LOGIN member, exported where the declaration reads it."""
    doc = load_declaration(EXAMPLE_ROLES)
    passwords = {}
    for name, spec in doc.roles.items():
        assert spec.password.env is not None
        password = secrets.token_urlsafe(12)
        os.environ[spec.password.env] = password
        passwords[doc.login_role(name)] = password
    yield passwords
    for spec in doc.roles.values():
        os.environ.pop(spec.password.env or "", None)


@pytest.fixture(scope="module")
async def cluster() -> AsyncIterator[Postgres]:
    """A PostgreSQL of the module's own: roles are cluster-wide, so role tests share nothing."""
    async with own_cluster() as server:
        yield server


@pytest.fixture(scope="module")
async def governed(cluster: Postgres, role_passwords: dict[str, str]) -> Postgres:
    """The module's cluster, migrated, with the example roles applied."""
    applied = await bootstrap(cluster.dsn, actor="tests")
    assert applied.version is not None
    return cluster


@pytest.fixture
async def gateway(env: Stack) -> AsyncIterator[Gateway]:
    """A gateway running in-process on the module's stack (its `env` fixture)."""
    running = Gateway(env.config())
    await running.start()
    yield running
    await running.stop()


@pytest.fixture
async def fresh(role_passwords: dict[str, str]) -> AsyncIterator[Postgres]:
    """A new, migrated cluster per test: for tests that change cluster-wide roles."""
    async with own_cluster() as server:
        conn = await asyncpg.connect(server.dsn)
        await migrate(conn)
        await conn.close()
        yield server


@pytest.fixture
async def admin(fresh: Postgres) -> AsyncIterator[asyncpg.Connection]:
    """The superuser of `fresh`."""
    conn = await asyncpg.connect(fresh.dsn)
    yield conn
    await conn.close()


@pytest.fixture
async def conn(database: PostgresAddress) -> AsyncIterator[asyncpg.Connection]:
    """A connection to a fresh database with the registry's schema and roles."""
    from .test_registry import prepare

    connection = await asyncpg.connect(database.dsn)
    try:
        await prepare(connection)
        yield connection
    finally:
        await connection.close()
