"""Good devices' throughput while one device sends hostile payloads, against the same fleet
without it, in one run (phases A B B A by default).

`gateway run` (default configuration) against Mosquitto and PostgreSQL. In every phase
`--devices` good devices (`gateway.fleet.mqtt`, one reading per message) publish as fast as they
can for `--warmup` + `--window` seconds; in the B phases one registered device publishes, as fast
as the broker takes them, a cycle of hostile payloads (5,000-deep nesting, invalid UTF-8, NUL
escapes, lone surrogates, 200 KB of 10,000 tag keys, malformed JSON, non-finite values), and one
account the gateway does not know publishes valid readings under its own name (unknown_identity).

Each phase starts a fresh gateway and stops it at the end (so the reject summaries of the minute
are written). Measured: good rows committed in the window (commit timestamps) per second, the
gateway's CPU per good message (from the fleet's start until every good message is committed),
reject records stored whole and summary rows (limits.rejects_per_minute per sender and reason per
minute; the rest counted). Prints one JSON object on stdout.

    .venv/bin/python benchmarks/hostile_fleet.py [--order A B B A] [--devices 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
from _harness import CpuMeter, example_roles, loadavg, phase, prepare_database, print_report
from _publisher import Outcome, Publisher, connect
from memory_bound import gateway_config
from mqtt_gateway import GatewayProcess

from gateway.fleet.mqtt import Fleet
from gateway.fleet.options import FleetOptions
from gateway.services.mosquitto import Mosquitto, MqttUser
from gateway.services.postgres import Postgres

HOSTILE = "hostile-0000"
STRANGER = "stranger-0000"  # a broker account with no identity in the gateway's registry


def hostile_payloads() -> list[tuple[str, bytes]]:
    """The cycle the hostile device sends: (what, payload); each must be rejected."""
    ts = int(time.time() * 1000)

    def reading(tags: bytes, metric: bytes = b'"temp"') -> bytes:
        return b'{"ts":%d,"metric":%s,"value":1.5,"tags":%s}' % (ts, metric, tags)

    many_tags = b"{" + b",".join(b'"k%05d":"v%010d"' % (n, n) for n in range(10_000)) + b"}"
    many_tags += b" " * max(0, 200_000 - len(many_tags))
    return [
        ("nesting_5000", b"[" * 5000 + b"]" * 5000),
        ("nesting_5000_in_tags", reading(b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}")),
        ("invalid_utf8_tags", reading(b'{"site":"\xff\xfe\xc3"}')),
        ("nul_escape_tags", reading(b'{"site":"a\\u0000b"}')),
        ("nul_escape_metric", reading(b'{"site":"s"}', b'"t\\u0000"')),
        ("lone_surrogate", reading(b'{"site":"\\ud800"}')),
        ("tags_10000_keys_200kb", reading(many_tags)),
        ("malformed", b'{"ts":%d,"metric":"temp","value":' % ts),
        ("not_json", b"\x00\x01\x02 garbage \xff"),
        ("non_finite", b'{"ts":%d,"metric":"temp","value":NaN}' % ts),
    ]


async def sql(dsn: str, query: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(query)
        return rows
    finally:
        await conn.close()


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def wait_rows(gateway: GatewayProcess, expected: int, timeout: float) -> None:
    """Until the gateway committed `expected` rows; says its counters every 5 s meanwhile."""
    deadline = time.monotonic() + timeout
    shown = time.monotonic()
    while (written := await gateway.counter("gateway_rows_written_total")) < expected:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{written:.0f} of {expected} rows after {timeout:.0f} s")
        if time.monotonic() - shown > 5:
            shown = time.monotonic()
            received = await gateway.counter("gateway_messages_received_total")
            rejected = await gateway.counter("gateway_messages_rejected_total")
            held = await gateway.counter("gateway_buffer_held_bytes")
            rows = await gateway.counter("gateway_buffer_held_rows")
            say(
                f"  {written:.0f} rows written, {received:.0f} received, {rejected:.0f} rejected, "
                f"held {held:.0f} bytes {rows:.0f} rows, cpu {cpu_seconds(gateway.pid):.1f} s"
            )
        await asyncio.sleep(0.2)


async def one_phase(
    label: str,
    postgres: Postgres,
    broker: Mosquitto,
    password: str,
    args: argparse.Namespace,
    workdir: Path,
) -> dict[str, Any]:
    hostile = label == "B"
    await sql(postgres.dsn, "TRUNCATE ingest.telemetry, ingest.rejects")
    config = gateway_config(postgres, broker, None)
    gateway = GatewayProcess(config, workdir / f"gateway-{label}.log")
    async with phase(f"hostile fleet {label}", quiet=args.quiet, quiet_limit=30) as info:
        await gateway.start()
        say(f"{label}: gateway ready")
        try:
            fleet = Fleet(
                FleetOptions(
                    host=broker.host,
                    port=broker.port,
                    devices=args.devices,
                    prefix="sensor-",
                    password=password,
                    readings=1,
                    processes=args.fleet_processes,
                    duration=args.warmup + args.window,
                )
            )
            meter = CpuMeter({"gateway": gateway.pid})
            publishers: list[Publisher] = []
            if hostile:
                cycle = [(k, p) for k, p in hostile_payloads() if k in args.kinds]
                kinds = itertools.cycle(range(len(cycle)))
                if cycle:
                    publishers.append(
                        Publisher(
                            HOSTILE,
                            password,
                            f"devices/{HOSTILE}/telemetry",
                            lambda _n: cycle[next(kinds)][1],
                            args.hostile_window,
                        )
                    )
                if "unknown_identity" in args.kinds:
                    publishers.append(
                        Publisher(
                            STRANGER,
                            password,
                            f"devices/{STRANGER}/telemetry",
                            lambda _n: (
                                b'{"ts":%d,"metric":"temp","value":1}' % (time.time() * 1000)
                            ),
                            args.hostile_window,
                        )
                    )
                for publisher in publishers:
                    await connect(broker.host, broker.port, publisher)
            meter.start()
            for publisher in publishers:
                publisher.start()
            report = await fleet.run()
            say(f"{label}: fleet done, {report.acked} acked; waiting for the gateway")
            for publisher in publishers:
                publisher.stop()
            good = report.acked
            await wait_rows(gateway, good, args.timeout)
            cpu = meter.stop()
            hostile_outcome = Outcome()
            for publisher in publishers:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(publisher.drained), 10)
                if publisher.transport is not None:
                    publisher.transport.close()
                publisher.outcome.unanswered = len(publisher.inflight)
                hostile_outcome.merge(publisher.outcome)
        except BaseException:
            log = workdir / f"gateway-{label}.log"
            say(f"gateway log:\n{log.read_text(errors='replace')[-4000:]}")
            query = (
                "SELECT reason, identity, count(*), min(detail) FROM ingest.rejects GROUP BY 1, 2"
            )
            for found in await sql(postgres.dsn, query):
                say(f"  rejects: {dict(found)}")
            raise
        finally:
            stopped = await gateway.stop()
    (row,) = await sql(
        postgres.dsn,
        f"""
        WITH t AS (SELECT received_at, pg_xact_commit_timestamp(xmin) AS c FROM ingest.telemetry
                    WHERE identity LIKE 'sensor-%'),
             f AS (SELECT min(received_at) AS first FROM t)
        SELECT count(*) AS rows,
               count(*) FILTER (WHERE t.c >= f.first + interval '{args.warmup} s'
                                  AND t.c < f.first + interval '{args.warmup + args.window} s')
                 AS in_window
          FROM t, f
        """,
    )
    rejects = await sql(
        postgres.dsn,
        """
        WITH r AS (SELECT reason, count,
                          payload_prefix = ''::bytea
                          AND detail LIKE '% rejects in this minute, beyond % stored whole'
                          AS summary
                     FROM ingest.rejects)
        SELECT reason, count(*) FILTER (WHERE NOT summary) AS records,
               count(*) FILTER (WHERE summary) AS summary_rows,
               coalesce(sum(count) FILTER (WHERE summary), 0) AS summarised
          FROM r GROUP BY reason ORDER BY reason
        """,
    )
    return {
        **info,
        "phase": label,
        "good_messages_acked_by_broker": good,
        "good_rows_committed": row["rows"],
        "good_rows_in_window": row["in_window"],
        "good_rows_per_s": round(row["in_window"] / args.window),
        "fleet_msgs_per_s": round(report.rate),
        "gateway_cpu_s": cpu["gateway"],
        "gateway_cpu_us_per_good_msg": round(cpu["gateway"] / good * 1e6, 2) if good else None,
        "hostile_sent": hostile_outcome.sent,
        "hostile_acked_by_broker": hostile_outcome.acked,
        "hostile_refused_by_broker": dict(hostile_outcome.refused),
        "hostile_connection_end": [p.outcome.disconnect for p in publishers],
        "gateway_rejected_metric": stopped["rejected"],
        "reject_records": sum(r["records"] for r in rejects),
        "summary_rows": sum(r["summary_rows"] for r in rejects),
        "rejects_summarised": int(sum(r["summarised"] for r in rejects)),
        "rejects_by_reason": {r["reason"]: dict(r) for r in rejects},
        "gateway_peak_rss_mb": stopped["peak_rss_mb"],
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    doc = example_roles()
    names = [f"sensor-{n:04d}" for n in range(args.devices)]
    password = secrets.token_urlsafe(12)
    results: dict[str, Any] = {
        "benchmark": "hostile_fleet",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": loadavg(),
        "settings": {
            "good_devices": args.devices,
            "warmup_s": args.warmup,
            "window_s": args.window,
            "hostile_window": args.hostile_window,
            "order": args.order,
            "hostile_cycle": args.kinds,
        },
        "phases": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as workdir:
        async with (
            Postgres(settings={"track_commit_timestamp": "on"}) as postgres,
            Mosquitto() as broker,
        ):
            await prepare_database(postgres, doc, [*names, HOSTILE])
            broker.add_users([MqttUser(name, password) for name in [*names, HOSTILE, STRANGER]])
            for label in args.order:
                found = await one_phase(label, postgres, broker, password, args, Path(workdir))
                results["phases"].append(found)
                print(
                    f"{label}: {found['good_rows_per_s']:,} good rows/s, "
                    f"{found['gateway_cpu_us_per_good_msg']} us/good msg, "
                    f"hostile sent {found['hostile_sent']}, records {found['reject_records']}, "
                    f"summary rows {found['summary_rows']}",
                    file=sys.stderr,
                    flush=True,
                )
    by = {label: [p for p in results["phases"] if p["phase"] == label] for label in ("A", "B")}
    mean = {
        label: {
            "good_rows_per_s": statistics.mean(p["good_rows_per_s"] for p in phases),
            "gateway_cpu_us_per_good_msg": statistics.mean(
                p["gateway_cpu_us_per_good_msg"] for p in phases
            ),
        }
        for label, phases in by.items()
        if phases
    }
    results["mean"] = mean
    if "A" in mean and "B" in mean:
        results["ratio_b_over_a_rows_per_s"] = round(
            mean["B"]["good_rows_per_s"] / mean["A"]["good_rows_per_s"], 3
        )
        results["ratio_b_over_a_cpu_per_good_msg"] = round(
            mean["B"]["gateway_cpu_us_per_good_msg"] / mean["A"]["gateway_cpu_us_per_good_msg"], 3
        )
    results["loadavg_at_end"] = loadavg()
    return results


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--order", nargs="+", default=["A", "B", "B", "A"], choices=["A", "B"])
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--hostile-window", type=int, default=64, help="unacked hostile publishes")
    parser.add_argument("--fleet-processes", type=int, default=2)
    parser.add_argument("--quiet", type=float, default=0.15)
    kinds = [name for name, _ in hostile_payloads()] + ["unknown_identity"]
    parser.add_argument("--kinds", nargs="+", default=kinds, choices=kinds, help="hostile mix")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for rows")
    print_report(run, parser.parse_args())


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
