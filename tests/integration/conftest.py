"""Real services for integration tests, one of each per test session.

A service that cannot start fails the tests that need it, with the service's log in the error:
nothing here skips.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest

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
