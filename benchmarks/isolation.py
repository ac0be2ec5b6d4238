"""Read isolation, measured: a dashboard reader's latency on an idle database and while the
gateway ingests as fast as it can.

The reader logs in as `analytics_reader_login` over a connection of its own and runs, back to
back, the typical dashboard query (*last hour per identity*) and the same aggregate over a fixed
hour of pre-loaded history (constant work, so it shows contention alone: the last hour grows
while the gateway writes into it). The table is pre-loaded with `--rows` readings spread evenly
over the last `--history-hours` hours, in time order as an insert-only table fills. Each index
variant runs three phases, each under the benchmark lock:

- *idle before*: no ingestion;
- *loaded*: `gateway run` (a child process) takes the fleet publishing at its maximum rate
  (measured first as `mqtt_gateway.py`'s live phase does; a fleet without a rate takes CPU
  from it on 2 cores); its commit rate is measured alone for `--alone-seconds`, then while the
  reader queries, and
  `pg_stat_activity` is sampled to show the connections each role holds against its declared
  `connection_limit`;
- *idle after*: ingestion drained, the same queries again over the grown table as it is (no
  VACUUM, so the same plans and visibility work): the idle reference at the final size.

Because the last hour grows under load, each loaded query is also compared with the idle latency
at its own size (interpolated between the two idle phases by the rows it aggregated).

Index: a reader of this table filters on a time range across all identities, so `(ts)` is what
it would have; `(identity, ts)` serves one device's history and costs COPY 2.7x (notes), and the
shipped schema has no index at all. Variants `none`, `ts`, `identity_ts` and `brin_ts` can be
measured (`--indexes`); each one's cost shows in the loaded phase's ingest rate.

    .venv/bin/python benchmarks/isolation.py [--rows 2000000] [--indexes none ts]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import secrets
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
from _harness import example_roles, loadavg, prepare_database, print_report
from mqtt_gateway import (
    ROLES_FILE,
    Bench,
    GatewayProcess,
    Settings,
    fleet_summary,
    gateway_live,
    running_gateway,
)

from gateway.fleet.mqtt import Fleet
from gateway.roles.declaration import Declaration, load_declaration
from gateway.services.mosquitto import Mosquitto, MqttUser
from gateway.services.postgres import Postgres

READER_ROLE = "analytics_reader"
BROKER_QUEUE_LIMIT = 100_000_000  # see `services`
LAST_HOUR = """
    SELECT identity, count(*) AS n, avg(value), max(ts)
      FROM ingest.telemetry
     WHERE ts > now() - interval '1 hour'
     GROUP BY identity
"""
FIXED_HOUR = """
    SELECT identity, count(*) AS n, avg(value), max(ts)
      FROM ingest.telemetry
     WHERE ts > $1 AND ts <= $2
     GROUP BY identity
"""
INDEXES: dict[str, str | None] = {
    "none": None,
    "ts": "CREATE INDEX bench_telemetry_ts ON ingest.telemetry (ts)",
    "identity_ts": "CREATE INDEX bench_telemetry_identity_ts ON ingest.telemetry (identity, ts)",
    "brin_ts": "CREATE INDEX bench_telemetry_brin_ts ON ingest.telemetry USING brin (ts)",
}
PRELOAD = """
    INSERT INTO ingest.telemetry (ts, identity, metric, value, tags, received_at)
    SELECT t, 'sensor-' || lpad((g % $3)::text, 4, '0'),
           (ARRAY['temperature', 'humidity', 'pressure', 'voltage'])[1 + g % 4],
           (g % 10000) / 100.0,
           ('{"site": "site-' || (g % 10) || '"}')::jsonb,
           t
      FROM generate_series(0, $1 - 1) AS g,
           LATERAL (SELECT now() - $2 * interval '1 hour' * (1 - g::float8 / $1) AS t) AS at
"""
CONNECTIONS = """
    SELECT usename, backend_type, count(*) AS total,
           count(*) FILTER (WHERE state = 'active') AS active
      FROM pg_stat_activity
     WHERE usename IS NOT NULL AND pid <> pg_backend_pid()
     GROUP BY usename, backend_type
