"""A bounded soak: `gateway run` (a child process) for `--minutes` at 70% of its maximum rate,
with bad input mixed in and one PostgreSQL restart half-way, to show that memory stays flat,
no acknowledged row is lost or doubled, and every bad message is rejected for its reason.

- The maximum is measured first (the fleet as fast as it can, as `mqtt_gateway.py`'s live
  phase does), unless `--rate` gives the soak's rate in messages/s.
- The fleet sends `--malformed` truncated JSON and `--spoofed` messages under another device's
  topic (the broker's ACL refuses those: they never reach the gateway); beside it, a few devices
  that the broker knows but the registry does not publish `--unknown-share` of the rate.
- Half-way, PostgreSQL stops (fast shutdown) for `--outage` seconds and starts again.
- The gateway's VmRSS is read from /proc every `--sample-seconds`; after a warm-up, the peak of
  the last third of the run is compared with the peak of the first third.
- At the end: acknowledged valid rows against the table's rows (see `check_rows` for how a
  duplicate is told from a coincidence), and the rejects by reason against what was sent.

Holds /tmp/gateway-bench.lock for the probe and for the whole soak. Prints one JSON object.

    .venv/bin/python benchmarks/soak.py [--minutes 10] [--rate 30000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import re
import secrets
import statistics
import sys
import time
from collections import Counter
from datetime import datetime
from typing import Any

import asyncpg
import orjson
from _harness import loadavg, memory_kb
from isolation import (
    bench_settings,
    broker_notices,
    labelled,
    say,
    scrape,
    services,
    settle,
    stall_evidence,
    total,
)
from mqtt_gateway import Bench, GatewayProcess, gateway_live, running_gateway

from gateway.fleet.mqtt import Fleet
from gateway.fleet.options import FleetOptions
from gateway.fleet.report import FleetReport
from gateway.services.mosquitto import MqttUser

UNKNOWN_PREFIX = "ghost-"


class Samples:
    """The gateway's resident size and progress every few seconds (from /proc and /metrics),
    and the broker's backlog for it (what the fleets got acknowledged, less what it received)."""

    def __init__(self, gateway: GatewayProcess, fleets: list[Fleet], interval: float) -> None:
        self.gateway = gateway
        self.fleets = fleets
        self.interval = interval
        self.started = time.monotonic()
        self.series: list[dict[str, float]] = []

    async def run(self) -> None:
        while True:
            memory = memory_kb(self.gateway.pid)
            entry = {
                "t_s": round(time.monotonic() - self.started, 1),
                "rss_mb": round(memory.get("VmRSS", 0) / 1024, 1),
            }
            with contextlib.suppress(OSError):
                metrics = await asyncio.to_thread(scrape, self.gateway)
                entry["rows"] = total(metrics, "gateway_rows_written_total")
                entry["buffered_rows"] = total(metrics, "gateway_buffered_rows")
                acked = sum(fleet.progress().acked for fleet in self.fleets)
                received = total(metrics, "gateway_messages_received_total")
                entry["backlog"] = max(0, acked - received)  # the fleets' counters lag a little
            self.series.append(entry)
            await asyncio.sleep(self.interval)


def flatness(series: list[dict[str, float]], warmup: float, seconds: float) -> dict[str, Any]:
    """Peak RSS of the first and last thirds after warm-up: flat when the last third's peak is
    within 5% (at least 5 MiB) of the first third's. The outage sits in the middle third, so a
    working set that grew to absorb it and stayed shows here too; the slope of the last third
    tells such a plateau (about 0) from a leak (still rising)."""
    third = (seconds - warmup) / 3
    first = [s["rss_mb"] for s in series if warmup <= s["t_s"] < warmup + third]
    last = [(s["t_s"], s["rss_mb"]) for s in series if seconds - third <= s["t_s"] <= seconds]
    if len(first) < 2 or len(last) < 2:
        return {"flat": None, "why": "too few samples for thirds"}
    last_peak = max(rss for _, rss in last)
    growth = last_peak - max(first)
    allowed = max(5.0, 0.05 * max(first))
    slope = statistics.linear_regression([t for t, _ in last], [rss for _, rss in last]).slope
    return {
        "warmup_s": warmup,
        "first_third_peak_mb": max(first),
        "last_third_peak_mb": last_peak,
        "growth_mb": round(growth, 1),
        "allowed_growth_mb": round(allowed, 1),
        "flat": growth <= allowed,
        "last_third_slope_mb_per_min": round(slope * 60, 2),
    }


