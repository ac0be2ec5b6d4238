"""Shaped routes' writes against a real database, each as its least-privileged role: a device's
state is upserted so the newest version wins, whatever the order or the redeliveries, with
exactly the privileges that needs; a wide table is deduplicated through typed staging."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import orjson
import pytest

from gateway import pgtime
from gateway.bootstrap import bootstrap
from gateway.contracts import Row, Table
from gateway.pgtime import use_integer_timestamps
from gateway.services.postgres import PostgresAddress
from gateway.sinks.pg_errors import FailureKind
from gateway.sinks.postgres import PostgresSink

Conn = asyncpg.Connection

STATE_ROLE = "state_writer"
STATE = Table(
    "ingest",
    "device_state",
    ("identity", "state", "updated_at"),
    ts_column=2,
    identity_column=0,
    types=("text", "jsonb", "timestamptz"),
    conflict=("identity",),
    version="updated_at",
)
# What an upsert needs, and nothing more: the statement reads the key and the version in the
# table, and sets every other column.
STATE_PRIVILEGES = (
    "INSERT ON ingest.device_state",
    "UPDATE (state, updated_at) ON ingest.device_state",
    "SELECT (identity, updated_at) ON ingest.device_state",
)

T0 = pgtime.now()


@pytest.fixture
async def admin(database: PostgresAddress, role_passwords: dict[str, str]) -> AsyncIterator[Conn]:
    await bootstrap(database.dsn, actor="tests")
    conn = await asyncpg.connect(database.dsn)
    # Exactly the privileges an upsert needs, whatever the example declaration grants.
    await conn.execute(f"REVOKE ALL ON ingest.device_state FROM {STATE_ROLE}")
    for privilege in STATE_PRIVILEGES:
        await conn.execute(f"GRANT {privilege} TO {STATE_ROLE}")
    yield conn
    await conn.close()


async def role_pool(
    database: PostgresAddress, passwords: dict[str, str], role: str
) -> asyncpg.Pool:
    """A write pool as the gateway opens it: the role's own login, integer timestamps."""
    login = f"{role}_login"
    return await asyncpg.create_pool(
        database.dsn_for(login, passwords[login]),
        min_size=1,
        max_size=2,
        init=use_integer_timestamps,
    )


@pytest.fixture
async def pool(
    admin: Conn, database: PostgresAddress, role_passwords: dict[str, str]
) -> AsyncIterator[asyncpg.Pool]:
    pool = await role_pool(database, role_passwords, STATE_ROLE)
    yield pool
    await pool.close()


def state(identity: str, seconds: int, **values: object) -> Row:
    """A device's state `seconds` after T0."""
    payload = {"at": seconds, **values}
    return (
        identity,
        orjson.dumps(payload).decode(),
        T0 + pgtime.duration(timedelta(seconds=seconds)),
    )


async def states(admin: Conn) -> dict[str, tuple[int, int]]:
    """Each device's state: the second it was sent at, and its version's offset from T0."""
    found = {}
    for record in await admin.fetch(
        "SELECT identity, state, updated_at FROM ingest.device_state ORDER BY identity"
    ):
        at = orjson.loads(record["state"])["at"]
        offset = record["updated_at"] - pgtime.to_datetime(T0)
        found[record["identity"]] = (at, int(offset.total_seconds()))
    return found


async def log_rows(admin: Conn) -> list[int]:
    return [r["rows"] for r in await admin.fetch("SELECT rows FROM gateway.write_log ORDER BY id")]


async def test_the_newest_state_wins_within_a_batch_and_across_batches(
    admin: Conn, pool: asyncpg.Pool
) -> None:
    failures: list[FailureKind] = []
    writer = PostgresSink(STATE_ROLE, STATE, pool, on_failure=failures.append)
    batch = [state("a", 5), state("b", 1), state("a", 9), state("a", 7), state("b", 3)]
    outcome = await writer.write(batch, {"p": 1})
    assert (outcome.written, outcome.bad_rows, outcome.held) == (5, [], "")
    assert await states(admin) == {"a": (9, 9), "b": (3, 3)}
    outcome = await writer.write([state("a", 10), state("b", 2), state("c", 4)], {"p": 2})
    assert (outcome.written, outcome.held) == (3, "")
    assert await states(admin) == {"a": (10, 10), "b": (3, 3), "c": (4, 4)}
    # What each statement changed: two devices, then a newer a and a new c (b's is older).
    assert await log_rows(admin) == [2, 2]
    assert failures == []


async def test_redelivered_and_older_states_change_nothing(admin: Conn, pool: asyncpg.Pool) -> None:
    writer = PostgresSink(STATE_ROLE, STATE, pool)
    batch = [state("a", 5), state("b", 6)]
    assert (await writer.write(batch, {})).written == 2
    # The same batch again: equal versions, so nothing moves.
    outcome = await writer.write(batch, {})
    assert (outcome.written, outcome.bad_rows, outcome.held) == (2, [], "")
    # Older ones after newer ones, with other content: still nothing moves.
    outcome = await writer.write([state("a", 4, mode="old"), state("b", 1, mode="old")], {})
    assert (outcome.written, outcome.held) == (2, "")
    assert await states(admin) == {"a": (5, 5), "b": (6, 6)}
    assert await log_rows(admin) == [2, 0, 0]
    stored = await admin.fetchval("SELECT state FROM ingest.device_state WHERE identity = 'a'")
    assert "mode" not in orjson.loads(stored)


