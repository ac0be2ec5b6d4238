"""Shared plumbing for the benchmarks: a machine-wide lock per measured phase, load figures,
peak memory of a process, one-shot work in a fresh child process, and the COPY ceiling.

The machine is shared: every benchmark takes `phase()` (an exclusive `flock` on
/tmp/gateway-bench.lock) around each measured phase, so two benchmarks never measure at once,
and records the load average it found, so a reader can tell a quiet run from a busy one.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import fcntl
import json
import logging
import multiprocessing
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import uvloop

from gateway import pgtime
from gateway.bootstrap import EXAMPLE_ROLES, INGEST_ROLE, bootstrap, example_passwords
from gateway.decoder import COLUMNS
from gateway.roles.declaration import Declaration, load_declaration
from gateway.services.postgres import Postgres

ROLES_FILE = EXAMPLE_ROLES

__all__ = [
    "INGEST_ROLE",
    "LOCK_PATH",
    "ROLES_FILE",
    "CpuMeter",
    "CpuShares",
    "MemorySampler",
    "copy_ceiling",
    "example_roles",
    "in_child",
    "loadavg",
    "memory_kb",
    "phase",
    "prepare_database",
]

LOCK_PATH = Path("/tmp/gateway-bench.lock")

T = TypeVar("T")


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded."""
    return [round(value, 2) for value in os.getloadavg()]


def _cpu_busy() -> int:
    """Clock ticks all CPUs spent busy since boot (everything but idle and iowait)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    return sum(fields) - fields[3] - fields[4]


def _tree_ticks(root: int) -> int:
    """Clock ticks used by `root` and its descendants, those reaped included (cutime/cstime)."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                text = stat.read()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()
        parents[int(entry)] = int(fields[1])
        ticks[int(entry)] = sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    total = 0
    for pid in ticks:
        ancestor = pid
        while ancestor not in (root, 0, 1) and ancestor in parents:
            ancestor = parents[ancestor]
        if ancestor == root:
            total += ticks[pid]
    return total


class CpuMeter:
    """CPU seconds that named processes (each with its descendants) use between start and stop."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._pids = pids
        self._start: dict[str, int] = {}

    def _read(self) -> dict[str, int]:
        return {name: _tree_ticks(pid) for name, pid in self._pids.items()}

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> dict[str, float]:
        tick = os.sysconf("SC_CLK_TCK")
        now = self._read()
        return {name: round((now[name] - self._start[name]) / tick, 2) for name in now}


class CpuShares:
    """How the machine's CPUs were used over an interval: by this process tree, by others."""

    def __init__(self) -> None:
        self._root = os.getpid()
        self._started = time.monotonic()
        self._busy = _cpu_busy()
        self._ours = _tree_ticks(self._root)

    def result(self) -> dict[str, float]:
        """Shares of all CPUs' time (1.0 = every CPU busy the whole interval)."""
        seconds = time.monotonic() - self._started
        capacity = seconds * os.sysconf("SC_CLK_TCK") * (os.cpu_count() or 1)
        busy = _cpu_busy() - self._busy
        ours = _tree_ticks(self._root) - self._ours
        return {
            "cpu_ours": round(ours / capacity, 2) if capacity else 0.0,
            "cpu_others": round(max(0, busy - ours) / capacity, 2) if capacity else 0.0,
        }


async def wait_for_quiet(threshold: float, limit: float) -> dict[str, float]:
    """Wait (at most `limit` seconds) until other processes use less than `threshold` of the
    CPUs over one second; returns how long that took and the share last seen."""
    started = time.monotonic()
    while True:
        shares = CpuShares()
        await asyncio.sleep(1)
        others = shares.result()["cpu_others"]
        waited = time.monotonic() - started
        if others < threshold or waited >= limit:
            return {"quiet_wait_s": round(waited, 1), "cpu_others_before": others}


