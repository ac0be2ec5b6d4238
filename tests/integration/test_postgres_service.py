"""The PostgreSQL launcher gives a real server whose passwords and privileges are enforced."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import asyncpg
import pytest

from gateway.services._process import ServiceError
from gateway.services.postgres import Postgres, PostgresAddress


def unique(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(4)}"


async def test_password_login_over_tcp(database: PostgresAddress) -> None:
    role, password = unique("device_role"), secrets.token_urlsafe(12)
    admin = await asyncpg.connect(database.dsn)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        conn = await asyncpg.connect(database.dsn_for(role, password))
        assert await conn.fetchval("SELECT current_user") == role
        assert (
            await conn.fetchval("SELECT inet_server_addr()::text") is not None
        )  # TCP, not a socket
        await conn.close()
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(database.dsn_for(role, password + "x"))
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(database.dsn_for(database.superuser, "not-the-password"))
    finally:
        await admin.close()


async def test_insert_only_role_can_copy_but_not_read(database: PostgresAddress) -> None:
    group, member, password = unique("ingest"), unique("ingest_login"), secrets.token_urlsafe(12)
    admin = await asyncpg.connect(database.dsn)
    try:
        await admin.execute(
            f"""
            CREATE TABLE telemetry (ts timestamptz, identity text, metric text, value float8);
            CREATE ROLE {group} NOLOGIN;
            GRANT INSERT ON telemetry TO {group};
            CREATE ROLE {member} LOGIN PASSWORD '{password}' IN ROLE {group};
            """
        )
        writer = await asyncpg.connect(database.dsn_for(member, password))
        try:
            now = datetime.now(UTC)
            rows = [(now, "sensor-1", "temp", 21.5), (now, "sensor-2", "temp", 19.0)]
            await writer.copy_records_to_table("telemetry", records=rows)
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await writer.fetch("SELECT * FROM telemetry")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await writer.execute("DELETE FROM telemetry")
        finally:
            await writer.close()
        assert await admin.fetchval("SELECT count(*) FROM telemetry") == 2
    finally:
        await admin.close()


async def test_restart_keeps_data() -> None:
    async with Postgres() as server:
        conn = await asyncpg.connect(server.dsn)
        await conn.execute("CREATE TABLE kept AS SELECT 42 AS answer")
        await conn.close()
        await server.kill()
        assert not server.running
        await server.start()
        conn = await asyncpg.connect(server.dsn)
        assert await conn.fetchval("SELECT answer FROM kept") == 42
        await conn.close()


async def test_failure_to_start_reports_the_server_log() -> None:
    with pytest.raises(ServiceError, match="shared_buffers"):
        async with Postgres(settings={"shared_buffers": "lots"}):
            pass
