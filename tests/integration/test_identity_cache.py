"""The identity cache follows changes made by any process, and survives losing its connection."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from gateway.db import DatabaseError
from gateway.identities.cache import (
    FEED_BATCH,
    MIN_READ_INTERVAL,
    CachedIdentity,
    IdentityCache,
)
from gateway.identities.model import CHANNEL
from gateway.identities.registry import Registry
from gateway.services.postgres import PostgresAddress

from .test_registry import prepare

APP_NAME = "identity-cache-under-test"


@pytest.fixture
async def conn(database: PostgresAddress) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database.dsn)
    try:
        await prepare(connection)
        registry = Registry(connection, "tests")
        await registry.add("sensor-1", "telemetry_ingest")
        await registry.add("sensor-2", "telemetry_ingest")
        await registry.add("svc-1", "state_writer", kind="service")
        yield connection
    finally:
        await connection.close()


class Gate:
    """Connects the cache as a named session; while closed, refuses as a down server would."""

    def __init__(self, database: PostgresAddress) -> None:
        self.dsn = database.dsn
        self.open = True
        self.connects = 0
        self.refused = 0

    async def connect(self) -> asyncpg.Connection:
        if not self.open:
            self.refused += 1
            raise ConnectionRefusedError("gate closed")
        self.connects += 1
        conn: asyncpg.Connection = await asyncpg.connect(
            self.dsn, server_settings={"application_name": APP_NAME}
        )
        return conn


async def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> float:
    """Seconds until `condition` held; polling finely so the figure is close to the truth."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.002)
    return time.monotonic() - started


async def test_loads_everything_at_start_and_reports_entries(
    database: PostgresAddress, conn: asyncpg.Connection
) -> None:
    reported: list[int] = []
    async with IdentityCache(database.dsn, on_entries=reported.append) as cache:
        assert cache.entries == 3 and reported == [3]
        assert cache.get("sensor-1") == CachedIdentity(
            "telemetry_ingest", "telemetry_ingest_login", "active"
        )
        assert cache.get("svc-1") == ("state_writer", "state_writer_login", "active")
        assert cache.get("nobody") is None
        # Entries with the same role and status are one shared object.
        assert cache.get("sensor-1") is cache.get("sensor-2")
        assert cache.connected


async def test_sees_retire_and_reassign_from_another_connection_within_a_second(
    database: PostgresAddress, conn: asyncpg.Connection
) -> None:
    registry = Registry(conn, "tests")
    async with IdentityCache(database.dsn) as cache:
        await registry.retire("sensor-1")
        latency = await eventually(
            lambda: (
                cache.get("sensor-1") == ("telemetry_ingest", "telemetry_ingest_login", "retired")
            )
        )
        assert latency < 1.0
        assert cache.get("sensor-1").active is False  # type: ignore[union-attr]

        await registry.assign("sensor-2", "state_writer")
        latency = await eventually(
            lambda: getattr(cache.get("sensor-2"), "role", None) == "state_writer"
        )
        assert latency < 1.0

        await registry.add("sensor-3", "telemetry_ingest")
        assert await eventually(lambda: cache.get("sensor-3") is not None) < 1.0

        # Deleting is not a registry operation, but a cache must not keep a deleted row.
        await conn.execute("DELETE FROM gateway.identities WHERE name = 'svc-1'")
        await eventually(lambda: cache.get("svc-1") is None)
        assert cache.entries == 3


async def test_a_large_change_reloads_everything(
    database: PostgresAddress, conn: asyncpg.Connection
) -> None:
    async with IdentityCache(database.dsn) as cache:
        await conn.execute(
            "INSERT INTO gateway.identities (name, role_id) "
            "SELECT 'bulk-' || g, 'r-state' FROM generate_series(1, 1000) g"
        )
        await eventually(lambda: cache.entries == 1003)
        assert cache.reloads == 1  # a thousand names are read by name
        assert cache.get("bulk-500") == ("state_writer", "state_writer_login", "active")
        await conn.execute(
            "INSERT INTO gateway.identities (name, role_id) "
            "SELECT 'more-' || g, 'r-state' FROM generate_series(1, $1::int) g",
            FEED_BATCH + 1,
        )
        await eventually(lambda: cache.entries == 1003 + FEED_BATCH + 1)
        assert cache.reloads == 2  # more than a batch: one full load instead


async def test_recovers_after_its_connection_is_killed_and_sees_what_it_missed(
    database: PostgresAddress, conn: asyncpg.Connection
) -> None:
    gate = Gate(database)
    cache = IdentityCache(gate.connect, min_backoff=0.05, max_backoff=0.2)
    await cache.start()
    try:
        gate.open = False
        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = $1",
            APP_NAME,
        )
        assert killed == 1
        await eventually(lambda: not cache.connected)

        # Changes made while the cache cannot hear about them.
        registry = Registry(conn, "tests")
        await registry.retire("sensor-1")
        await registry.add("sensor-9", "state_writer")
        await eventually(lambda: gate.refused >= 3)  # it keeps trying, with backoff
        assert cache.get("sensor-1").active  # type: ignore[union-attr]  # stale, as expected

        gate.open = True
        await eventually(lambda: cache.connected and cache.reloads == 2)
        assert cache.get("sensor-1") == ("telemetry_ingest", "telemetry_ingest_login", "retired")
        assert cache.get("sensor-9") == ("state_writer", "state_writer_login", "active")
        assert gate.connects == 2

        # And it follows changes again on the new connection.
        await registry.assign("sensor-2", "state_writer")
        assert (
            await eventually(lambda: getattr(cache.get("sensor-2"), "role", None) == "state_writer")
            < 1.0
        )
    finally:
        await cache.close()