async def outage(bench: Bench, at: float, seconds: float, started: float) -> dict[str, float]:
    """Stop PostgreSQL `at` seconds into the run for `seconds`, then start it again."""
    await asyncio.sleep(at)
    stopping = time.monotonic()
    await bench.postgres.stop()
    stopped = time.monotonic()
    await asyncio.sleep(seconds)
    await bench.postgres.start()
    return {
        "stop_at_s": round(stopping - started, 1),
        "stopped_in_s": round(stopped - stopping, 2),
        "down_s": round(time.monotonic() - stopped, 1),
        "back_at_s": round(time.monotonic() - started, 1),
    }


async def check_rows(bench: Bench, report: FleetReport, since: datetime) -> dict[str, Any]:
    """The table's rows against the valid messages the broker acknowledged to the fleet.

    A message's row is found by its identity, timestamp, metric and value. A row committed twice
    (a batch retried after a commit that did go through, or a message delivered again) lies in
    two transactions (`xmin`); two different readings that happen to share all four (a device's
    burst within one millisecond, when the fleet lags) nearly always lie in one.
    """
    conn = await asyncpg.connect(bench.postgres.dsn)
    try:
        # Tens of millions of groups: in memory rather than spilled in many batches.
        await conn.execute("SET work_mem = '1GB'")
        row = await conn.fetchrow(
            """
            WITH keys AS (
                SELECT count(*) AS n, count(DISTINCT xmin::text) AS transactions
                  FROM ingest.telemetry GROUP BY identity, ts, metric, value
            )
            SELECT coalesce(sum(n), 0) AS rows, count(*) AS distinct_rows,
                   coalesce(sum(n - 1), 0) AS duplicates,
                   coalesce(sum(n - 1) FILTER (WHERE transactions > 1), 0) AS across,
                   (SELECT coalesce(sum(rows), 0) FROM gateway.write_log
                     WHERE target = 'ingest.telemetry' AND at >= $2) AS write_log_rows,
                   (SELECT count(*) FROM ingest.telemetry
                     WHERE identity LIKE $1 || '%') AS unknown_identity_rows
              FROM keys
            """,
            UNKNOWN_PREFIX,
            since,
        )
        assert row is not None
        examples: list[asyncpg.Record] = []
        if row["across"]:
            examples = await conn.fetch(
                """
                SELECT identity, ts, metric, value,
                       array_agg(received_at ORDER BY received_at) AS received_at,
                       array_agg(xmin::text) AS xmin
                  FROM ingest.telemetry GROUP BY identity, ts, metric, value
                HAVING count(DISTINCT xmin::text) > 1 LIMIT 5
                """
            )
    finally:
        await conn.close()
    valid = report.kinds["valid"]
    acked, distinct = valid.acked, int(row["distinct_rows"])
    return {
        "acked_valid": acked,
        "unanswered_valid": valid.sent - valid.acked - valid.refused,
        "in_table": int(row["rows"]),
        "distinct": distinct,
        "lost": max(0, acked - distinct),
        "beyond_acked": max(0, distinct - acked),
        "duplicates": int(row["duplicates"]),
        "duplicates_across_transactions": int(row["across"]),
        "duplicates_within_a_transaction": int(row["duplicates"]) - int(row["across"]),
        "write_log_rows": int(row["write_log_rows"]),
        "rows_of_unknown_identities": int(row["unknown_identity_rows"]),
        "duplicate_examples": [dict(r) for r in examples],
    }


async def check_rejects(bench: Bench, main: FleetReport, unknown: FleetReport) -> dict[str, Any]:
    rows = await bench.sql(
        "SELECT reason, count(*) AS n, count(*) FILTER (WHERE identity LIKE $1 || '%') AS unknown"
        "  FROM ingest.rejects GROUP BY reason ORDER BY reason",
        UNKNOWN_PREFIX,
    )
    by_reason = {r["reason"]: int(r["n"]) for r in rows}
    malformed = main.kinds["malformed"].acked
    unknown_sent = unknown.expected()["valid_messages"]
    spoofed = main.kinds["spoofed"]
    return {
        "by_reason": by_reason,
        "malformed_acked_by_broker": malformed,
        "malformed_json": by_reason.get("malformed_json", 0),
        "malformed_match": by_reason.get("malformed_json", 0) == malformed,
        "unknown_identity_acked_by_broker": unknown_sent,
        "unknown_identity": by_reason.get("unknown_identity", 0),
        "unknown_match": by_reason.get("unknown_identity", 0) == unknown_sent,
        "spoofed_sent": spoofed.sent,
        "spoofed_refused_by_broker": spoofed.refused,
        "spoofed_accepted_by_broker": spoofed.acked,
        "other_reasons": {
            k: v for k, v in by_reason.items() if k not in ("malformed_json", "unknown_identity")
        },
    }


