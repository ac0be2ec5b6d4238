"""Identity registry at a million identities: list and count latency, import rate, cache load
time and NOTIFY propagation. Starts its own PostgreSQL; prints one JSON object.

    .venv/bin/python benchmarks/identities.py [--identities 1000000] [--import-size 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from gateway.identities.cache import IdentityCache
from gateway.identities.importer import import_file
from gateway.identities.registry import Registry
from gateway.migrate import migrate
from gateway.services.postgres import Postgres

ROLES = [
    ("r-telemetry", "telemetry_ingest", "ingest", "telemetry_ingest_login"),
    ("r-state", "state_writer", "transactional", "state_writer_login"),
]


def summary(seconds: list[float]) -> dict[str, float]:
    """Median and 99th percentile in milliseconds."""
    ordered = sorted(seconds)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(p99 * 1000, 3),
        "runs": len(ordered),
    }


async def timed(runs: int, work: Callable[[int], Awaitable[Any]]) -> dict[str, float]:
    seconds = []
    for run in range(runs):
        started = time.perf_counter()
        await work(run)
        seconds.append(time.perf_counter() - started)
    return summary(seconds)


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def fill(conn: asyncpg.Connection, total: int) -> float:
    """`total` identities split evenly over the two roles, bypassing the slower import path."""
    started = time.perf_counter()
    await conn.execute(
        "INSERT INTO gateway.identities (name, role_id, attributes) "
        "SELECT 'sensor-' || lpad(g::text, 7, '0'), "
        "       CASE WHEN g % 2 = 0 THEN 'r-telemetry' ELSE 'r-state' END, '{}' "
        "  FROM generate_series(1, $1) g",
        total,
    )
    await conn.execute("VACUUM ANALYZE gateway.identities")
    return time.perf_counter() - started


async def list_and_count(conn: asyncpg.Connection, total: int, runs: int) -> dict[str, Any]:
    registry = Registry(conn, "bench")
    rng = random.Random(7)

    def somewhere(_: int) -> str:
        return f"sensor-{rng.randint(1, total):07d}"

    await registry.list(role="telemetry_ingest")  # warm the prepared statements
    return {
        "role_identities": await registry.count(role="telemetry_ingest"),
        "page_query_first_page": await timed(
            runs, lambda _: registry.list(role="telemetry_ingest", limit=100)
        ),
        "page_query_random_page": await timed(
            runs, lambda run: registry.list(role="telemetry_ingest", after=somewhere(run))
        ),
        "page_query_random_page_active_only": await timed(
            runs,
            lambda run: registry.list(
                role="telemetry_ingest", status="active", after=somewhere(run)
            ),
        ),
        "count_query": await timed(runs, lambda _: registry.count(role="telemetry_ingest")),
        # What the count would cost without the trigger-kept counts (migration 003).
        "count_star_for_comparison": await timed(
            max(5, runs // 20),
            lambda _: conn.fetchval(
                "SELECT count(*) FROM gateway.identities WHERE role_id = 'r-telemetry'"
            ),
        ),
    }


async def import_rate(conn: asyncpg.Connection, size: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fleet.csv"
        with path.open("w") as out:
            out.write("name,role,kind,attributes\n")
            for number in range(size):
                role = "telemetry_ingest" if number % 2 else "state_writer"
                out.write(f'import-{number:07d},{role},device,"{{""batch"": {number // 1000}}}"\n')
        started = time.perf_counter()
        result = await import_file(conn, "bench", path)
        seconds = time.perf_counter() - started
    return {
        "identities": result.imported,
        "seconds": round(seconds, 3),
        "identities_per_second": round(result.imported / seconds),
    }


async def cache_figures(dsn: str, conn: asyncpg.Connection, tries: int) -> dict[str, Any]:
    changed = asyncio.Event()
    before = rss_mb()
    cache = IdentityCache(dsn, on_entries=lambda _: changed.set())
    started = time.perf_counter()
    await cache.start()
    load_seconds = time.perf_counter() - started
    grown = rss_mb() - before
    try:
        registry = Registry(conn, "bench")
        from_commit, from_call = [], []
        for attempt in range(tries):
            name = f"sensor-{2 * attempt + 1:07d}"
            changed.clear()
            called = time.perf_counter()
            await registry.retire(name)
            committed = time.perf_counter()
            while getattr(cache.get(name), "status", None) != "retired":
                await asyncio.wait_for(changed.wait(), 5)
                changed.clear()
            seen = time.perf_counter()
            from_commit.append(seen - committed)
            from_call.append(seen - called)
            await asyncio.sleep(0.05)
    finally:
        await cache.close()
    return {
        "full_load": {
            "entries": cache.entries,
            "seconds": round(load_seconds, 3),
            "rss_growth_mb": round(grown),
        },
        "notify_propagation_after_commit": summary(from_commit),
        "notify_propagation_from_retire_call": summary(from_call),
    }


async def main(total: int, import_size: int, runs: int, tries: int) -> dict[str, Any]:
    async with Postgres() as postgres:
        conn = await asyncpg.connect(postgres.dsn)
        try:
            await migrate(conn)
            await conn.executemany(
                "INSERT INTO gateway.roles (id, name, tier, login_role) VALUES ($1, $2, $3, $4)",
                ROLES,
            )
            fill_seconds = await fill(conn, total)
            listing = await list_and_count(conn, total, runs)
            importing = await import_rate(conn, import_size)
            caching = await cache_figures(postgres.dsn, conn, tries)
            server = await conn.fetchval("SHOW server_version")
        finally:
            await conn.close()
    return {
        "benchmark": "identities",
        "identities": total,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "postgres": server,
        "setup_fill_seconds": round(fill_seconds, 1),
        "list": listing,
        "import": importing,
        "cache": caching,
    }


if __name__ == "__main__":
    options = argparse.ArgumentParser(description=__doc__)
    options.add_argument("--identities", type=int, default=1_000_000)
    options.add_argument("--import-size", type=int, default=100_000)
    options.add_argument("--runs", type=int, default=200, help="timed runs per query")
    options.add_argument("--tries", type=int, default=20, help="NOTIFY propagation tries")
    args = options.parse_args()
    figures = asyncio.run(main(args.identities, args.import_size, args.runs, args.tries))
    print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())
