"""The PostgreSQL sink against a real database, as a least-privileged role: rows the database
refuses are isolated within one write, a table that refuses every row is given back at once
and probed until it takes writes again, and a temporary failure is waited out."""

from __future__ import annotations

import asyncio
import random
import string
from collections.abc import AsyncIterator

import asyncpg
import pytest

from gateway import pgtime
from gateway.bootstrap import bootstrap
from gateway.contracts import Row, Table
from gateway.decoder import COLUMNS, DEDUP_COLUMNS
from gateway.pgtime import use_integer_timestamps
from gateway.services.postgres import PostgresAddress
from gateway.sinks.pg_errors import FailureKind
from gateway.sinks.postgres import PostgresSink

ROLE = "telemetry_ingest"
TELEMETRY = Table("ingest", "telemetry", COLUMNS)
DEDUPLICATED = Table("ingest", "telemetry", DEDUP_COLUMNS, dedup=True)


Conn = asyncpg.Connection


@pytest.fixture
async def admin(database: PostgresAddress, role_passwords: dict[str, str]) -> AsyncIterator[Conn]:
    await bootstrap(database.dsn, actor="tests")
    conn = await asyncpg.connect(database.dsn)
    yield conn
    await conn.close()


async def role_pool(
    database: PostgresAddress, passwords: dict[str, str], **settings: str
) -> asyncpg.Pool:
    """A write pool as the gateway opens it: the role's own login, integer timestamps."""
    login = f"{ROLE}_login"
    return await asyncpg.create_pool(
        database.dsn_for(login, passwords[login]),
        min_size=1,
        max_size=2,
        init=use_integer_timestamps,
        server_settings=settings,
    )


@pytest.fixture
async def pool(
    admin: Conn, database: PostgresAddress, role_passwords: dict[str, str]
) -> AsyncIterator[asyncpg.Pool]:
    pool = await role_pool(database, role_passwords)
    yield pool
    await pool.close()


def sink(pool: asyncpg.Pool, table: Table, failures: list[FailureKind]) -> PostgresSink:
    return PostgresSink(ROLE, table, pool, on_failure=failures.append)


def row(n: int, *, metric: str = "temp", value: object = 21.5, dedup: bool = False) -> Row:
    now = pgtime.now()
    values = (now, f"sensor-{n % 3}", metric, value, "{}", now)
    return (*values, f"m-{n}") if dedup else values


async def rows_in(admin: Conn) -> int:
    count: int = await admin.fetchval("SELECT count(*) FROM ingest.telemetry")
    return count


async def test_a_dedup_key_too_long_for_the_index_is_refused_and_the_rest_lands(
    admin: Conn, pool: asyncpg.Pool
) -> None:
    failures: list[FailureKind] = []
    rows = [row(n, dedup=True) for n in range(100)]
    # Random, so that the index entry cannot be compressed under btree's limit (2704 bytes).
    too_long = "".join(random.choices(string.ascii_letters, k=3000))
    rows[37] = (*rows[37][:-1], too_long)
    outcome = await sink(pool, DEDUPLICATED, failures).write(rows, {"p": [1, 2]})
    assert (outcome.written, outcome.held) == (99, "")
    assert [bad for bad, _ in outcome.bad_rows] == [rows[37]]
    assert outcome.bad_rows[0][1].startswith("54000 index row size")
    assert set(failures) == {FailureKind.DATA}
    assert await rows_in(admin) == 99
    assert await admin.fetchval("SELECT sum(rows) FROM gateway.write_log") == 99
    assert not await admin.fetchval(
        "SELECT count(*) FROM ingest.telemetry WHERE message_id = $1", too_long
    )


async def test_rows_the_database_or_the_client_cannot_take_are_refused_one_by_one(
    admin: Conn, pool: asyncpg.Pool
) -> None:
    failures: list[FailureKind] = []
    rows = [row(n) for n in range(40)]
    rows[3] = row(3, metric="te\x00mp")  # PostgreSQL text holds no NUL
    rows[17] = row(17, metric="te\udcffmp")  # a lone surrogate cannot be encoded as UTF-8
    rows[18] = row(18, value="21.5")  # a str where a double goes
    rows[39] = row(39, value=10**400)  # beyond any double
    outcome = await sink(pool, TELEMETRY, failures).write(rows, {})
    assert (outcome.written, outcome.held) == (36, "")
    assert [bad for bad, _ in outcome.bad_rows] == [rows[3], rows[17], rows[18], rows[39]]
    reasons = [reason for _, reason in outcome.bad_rows]
    assert reasons[0].startswith("22021 ")
    for reason, cause in zip(
        reasons[1:], ["UnicodeEncodeError", "TypeError", "OverflowError"], strict=True
    ):
        assert reason.startswith(f"DataError: invalid input in a row: {cause}: ")
    assert set(failures) == {FailureKind.DATA}
    assert await rows_in(admin) == 36