def log_summary(path: os.PathLike[str], offset: int) -> dict[str, Any]:
    """Warnings and errors the gateway logged from `offset` on: counts and first occurrences."""
    levels: Counter[str] = Counter()
    messages: Counter[str] = Counter()
    with open(path, "rb") as log:
        log.seek(offset)
        for line in log:
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                levels["unparsed"] += 1
                continue
            level = str(entry.get("level", "?"))
            levels[level] += 1
            if level in ("warning", "error", "critical"):
                # Numbers and addresses vary; the shape of the message is what repeats.
                messages[re.sub(r"\d+", "N", str(entry.get("message", "")))[:160]] += 1
    return {"lines_by_level": dict(levels), "warnings_and_errors": dict(messages.most_common(12))}


async def soak(bench: Bench, args: argparse.Namespace, rate: float) -> dict[str, Any]:
    seconds = args.minutes * 60
    warmup = args.warmup if args.warmup is not None else min(60.0, seconds / 6)
    client_id = f"bench-soak-{secrets.token_hex(2)}"
    log_path = bench.workdir / "gateway.log"
    offset = log_path.stat().st_size if log_path.exists() else 0
    unknown_rate = rate * args.unknown_share
    async with bench.phase("soak") as info:
        await bench.truncate()
        (now,) = await bench.sql("SELECT now() AS t")
        async with running_gateway(bench, client_id) as gateway:
            main = bench.fleet(
                1,
                rate=rate,
                duration=seconds,
                malformed=args.malformed,
                spoofed=args.spoofed,
            )
            unknown = Fleet(
                FleetOptions(
                    host=bench.broker.host,
                    port=bench.broker.port,
                    devices=args.unknown_devices,
                    prefix=UNKNOWN_PREFIX,
                    password=bench.device_password,
                    rate=unknown_rate,
                    duration=seconds,
                )
            )
            samples = Samples(gateway, [main, unknown], args.sample_seconds)
            sampling = asyncio.create_task(samples.run())
            started = samples.started
            main_report, unknown_report, restart = await asyncio.gather(
                main.run(),
                unknown.run(),
                outage(bench, seconds / 2 - args.outage / 2, args.outage, started),
            )
            published_s = time.monotonic() - started
            expected_rows = main_report.expected()["rows"]
            expected_rejects = (
                main_report.expected()["malformed_messages"]
                + unknown_report.expected()["valid_messages"]
            )
            settled = await settle(gateway, expected_rows, expected_rejects, args.settle_timeout)
            if not settled["settled"]:
                settled["evidence"] = await stall_evidence(bench, gateway, [main, unknown])
            metrics = await asyncio.to_thread(scrape, gateway)
            sampling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampling
            memory = await gateway.stop()
        await bench.forget_session(client_id)
        checked_at = time.monotonic()
        rows = await check_rows(bench, main_report, now["t"])
        rejects = await check_rejects(bench, main_report, unknown_report)
        info["check_s"] = round(time.monotonic() - checked_at, 1)
    return {
        **info,
        "seconds": seconds,
        "published_s": round(published_s, 1),
        "rate_target_msgs_per_s": round(rate),
        "rate_achieved_msgs_per_s": round(main_report.rate),
        "unknown_rate_target_msgs_per_s": round(unknown_rate),
        "fleet": main_report.as_json(),
        "unknown_fleet": unknown_report.as_json(),
        "postgres_restart": restart,
        "settle": settled,
        "rows": rows,
        "rejects": rejects,
        "memory": {
            **flatness(samples.series, warmup, seconds),
            "peak_rss_mb": memory["peak_rss_mb"],
            "vm_hwm_mb": memory["vm_hwm_mb"],
            "series": [[s["t_s"], s["rss_mb"]] for s in samples.series],
        },
        "broker_backlog_peak": max((s.get("backlog", 0) for s in samples.series), default=0),
        "progress_series": {
            "columns": ["t_s", "rows_written", "buffered_rows", "broker_backlog"],
            "rows": [
                [s["t_s"], s.get("rows"), s.get("buffered_rows"), s.get("backlog")]
                for s in samples.series
            ],
        },
        "gateway_metrics_at_end": {
            "rows_written": total(metrics, "gateway_rows_written_total"),
            "received": labelled(metrics, "gateway_messages_received_total", "source"),
            "rejected": labelled(metrics, "gateway_messages_rejected_total", "reason"),
            "flush_failures": labelled(metrics, "gateway_flush_failures_total", "kind"),
            "exit": "0 after SIGTERM",
        },
        "gateway_log": log_summary(log_path, offset),
        "broker_log": broker_notices(bench, client_id),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = bench_settings(args, warmup=3.0, window=args.probe_seconds)
    results: dict[str, Any] = {
        "benchmark": "soak",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": loadavg(),
        "settings": {
            "minutes": args.minutes,
            "share_of_max": args.share if args.rate is None else None,
            "devices": args.devices,
            "fleet_processes": args.fleet_processes,
            "readings_per_message": 1,
            "malformed": args.malformed,
            "spoofed": args.spoofed,
            "unknown_share": args.unknown_share,
            "unknown_devices": args.unknown_devices,
            "outage_s": args.outage,
            "sample_s": args.sample_seconds,
            "batching": "5000 rows, 4 MiB or 50 ms (default); receive_maximum 10000",
            "postgres": "18 (embedded), fsync on",
        },
    }
    started = time.monotonic()
    async with services(settings) as bench:
        names = [f"{UNKNOWN_PREFIX}{n:04d}" for n in range(args.unknown_devices)]
        bench.broker.add_users([MqttUser(name, bench.device_password) for name in names])
        if args.rate is None:
            probe = await gateway_live(bench, 1)
            results["probe"] = probe
            rate = args.share * probe["msgs_per_s"]
            say(f"maximum {probe['msgs_per_s']:,} msg/s; soak at {rate:,.0f} msg/s")
        else:
            rate = args.rate
        results["soak"] = await soak(bench, args, rate)
    results["seconds"] = round(time.monotonic() - started, 1)
    results["loadavg_at_end"] = loadavg()
    return results


def summarise(results: dict[str, Any]) -> None:
    soak = results["soak"]
    rows, rejects, memory = soak["rows"], soak["rejects"], soak["memory"]
    say(
        f"soak {soak['seconds'] / 60:g} min at {soak['rate_achieved_msgs_per_s']:,} msg/s, "
        f"postgres down {soak['postgres_restart']['down_s']} s at "
        f"{soak['postgres_restart']['stop_at_s']} s"
    )
    say(
        f"rows: {rows['acked_valid']:,} acked, {rows['distinct']:,} distinct in the table, lost "
        f"{rows['lost']}, duplicates {rows['duplicates_across_transactions']} across transactions "
        f"({rows['duplicates_within_a_transaction']} coincidences within one)"
    )
    say(
        f"rejects: malformed {rejects['malformed_acked_by_broker']:,} sent / "
        f"{rejects['malformed_json']:,} rejected; unknown "
        f"{rejects['unknown_identity_acked_by_broker']:,} / {rejects['unknown_identity']:,}; "
        f"spoofs refused by the broker {rejects['spoofed_refused_by_broker']:,} of "
        f"{rejects['spoofed_sent']:,}"
    )
    say(
        f"RSS: first third peak {memory.get('first_third_peak_mb')} MB, last third "
        f"{memory.get('last_third_peak_mb')} MB, flat {memory.get('flat')} (last third's slope "
        f"{memory.get('last_third_slope_mb_per_min')} MB/min); "
        f"peak {memory['peak_rss_mb']} MB; load {results['loadavg_at_end']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument(
        "--rate", type=float, help="messages/s (default: share of the measured max)"
    )
    parser.add_argument("--share", type=float, default=0.7, help="of the measured maximum")
    parser.add_argument("--probe-seconds", type=float, default=10, help="maximum rate window")
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--fleet-processes", type=int, default=2)
    parser.add_argument("--malformed", type=float, default=0.01)
    parser.add_argument("--spoofed", type=float, default=0.01)
    parser.add_argument("--unknown-share", type=float, default=0.005, help="of the soak rate")
    parser.add_argument("--unknown-devices", type=int, default=10)
    parser.add_argument("--outage", type=float, default=10, help="seconds PostgreSQL is down")
    parser.add_argument("--sample-seconds", type=float, default=5)
    parser.add_argument("--warmup", type=float, help="seconds before the first third")
    parser.add_argument("--settle-timeout", type=float, default=300)
    parser.add_argument("--quiet", type=float, default=0.15, help="see mqtt_gateway.py")
    parser.add_argument("--quiet-limit", type=float, default=30)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    results = asyncio.run(run(args))
    summarise(results)
    json.dump(results, sys.stdout, default=str)
    sys.stdout.write("\n")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
