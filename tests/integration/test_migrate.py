"""Migrations apply once each, from any number of pods at once, and refuse edited history."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from gateway.migrate import MigrationError, migrate, migrations
from gateway.services.postgres import PostgresAddress


async def test_concurrent_migrations_apply_each_file_once(database: PostgresAddress) -> None:
    conns = [await asyncpg.connect(database.dsn) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate(conn) for conn in conns))
        applied = [m.version for result in results for m in result]
        assert sorted(applied) == [m.version for m in migrations()]
        assert await migrate(conns[0]) == []
        tables = await conns[0].fetch(
            "SELECT table_schema || '.' || table_name AS t FROM information_schema.tables "
            "WHERE table_schema IN ('gateway', 'ingest')"
        )
        assert {"ingest.telemetry", "gateway.identities", "gateway.audit_log"} <= {
            row["t"] for row in tables
        }
    finally:
        for conn in conns:
            await conn.close()


async def test_an_edited_migration_is_refused(database: PostgresAddress) -> None:
    conn = await asyncpg.connect(database.dsn)
    try:
        await migrate(conn)
        await conn.execute("UPDATE gateway.schema_migrations SET checksum = 'x' WHERE version = 1")
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await migrate(conn)
    finally:
        await conn.close()