async def test_a_bad_row_is_refused_alone_and_the_other_states_land(
    admin: Conn, pool: asyncpg.Pool
) -> None:
    writer = PostgresSink(STATE_ROLE, STATE, pool)
    batch = [state("a", 1), ("b", "not json", T0), state("c", 2)]
    outcome = await writer.write(batch, {})
    assert outcome.written == 2
    assert [bad for bad, _ in outcome.bad_rows] == [batch[1]]
    assert outcome.bad_rows[0][1].startswith("22P02 ")
    assert await states(admin) == {"a": (1, 1), "c": (2, 2)}


async def test_exactly_the_declared_privileges_write_states_and_allow_nothing_else(
    admin: Conn, pool: asyncpg.Pool
) -> None:
    writer = PostgresSink(STATE_ROLE, STATE, pool)
    assert await writer.probe() == ""
    assert (await writer.write([state("a", 1)], {})).written == 1
    async with pool.acquire() as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM ingest.device_state")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch("SELECT state FROM ingest.device_state")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch("SELECT * FROM ingest.device_state")
    assert await states(admin) == {"a": (1, 1)}


@pytest.mark.parametrize(
    ("revoked", "refusal"),
    [
        ("SELECT (updated_at)", "permission denied for table device_state"),
        ("SELECT (identity)", "permission denied for table device_state"),
        ("UPDATE (state)", "permission denied for table device_state"),
        ("INSERT", "permission denied for table device_state"),
    ],
    ids=["version", "key", "update", "insert"],
)
async def test_a_missing_privilege_holds_the_table_and_the_probe_says_so(
    admin: Conn, pool: asyncpg.Pool, revoked: str, refusal: str
) -> None:
    failures: list[FailureKind] = []
    writer = PostgresSink(STATE_ROLE, STATE, pool, on_failure=failures.append)
    await admin.execute(f"REVOKE {revoked} ON ingest.device_state FROM {STATE_ROLE}")
    outcome = await writer.write([state("a", 1), state("b", 2)], {})
    assert (outcome.written, outcome.bad_rows) == (0, [])
    assert outcome.held.startswith(f"42501 {refusal}")
    assert failures == [FailureKind.HELD]
    assert await writer.probe() == outcome.held
    await admin.execute(f"GRANT {revoked} ON ingest.device_state TO {STATE_ROLE}")
    assert await writer.probe() == ""
    assert await states(admin) == {}  # probes write nothing
    assert await log_rows(admin) == []
    assert (await writer.write([state("a", 1), state("b", 2)], {})).written == 2


WIDE_COLUMNS = (
    ("at", "timestamptz"),
    ("device", "text"),
    ("reading", "float8"),
    ("count", "int8"),
    ("small", "int4"),
    ("ok", "bool"),
    ("note", "text"),
    ("extra", "jsonb"),
    ("id", "uuid"),
    ("received", "timestamptz"),
)


async def test_a_wide_table_is_deduplicated_through_typed_staging(
    admin: Conn, database: PostgresAddress, role_passwords: dict[str, str]
) -> None:
    definition = ", ".join(f"{name} {kind}" for name, kind in WIDE_COLUMNS)
    await admin.execute(f"CREATE TABLE ingest.wide ({definition}, UNIQUE (id))")
    await admin.execute("GRANT INSERT ON ingest.wide TO telemetry_ingest")
    table = Table(
        "ingest",
        "wide",
        tuple(name for name, _ in WIDE_COLUMNS),
        ts_column=0,
        identity_column=1,
        dedup=True,
        types=tuple(kind for _, kind in WIDE_COLUMNS),
    )
    ids = [uuid.uuid4() for _ in range(4)]
    rows = [
        (
            T0,
            f"d-{n}",
            n / 2,
            2**40 + n,
            n,
            n % 2 == 0,
            None,
            orjson.dumps({"n": n}).decode(),
            ids[n],
            T0,
        )
        for n in range(4)
    ]
    pool = await role_pool(database, role_passwords, "telemetry_ingest")
    try:
        writer = PostgresSink("telemetry_ingest", table, pool)
        assert await writer.probe() == ""
        outcome = await writer.write(rows, {})
        assert (outcome.written, outcome.bad_rows, outcome.held) == (4, [], "")
        # Redelivered with one new row: only the new one is added.
        extra = (T0, "d-9", 1.5, 9, 9, True, "x", "[]", uuid.uuid4(), T0)
        outcome = await writer.write([*rows[1:3], extra], {})
        assert (outcome.written, outcome.held) == (1, "")
    finally:
        await pool.close()
    stored = await admin.fetch("SELECT * FROM ingest.wide ORDER BY device")
    assert [r["device"] for r in stored] == ["d-0", "d-1", "d-2", "d-3", "d-9"]
    assert (stored[3]["count"], stored[3]["small"], stored[3]["ok"]) == (2**40 + 3, 3, False)
    assert stored[3]["id"] == ids[3] and orjson.loads(stored[3]["extra"]) == {"n": 3}
    assert await log_rows(admin) == [4, 1]