"""


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@contextlib.asynccontextmanager
async def services(settings: Settings) -> AsyncIterator[Bench]:
    """`mqtt_gateway.services`, but with a far larger queue limit per broker session.

    With the launcher's limit (1,000,000 messages), Mosquitto 2.0.11 began to drop the
    gateway's messages under sustained load ("Outgoing messages are being dropped") while only
    about 130,000 were queued for it: acknowledged to the publishers, never delivered. With no
    limit (0) it reset every device's connection ("Bad socket read/write") once the ACL had
    refused about one spoofed message per device. A limit this large does neither.
    """
    doc = example_roles()
    with tempfile.TemporaryDirectory(prefix="bench-isolation-") as workdir:
        async with (
            Postgres(settings={"track_commit_timestamp": "on"}) as postgres,
            Mosquitto(max_queued_messages=BROKER_QUEUE_LIMIT) as broker,
        ):
            names = [f"sensor-{n:04d}" for n in range(settings.devices)]
            ingest_dsn = await prepare_database(postgres, doc, names)
            password = secrets.token_urlsafe(12)
            broker.add_users([MqttUser(name, password) for name in names])
            yield Bench(postgres, broker, settings, password, ingest_dsn, Path(workdir))


def bench_settings(args: argparse.Namespace, **sizes: float) -> Settings:
    """The shared MQTT benchmark's settings; only the sizes these benchmarks use matter."""
    return Settings(
        messages={},
        devices=args.devices,
        processes=args.fleet_processes,
        warmup=sizes.get("warmup", 3.0),
        window=sizes.get("window", 10.0),
        latency_seconds=0.0,
        receive_maximum=10_000,
        copy_rows=0,
        naive_messages=0,
        quiet=args.quiet,
        quiet_limit=args.quiet_limit,
    )


# -- shared with soak.py: the gateway's /metrics, settling, evidence of a stall ---------------

METRICS = (
    "gateway_rows_written_total",
    "gateway_messages_received_total",
    "gateway_messages_rejected_total",
    "gateway_flush_failures_total",
    "gateway_buffered_rows",
)


def scrape(gateway: GatewayProcess) -> dict[str, float]:
    """The series of METRICS on /metrics, by their full name with labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{gateway.port}/metrics", timeout=5) as r:
        text = r.read().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith(METRICS):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


def total(metrics: dict[str, float], name: str) -> float:
    return sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{"))


def labelled(metrics: dict[str, float], name: str, label: str) -> dict[str, int]:
    """One label's values of a metric's series, summed over the other labels."""
    found: Counter[str] = Counter()
    for key, value in metrics.items():
        if key.startswith(name + "{"):
            match = re.search(rf'{label}="([^"]*)"', key)
            if match:
                found[match.group(1)] += int(value)
    return dict(found)


async def settle(
    gateway: GatewayProcess, rows: int, rejects: int, limit: float, idle: float = 30
) -> dict[str, Any]:
    """Wait until the gateway counted the expected rows and rejects, or made no progress for
    `idle` seconds, or `limit` passed; returns how it ended."""
    started = last_change = time.monotonic()
    seen: tuple[float, float] = (-1, -1)
    while True:
        metrics = await asyncio.to_thread(scrape, gateway)
        now = (
            total(metrics, "gateway_rows_written_total"),
            total(metrics, "gateway_messages_rejected_total"),
        )
        if now[0] >= rows and now[1] >= rejects:
            return {"settled": True, "seconds": round(time.monotonic() - started, 1)}
        if now != seen:
            seen, last_change = now, time.monotonic()
        if time.monotonic() - last_change > idle or time.monotonic() - started > limit:
            return {
                "settled": False,
                "seconds": round(time.monotonic() - started, 1),
                "rows_counted": now[0],
                "rejects_counted": now[1],
            }
        await asyncio.sleep(1)


def broker_notices(bench: Bench, client_id: str) -> list[str]:
    """What the broker logged about a session, and any message drops (the last ten lines)."""
    lines = bench.broker.log_path.read_text(errors="replace").splitlines()
    return [line for line in lines if client_id in line or "dropped" in line][-10:]


async def stall_evidence(
    bench: Bench, gateway: GatewayProcess, fleets: list[Fleet]
) -> dict[str, Any]:
    """Where messages the broker acknowledged to the fleet stopped, when the gateway is idle
    short of them: its counters, the broker's backlog for it, both ends' socket queues (from
    `ss`: unread data, unsent data) and what the broker logged about its session."""
    metrics = await asyncio.to_thread(scrape, gateway)
    received = total(metrics, "gateway_messages_received_total")
    port = bench.broker.port
    ss = await asyncio.create_subprocess_exec(
        "ss", "-tnH", f"( sport = :{port} or dport = :{port} )", stdout=asyncio.subprocess.PIPE
    )
    sockets = (await ss.communicate())[0].decode().splitlines()
    return {
        "acked_to_fleet": sum(fleet.progress().acked for fleet in fleets),
        "received": received,
        "rows_written": total(metrics, "gateway_rows_written_total"),
        "rejected": total(metrics, "gateway_messages_rejected_total"),
        "buffered_rows": total(metrics, "gateway_buffered_rows"),
        "flush_failures": labelled(metrics, "gateway_flush_failures_total", "kind"),
        "sockets_recvq_sendq_local_peer": [" ".join(line.split()[1:5]) for line in sockets],
        "broker_log": broker_notices(bench, gateway.config.sources.mqtt[0].client_id),
    }


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile (`share` in 0..1)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered) + 0.5) - 1))]


QUERIES = {"last_hour": LAST_HOUR, "fixed_hour": FIXED_HOUR}
Samples = dict[str, list[float]]
"""Per query name, each round's milliseconds; under "size", the round's last-hour row count."""


class Reader:
    """The dashboard: its own connection as the reader role's LOGIN member."""

    def __init__(self, conn: asyncpg.Connection, fixed: tuple[datetime, datetime]) -> None:
        self.conn = conn
        self.fixed = fixed

    def _args(self, name: str) -> tuple[datetime, ...]:
        return self.fixed if name == "fixed_hour" else ()

    async def run(self, seconds: float, least: int) -> Samples:
        """Both queries in turn, back to back, for `seconds` and at least `least` rounds.

        The last hour's row count (the sum of its per-identity counts) stands for the data
        size: every ingested row lands in the last hour.
        """
        samples: Samples = {"last_hour": [], "fixed_hour": [], "size": []}
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline or len(samples["size"]) < least:
            for name, sql in QUERIES.items():
                started = time.perf_counter()
                rows = await self.conn.fetch(sql, *self._args(name))
                samples[name].append((time.perf_counter() - started) * 1000)
                if name == "last_hour":
                    samples["size"].append(sum(r["n"] for r in rows))
        return samples

    async def plans(self) -> dict[str, str]:
        """Each query's plan as node types, outermost first: says whether an index is used."""
        found = {}
        for name, sql in QUERIES.items():
            text = await self.conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *self._args(name))
            nodes, node = [], json.loads(text)[0]["Plan"]
            while True:
                index = f" using {node['Index Name']}" if "Index Name" in node else ""
                nodes.append(node["Node Type"] + index)
                if not node.get("Plans"):
                    break
                node = node["Plans"][0]
            found[name] = " <- ".join(nodes)
        return found