async def feed_since(conn: asyncpg.Connection, seq: int) -> list[str]:
    rows = await conn.fetch(
        "SELECT name FROM gateway.identity_changes WHERE seq > $1 ORDER BY seq", seq
    )
    return [row["name"] for row in rows]


async def test_the_feed_records_only_what_caches_need(
    database: PostgresAddress, conn: asyncpg.Connection
) -> None:
    start = await conn.fetchval("SELECT coalesce(max(seq), 0) FROM gateway.identity_changes")
    # Activity bookkeeping and attribute edits do not make every gateway re-read rows.
    await conn.execute("UPDATE gateway.identities SET last_seen = now(), attributes = '{\"a\": 1}'")
    assert await feed_since(conn, start) == []
    await conn.execute(
        "UPDATE gateway.identities SET status = 'retired', retired_at = now() WHERE name = 'svc-1'"
    )
    assert await feed_since(conn, start) == ["svc-1"]
    # A statement of any size is recorded whole, names of any length included.
    await conn.execute(
        "INSERT INTO gateway.identities (name, role_id) "
        "SELECT 'long-' || lpad(g::text, 115, '0'), 'r-state' FROM generate_series(1, 150) g"
    )
    assert len(await feed_since(conn, start)) == 151


async def test_only_the_feed_is_trusted_not_a_notification(
    database: PostgresAddress, conn: asyncpg.Connection
) -> None:
    """Any role may NOTIFY any channel: a reader login's storm of notifications, `*` and names
    alike, makes no gateway reload or believe anything, and costs it a bounded number of small
    reads, while every retirement made meanwhile is still seen within a second."""
    login = f"storm_reader_{secrets.token_hex(3)}"
    await conn.execute(f"CREATE ROLE {login} LOGIN PASSWORD 'storm'")
    # A reader may not write the feed, nor call what writes it.
    reader = await asyncpg.connect(database.dsn_for(login, "storm"))
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await reader.execute("INSERT INTO gateway.identity_changes (name) VALUES ('*')")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await reader.execute("SELECT gateway.identity_roles_changed()")
        registry = Registry(conn, "tests")
        names = [f"storm-{i}" for i in range(5)]
        for name in names:
            await registry.add(name, "telemetry_ingest")
        async with IdentityCache(database.dsn, health_interval=30) as cache:
            stop = asyncio.Event()

            async def storm() -> int:
                sent = 0
                while not stop.is_set():
                    payload = "*" if sent % 2 else " ".join(names)
                    await reader.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
                    sent += 1
                    await asyncio.sleep(0.01)
                return sent

            storming = asyncio.create_task(storm())
            cpu = time.process_time()
            started = time.monotonic()
            seen = []
            for name in names:
                await registry.retire(name)
                seen.append(await eventually(lambda n=name: not cache.get(n).active))  # type: ignore[union-attr]
            await asyncio.sleep(1)
            stop.set()
            sent = await storming
            elapsed = time.monotonic() - started
            cpu = time.process_time() - cpu
        print(
            f"storm: {sent} notifications in {elapsed:.1f} s; cache read the feed "
            f"{cache.feed_reads} times; process CPU {cpu:.2f} s; retirements seen after "
            f"{', '.join(f'{s:.3f}' for s in seen)} s"
        )
        assert max(seen) < 1.0
        assert cache.reloads == 1  # the start only: no notification made it reload
        assert cache.notifications >= sent // 2
        # Paced: at most one read per MIN_READ_INTERVAL, however many notifications came.
        assert cache.feed_reads <= elapsed / MIN_READ_INTERVAL + 2
    finally:
        await reader.close()
        await conn.execute(f"DROP ROLE {login}")


async def test_start_fails_clearly_without_a_usable_database(database: PostgresAddress) -> None:
    with pytest.raises(DatabaseError, match="identity cache could not load the registry"):
        await IdentityCache(database.dsn_for("nobody", "wrong")).start()
    # Reachable, but not migrated.
    with pytest.raises(DatabaseError, match=r"gateway\.roles"):
        await IdentityCache(database.dsn).start()


async def test_health_checks_keep_a_quiet_cache_following(
    database: PostgresAddress, conn: asyncpg.Connection
) -> None:
    async with IdentityCache(database.dsn, health_interval=0.05) as cache:
        await asyncio.sleep(0.3)  # several idle checks
        assert cache.connected and cache.reloads == 1
        await Registry(conn, "tests").retire("svc-1")
        await eventually(lambda: getattr(cache.get("svc-1"), "active", True) is False)


async def test_a_role_renamed_reaches_the_cache_through_the_feed(
    database: PostgresAddress, conn: asyncpg.Connection
) -> None:
    """No identity row changes when a role is renamed: `roles apply` records `*` in the feed,
    which makes every cache load everything once."""
    async with IdentityCache(database.dsn) as cache:
        await conn.execute("UPDATE gateway.roles SET name = 'state_keeper' WHERE id = 'r-state'")
        await conn.execute("SELECT gateway.identity_roles_changed()")
        await eventually(lambda: getattr(cache.get("svc-1"), "role", None) == "state_keeper")
        assert cache.reloads == 2
