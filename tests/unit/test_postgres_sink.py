"""How the PostgreSQL sink answers each kind of failure, over a pool that fails on demand: the
real database's answers are in tests/integration/test_sink_failures.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import cast

import asyncpg
import pytest

from gateway.contracts import Row, Table
from gateway.sinks.pg_errors import FailureKind
from gateway.sinks.postgres import PostgresSink

TABLE = Table("ingest", "telemetry", ("identity", "value"), None, 0, write_log=False)


def postgres_error(sqlstate: str) -> asyncpg.PostgresError:
    return asyncpg.PostgresError.new({"C": sqlstate, "M": "refused", "S": "ERROR"})


class Transaction:
    async def start(self) -> None:
        pass

    async def rollback(self) -> None:
        pass

    async def __aenter__(self) -> None:
        pass

    async def __aexit__(self, *exc_info: object) -> None:
        pass


class Database:
    """Commits what `fail(rows)` lets through: the rows of a COPY that raised nothing."""

    def __init__(self, fail: Callable[[list[Row]], BaseException | None]) -> None:
        self.fail = fail
        self.rows: list[Row] = []
        self.attempts = 0

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Database]:
        yield self

    def transaction(self) -> Transaction:
        return Transaction()

    async def copy_records_to_table(
        self, name: str, *, schema_name: str | None, columns: Sequence[str], records: list[Row]
    ) -> None:
        self.attempts += 1
        error = self.fail(records)
        if error is not None:
            raise error
        self.rows += records


def sink(database: Database, failures: list[FailureKind]) -> PostgresSink:
    pool = cast(asyncpg.Pool, database)
    return PostgresSink("telemetry_ingest", TABLE, pool, on_failure=failures.append, max_backoff=0)


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The clock of the sink's rate-limited log, moved by hand."""
    clock = [1000.0]
    monkeypatch.setattr("gateway.logs.time", SimpleNamespace(monotonic=lambda: clock[0]))
    return clock


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "gateway.sinks.postgres"]


async def test_one_bad_row_costs_one_log_line_and_the_rest_lands(
    frozen: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    def nul_in_text(rows: list[Row]) -> BaseException | None:
        return postgres_error("22021") if any("\x00" in row[0] for row in rows) else None

    database, failures = Database(nul_in_text), list[FailureKind]()
    rows = [(f"sensor-{n}", float(n)) for n in range(100)]
    rows[61] = ("sensor-\x00", 61.0)
    outcome = await sink(database, failures).write(rows, {})
    assert (outcome.written, outcome.bad_rows) == (99, [(rows[61], "22021 refused")])
    assert len(failures) > 5 and set(failures) == {FailureKind.DATA}  # halved down to one row
    assert len(lines(caplog)) == 1


async def test_the_count_of_lines_not_logged_comes_with_the_next_line(
    frozen: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    down = [True]

    def away(rows: list[Row]) -> BaseException | None:
        return ConnectionRefusedError(111, "Connection refused") if down[0] else None

    database, failures = Database(away), list[FailureKind]()
    writer = sink(database, failures)
    for _ in range(5):
        assert await writer.probe() != ""
    frozen[0] += 1.0
    assert await writer.probe() != ""
    first, second = lines(caplog)
    assert "more since the last line" not in first
    assert second.endswith("(and 4 more since the last line)")
    assert failures == [FailureKind.TEMPORARY] * 6
    down[0] = False
    assert await writer.probe() == ""


async def test_a_temporary_failure_keeps_the_batch_until_it_lands(frozen: list[float]) -> None:
    def three_times(rows: list[Row]) -> BaseException | None:
        return postgres_error("57P01") if database.attempts <= 3 else None

    database, failures = Database(three_times), list[FailureKind]()
    rows = [("sensor-1", 1.0), ("sensor-2", 2.0)]
    outcome = await sink(database, failures).write(rows, {})
    assert (outcome.written, outcome.bad_rows, outcome.held) == (2, [], "")
    assert database.rows == rows and database.attempts == 4
    assert failures == [FailureKind.TEMPORARY] * 3


async def test_a_held_table_ends_the_write_at_once(frozen: list[float]) -> None:
    database, failures = Database(lambda rows: postgres_error("42501")), list[FailureKind]()
    outcome = await sink(database, failures).write([("sensor-1", 1.0)] * 8, {})
    assert (outcome.written, outcome.bad_rows, outcome.held) == (0, [], "42501 refused")
    assert database.attempts == 1 and failures == [FailureKind.HELD]


async def test_a_table_held_during_a_split_keeps_what_was_committed(frozen: list[float]) -> None:
    def revoked_after_the_first_half(rows: list[Row]) -> BaseException | None:
        if database.attempts == 1:
            return postgres_error("23514")  # a check constraint refuses the whole batch
        return postgres_error("42501") if database.rows else None

    database, failures = Database(revoked_after_the_first_half), list[FailureKind]()
    rows = [(f"sensor-{n}", float(n)) for n in range(8)]
    outcome = await sink(database, failures).write(rows, {})
    assert (outcome.written, outcome.bad_rows, outcome.held) == (4, [], "42501 refused")
    assert database.rows == rows[:4]
    assert failures == [FailureKind.DATA, FailureKind.HELD]