def latency(ms: list[float]) -> dict[str, Any]:
    return {
        "queries": len(ms),
        "p50_ms": round(percentile(ms, 0.5), 2),
        "p99_ms": round(percentile(ms, 0.99), 2),
        "max_ms": round(max(ms), 2),
    }


def slowdown(name: str, loaded: Samples, before: Samples, after: Samples) -> dict[str, float]:
    """Each loaded query's latency over the idle latency at its data size, interpolated between
    the idle medians before and after by the last hour's row count; p50 and p99 of the ratio."""
    points = sorted(
        (percentile(idle["size"], 0.5), percentile(idle[name], 0.5)) for idle in (before, after)
    )
    (x0, y0), (x1, y1) = points

    def idle_ms(size: float) -> float:
        if size <= x0 or x1 == x0:
            return y0
        if size >= x1:
            return y1
        return y0 + (y1 - y0) * (size - x0) / (x1 - x0)

    ratios = [ms / idle_ms(size) for ms, size in zip(loaded[name], loaded["size"], strict=True)]
    return {"p50": round(percentile(ratios, 0.5), 2), "p99": round(percentile(ratios, 0.99), 2)}


class ConnectionSampler:
    """Peak connections per login role (client backends; parallel workers apart)."""

    def __init__(self, conn: asyncpg.Connection, interval: float = 0.25) -> None:
        self.conn = conn
        self.interval = interval
        self.samples = 0
        self.peak: dict[str, dict[str, int]] = {}
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stop.is_set():
            for row in await self.conn.fetch(CONNECTIONS):
                entry = self.peak.setdefault(row["usename"], {})
                kind = "" if row["backend_type"] == "client backend" else "parallel_workers_"
                for key in ("total", "active"):
                    name = f"{kind}{key}" if kind else key
                    entry[name] = max(entry.get(name, 0), row[key])
            self.samples += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task


