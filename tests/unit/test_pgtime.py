"""Integer timestamps mean the same instants as the datetimes and epochs they come from."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from gateway import pgtime


def test_the_epoch_is_postgres_own() -> None:
    assert pgtime.from_datetime(datetime(2000, 1, 1, tzinfo=UTC)) == 0
    assert pgtime.from_epoch_ms(0) == pgtime.from_datetime(datetime(1970, 1, 1, tzinfo=UTC))


@given(st.integers(min_value=0, max_value=4_102_444_800_000))  # 1970 .. 2100, in ms
def test_epoch_ms_and_datetimes_agree(ms: int) -> None:
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    assert pgtime.from_epoch_ms(ms) == pgtime.from_datetime(moment)
    assert pgtime.to_datetime(pgtime.from_epoch_ms(ms)) == moment


def test_offsets_name_the_same_instant() -> None:
    paris = datetime(2026, 11, 25, 13, 0, tzinfo=timezone(timedelta(hours=1)))
    assert pgtime.from_datetime(paris) == pgtime.from_datetime(
        datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    )


def test_now_is_now() -> None:
    before = pgtime.from_datetime(datetime.now(UTC))
    assert before <= pgtime.now() <= before + 5_000_000
