"""The MQTT drain's gateway CPU per message, two trees of the project compared in one run.

Each tree is a git worktree (`git worktree add --detach /tmp/wt-old <commit>`); each run is that
tree's own `benchmarks/mqtt_gateway.py --modes drain` started with the tree as its working
directory and first on PYTHONPATH, so the benchmark, the launchers and `gateway run` all come from
it (the venv's editable install of the main tree comes after). Runs alternate in the order given
(e.g. old new new old old new), so drift of the machine's speed falls on both alike. Reports
each run's gateway CPU us/msg (and the bare subscriber's, measured in the same run) and the mean
ratio of the second tree to the first. Prints one JSON object on stdout.

    .venv/bin/python benchmarks/cpu_compare.py --tree old=/tmp/wt-old --tree new=/tmp/wt-new \
        [--order old new new old old new] [--readings 1] [--messages 200000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

VENV_PYTHON = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "python"


def head(tree: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def imported_from(tree: Path) -> str:
    """Which `gateway` package a process started in `tree` imports (the check that matters)."""
    return subprocess.run(
        [str(VENV_PYTHON), "-c", "import gateway; print(gateway.__file__)"],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def one_run(tree: Path, readings: int, messages: int, extra: list[str]) -> dict[str, Any]:
    argv = [
        str(VENV_PYTHON),
        str(tree / "benchmarks" / "mqtt_gateway.py"),
        "--modes",
        "drain",
        "--readings",
        str(readings),
        "--messages",
        str(messages),
        "--messages-10",
        str(messages),
        "--no-extras",
        *extra,
    ]
    started = time.monotonic()
    done = subprocess.run(
        argv,
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{tree}: exit {done.returncode}\n{done.stderr[-3000:]}")
    found = json.loads(done.stdout.strip().splitlines()[-1])
    shape = f"readings_{readings}"
    gateway = found["gateway"][shape]["drain"]
    bare = found["bare_subscriber"][shape]["drain"]
    # From the CPU seconds (10 ms ticks): the per-message figures are rounded to 0.1 us, too
    # coarse for a comparison within a few percent.
    cpu_s = gateway["cpu_s"]
    return {
        "gateway_cpu_us_per_msg": round(cpu_s["gateway"] / messages * 1e6, 3),
        "postgres_cpu_us_per_msg": round(cpu_s["postgres"] / messages * 1e6, 3),
        "mosquitto_cpu_us_per_msg": round(cpu_s["mosquitto"] / messages * 1e6, 3),
        "gateway_msgs_per_s": gateway["msgs_per_s"],
        "bare_msgs_per_s": bare["msgs_per_s"],
        "bare_cpu_s": bare.get("cpu_s"),
        "bare_cpu_us_per_msg": round(bare["cpu_s"]["subscriber"] / messages * 1e6, 3),
        "gateway_peak_rss_mb": gateway["gateway_peak_rss_mb"],
        "cpu_others": gateway.get("cpu_others"),
        "loadavg_start": gateway.get("loadavg_start"),
        "seconds": round(time.monotonic() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", action="append", required=True, help="label=path, twice")
    parser.add_argument("--order", nargs="+", default=None, help="labels, e.g. a b b a a b")
    parser.add_argument("--readings", type=int, default=1, choices=[1, 10])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--pass", dest="extra", nargs=argparse.REMAINDER, default=[])
    args = parser.parse_args()
    trees = dict(item.split("=", 1) for item in args.tree)
    if len(trees) != 2:
        parser.error("give exactly two --tree label=path")
    first, second = list(trees)
    order = args.order or [first, second, second, first, first, second]
    paths = {label: Path(path).resolve() for label, path in trees.items()}
    results: dict[str, Any] = {
        "benchmark": "cpu_compare",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "trees": {
            label: {"path": str(path), "commit": head(path), "imports": imported_from(path)}
            for label, path in paths.items()
        },
        "readings": args.readings,
        "messages": args.messages,
        "order": order,
        "runs": [],
    }
    for label in order:
        run = {"tree": label, **one_run(paths[label], args.readings, args.messages, args.extra)}
        results["runs"].append(run)
        print(json.dumps(run), file=sys.stderr, flush=True)
    per_tree = {
        label: [r["gateway_cpu_us_per_msg"] for r in results["runs"] if r["tree"] == label]
        for label in trees
    }
    means = {label: statistics.mean(values) for label, values in per_tree.items()}
    results["gateway_cpu_us_per_msg"] = per_tree
    results["mean_us_per_msg"] = {label: round(value, 3) for label, value in means.items()}
    results[f"mean_ratio_{second}_over_{first}"] = round(means[second] / means[first], 3)
    json.dump(results, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