async def role_limits(bench: Bench, doc: Declaration) -> dict[str, dict[str, Any]]:
    """Each declared role's login member: declared limit and pool, and the live rolconnlimit."""
    live = {
        r["rolname"]: r["rolconnlimit"]
        for r in await bench.sql("SELECT rolname, rolconnlimit FROM pg_roles")
    }
    return {
        doc.login_role(name): {
            "role": name,
            "declared_connection_limit": spec.connection_limit,
            "live_connection_limit": live.get(doc.login_role(name)),
            "pool_max": spec.pool_size.max,
        }
        for name, spec in doc.roles.items()
    }


def connection_report(
    limits: dict[str, dict[str, Any]], sampler: ConnectionSampler
) -> dict[str, Any]:
    roles = {}
    for login, limit in limits.items():
        peak = sampler.peak.get(login, {})
        roles[login] = {
            **limit,
            "peak_connections": peak.get("total", 0),
            "peak_active": peak.get("active", 0),
            **{k: v for k, v in peak.items() if k.startswith("parallel")},
            "within_limit": peak.get("total", 0) <= limit["declared_connection_limit"],
        }
    others = {user: peak for user, peak in sampler.peak.items() if user not in limits}
    return {"samples": sampler.samples, "roles": roles, "undeclared_users": others}


async def preload(bench: Bench, args: argparse.Namespace, index: str) -> dict[str, Any]:
    """Empty the table, fill it with history, build the variant's index, VACUUM ANALYZE."""
    conn = await asyncpg.connect(bench.postgres.dsn)
    try:
        await conn.execute("TRUNCATE ingest.telemetry, ingest.rejects")
        for name in INDEXES:
            await conn.execute(f"DROP INDEX IF EXISTS ingest.bench_telemetry_{name}")
        started = time.perf_counter()
        await conn.execute(PRELOAD, args.rows, float(args.history_hours), args.devices)
        loaded = time.perf_counter() - started
        ddl = INDEXES[index]
        started = time.perf_counter()
        if ddl is not None:
            await conn.execute(ddl)
        indexed = time.perf_counter() - started
        await conn.execute("VACUUM (ANALYZE) ingest.telemetry")
        # A fixed hour well inside the history: the same rows whatever is ingested later.
        fixed = await conn.fetchrow(
            "SELECT now() - interval '3 hours' AS since, now() - interval '2 hours' AS until"
        )
        size = await conn.fetchval("SELECT pg_total_relation_size('ingest.telemetry')")
    finally:
        await conn.close()
    assert fixed is not None
    return {
        "rows": args.rows,
        "history_hours": args.history_hours,
        "insert_s": round(loaded, 1),
        "index_ddl": ddl,
        "index_build_s": round(indexed, 1),
        "table_mb": round(size / 2**20),
        "fixed_hour": (fixed["since"], fixed["until"]),
    }


async def table_state(bench: Bench) -> dict[str, Any]:
    """Rows, and whether autovacuum has visited (it changes what a scan costs)."""
    (row,) = await bench.sql(
        """
        SELECT (SELECT count(*) FROM ingest.telemetry) AS table_rows,
               autovacuum_count, autoanalyze_count
          FROM pg_stat_user_tables WHERE relid = 'ingest.telemetry'::regclass
        """
    )
    return dict(row)


async def ingest_rate(gateway: GatewayProcess, work: Awaitable[Any]) -> dict[str, float]:
    """The rows the gateway commits per second while `work` runs."""
    before = await gateway.counter("gateway_rows_written_total")
    started = time.monotonic()
    await work
    seconds = time.monotonic() - started
    rows = await gateway.counter("gateway_rows_written_total") - before
    return {"seconds": round(seconds, 1), "rows_per_s": round(rows / seconds)}


class BacklogGuard:
    """Watches the broker's backlog for the gateway (messages acknowledged to the fleet, not yet
    received) and stops the fleet past `limit`, so that the broker's memory stays bounded (its
    queue is not: see `services`). The gateway stays saturated while any backlog is left."""

    def __init__(self, fleet: Fleet, gateway: GatewayProcess, limit: int) -> None:
        self.fleet = fleet
        self.gateway = gateway
        self.limit = limit
        self.peak = 0
        self.fleet_stopped_at_s: float | None = None
        self._started = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    async def backlog(self) -> int:
        received = await self.gateway.counter("gateway_messages_received_total")
        # The fleet's counters lag a little: clamp the estimate at zero.
        return max(0, self.fleet.progress().acked - int(received))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            backlog = await self.backlog()
            self.peak = max(self.peak, backlog)
            if backlog > self.limit and self.fleet_stopped_at_s is None:
                self.fleet.stop()
                self.fleet_stopped_at_s = round(time.monotonic() - self._started, 1)
            await asyncio.sleep(0.5)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


