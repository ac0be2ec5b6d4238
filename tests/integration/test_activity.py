"""Against PostgreSQL: an identity the database cannot take never stops the others' activity,
and a lost connection loses no counts."""

from __future__ import annotations

import random
import string
from collections import Counter
from collections.abc import AsyncIterator

import asyncpg
import pytest

import gateway.activity
from gateway.activity import Activity
from gateway.identities.registry import Registry
from gateway.services.postgres import PostgresAddress
from gateway.sinks.pg_errors import FailureKind, classify

from .test_registry import prepare

GOOD = ("sensor-1", "sensor-2", "svc-1")
# Random letters do not compress, so the key outgrows a btree index row (SQLSTATE 54000);
# repeated ones would compress and fit.
LONG = "".join(random.Random(7).choices(string.ascii_letters + string.digits, k=3000))
NUL = "sensor\x00-1"


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


def record(activity: Activity, *bad: str) -> None:
    activity.wrote(Counter({"sensor-1": 5, **dict.fromkeys(bad, 3), "sensor-2": 2}))
    for name in (*bad, "svc-1"):
        activity.rejected(name)


async def recorded(conn: asyncpg.Connection) -> dict[str, tuple[int, int]]:
    rows = await conn.fetch(
        "SELECT identity, sum(rows)::int AS rows, sum(rejects)::int AS rejects "
        "FROM gateway.identity_activity GROUP BY identity"
    )
    return {row["identity"]: (row["rows"], row["rejects"]) for row in rows}


async def last_seen(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch("SELECT name FROM gateway.identities WHERE last_seen IS NOT NULL")
    return {row["name"] for row in rows}


async def test_names_no_identity_can_have_are_refused_and_the_rest_written(
    conn: asyncpg.Connection,
) -> None:
    activity = Activity()
    record(activity, LONG, NUL)
    assert await activity.flush(conn) == 3
    assert await recorded(conn) == {"sensor-1": (5, 0), "sensor-2": (2, 0), "svc-1": (0, 1)}
    assert await last_seen(conn) == set(GOOD)
    assert activity.dropped == {"name": 4}
    assert len(activity) == 0 and await activity.flush(conn) == 0


async def test_entries_the_database_refuses_are_isolated_and_the_rest_written(
    conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if a name slipped past the cheap check: too long for the index (54000), a NUL
    # (22021) and a lone surrogate (refused while encoding, before it is sent).
    monkeypatch.setattr(gateway.activity, "recordable", lambda name: True)
    activity = Activity()
    record(activity, LONG, NUL, "\udcff")
    assert await activity.flush(conn) == 3
    assert await recorded(conn) == {"sensor-1": (5, 0), "sensor-2": (2, 0), "svc-1": (0, 1)}
    assert await last_seen(conn) == set(GOOD)
    assert activity.dropped == {"database": 3}
    assert len(activity) == 0 and await activity.flush(conn) == 0
    # The counts that arrive next land beside them.
    record(activity)
    assert await activity.flush(conn) == 3
    assert await recorded(conn) == {"sensor-1": (10, 0), "sensor-2": (4, 0), "svc-1": (0, 2)}


async def test_a_closed_connection_keeps_the_counts(
    conn: asyncpg.Connection, database: PostgresAddress
) -> None:
    activity = Activity()
    record(activity)
    closed = await asyncpg.connect(database.dsn)
    await closed.close()
    with pytest.raises(asyncpg.InterfaceError):
        await activity.flush(closed)
    assert len(activity) == 3 and not activity.dropped
    assert await recorded(conn) == {}
    assert await activity.flush(conn) == 3
    assert await recorded(conn) == {"sensor-1": (5, 0), "sensor-2": (2, 0), "svc-1": (0, 1)}


async def test_a_connection_lost_mid_flush_keeps_the_counts(
    conn: asyncpg.Connection, database: PostgresAddress
) -> None:
    activity = Activity()
    record(activity)
    lost = await asyncpg.connect(database.dsn)
    try:
        await conn.execute("SELECT pg_terminate_backend($1)", lost.get_server_pid())
        # Depending on when the termination arrives: 57P01, "connection is closed", or
        # asyncpg's "another operation is in progress"; each a temporary failure.
        with pytest.raises(Exception) as raised:
            await activity.flush(lost)
        assert classify(raised.value) is FailureKind.TEMPORARY
    finally:
        await lost.close()
    assert len(activity) == 3 and not activity.dropped
    assert await activity.flush(conn) == 3
    assert await last_seen(conn) == set(GOOD)
