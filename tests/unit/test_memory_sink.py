"""The memory sink keeps the sink contract, held tables included, so engine tests can use it."""

from __future__ import annotations

from gateway.sinks.memory import MemorySink


async def test_a_held_table_refuses_every_row_until_cleared() -> None:
    sink = MemorySink()
    sink.held = "42501 permission denied for table telemetry"
    outcome = await sink.write([("a", 1)], {})
    assert (outcome.written, outcome.bad_rows, outcome.held) == (0, [], sink.held)
    assert await sink.probe() == sink.held
    assert sink.rows == []
    sink.held = ""
    assert await sink.probe() == ""
    outcome = await sink.write([("a", 1)], {})
    assert (outcome.written, outcome.held) == (1, "")
    assert sink.rows == [("a", 1)]


async def test_a_probe_answers_at_once_while_the_database_is_away() -> None:
    sink = MemorySink()
    sink.available.clear()
    assert await sink.probe() != ""
    sink.available.set()
    assert await sink.probe() == ""
