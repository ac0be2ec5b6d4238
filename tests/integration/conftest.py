"""Real services for integration tests, one of each per test session.

A service that cannot start fails the tests that need it, with the service's log in the error:
nothing here skips.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from gateway.migrate import migrate
from gateway.roles.apply import apply_roles
from gateway.roles.declaration import load_declaration
from gateway.services.mosquitto import Mosquitto
from gateway.services.postgres import DSN_ENV, ExternalPostgres, Postgres, PostgresAddress


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
async def postgres() -> AsyncIterator[Postgres | ExternalPostgres]:
    dsn = os.environ.get(DSN_ENV)
    async with ExternalPostgres(dsn) if dsn else Postgres() as server:
        yield server


@pytest.fixture
async def database(postgres: Postgres | ExternalPostgres) -> AsyncIterator[PostgresAddress]:
    """A fresh, empty database for one test; roles are cluster-wide, so name them uniquely."""
    name = f"test_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(postgres.dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        address = postgres.address
        yield PostgresAddress(address.host, address.port, address.superuser, address.password, name)
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
async def mosquitto() -> AsyncIterator[Mosquitto]:
    async with Mosquitto() as broker:
        yield broker


EXAMPLE_ROLES = Path(__file__).parents[2] / "config" / "roles.toml"


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
    async with Postgres() as server:
        yield server


@pytest.fixture(scope="module")
async def governed(cluster: Postgres, role_passwords: dict[str, str]) -> Postgres:
    """The module's cluster, migrated, with the example roles applied."""
    conn = await asyncpg.connect(cluster.dsn)
    try:
        await migrate(conn)
        _, version = await apply_roles(conn, load_declaration(EXAMPLE_ROLES), actor="tests")
        assert version is not None
    finally:
        await conn.close()
    return cluster