ENTRY_FUNCTION = (
    "FUNCTION gateway.append_write_log(text, text, integer, integer, jsonb, timestamptz, "
    "timestamptz, text)"
)


@pytest.mark.parametrize(
    ("revoked", "grantee", "table", "refusal"),
    [
        ("INSERT ON ingest.telemetry", ROLE, TELEMETRY, "permission denied for table"),
        ("INSERT ON ingest.telemetry", ROLE, DEDUPLICATED, "permission denied for table"),
        # the entry that goes with each batch
        (f"EXECUTE ON {ENTRY_FUNCTION}", "PUBLIC", TELEMETRY, "permission denied for function"),
    ],
    ids=["copy", "staging", "write_log"],
)
async def test_a_revoked_privilege_holds_the_table_until_it_is_granted_again(
    admin: Conn, pool: asyncpg.Pool, revoked: str, grantee: str, table: Table, refusal: str
) -> None:
    failures: list[FailureKind] = []
    writer = sink(pool, table, failures)
    rows = [row(n, dedup=table.dedup) for n in range(10)]
    await admin.execute(f"REVOKE {revoked} FROM {grantee}")
    outcome = await writer.write(rows, {})
    assert (outcome.written, outcome.bad_rows) == (0, [])
    assert outcome.held.startswith(f"42501 {refusal}")
    assert failures == [FailureKind.HELD]  # once: not retried
    assert (await writer.probe()).startswith("42501 ")
    assert await writer.probe() == outcome.held
    await admin.execute(f"GRANT {revoked} TO {grantee}")
    assert await writer.probe() == ""
    assert await rows_in(admin) == 0  # probes write nothing
    assert not await admin.fetchval("SELECT count(*) FROM gateway.write_log")
    outcome = await writer.write(rows, {})
    assert (outcome.written, outcome.bad_rows, outcome.held) == (10, [], "")
    assert await rows_in(admin) == 10


@pytest.mark.parametrize("table", [TELEMETRY, DEDUPLICATED], ids=["copy", "staging"])
async def test_a_table_gone_holds_it_until_it_is_back(
    admin: Conn, pool: asyncpg.Pool, table: Table
) -> None:
    failures: list[FailureKind] = []
    writer = sink(pool, table, failures)
    rows = [row(n, dedup=table.dedup) for n in range(10)]
    await admin.execute("ALTER TABLE ingest.telemetry RENAME TO telemetry_away")
    outcome = await writer.write(rows, {})
    assert (outcome.written, outcome.bad_rows) == (0, [])
    assert outcome.held.startswith("42P01 relation")
    assert failures == [FailureKind.HELD]
    assert (await writer.probe()).startswith("42P01 ")
    await admin.execute("ALTER TABLE ingest.telemetry_away RENAME TO telemetry")
    assert await writer.probe() == ""
    outcome = await writer.write(rows, {})
    assert (outcome.written, outcome.held) == (10, "")


async def test_a_column_gone_holds_the_table(admin: Conn, pool: asyncpg.Pool) -> None:
    failures: list[FailureKind] = []
    writer = sink(pool, TELEMETRY, failures)
    await admin.execute("ALTER TABLE ingest.telemetry DROP COLUMN tags")
    outcome = await writer.write([row(1)], {})
    assert outcome.held.startswith("42703 column")
    assert failures == [FailureKind.HELD]
    assert (await writer.probe()).startswith("42703 ")


async def test_a_temporary_failure_is_retried_with_the_batch_kept(
    admin: Conn, database: PostgresAddress, role_passwords: dict[str, str]
) -> None:
    # A lock held elsewhere, and a lock timeout, give the write 55P03 until the lock goes.
    pool = await role_pool(database, role_passwords, lock_timeout="50ms")
    try:
        failed = asyncio.Event()
        failures: list[FailureKind] = []

        def on_failure(kind: FailureKind) -> None:
            failures.append(kind)
            failed.set()

        writer = PostgresSink(ROLE, TELEMETRY, pool, on_failure=on_failure, max_backoff=0.2)
        rows = [row(n) for n in range(10)]
        locked = admin.transaction()
        await locked.start()
        await admin.execute("LOCK TABLE ingest.telemetry IN ACCESS EXCLUSIVE MODE")
        write = asyncio.ensure_future(writer.write(rows, {}))
        await failed.wait()
        assert not write.done()
        assert await writer.probe() != ""
        await locked.rollback()
        outcome = await write
        assert (outcome.written, outcome.bad_rows, outcome.held) == (10, [], "")
        assert set(failures) == {FailureKind.TEMPORARY}
        assert await rows_in(admin) == 10
    finally:
        await pool.close()
