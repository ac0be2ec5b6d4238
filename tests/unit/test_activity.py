"""Activity stays bounded, refuses names no identity can have, and isolates what the database
refuses: one identity never stops the others'."""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st

import gateway.activity
from gateway.activity import Activity, recordable
from gateway.db import Conn
from gateway.identities.model import MAX_NAME_LENGTH, NAME_PATTERN

from .test_pg_errors import postgres_error

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class Clock(datetime):
    """`datetime` as the module sees it, with a `now` the test moves."""

    current = START

    @classmethod
    def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
        return cls.current


@pytest.fixture
def minute(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """Sets the clock to START plus that many minutes (and a few seconds)."""
    monkeypatch.setattr(gateway.activity, "datetime", Clock)

    def at(n: int) -> None:
        Clock.current = START + timedelta(minutes=n, seconds=7)

    at(0)
    return at


class FakeConn:
    """Takes the two statements of a flush; `refuse` names the identities whose transaction
    fails for a data reason, `fail` raises instead (once per call of `failing`)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, datetime], tuple[int, int]] = {}
        self.seen: dict[str, datetime] = {}
        self.refuse: Callable[[str], bool] = lambda name: False
        self.fail: BaseException | None = None
        self.fail_after = 0  # transactions to let through before `fail`
        self.transactions = 0
        self.during: Callable[[], None] = lambda: None

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        self.transactions += 1
        staged_rows: dict[tuple[str, datetime], tuple[int, int]] = {}
        staged_seen: dict[str, datetime] = {}
        self._staged = staged_rows, staged_seen
        yield
        self.rows.update(staged_rows)
        self.seen.update(staged_seen)

    async def execute(self, query: str, *args: Any) -> str:
        self.during()
        if self.fail is not None and self.transactions > self.fail_after:
            raise self.fail
        names = args[0]
        if any(self.refuse(name) for name in names):
            raise postgres_error("22021")
        rows, seen = self._staged
        if "INSERT" in query:
            for name, minute, written, rejects, _ in zip(*args, strict=True):
                old = self.rows.get((name, minute), (0, 0))
                rows[(name, minute)] = (old[0] + written, old[1] + rejects)
        else:
            seen.update(zip(names, args[1], strict=True))
        return "OK"

    def totals(self) -> Counter[str]:
        totals: Counter[str] = Counter()
        for (name, _), (rows, _) in self.rows.items():
            totals[name] += rows
        return totals


async def flush(activity: Activity, conn: FakeConn) -> int:
    return await activity.flush(cast(Conn, conn))


@given(st.from_regex(NAME_PATTERN, fullmatch=True))
def test_every_registrable_name_is_recordable(name: str) -> None:
    assert recordable(name)


@pytest.mark.parametrize(
    "name", ["x" * (MAX_NAME_LENGTH + 1), "a\x00b", "\x00", "caf\u00e9", "\udcff", "x" * 3000]
)
def test_names_no_identity_can_have_are_refused_and_counted(name: str) -> None:
    activity = Activity()
    activity.wrote(Counter({name: 5, "sensor-1": 2}))
    activity.rejected(name)
    assert len(activity) == 1
    assert activity.dropped == {"name": 2}


async def test_writes_counts_and_last_seen_then_holds_nothing(
    minute: Callable[[int], None],
) -> None:
    activity, conn = Activity(), FakeConn()
    activity.wrote(Counter({"a": 3, "b": 1}))
    activity.rejected("a")
    minute(1)
    activity.wrote(Counter({"a": 2}))
    assert await flush(activity, conn) == 3
    at = START.replace(second=0)
    assert conn.rows == {
        ("a", at): (3, 1),
        ("b", at): (1, 0),
        ("a", at + timedelta(minutes=1)): (2, 0),
    }
    assert conn.seen == {"a": Clock.current, "b": START + timedelta(seconds=7)}
    assert len(activity) == 0 and await flush(activity, conn) == 0


async def test_refused_entries_are_isolated_and_the_rest_written() -> None:
    activity, conn = Activity(), FakeConn()
    good = {f"sensor-{i}": i + 1 for i in range(64)}
    activity.wrote(Counter({**good, "bad-1": 1, "bad-2": 1}))
    conn.refuse = lambda name: name.startswith("bad")
    assert await flush(activity, conn) == 64
    assert conn.totals() == good
    assert set(conn.seen) == set(good)
    assert activity.dropped == {"database": 2}
    # Halving finds two among 66 in a few transactions, not one per entry.
    assert conn.transactions < 30
    assert len(activity) == 0 and await flush(activity, conn) == 0


async def test_a_temporary_failure_keeps_the_counts() -> None:
    activity, conn = Activity(), FakeConn()
    activity.wrote(Counter({"a": 3, "b": 1}))
    conn.fail = ConnectionResetError("lost")
    with pytest.raises(ConnectionResetError):
        await flush(activity, conn)
    assert len(activity) == 2 and not activity.dropped
    conn.fail = None
    assert await flush(activity, conn) == 2
    assert conn.totals() == {"a": 3, "b": 1}


async def test_a_failure_that_is_not_the_datas_drops_nothing() -> None:
    activity, conn = Activity(), FakeConn()
    activity.wrote(Counter({"a": 3}))
    conn.fail = postgres_error("42501")  # insufficient privilege
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await flush(activity, conn)
    assert len(activity) == 1 and not activity.dropped


async def test_a_failure_midway_through_halving_keeps_only_what_is_not_written() -> None:
    activity, conn = Activity(), FakeConn()
    good = {f"sensor-{i}": 1 for i in range(8)}
    activity.wrote(Counter({**good, "bad": 1}))
    conn.refuse = lambda name: name == "bad"
    conn.fail, conn.fail_after = ConnectionResetError("lost"), 3
    with pytest.raises(ConnectionResetError):
        await flush(activity, conn)
    written = conn.totals()
    assert written and len(activity) == 9 - len(written)
    conn.fail = None
    assert await flush(activity, conn) == 8 - len(written)
    assert conn.totals() == good  # each entry written once
    assert activity.dropped == {"database": 1}


async def test_what_is_recorded_during_a_failed_flush_is_merged_with_what_is_kept() -> None:
    activity, conn = Activity(), FakeConn()
    activity.wrote(Counter({"a": 3, "b": 1}))
    conn.fail = ConnectionResetError("lost")
    conn.during = lambda: activity.wrote(Counter({"a": 1, "c": 1}))
    with pytest.raises(ConnectionResetError):
        await flush(activity, conn)
    conn.fail, conn.during = None, lambda: None
    assert await flush(activity, conn) == 3
    assert conn.totals() == {"a": 4, "b": 1, "c": 1}


async def test_at_the_bound_older_minutes_fold_into_the_latest(
    minute: Callable[[int], None],
) -> None:
    activity, conn = Activity(max_entries=10), FakeConn()
    names = ["a", "b", "c", "d", "e"]
    for n in range(2):
        minute(n)
        activity.wrote(Counter({name: n + 1 for name in names}))
    assert len(activity) == 10
    minute(2)
    activity.wrote(Counter({"f": 7}))
    assert len(activity) == 6 and not activity.dropped
    await flush(activity, conn)
    latest = START.replace(second=0) + timedelta(minutes=1)
    assert conn.rows == {
        **{(name, latest): (3, 0) for name in names},
        ("f", latest + timedelta(minutes=1)): (7, 0),
    }
    assert set(conn.seen) == {*names, "f"}


async def test_past_the_bound_the_oldest_entries_go_and_are_counted(
    minute: Callable[[int], None],
) -> None:
    activity, conn = Activity(max_entries=10), FakeConn()
    for n in range(10):
        minute(n)
        activity.rejected(f"sensor-{n}")
    minute(10)
    activity.rejected("sensor-10")
    assert len(activity) == 10 and activity.dropped == {"memory": 1}
    await flush(activity, conn)
    assert {name for name, _ in conn.rows} == {f"sensor-{n}" for n in range(1, 11)}
    assert set(conn.seen) == {f"sensor-{n}" for n in range(1, 11)}


async def test_failed_flushes_never_hold_more_than_the_bound(
    minute: Callable[[int], None],
) -> None:
    activity, conn = Activity(max_entries=100), FakeConn()
    conn.fail = ConnectionResetError("down")
    recorded: Counter[str] = Counter()
    for n in range(50):
        minute(n)
        batch = Counter({f"sensor-{i}": 1 for i in range(20)})
        activity.wrote(batch)
        recorded += batch
        with pytest.raises(ConnectionResetError):
            await flush(activity, conn)
        assert len(activity) <= 100
    conn.fail = None
    await flush(activity, conn)
    # Twenty identities fit: folding alone made room, so every count arrived.
    assert conn.totals() == recorded and not activity.dropped


async def test_many_identities_past_the_bound_cost_a_pass_per_tenth_of_it() -> None:
    activity, conn = Activity(max_entries=1000), FakeConn()
    for n in range(5000):
        activity.rejected(f"sensor-{n}")
    assert len(activity) <= 1000
    assert sum(activity.dropped.values()) + len(activity) == 5000
    await flush(activity, conn)
    assert sum(rejects for _, rejects in conn.rows.values()) == len(conn.rows)


def test_drops_are_logged_at_most_once_a_second(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    activity = Activity()
    with caplog.at_level(logging.WARNING, logger="gateway.activity"):
        for _ in range(1000):
            activity.rejected("a\x00b")
        now[0] += 1.0
        activity.rejected("x" * 3000)
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2
    assert "1 dropped since" in lines[0] and "1000 dropped since" in lines[1]
    assert "\\x00" in lines[0] and len(lines[1]) < 400
    assert activity.dropped == {"name": 1001}