async def loaded_phase(
    bench: Bench,
    args: argparse.Namespace,
    rate: float,
    reader: Reader,
    limits: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """The gateway ingests at full speed: first alone, then while the reader queries; then the
    broker's backlog drains and the gateway stops."""
    client_id = f"bench-isolation-{secrets.token_hex(2)}"
    admin = await asyncpg.connect(bench.postgres.dsn)
    try:
        async with running_gateway(bench, client_id) as gateway:
            fleet = bench.fleet(1, rate=rate)
            publishing = asyncio.create_task(fleet.run())
            guard = BacklogGuard(fleet, gateway, args.backlog_limit)
            guard.start()
            await asyncio.sleep(args.warmup)
            if publishing.done():
                publishing.result()  # the fleet failed: say why
            alone = await ingest_rate(gateway, asyncio.sleep(args.alone_seconds))
            sampler = ConnectionSampler(admin)
            sampler.start()
            reading = asyncio.ensure_future(reader.run(args.loaded_seconds, args.least))
            with_reader = await ingest_rate(gateway, reading)
            backlog_at_end = await guard.backlog()
            plans = await reader.plans()
            await sampler.stop()
            fleet.stop()
            report = await publishing
            guard.stop()
            drained = await settle(gateway, report.expected()["rows"], 0, args.drain_timeout)
            if not drained["settled"]:
                drained["evidence"] = await stall_evidence(bench, gateway, [fleet])
                say(f"  the gateway stopped short of the fleet's rows: {drained}")
            memory = await gateway.stop()
        await bench.forget_session(client_id)
    finally:
        await admin.close()
    return {
        "samples": reading.result(),
        "plans_loaded": plans,
        "ingest": {
            "alone": alone,
            "with_reader": with_reader,
            "fleet": fleet_summary(report),
            "broker_backlog": {
                "peak": guard.peak,
                "at_end_of_reader_window": backlog_at_end,
                "limit": args.backlog_limit,
                "fleet_stopped_at_s": guard.fleet_stopped_at_s,
            },
            "drain_after_windows": drained,
            "broker_log": broker_notices(bench, client_id),
            "gateway_peak_rss_mb": memory["peak_rss_mb"],
        },
        "connections": connection_report(limits, sampler),
    }


async def variant(
    bench: Bench, args: argparse.Namespace, doc: Declaration, index: str, rate: float
) -> dict[str, Any]:
    async with bench.phase(f"isolation: preload, index {index}") as preload_info:
        table = await preload(bench, args, index)
    spec = doc.roles[READER_ROLE]
    password = spec.password.read()
    assert password is not None
    reader_dsn = bench.postgres.address.dsn_for(doc.login_role(READER_ROLE), password)
    limits = await role_limits(bench, doc)
    conn = await asyncpg.connect(reader_dsn)
    reader = Reader(conn, table.pop("fixed_hour"))
    found: dict[str, Any] = {"index": index, "table": {**table, "preload_phase": preload_info}}
    try:
        found["plans_idle_before"] = await reader.plans()
        async with bench.phase(f"isolation: idle before, index {index}") as before_info:
            before = await reader.run(args.idle_seconds, args.least)
            before_info.update(await table_state(bench))
        async with bench.phase(f"isolation: loaded, index {index}") as loaded_info:
            loaded = await loaded_phase(bench, args, rate, reader, limits)
            loaded_info.update(await table_state(bench))
        # Right after the drain, as it is: no VACUUM, so the same visibility work and plans.
        async with bench.phase(f"isolation: idle after, index {index}") as after_info:
            after = await reader.run(args.idle_seconds, args.least)
            after_info.update(await table_state(bench))
        found["plans_idle_after"] = await reader.plans()
    finally:
        await conn.close()
    samples = loaded.pop("samples")
    found["reader"] = {
        name: {
            "idle_before": latency(before[name]),
            "loaded": latency(samples[name]),
            "idle_after": latency(after[name]),
            "loaded_over_idle_same_size": slowdown(name, samples, before, after),
        }
        for name in QUERIES
    }
    found["last_hour_rows"] = {
        phase: [int(min(s["size"])), int(max(s["size"]))]
        for phase, s in (("idle_before", before), ("loaded", samples), ("idle_after", after))
    }
    found["phases"] = {"idle_before": before_info, "loaded": loaded_info, "idle_after": after_info}
    found.update(loaded)
    return found


async def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = bench_settings(args, warmup=3.0, window=args.probe_seconds)
    doc = load_declaration(ROLES_FILE)
    results: dict[str, Any] = {
        "benchmark": "isolation",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": loadavg(),
        "settings": {
            "rows_preloaded": args.rows,
            "history_hours": args.history_hours,
            "devices": args.devices,
            "fleet_processes": args.fleet_processes,
            "readings_per_message": 1,
            "idle_seconds": args.idle_seconds,
            "loaded_seconds": args.loaded_seconds,
            "warmup_s": args.warmup,
            "ingest_alone_seconds": args.alone_seconds,
            "reader": f"{doc.login_role(READER_ROLE)}, one connection, queries back to back",
            "queries": {
                "last_hour": " ".join(LAST_HOUR.split()),
                "fixed_hour": "same, ts in a fixed hour of the pre-loaded history (3 h to 2 h ago)",
            },
            "postgres": "18 (embedded), default settings, fsync on",
            "batching": "5000 rows, 4 MiB or 50 ms (default)",
        },
        "variants": {},
    }
    started = time.monotonic()
    async with services(settings) as bench:
        probe = results["probe"] = await gateway_live(bench, 1)
        rate = args.overdrive * probe["msgs_per_s"]
        results["settings"]["fleet_rate_msgs_per_s"] = round(rate)
        say(f"gateway maximum {probe['msgs_per_s']:,} msg/s; the fleet publishes {rate:,.0f} msg/s")
        for index in args.indexes:
            say(f"-- index: {index}")
            found = await variant(bench, args, doc, index, rate)
            results["variants"][index] = found
            summarise_variant(found)
    results["seconds"] = round(time.monotonic() - started, 1)
    results["loadavg_at_end"] = loadavg()
    return results


def summarise_variant(found: dict[str, Any]) -> None:
    for name, entry in found["reader"].items():
        idle, loaded, after = entry["idle_before"], entry["loaded"], entry["idle_after"]
        say(
            f"  {name:<10} idle p50/p99 {idle['p50_ms']}/{idle['p99_ms']} ms, "
            f"loaded {loaded['p50_ms']}/{loaded['p99_ms']} ms, "
            f"idle after {after['p50_ms']}/{after['p99_ms']} ms; "
            f"loaded/idle same size p50 {entry['loaded_over_idle_same_size']['p50']}x"
        )
    ingest = found["ingest"]
    say(
        f"  ingest {ingest['with_reader']['rows_per_s']:,} rows/s meanwhile "
        f"({ingest['alone']['rows_per_s']:,} rows/s alone)"
    )
    for login, entry in found["connections"]["roles"].items():
        if entry["peak_connections"]:
            say(
                f"  {login:<28} peak {entry['peak_connections']} of limit "
                f"{entry['declared_connection_limit']} (pool max {entry['pool_max']})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="pre-loaded readings")
    parser.add_argument("--history-hours", type=float, default=12)
    parser.add_argument(
        "--indexes", nargs="+", default=["none", "ts"], choices=list(INDEXES), metavar="INDEX"
    )
    parser.add_argument("--idle-seconds", type=float, default=15)
    parser.add_argument("--loaded-seconds", type=float, default=20)
    parser.add_argument("--least", type=int, default=20, help="queries per phase at least")
    parser.add_argument("--warmup", type=float, default=3, help="ingestion before measuring")
    parser.add_argument("--alone-seconds", type=float, default=10, help="ingest rate, no reader")
    parser.add_argument("--drain-timeout", type=float, default=300)
    parser.add_argument(
        "--overdrive",
        type=float,
        default=1.0,
        help="fleet rate over the gateway's measured maximum (the gateway is saturated once the "
        "reader slows it and a backlog builds)",
    )
    parser.add_argument(
        "--backlog-limit",
        type=int,
        default=600_000,
        help="stop the fleet when the broker holds this many messages for the gateway",
    )
    parser.add_argument("--probe-seconds", type=float, default=10, help="maximum rate window")
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--fleet-processes", type=int, default=2)
    parser.add_argument("--quiet", type=float, default=0.15, help="see mqtt_gateway.py")
    parser.add_argument("--quiet-limit", type=float, default=30)
    print_report(run, parser.parse_args())


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
