"""What the gateway made of a demo fleet's run, read from the database in one snapshot and told
beside the fleets' own reports: rows per writing role and per route, the devices' states, rejects
per reason, latency.

The demo's sensors feed two routes from one stream (their readings, and their latest state) and
its environment devices a wide table from JSON and from MessagePack; what `settle` waits for and
`summary` tells follows from the routes it is given.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import asyncpg

from gateway.config import RouteConfig
from gateway.fleet.report import FleetReport

__all__ = ["ROW_TABLES", "STATE_TABLE", "Outcome", "counts", "read_outcome", "settle", "summary"]

ROW_TABLES = ("ingest.telemetry", "ingest.environment")  # appended to: one row per reading
STATE_TABLE = "ingest.device_state"  # upserted: one row per device

# Two snapshot counts in one round trip: what the progress line and `settle` poll.
_COUNTS = (
    "SELECT "
    + " + ".join(f"(SELECT count(*) FROM {table})" for table in ROW_TABLES)
    + ", (SELECT count(*) FROM ingest.rejects)"
)
# A state changed by a batch counts once in the write log, however many of the batch's
# readings it took to get there.
_UPSERTS = "SELECT coalesce(sum(rows), 0) FROM gateway.write_log WHERE target = $1"
# Devices whose state is not (yet) their newest reading: the state route's whole promise.
_BEHIND = f"""
SELECT count(*)
  FROM (SELECT identity, max(ts) AS newest FROM ingest.telemetry GROUP BY identity) AS readings
  LEFT JOIN {STATE_TABLE} AS states USING (identity)
 WHERE states.updated_at IS DISTINCT FROM readings.newest