@contextlib.asynccontextmanager
async def phase(
    name: str, *, quiet: float = 0.0, quiet_limit: float = 30.0, path: Path = LOCK_PATH
) -> AsyncIterator[dict[str, Any]]:
    """Hold the benchmark lock for one phase; yields a dict that gets the lock wait, the load
    average at both ends, and the shares of CPU time this process tree and others used.

    With `quiet` > 0, first wait (up to `quiet_limit` seconds) for other processes' CPU share
    to fall below it: the machine is shared, and other work skews every figure.
    """
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o666)
    asked = time.monotonic()
    try:
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        info: dict[str, Any] = {"phase": name, "lock_wait_s": round(time.monotonic() - asked, 2)}
        if quiet > 0:
            info.update(await wait_for_quiet(quiet, quiet_limit))
        info["loadavg_start"] = loadavg()
        started = time.monotonic()
        shares = CpuShares()
        try:
            yield info
        finally:
            info["phase_s"] = round(time.monotonic() - started, 2)
            info["loadavg_end"] = loadavg()
            info.update(shares.result())
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak resident size) of a process, in KiB; empty once it is gone."""
    found = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    found[key] = int(value.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return found


class MemorySampler:
    """Samples a process's resident size every `interval` seconds until stopped."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_rss_kb = 0
        self.hwm_kb = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def sample(self) -> None:
        found = memory_kb(self.pid)
        self.peak_rss_kb = max(self.peak_rss_kb, found.get("VmRSS", 0))
        self.hwm_kb = max(self.hwm_kb, found.get("VmHWM", 0))

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    async def stop(self) -> dict[str, float]:
        """Stop sampling; the figures in MiB."""
        self.sample()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        return {
            "peak_rss_mb": round(self.peak_rss_kb / 1024, 1),
            "vm_hwm_mb": round(self.hwm_kb / 1024, 1),
        }


async def in_child(function: Callable[..., T], *args: Any) -> T:
    """`function(*args)` in a fresh spawned process (its own interpreter and event loop).

    The caller's script must keep its entry point under `if __name__ == "__main__":`.
    """
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return await asyncio.get_running_loop().run_in_executor(pool, function, *args)


def copy_ceiling(dsn: str, rows: int, connections: int) -> dict[str, Any]:
    """In a child: COPY pre-built rows in 5000-row batches over `connections` connections."""
    return uvloop.run(_copy(dsn, rows, connections))


async def _copy(dsn: str, total: int, connections: int) -> dict[str, Any]:
    # Rows and encoding as the gateway's own: timestamps as integers (gateway.pgtime).
    now = pgtime.now()
    tags = '{"site":"site-3"}'
    rows = [(now, f"sensor-{n % 100:04d}", "temperature", n * 0.5, tags, now) for n in range(5000)]
    batches = total // len(rows)
    conns = [await asyncpg.connect(dsn) for _ in range(connections)]
    for conn in conns:
        await pgtime.use_integer_timestamps(conn)
    try:

        async def worker(conn: asyncpg.Connection, share: int) -> None:
            for _ in range(share):
                await conn.copy_records_to_table(
                    "telemetry", schema_name="ingest", columns=COLUMNS, records=rows
                )

        started, cpu_started = time.perf_counter(), time.process_time()
        await asyncio.gather(
            *(
                worker(conn, batches // connections + (n < batches % connections))
                for n, conn in enumerate(conns)
            )
        )
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
    finally:
        for conn in conns:
            await conn.close()
    return {
        "connections": connections,
        "rows": batches * len(rows),
        "batch_rows": len(rows),
        "seconds": round(seconds, 3),
        "rows_per_s": round(batches * len(rows) / seconds),
        "client_cpu_s": round(cpu, 2),
    }


def example_roles() -> Declaration:
    """The shipped roles declaration, with a fresh password for every role not given one."""
    doc = load_declaration(EXAMPLE_ROLES)
    example_passwords(doc)
    return doc


async def prepare_database(postgres: Postgres, doc: Declaration, names: list[str]) -> str:
    """Migrate, apply the roles, register `names` on the ingest role; returns its login DSN."""
    await bootstrap(postgres.dsn, roles=doc, identities=names, role=INGEST_ROLE, actor="benchmark")
    password = doc.roles[INGEST_ROLE].password.read()
    assert password is not None
    return postgres.address.dsn_for(doc.login_role(INGEST_ROLE), password)


def print_report(
    run: Callable[[argparse.Namespace], Coroutine[Any, Any, Any]], args: argparse.Namespace
) -> None:
    """Run a benchmark and print its one JSON object on stdout; warnings go to stderr."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    json.dump(asyncio.run(run(args)), sys.stdout, default=str)
    sys.stdout.write("\n")
