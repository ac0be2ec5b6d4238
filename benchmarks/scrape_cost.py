"""What being scraped costs the data plane: the MQTT drain of `mqtt_gateway.py`, unscraped and
with /metrics scraped every `--scrape-interval` seconds, alternated in one run (by default un,
scraped, scraped, un, un, scraped, so drift of the machine's speed falls on both alike).

Both variants wait for the rows by counting them in the database, so the unscraped one never
asks the gateway anything. Reported per drain and as means: the gateway's CPU per message (its
main thread, which runs the data plane, and its other threads, where the HTTP server renders
/metrics, from schedstat), the scrapes made and how long each took; then the ratio of scraped to
unscraped CPU per message, against the goal (within 2%), and the CPU each scrape cost and its
share of the scraped drains' gateway CPU (the direct figure, when drains vary by more). Prints
one JSON object on stdout and a line per drain on stderr.

    .venv/bin/python benchmarks/scrape_cost.py [--messages 200000] [--readings 1]
        [--scrape-interval 1.0] [--order un scraped scraped un un scraped]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import platform
import statistics
import sys
import time
from typing import Any

from _harness import loadavg
from mqtt_gateway import Settings, gateway_drain, say, services

GOAL_RATIO = 1.02
VARIANTS = ("un", "scraped")


def figures(drain: dict[str, Any]) -> dict[str, Any]:
    """One drain's figures that matter here."""
    scrape = drain["scrape"]
    messages = drain["messages"]
    main, other = scrape["gateway_main_thread_cpu_s"], scrape["gateway_other_threads_cpu_s"]
    return {
        "gateway_cpu_us_per_msg": round((main + other) / messages * 1e6, 3),
        "main_thread_cpu_us_per_msg": round(main / messages * 1e6, 3),
        "gateway_cpu_s": round(main + other, 4),
        "other_threads_cpu_s": other,
        "gateway_cpu_us_per_msg_ticks": drain["cpu_us_per_msg"]["gateway"],
        "msgs_per_s": drain["msgs_per_s"],
        "drain_s": drain["seconds"],
        "scrapes": scrape["scrapes"],
        "scrape_failed": scrape["failed"],
        "scrape_mean_ms": scrape["mean_ms"],
        "metrics_body_bytes": scrape["body_bytes"],
        "cpu_others": drain.get("cpu_others"),
    }


def mean(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.mean(float(r[key]) for r in runs)


def compare(runs: list[dict[str, Any]]) -> dict[str, Any]:
    un = [r for r in runs if r["variant"] == "un"]
    scraped = [r for r in runs if r["variant"] == "scraped"]
    cpu = {
        v: round(mean(group, "gateway_cpu_us_per_msg"), 3)
        for v, group in (("un", un), ("scraped", scraped))
    }
    main = {
        v: round(mean(group, "main_thread_cpu_us_per_msg"), 3)
        for v, group in (("un", un), ("scraped", scraped))
    }
    ratio = cpu["scraped"] / cpu["un"]
    scrapes = sum(r["scrapes"] for r in scraped)
    extra_other = sum(r["other_threads_cpu_s"] for r in scraped) - len(scraped) * mean(
        un, "other_threads_cpu_s"
    )
    return {
        "mean_gateway_cpu_us_per_msg": cpu,
        "mean_main_thread_cpu_us_per_msg": main,
        "ratio_scraped_over_un": round(ratio, 4),
        "ratio_main_thread_scraped_over_un": round(main["scraped"] / main["un"], 4),
        "spread_un": [
            min(r["gateway_cpu_us_per_msg"] for r in un),
            max(r["gateway_cpu_us_per_msg"] for r in un),
        ],
        "spread_scraped": [
            min(r["gateway_cpu_us_per_msg"] for r in scraped),
            max(r["gateway_cpu_us_per_msg"] for r in scraped),
        ],
        "scrapes": scrapes,
        "other_threads_cpu_ms_per_scrape": round(extra_other / scrapes * 1e3, 3)
        if scrapes
        else None,
        # The scrapes' own cost, measured directly: far below what the drains' spread resolves.
        "scrape_share_of_scraped_gateway_cpu": round(
            extra_other / sum(r["gateway_cpu_s"] for r in scraped), 5
        ),
        "goal_ratio": GOAL_RATIO,
        "goal_met": ratio <= GOAL_RATIO,
    }


async def run(
    settings: Settings, readings: int, interval: float, order: list[str]
) -> dict[str, Any]:
    results: dict[str, Any] = {
        "benchmark": "scrape_cost",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": loadavg(),
        "readings": readings,
        "messages": settings.messages[readings],
        "scrape_interval_s": interval,
        "order": order,
        "runs": [],
    }
    started = time.monotonic()
    async with services(settings) as bench:
        for variant in order:
            bench.settings = dataclasses.replace(
                settings, scrape_interval=interval if variant == "scraped" else 0
            )
            found = {"variant": variant, **figures(await gateway_drain(bench, readings))}
            results["runs"].append(found)
            say(json.dumps(found))
    results["comparison"] = compare(results["runs"])
    results["seconds"] = round(time.monotonic() - started, 1)
    results["loadavg_at_end"] = loadavg()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--readings", type=int, default=1, choices=[1, 10])
    parser.add_argument("--scrape-interval", type=float, default=1.0)
    parser.add_argument(
        "--order",
        nargs="+",
        choices=VARIANTS,
        default=["un", "scraped", "scraped", "un", "un", "scraped"],
    )
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--fleet-processes", type=int, default=2)
    parser.add_argument("--receive-maximum", type=int, default=10_000)
    parser.add_argument("--quiet", type=float, default=0.15, help="see mqtt_gateway.py")
    parser.add_argument("--quiet-limit", type=float, default=30)
    args = parser.parse_args()
    if set(args.order) != set(VARIANTS):
        parser.error("the order needs both variants")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    settings = Settings(
        messages={args.readings: args.messages},
        devices=args.devices,
        processes=args.fleet_processes,
        warmup=0,
        window=0,
        latency_seconds=0,
        receive_maximum=args.receive_maximum,
        copy_rows=0,
        naive_messages=0,
        quiet=args.quiet,
        quiet_limit=args.quiet_limit,
    )
    results = asyncio.run(run(settings, args.readings, args.scrape_interval, args.order))
    comparison = results["comparison"]
    say(
        f"gateway CPU/msg: un {comparison['mean_gateway_cpu_us_per_msg']['un']} us, scraped "
        f"{comparison['mean_gateway_cpu_us_per_msg']['scraped']} us, ratio "
        f"{comparison['ratio_scraped_over_un']} (goal <= {GOAL_RATIO}: "
        f"{'met' if comparison['goal_met'] else 'MISSED'}); "
        f"{comparison['scrapes']} scrapes, "
        f"{comparison['other_threads_cpu_ms_per_scrape']} ms CPU each"
    )
    json.dump(results, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