"""


@dataclass(frozen=True)
class Outcome:
    """What the database holds after the run, read in one snapshot."""

    rows: int  # in ROW_TABLES
    rejects: int
    per_table: dict[str, int]
    per_role: list[asyncpg.Record]  # role, target, rows: from the write log
    per_reason: list[asyncpg.Record]
    states: int  # rows of STATE_TABLE: one per device that sent a state
    behind: int  # devices whose state is not their newest reading
    upserts: int  # state changes committed
    packed: int  # rows of ingest.environment from the devices that send MessagePack
    sample: asyncpg.Record | None  # one device's state: identity, state, updated_at
    latency: tuple[float, float] | None


async def counts(conn: asyncpg.Connection) -> tuple[int, int]:
    """Rows in the row tables, and rejects."""
    row = await conn.fetchrow(_COUNTS)
    assert row is not None
    return row[0], row[1]


async def settle(
    conn: asyncpg.Connection, reports: Mapping[str, FleetReport], timeout: float = 30
) -> None:
    """Wait until everything the broker accepted is written or rejected, and every device's
    state is its newest reading (a message's state commits in its own transaction)."""
    expected = [report.expected() for report in reports.values()]
    rows = sum(e["rows"] for e in expected)
    rejects = sum(e["malformed_messages"] for e in expected)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        have_rows, have_rejects = await counts(conn)
        if have_rows >= rows and have_rejects >= rejects and not await conn.fetchval(_BEHIND):
            return
        await asyncio.sleep(0.1)


async def read_outcome(conn: asyncpg.Connection, packed: Sequence[str]) -> Outcome:
    """The snapshot; `packed` names the devices that send MessagePack."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        rows, rejects = await counts(conn)
        per_table = {
            table: await conn.fetchval(f"SELECT count(*) FROM {table}") for table in ROW_TABLES
        }
        per_role = await conn.fetch(
            "SELECT role, target, sum(rows) AS rows FROM gateway.write_log "
            "GROUP BY role, target ORDER BY role, target DESC"
        )
        per_reason = await conn.fetch(
            "SELECT reason, count(*) AS n FROM ingest.rejects GROUP BY reason ORDER BY reason"
        )
        states = await conn.fetchval(f"SELECT count(*) FROM {STATE_TABLE}")
        behind = await conn.fetchval(_BEHIND)
        upserts = await conn.fetchval(_UPSERTS, STATE_TABLE)
        packed_rows = await conn.fetchval(
            "SELECT count(*) FROM ingest.environment WHERE identity = ANY($1::text[])", packed
        )
        sample = await conn.fetchrow(
            f"SELECT identity, state::text AS state, updated_at FROM {STATE_TABLE} "
            "ORDER BY identity LIMIT 1"
        )
        latency = await conn.fetchval(
            """
            SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY ms)
              FROM (SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin) - ts) * 1000 AS ms
                      FROM ingest.telemetry) AS latencies
            """
        )
    return Outcome(
        rows=rows,
        rejects=rejects,
        per_table=per_table,
        per_role=per_role,
        per_reason=per_reason,
        states=states,
        behind=behind,
        upserts=upserts,
        packed=packed_rows,
        sample=sample,
        latency=(latency[0], latency[1]) if latency is not None else None,
    )


def summary(
    reports: Mapping[str, FleetReport], outcome: Outcome, routes: Sequence[RouteConfig]
) -> list[str]:
    """The lines of the demo's summary: the run as a whole, then route by route."""
    parts = list(reports.values())
    sent = sum(report.sent for report in parts)
    duration = max(report.duration for report in parts)
    rate = sent / duration if duration > 0 else 0.0
    devices = ", ".join(f"{report.devices} {name}" for name, report in reports.items())
    expected = sum(report.expected()["rows"] for report in parts)
    lines = [f"  fleet        {sent:,} messages in {duration:.1f} s ({rate:,.0f}/s): {devices}"]
    for row in outcome.per_role:
        if row["target"] == STATE_TABLE:
            # Rows replacing one another, not rows the table gained: not "written".
            lines.append(
                f"  upserted     {row['rows']:,} states as {row['role']} into {row['target']} "
                "(each batch's newest per device)"
            )
        else:
            lines.append(
                f"  written      {row['rows']:,} rows as {row['role']} into {row['target']}"
            )
    lines.append(f"  expected     {expected:,} rows")
    lines += [f"  rejected     {row['n']:,} x {row['reason']}" for row in outcome.per_reason]
    spoofed = sum(report.kinds["spoofed"].sent for report in parts)
    if all(report.protocol == "5" for report in parts):
        refused = sum(report.kinds["spoofed"].refused for report in parts)
        lines.append(f"  spoofing     {spoofed:,} attempts, {refused:,} refused by the broker")
    else:
        verdict = "none got through" if outcome.rows == expected else "SOME GOT THROUGH"
        lines.append(
            f"  spoofing     {spoofed:,} attempts, dropped by the broker (MQTT 3.1.1 "
            f"cannot refuse a publish): {verdict}"
        )
    if outcome.latency is not None:
        p50, p99 = outcome.latency
        lines.append(f"  latency      p50 {p50:.0f} ms, p99 {p99:.0f} ms (device clock to commit)")
    return [*lines, "", "Routes", *_route_lines(outcome, routes)]


def _route_lines(outcome: Outcome, routes: Sequence[RouteConfig]) -> list[str]:
    """One line per route kind and table, naming the streams that feed it."""
    streams: dict[tuple[str, str], list[RouteConfig]] = {}
    for route in routes:
        streams.setdefault((route.kind, route.table), []).append(route)
    lines = []
    for (kind, table), fed_by in streams.items():
        names = ", ".join(
            r.stream if r.format == "json" else f"{r.stream} ({r.format})" for r in fed_by
        )
        source = f"{'streams' if len(fed_by) > 1 else 'stream'} {names} -> {table}"
        if kind == "state":
            what = f"{outcome.states:,} rows, one per device, " + (
                "each its newest reading"
                if not outcome.behind
                else f"{outcome.behind:,} NOT THEIR NEWEST READING"
            )
        else:
            what = f"{outcome.per_table.get(table, 0):,} rows"
            if any(r.format == "msgpack" for r in fed_by):
                what += f" ({outcome.packed:,} from MessagePack)"
        lines.append(f"  {kind:<12} {source}: {what}")
    if outcome.sample is not None:
        at = outcome.sample["updated_at"].isoformat(timespec="milliseconds")
        lines.append(
            f"  sample       {outcome.sample['identity']}'s state as of {at}: "
            f"{outcome.sample['state']}"
        )
    return lines
