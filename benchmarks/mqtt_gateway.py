"""The MQTT data plane end to end: `gateway run` from Mosquitto into PostgreSQL, QoS 1, each
message acknowledged after the COPY holding its rows commits.

Measured, for messages of one reading and of ten:

- *drain*: the gateway's persistent session is made (the gateway starts once and stops), the
  fleet (`gateway.fleet.mqtt`) publishes N messages and waits for every PUBACK, then the gateway
  starts again; the time runs from its first message in hand (the rows' `received_at`) to the
  last commit (`pg_xact_commit_timestamp`), so process start-up is not counted;
- *live*: the gateway is up, the fleet publishes as fast as it can; committed rows are counted
  over a window that opens `--warmup` seconds after the first message arrived;
- *latency*: the fleet at half the gateway's live message rate; per row, commit time minus the
  device's send time (`ts`, epoch ms), p50 and p99 (PostgreSQL runs with track_commit_timestamp);
- peak resident memory of the gateway process (VmRSS sampled, VmHWM) in every phase.

Beside it, the same way: a bare subscriber (our `MqttClient`, each batch acked as soon as it is
received: the loop of `mqtt_drain.py`), drain and live, which is the ceiling of the MQTT side; the
ceiling of COPY alone (pre-built rows, 5000-row batches, as `telemetry_ingest_login`, one and two
connections); and a naive consumer as first versions are written (aiomqtt, auto-ack on receipt,
one autocommitted INSERT per message), drain only. Consumers run in processes of their own on
uvloop, like `gateway run`.

The machine is shared: each phase holds /tmp/gateway-bench.lock, first waits (up to
`--quiet-limit` seconds) for other processes to use less than `--quiet` of the CPUs, and records
the load average and the CPU shares used by this run and by others meanwhile. Drains also report
the CPU seconds per message of the consumer, PostgreSQL and Mosquitto, which say where the time
goes even when the wall-clock figures are disturbed. Prints one JSON object on stdout and a
summary on stderr. `--profile TOP` instead runs the gateway in-process under cProfile during a
drain and reports its time by stage and its TOP functions.

`--modes shaped` drains routes with declared shapes beside telemetry (benchmarks/_shaped.py):
a wide `table` route, a `state` route written by `state_writer` (each device's `ts` increasing,
one message in ten older), and telemetry that also updates state; each drain after a bare
subscriber's drain of the same payloads, variants in ABBA order over `--shaped-rounds`. Reported
per variant: messages/s (rows/s, upserts/s), the state rows the upserts changed, gateway and
PostgreSQL CPU per message, the ratio to the bare subscriber's rate and, for CPU, to telemetry's.

A drain polls the gateway's /metrics five times a second to see its progress. With
`--scrape-interval S` it counts the rows in the database instead, and scrapes /metrics every S
seconds meanwhile, as Prometheus would (0: never), reporting the scrapes and the CPU of the
gateway's main thread (the data plane) apart from its other threads (the HTTP server's).

    .venv/bin/python benchmarks/mqtt_gateway.py [--messages 300000] [--messages-10 100000]
        [--modes drain live] [--readings 1 10] [--no-extras] [--profile 30]
        [--scrape-interval 1.0] [--modes shaped --variants telemetry wide state fanout
        --shaped-messages 100000 --shaped-rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import logging
import os
import platform
import pstats
import re
import secrets
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import asyncpg
import orjson
import uvloop
from _harness import (
    INGEST_ROLE,
    ROLES_FILE,
    CpuMeter,
    MemorySampler,
    copy_ceiling,
    example_roles,
    in_child,
    loadavg,
    phase,
    prepare_database,
)
from _publisher import Publisher, publish_count
from _shaped import OUT_OF_ORDER, STATE_TABLE, VARIANTS, Variant, newest_ts

from gateway.config import (
    BatchingConfig,
    DatabaseConfig,
    GatewayConfig,
    HttpConfig,
    MqttSourceConfig,
    RouteConfig,
    Secret,
    SourcesConfig,
)
from gateway.fleet.mqtt import Fleet
from gateway.fleet.options import FleetOptions
from gateway.fleet.report import FleetReport
from gateway.services._process import free_port, log_tail
from gateway.services.mosquitto import Mosquitto, MqttUser
from gateway.services.postgres import Postgres
from gateway.sources.mqtt import MqttClient, MqttOptions

ROOT = Path(__file__).resolve().parents[1]
MQTT_PASSWORD_ENV = "GATEWAY_BENCH_MQTT_PASSWORD"
SUBSCRIPTION = "devices/+/telemetry"

GOALS = {
    "drain_rows_per_s_readings_1": 100_000,
    "drain_rows_per_s_readings_10": 300_000,
    "max_bare_to_gateway_ratio": 2.0,
}


@dataclass(frozen=True)
class Settings:
    """What one run does; every size is a command-line option."""

    messages: dict[int, int]  # readings per message -> messages in a drain
    devices: int
    processes: int
    warmup: float
    window: float
    latency_seconds: float
    receive_maximum: int
    copy_rows: int
    naive_messages: int
    quiet: float
    quiet_limit: float
    scrape_interval: float | None = None  # drain: see `--scrape-interval`
    shaped_messages: int = 100_000  # messages in each drain of a shaped variant


@dataclass(frozen=True)
class BrokerAddress:
    """How a consumer reaches the broker as the gateway's user (picklable, for children)."""

    host: str
    port: int
    username: str
    password: str = field(repr=False)

    def options(
        self, client_id: str, receive_maximum: int = 10_000, subscription: str = SUBSCRIPTION
    ) -> MqttOptions:
        return MqttOptions(
            client_id=client_id,
            host=self.host,
            port=self.port,
            username=self.username,
            password=self.password,
            subscriptions=[(subscription, 1)],
            session_expiry_interval=3600,
            receive_maximum=receive_maximum,
        )


@dataclass
class Bench:
    """The services of one run and how to reach them."""

    postgres: Postgres
    broker: Mosquitto
    settings: Settings
    device_password: str
    ingest_dsn: str
    workdir: Path

    def phase(self, name: str) -> contextlib.AbstractAsyncContextManager[dict[str, Any]]:
        return phase(name, quiet=self.settings.quiet, quiet_limit=self.settings.quiet_limit)

    def cpu_meter(self, **pids: int) -> CpuMeter:
        """CPU used from now on by the database and the broker (and the processes named)."""
        services = {"postgres": self.postgres, "mosquitto": self.broker}
        for name, service in services.items():
            # The launchers keep their process private; the pid is all a meter needs.
            process = service._process
            assert process is not None
            pids[name] = process.process.pid
        meter = CpuMeter(pids)
        meter.start()
        return meter

    @property
    def address(self) -> BrokerAddress:
        gateway = self.broker.gateway
        return BrokerAddress(self.broker.host, self.broker.port, gateway.username, gateway.password)

    def fleet(self, readings: int, **options: Any) -> Fleet:
        return Fleet(
            FleetOptions(
                host=self.broker.host,
                port=self.broker.port,
                devices=self.settings.devices,
                prefix="sensor-",
                password=self.device_password,
                readings=readings,
                processes=self.settings.processes,
                **options,
            )
        )

    def gateway_config(
        self, client_id: str, routes: list[RouteConfig] | None = None
    ) -> GatewayConfig:
        os.environ[MQTT_PASSWORD_ENV] = self.broker.gateway.password
        shipped: list[RouteConfig] = GatewayConfig.model_fields["routes"].default
        return GatewayConfig(
            routes=routes or shipped,
            database=DatabaseConfig(
                host=self.postgres.address.host,
                port=self.postgres.address.port,
                dbname="postgres",
                roles_file=ROLES_FILE,
            ),
            sources=SourcesConfig(
                mqtt=[
                    MqttSourceConfig(
                        name="mosquitto",
                        host=self.broker.host,
                        port=self.broker.port,
                        username=self.broker.gateway.username,
                        password=Secret(env=MQTT_PASSWORD_ENV),
                        client_id=client_id,
                        receive_maximum=self.settings.receive_maximum,
                    )
                ]
            ),
            batching=BatchingConfig(),  # the shipped policy: 5000 rows, 4 MiB or 50 ms
            http=HttpConfig(host="127.0.0.1", port=free_port()),
        )

    async def sql(self, query: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.postgres.dsn)
        try:
            rows: list[asyncpg.Record] = await conn.fetch(query, *args)
            return rows
        finally:
            await conn.close()

    async def truncate(self) -> None:
        await self.sql(
            "TRUNCATE ingest.telemetry, ingest.rejects, ingest.environment, ingest.device_state"
        )

    async def forget_session(self, client_id: str) -> None:
        """End a persistent session, or the broker keeps queueing every message for it."""
        options = MqttOptions(
            client_id=client_id,
            host=self.broker.host,
            port=self.broker.port,
            username=self.broker.gateway.username,
            password=self.broker.gateway.password,
            clean_start=True,
            session_expiry_interval=0,
        )
        async with MqttClient(options):
            pass

    async def make_session(self, client_id: str, subscription: str = SUBSCRIPTION) -> None:
        """A persistent session with the gateway's subscription, as a consumer leaves it."""
        maximum = self.settings.receive_maximum
        async with MqttClient(self.address.options(client_id, maximum, subscription)):
            pass

    async def publish(self, readings: int, count: int) -> FleetReport:
        """Queue `count` messages; returns once the broker acknowledged every one."""
        report = await self.fleet(readings, count=count).run()
        if not report.ok or report.acked != count:
            raise RuntimeError(f"the fleet did not publish cleanly: {report.problems()}")
        return report


# -- the gateway as `gateway run` ---------------------------------------------------------------


def config_environment(config: GatewayConfig) -> dict[str, str]:
    """The configuration as `GATEWAY_*` variables, the way a container is configured."""
    return {
        f"GATEWAY_{key.upper()}": orjson.dumps(value).decode()
        for key, value in config.model_dump(mode="json").items()
    }


class GatewayProcess:
    """`python -m gateway.cli run` in a child process, its memory sampled while it runs."""

    def __init__(self, config: GatewayConfig, log_path: Path) -> None:
        self.config = config
        self.port = config.http.port
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None
        self.sampler: MemorySampler | None = None

    async def start(self) -> None:
        env = {**os.environ, **config_environment(self.config)}
        with self.log_path.open("ab") as log_file:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway.cli",
                "run",
                env=env,
                cwd=ROOT,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log_file,
            )
        self.sampler = MemorySampler(self.process.pid)
        self.sampler.start()
        deadline = time.monotonic() + 60
        while not await asyncio.to_thread(self._get, "/readyz"):
            if self.process.returncode is not None or time.monotonic() > deadline:
                await self.stop()
                raise RuntimeError(f"the gateway did not become ready:\n{log_tail(self.log_path)}")
            await asyncio.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def _get(self, path: str) -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return str(r.read().decode()) if r.status == 200 else None
        except (OSError, urllib.error.URLError):
            return None

    async def counter(self, name: str) -> float:
        """The sum of a counter's series on /metrics (0 when it has none yet)."""
        text = await asyncio.to_thread(self._get, "/metrics") or ""
        pattern = re.compile(rf"^{name}(?:{{[^}}]*}})? (\S+)$", re.MULTILINE)
        return sum(float(value) for value in pattern.findall(text))

    async def wait_rows(self, expected: int, timeout: float) -> None:
        """Poll /metrics (cheap for the gateway, unlike count(*) for the database)."""
        deadline = time.monotonic() + timeout
        while await self.counter("gateway_rows_written_total") < expected:
            if self.process is not None and self.process.returncode is not None:
                raise RuntimeError(f"the gateway exited:\n{log_tail(self.log_path)}")
            if rejected := await self.counter("gateway_messages_rejected_total"):
                # a drain expects every row: no point waiting out the timeout
                raise RuntimeError(f"{rejected:.0f} messages rejected:\n{log_tail(self.log_path)}")
            if time.monotonic() > deadline:
                written = await self.counter("gateway_rows_written_total")
                raise RuntimeError(f"{written:.0f} of {expected} rows after {timeout:.0f}s")
            await asyncio.sleep(0.2)

    async def stop(self) -> dict[str, Any]:
        """SIGTERM (the gateway drains and must exit 0); returns its memory and reject figures."""
        assert self.process is not None and self.sampler is not None
        rejected = await self.counter("gateway_messages_rejected_total")
        self.sampler.sample()
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.process.wait(), 60)
        except TimeoutError:
            self.process.kill()
            code = await self.process.wait()
        memory = await self.sampler.stop()
        if code != 0:
            raise RuntimeError(f"the gateway exited with {code}:\n{log_tail(self.log_path)}")
        return {**memory, "rejected": int(rejected)}


@contextlib.asynccontextmanager
async def running_gateway(
    bench: Bench, client_id: str, routes: list[RouteConfig] | None = None
) -> AsyncIterator[GatewayProcess]:
    config = bench.gateway_config(client_id, routes)
    gateway = GatewayProcess(config, bench.workdir / "gateway.log")
    await gateway.start()
    try:
        yield gateway
    finally:
        if gateway.process is not None and gateway.process.returncode is None:
            with contextlib.suppress(Exception):
                await gateway.stop()


async def committed(bench: Bench, warmup: float | None = None, window: float = 0) -> dict[str, Any]:
    """Rows in the table, first receipt, last commit; with `warmup`, the rows committed in
    the window that opens `warmup` seconds after the first receipt."""
    (row,) = await bench.sql(
        """
        WITH t AS (SELECT received_at, pg_xact_commit_timestamp(xmin) AS c FROM ingest.telemetry),
             f AS (SELECT min(received_at) AS first FROM t)
        SELECT count(*) AS rows, min(t.received_at) AS first, max(t.c) AS last,
               count(*) FILTER (WHERE t.c >= f.first + make_interval(secs => $1)
                                  AND t.c < f.first + make_interval(secs => $1 + $2)) AS in_window
          FROM t, f
        """,
        warmup or 0.0,
        window,
    )
    return dict(row)


# -- gateway phases ------------------------------------------------------------------------------


async def gateway_drain(bench: Bench, readings: int) -> dict[str, Any]:
    count = bench.settings.messages[readings]
    scrape_interval = bench.settings.scrape_interval
    scraped: dict[str, Any] = {}
    client_id = f"bench-gw-drain-{readings}-{secrets.token_hex(2)}"
    async with bench.phase(f"gateway drain, {readings} reading(s)") as info:
        await bench.truncate()
        async with running_gateway(bench, client_id) as gateway:
            memory_idle = await gateway.stop()  # the session exists now, and stays
        report = await bench.publish(readings, count)
        rows = count * readings
        async with running_gateway(bench, client_id) as gateway:
            meter = bench.cpu_meter(gateway=gateway.pid)
            if scrape_interval is None:
                await gateway.wait_rows(rows, timeout=300)
            else:
                threads = thread_cpu_ns(gateway.pid)
                async with Scraper(gateway, scrape_interval) as scraper:
                    await wait_committed(bench, rows, timeout=300)
                scraped = scraper.summary(threads, thread_cpu_ns(gateway.pid))
            cpu = meter.stop()
            memory = await gateway.stop()
        found = await committed(bench)
        await bench.forget_session(client_id)
    seconds = (found["last"] - found["first"]).total_seconds()
    if found["rows"] != rows:
        raise RuntimeError(f"drain: {found['rows']} rows in the table, expected {rows}")
    return {
        **info,
        "messages": count,
        "rows": found["rows"],
        "seconds": round(seconds, 3),
        "rows_per_s": round(found["rows"] / seconds),
        "msgs_per_s": round(count / seconds),
        "publish_msgs_per_s": round(report.rate),
        "rejected": memory["rejected"],
        "cpu_s": cpu,
        "cpu_us_per_msg": per_message(cpu, count),
        "gateway_idle_rss_mb": memory_idle["peak_rss_mb"],
        "gateway_peak_rss_mb": memory["peak_rss_mb"],
        "gateway_vm_hwm_mb": memory["vm_hwm_mb"],
        **({"scrape": scraped} if scraped else {}),
    }


def thread_cpu_ns(pid: int) -> dict[str, int]:
    """CPU nanoseconds a process's main thread and its other threads have used (schedstat:
    exact, where /proc ticks are 10 ms)."""
    used = {"main": 0, "other": 0}
    for task in os.listdir(f"/proc/{pid}/task"):
        # A thread that ended meanwhile is left out.
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/schedstat") as stat:
            used["main" if int(task) == pid else "other"] += int(stat.read().split()[0])
    return used


class Scraper:
    """GET /metrics on entering the block and every `interval` seconds until it is left (never
    when the interval is 0)."""

    def __init__(self, gateway: GatewayProcess, interval: float) -> None:
        self.gateway = gateway
        self.interval = interval
        self.seconds: list[float] = []
        self.failed = 0
        self.body_bytes = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Scraper:
        if self.interval > 0:
            self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            started = time.perf_counter()
            body = await asyncio.to_thread(self.gateway._get, "/metrics")
            if body is None:
                self.failed += 1
            else:
                self.seconds.append(time.perf_counter() - started)
                self.body_bytes = len(body)
            await asyncio.sleep(self.interval)

    def summary(self, before: dict[str, int], after: dict[str, int]) -> dict[str, Any]:
        main, other = (round((after[k] - before[k]) / 1e9, 4) for k in ("main", "other"))
        scrapes = len(self.seconds)
        return {
            "interval_s": self.interval,
            "scrapes": scrapes,
            "failed": self.failed,
            "mean_ms": round(sum(self.seconds) / scrapes * 1e3, 2) if scrapes else None,
            "body_bytes": self.body_bytes,
            "gateway_main_thread_cpu_s": main,
            "gateway_other_threads_cpu_s": other,
        }


async def wait_committed(bench: Bench, expected: int, timeout: float) -> None:
    """Wait for `expected` rows by counting them in the database (the gateway is not asked)."""
    conn = await asyncpg.connect(bench.postgres.dsn)
    try:
        deadline = time.monotonic() + timeout
        while (found := await conn.fetchval("SELECT count(*) FROM ingest.telemetry")) < expected:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{found} of {expected} rows after {timeout:.0f}s")
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


def per_message(cpu: dict[str, float], messages: int) -> dict[str, float]:
    return {name: round(seconds / messages * 1e6, 1) for name, seconds in cpu.items()}


async def gateway_live(bench: Bench, readings: int) -> dict[str, Any]:
    settings = bench.settings
    client_id = f"bench-gw-live-{readings}-{secrets.token_hex(2)}"
    async with bench.phase(f"gateway live, {readings} reading(s)") as info:
        await bench.truncate()
        async with running_gateway(bench, client_id) as gateway:
            meter = bench.cpu_meter(gateway=gateway.pid)
            report = await bench.fleet(
                readings, duration=settings.warmup + settings.window + 1
            ).run()
            cpu = meter.stop()
            memory = await gateway.stop()
        found = await committed(bench, settings.warmup, settings.window)
        await bench.forget_session(client_id)
    rows = found["in_window"]
    return {
        **info,
        "window_s": settings.window,
        "rows_in_window": rows,
        "rows_per_s": round(rows / settings.window),
        "msgs_per_s": round(rows / readings / settings.window),
        "fleet": fleet_summary(report),
        "rejected": memory["rejected"],
        "cpu_s_during_fleet_run": cpu,
        "gateway_peak_rss_mb": memory["peak_rss_mb"],
        "gateway_vm_hwm_mb": memory["vm_hwm_mb"],
    }


async def gateway_latency(bench: Bench, readings: int, rate: float) -> dict[str, Any]:
    settings = bench.settings
    client_id = f"bench-gw-latency-{readings}-{secrets.token_hex(2)}"
    async with bench.phase(f"gateway latency, {readings} reading(s)") as info:
        await bench.truncate()
        async with running_gateway(bench, client_id) as gateway:
            report = await bench.fleet(readings, rate=rate, duration=settings.latency_seconds).run()
            await gateway.wait_rows(report.expected()["rows"], timeout=120)
            memory = await gateway.stop()
        (row,) = await bench.sql(
            """
            SELECT count(*) AS rows,
                   percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY ms) AS p,
                   max(ms) AS max
              FROM (SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin) - ts) * 1000 AS ms
                      FROM ingest.telemetry) AS latencies
            """
        )
        await bench.forget_session(client_id)
    p50, p99 = row["p"]
    return {
        **info,
        "target_msgs_per_s": round(rate),
        "fleet": fleet_summary(report),
        "rows": row["rows"],
        "p50_ms": round(p50, 1),
        "p99_ms": round(p99, 1),
        "max_ms": round(float(row["max"]), 1),
        "gateway_peak_rss_mb": memory["peak_rss_mb"],
    }


def fleet_summary(report: FleetReport) -> dict[str, Any]:
    return {
        "sent": report.sent,
        "acked": report.acked,
        "seconds": round(report.duration, 2),
        "msgs_per_s": round(report.rate),
        "ok": report.ok,
    }


# -- the bare subscriber: the MQTT side's ceiling -----------------------------------------------


def bare_subscriber(
    address: BrokerAddress,
    client_id: str,
    receive_maximum: int,
    count: int | None,
    run_for: float,
    ready: str,
    subscription: str = SUBSCRIPTION,
) -> dict[str, Any]:
    """In a child: receive and ack at once, until `count` messages or `run_for` seconds after
    the first; returns the receipt timeline `[(wall time, messages so far), ...]` and the CPU
    seconds spent from the first message on."""
    return uvloop.run(
        _bare(address, client_id, receive_maximum, count, run_for, Path(ready), subscription)
    )


async def _bare(
    address: BrokerAddress,
    client_id: str,
    receive_maximum: int,
    count: int | None,
    run_for: float,
    ready: Path,
    subscription: str,
) -> dict[str, Any]:
    client = MqttClient(address.options(client_id, receive_maximum, subscription))
    await client.start()
    await asyncio.to_thread(ready.touch)
    received = 0
    timeline: list[tuple[float, int]] = []
    cpu_started = 0.0
    try:
        async with asyncio.timeout(run_for + 120):
            stop = float("inf")
            while (count is None or received < count) and time.time() < stop:
                batch = await client.receive()
                client.ack_many(batch)
                if not timeline:
                    cpu_started = time.process_time()
                    stop = time.time() + run_for
                    timeline.append((time.time(), 0))
                received += len(batch)
                timeline.append((time.time(), received))
        cpu = time.process_time() - cpu_started
    finally:
        await client.disconnect()
    return {"received": received, "timeline": timeline, "cpu_s": round(cpu, 2)}


async def run_bare(
    bench: Bench,
    client_id: str,
    count: int | None,
    run_for: float,
    subscription: str = SUBSCRIPTION,
) -> Any:
    """Start the bare subscriber in its own process; returns (a task) once it is connected."""
    ready = bench.workdir / f"{client_id}.ready"
    task = asyncio.ensure_future(
        in_child(
            bare_subscriber,
            bench.address,
            client_id,
            bench.settings.receive_maximum,
            count,
            run_for,
            str(ready),
            subscription,
        )
    )
    while not ready.exists():
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    return task


async def drain_bare(
    bench: Bench,
    label: str,
    client_id: str,
    count: int,
    publish: Callable[[], Awaitable[object]],
    subscription: str = SUBSCRIPTION,
) -> dict[str, Any]:
    """The bare subscriber's drain of the `count` messages `publish` queues for its session:
    from its first receipt to its last, and the CPU it and the broker spent."""
    async with bench.phase(f"bare subscriber drain, {label}") as info:
        await bench.make_session(client_id, subscription)
        await publish()
        consumer = await run_bare(bench, client_id, count, 600, subscription)
        meter = bench.cpu_meter()
        result = await consumer
        cpu = {"subscriber": result["cpu_s"], **meter.stop()}
        await bench.forget_session(client_id)
    if result["received"] != count:
        raise RuntimeError(f"bare drain, {label}: {result['received']} of {count} messages")
    timeline = result["timeline"]
    seconds = timeline[-1][0] - timeline[0][0]
    return {
        **info,
        "messages": count,
        "seconds": round(seconds, 3),
        "msgs_per_s": round(count / seconds),
        "cpu_s": cpu,
        "cpu_us_per_msg": per_message(cpu, count),
    }


async def bare_drain(bench: Bench, readings: int) -> dict[str, Any]:
    count = bench.settings.messages[readings]
    found = await drain_bare(
        bench,
        f"{readings} reading(s)",
        f"bench-bare-drain-{readings}-{secrets.token_hex(2)}",
        count,
        lambda: bench.publish(readings, count),
    )
    return {**found, "rows_per_s_equivalent": round(found["msgs_per_s"] * readings)}


async def bare_live(bench: Bench, readings: int) -> dict[str, Any]:
    settings = bench.settings
    client_id = f"bench-bare-live-{readings}-{secrets.token_hex(2)}"
    async with bench.phase(f"bare subscriber live, {readings} reading(s)") as info:
        await bench.make_session(client_id)
        consumer = await run_bare(bench, client_id, None, settings.warmup + settings.window + 0.5)
        meter = bench.cpu_meter()
        report = await bench.fleet(readings, duration=settings.warmup + settings.window + 1).run()
        cpu = meter.stop()
        result = await consumer
        await bench.forget_session(client_id)
    messages = in_window(result["timeline"], settings.warmup, settings.window)
    return {
        **info,
        "window_s": settings.window,
        "msgs_in_window": messages,
        "msgs_per_s": round(messages / settings.window),
        "rows_per_s_equivalent": round(messages * readings / settings.window),
        "fleet": fleet_summary(report),
        "cpu_s_during_fleet_run": {"subscriber": result["cpu_s"], **cpu},
    }


def in_window(timeline: list[tuple[float, int]], warmup: float, window: float) -> int:
    """Messages received in [first + warmup, first + warmup + window)."""
    first = timeline[0][0]
    opens, closes = first + warmup, first + warmup + window
    if timeline[-1][0] < closes:
        raise RuntimeError("the consumer stopped before the window closed")
    before = max(n for t, n in timeline if t < opens)
    until = max(n for t, n in timeline if t < closes)
    return until - before


# -- COPY alone: the database side's ceiling -----------------------------------------------------


async def copy_phase(bench: Bench, connections: int) -> dict[str, Any]:
    async with bench.phase(f"COPY ceiling, {connections} connection(s)") as info:
        await bench.truncate()
        meter = bench.cpu_meter()
        result = await in_child(
            copy_ceiling, bench.ingest_dsn, bench.settings.copy_rows, connections
        )
        server = meter.stop()["postgres"]
        await bench.truncate()
    rows = result["rows"]
    cpu_us = {"client": result["client_cpu_s"] / rows * 1e6, "postgres": server / rows * 1e6}
    return {
        **info,
        **result,
        "postgres_cpu_s": server,
        "cpu_us_per_row": {name: round(value, 2) for name, value in cpu_us.items()},
    }


# -- a naive consumer ----------------------------------------------------------------------------


def naive_consumer(address: BrokerAddress, dsn: str, client_id: str, count: int) -> dict[str, Any]:
    """In a child: aiomqtt (MQTT 3.1.1, paho acks on receipt), one INSERT per message."""
    return asyncio.run(_naive(address, dsn, client_id, count))


def _naive_client(address: BrokerAddress, client_id: str) -> aiomqtt.Client:
    return aiomqtt.Client(
        address.host,
        address.port,
        username=address.username,
        password=address.password,
        identifier=client_id,
        clean_session=False,
    )


async def _naive(address: BrokerAddress, dsn: str, client_id: str, count: int) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    inserted = 0
    first = 0.0
    try:
        async with _naive_client(address, client_id) as client:
            await client.subscribe(SUBSCRIPTION, qos=1)
            async for message in client.messages:
                if not first:
                    first = time.time()
                body = orjson.loads(message.payload)
                identity = str(message.topic).split("/")[1]
                await conn.execute(
                    "INSERT INTO ingest.telemetry (ts, identity, metric, value, tags, received_at) "
                    "VALUES (to_timestamp($1 / 1000.0), $2, $3, $4, $5::jsonb, now())",
                    body["ts"],
                    identity,
                    body["metric"],
                    float(body["value"]),
                    orjson.dumps(body["tags"]).decode(),
                )
                inserted += 1
                if inserted == count:
                    break
        seconds = time.time() - first
    finally:
        await conn.close()
    return {"inserted": inserted, "seconds": round(seconds, 3)}


async def naive_phase(bench: Bench) -> dict[str, Any]:
    count = bench.settings.naive_messages
    client_id = f"bench-naive-{secrets.token_hex(2)}"
    async with bench.phase("naive consumer drain, 1 reading") as info:
        await bench.truncate()
        # The session first (3.1.1: clean_session=False keeps it), then the backlog.
        async with _naive_client(bench.address, client_id) as client:
            await client.subscribe(SUBSCRIPTION, qos=1)
        await bench.publish(1, count)
        result = await in_child(naive_consumer, bench.address, bench.ingest_dsn, client_id, count)
        await bench.forget_session(client_id)
        await bench.truncate()
    return {
        **info,
        "messages": count,
        **result,
        "msgs_per_s": round(result["inserted"] / result["seconds"]),
        "acks": "on receipt, before the INSERT (aiomqtt default)",
    }


# -- where the gateway's time goes ---------------------------------------------------------------

STAGES = (  # (stage, substrings of a profile entry's file or name), first match wins
    ("mqtt source", ("gateway/sources/mqtt", "gateway/sources/acks.py", "mqtt5")),
    ("decode", ("gateway/decoder.py", "orjson.loads", "fromtimestamp")),
    ("pipeline (route, batch, ack)", ("gateway/pipeline.py", "gateway/batching.py", "topics.py")),
    ("sink (COPY, write_log)", ("gateway/sinks/", "asyncpg", "_hashlib", "orjson.dumps")),
    ("metrics", ("prometheus_client", "gateway/metrics.py", "gateway/activity.py")),
    ("event loop", ("uvloop", "asyncio", "selectors", "<method 'run_forever'")),
)

KEY_FUNCTIONS = (
    "_parse",
    "receive",
    "submit",
    "decode",
    "_row",
    "add",
    "_write",
    "_copy",
    "copy_records_to_table",
    "_log_entry",
    "_acknowledge",
    "ack_many",
    "wrote",
)


def profile_drain(config: GatewayConfig, fleet: FleetOptions, top: int) -> dict[str, Any]:
    """In a child: the in-process gateway drains a backlog under cProfile."""
    return uvloop.run(_profile(config, fleet, top))


async def _profile(config: GatewayConfig, fleet: FleetOptions, top: int) -> dict[str, Any]:
    from gateway.app import Gateway

    gateway = Gateway(config)
    await gateway.start()
    await gateway.stop()  # the session exists now
    report = await Fleet(fleet).run()
    rows = report.expected()["rows"]
    gateway = Gateway(config)
    labels = {"role": INGEST_ROLE, "table": "ingest.telemetry"}
    profiler = cProfile.Profile()
    profiler.enable()
    started = time.perf_counter()
    await gateway.start()
    get = gateway.metrics.registry.get_sample_value
    # Polling the counter: the gateway offers no event for "this many rows committed".
    while (get("gateway_rows_written_total", labels) or 0) < rows:  # noqa: ASYNC110
        await asyncio.sleep(0.005)
    seconds = time.perf_counter() - started
    profiler.disable()
    await gateway.stop()
    entries = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = sum(tottime for _, _, tottime, _, _ in entries.values())
    named = []
    stages: dict[str, float] = {}
    for (path, line, name), (_, calls, tottime, cumtime, _) in entries.items():
        where = f"{path}:{line}({name})"
        stage = next((s for s, keys in STAGES if any(k in where for k in keys)), "other")
        stages[stage] = stages.get(stage, 0.0) + tottime
        named.append((tottime, cumtime, calls, where.replace(str(ROOT) + "/", "")))
    named.sort(reverse=True)
    key = {}
    for _, cumtime, calls, where in named:
        name = where.rsplit("(", 1)[1].rstrip(")")
        if (name in KEY_FUNCTIONS and where.startswith("gateway/")) or "copy_records" in where:
            key[where] = {"calls": calls, "cumtime_s": round(cumtime, 3)}
    return {
        "rows": rows,
        "messages": report.acked,
        "seconds_under_profiler": round(seconds, 3),
        "rows_per_s_under_profiler": round(rows / seconds),
        "profiled_cpu_s": round(total, 3),
        "tottime_share_by_stage": {
            stage: round(value / total, 3)
            for stage, value in sorted(stages.items(), key=lambda item: -item[1])
        },
        "top_tottime": [
            {
                "function": where,
                "calls": calls,
                "tottime_s": round(tottime, 3),
                "share": round(tottime / total, 3),
            }
            for tottime, _, calls, where in named[:top]
        ],
        "key_functions_cumtime": key,
    }


async def profile_phase(bench: Bench, readings: int, top: int) -> dict[str, Any]:
    count = bench.settings.messages[readings]
    client_id = f"bench-gw-profile-{readings}-{secrets.token_hex(2)}"
    options = FleetOptions(
        host=bench.broker.host,
        port=bench.broker.port,
        devices=bench.settings.devices,
        prefix="sensor-",
        password=bench.device_password,
        readings=readings,
        count=count,
    )
    async with bench.phase(f"profile gateway drain, {readings} reading(s)") as info:
        await bench.truncate()
        config = bench.gateway_config(client_id)
        result = await in_child(profile_drain, config, options, top)
        await bench.forget_session(client_id)
    return {**info, **result}


# -- routes with declared shapes, beside telemetry ----------------------------------------------


async def publish_shaped(bench: Bench, variant: Variant, per_device: int) -> None:
    """Queue `per_device` messages of the variant's stream from every device."""
    names = [f"sensor-{n:04d}" for n in range(bench.settings.devices)]
    publishers = [
        Publisher(
            name,
            bench.device_password,
            f"devices/{name}/{variant.stream}",
            variant.payload,
            window=100,
            count=per_device,
        )
        for name in names
    ]
    outcome = await publish_count(bench.broker.host, bench.broker.port, publishers)
    if outcome.acked != per_device * len(names) or outcome.refused:
        raise RuntimeError(f"{variant.name}: publishing went wrong: {outcome}")


async def first_receipt(gateway: GatewayProcess, timeout: float = 60) -> float:
    """Wall time the gateway was first seen holding a message (polled every 20 ms)."""
    deadline = time.monotonic() + timeout
    while await gateway.counter("gateway_messages_received_total") == 0:
        if time.monotonic() > deadline:
            raise RuntimeError("the gateway received nothing")
        await asyncio.sleep(0.02)
    return time.time()


async def state_changes(bench: Bench) -> int:
    """Rows inserted or updated in the state table so far (the statistics a backend sends as it
    exits: asked until two answers agree)."""
    query = (
        "SELECT coalesce(n_tup_ins + n_tup_upd, 0) FROM pg_stat_user_tables "
        "WHERE relid = $1::regclass"
    )
    last = -1
    for _ in range(10):
        (row,) = await bench.sql(query, STATE_TABLE)
        if row[0] == last:
            break
        last = row[0]
        await asyncio.sleep(0.3)
    return int(last)


async def shaped_gateway_drain(bench: Bench, variant: Variant) -> dict[str, Any]:
    per_device = bench.settings.shaped_messages // bench.settings.devices
    count = per_device * bench.settings.devices
    writes = count * variant.writes_per_message
    client_id = f"bench-gw-{variant.name}-{secrets.token_hex(2)}"
    async with bench.phase(f"gateway drain, {variant.name}") as info:
        await bench.truncate()
        async with running_gateway(bench, client_id, variant.routes) as gateway:
            await gateway.stop()  # the session exists now, and stays
        changed_before = await state_changes(bench)
        await publish_shaped(bench, variant, per_device)
        async with running_gateway(bench, client_id, variant.routes) as gateway:
            meter = bench.cpu_meter(gateway=gateway.pid)
            first = await first_receipt(gateway)
            await gateway.wait_rows(writes, timeout=300)
            cpu = meter.stop()
            memory = await gateway.stop()
        last = max(
            [
                (await bench.sql(f"SELECT max(pg_xact_commit_timestamp(xmin)) FROM {t}"))[0][0]
                for t in variant.tables
            ]
        )
        changed = await state_changes(bench) - changed_before
        (rows,) = await bench.sql(
            "SELECT (SELECT count(*) FROM ingest.telemetry) AS telemetry, "
            "(SELECT count(*) FROM ingest.environment) AS environment, "
            "(SELECT count(*) FROM ingest.device_state) AS states, "
            "(SELECT count(*) FROM ingest.device_state "
            " WHERE (extract(epoch FROM updated_at) * 1000)::int8 = $1) AS newest",
            newest_ts(per_device),
        )
        await bench.forget_session(client_id)
    seconds = last.timestamp() - first
    result: dict[str, Any] = {
        **info,
        "messages": count,
        "seconds": round(seconds, 3),
        "msgs_per_s": round(count / seconds),
        "rows": {k: rows[k] for k in ("telemetry", "environment", "states")},
        "rejected": memory["rejected"],
        "cpu_s": cpu,
        "cpu_us_per_msg": per_message(cpu, count),
        "gateway_peak_rss_mb": memory["peak_rss_mb"],
    }
    if variant.keeps_state:
        result["state"] = {
            "upserts_per_s": round(count / seconds),
            "rows_changed": changed,
            "out_of_order_sent": count // OUT_OF_ORDER,
            "devices_at_newest": rows["newest"],
        }
        if rows["newest"] != bench.settings.devices:
            raise RuntimeError(f"{variant.name}: {rows['newest']} devices hold the newest state")
    if "ingest.environment" in variant.tables:
        result["rows_per_s"] = round(rows["environment"] / seconds)
    return result


async def shaped_bare_drain(bench: Bench, variant: Variant) -> dict[str, Any]:
    per_device = bench.settings.shaped_messages // bench.settings.devices
    found = await drain_bare(
        bench,
        variant.name,
        f"bench-bare-{variant.name}-{secrets.token_hex(2)}",
        per_device * bench.settings.devices,
        lambda: publish_shaped(bench, variant, per_device),
        f"devices/+/{variant.stream}",
    )
    return {**found, "payload_bytes": len(variant.payload(0))}


def shaped_order(names: list[str], rounds: int) -> list[str]:
    """ABBA: every other round backwards, so drift of the machine falls on all alike."""
    return [n for r in range(rounds) for n in (names if r % 2 == 0 else names[::-1])]


async def shaped_runs(bench: Bench, names: list[str], rounds: int) -> dict[str, Any]:
    runs = []
    for name in shaped_order(names, rounds):
        variant = VARIANTS[name]
        bare = await shaped_bare_drain(bench, variant)
        gateway = await shaped_gateway_drain(bench, variant)
        runs.append({"variant": name, "bare": bare, "gateway": gateway})
        say(
            f"{name:10} gateway {gateway['msgs_per_s']:>8,} msg/s "
            f"{gateway['cpu_us_per_msg']['gateway']:>5} us/msg "
            f"(postgres {gateway['cpu_us_per_msg']['postgres']}); "
            f"bare {bare['msgs_per_s']:>8,} msg/s"
        )
    return {"order": [r["variant"] for r in runs], "runs": runs, "summary": shaped_summary(runs)}


def shaped_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per variant, the means of its drains; rates as shares of the bare subscriber's (drained
    just before each), CPU also against the telemetry variant's of this run."""

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    found: dict[str, Any] = {}
    for name in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == name]
        gateway = [r["gateway"] for r in mine]
        entry: dict[str, Any] = {
            "drains": len(mine),
            "msgs_per_s": round(mean([g["msgs_per_s"] for g in gateway])),
            "gateway_to_bare_rate": round(
                mean([r["gateway"]["msgs_per_s"] / r["bare"]["msgs_per_s"] for r in mine]), 3
            ),
            "gateway_cpu_us_per_msg": round(
                mean([g["cpu_s"]["gateway"] / g["messages"] * 1e6 for g in gateway]), 2
            ),
            "postgres_cpu_us_per_msg": round(
                mean([g["cpu_s"]["postgres"] / g["messages"] * 1e6 for g in gateway]), 2
            ),
            "bare_cpu_us_per_msg": round(
                mean(
                    [r["bare"]["cpu_s"]["subscriber"] / r["bare"]["messages"] * 1e6 for r in mine]
                ),
                2,
            ),
        }
        if "rows_per_s" in gateway[0]:
            entry["rows_per_s"] = round(mean([g["rows_per_s"] for g in gateway]))
        if "state" in gateway[0]:
            entry["upserts_per_s"] = round(mean([g["state"]["upserts_per_s"] for g in gateway]))
            entry["state_rows_changed"] = [g["state"]["rows_changed"] for g in gateway]
        found[name] = entry
    if "telemetry" in found:
        reference = found["telemetry"]
        for entry in found.values():
            for key in ("gateway_cpu_us_per_msg", "postgres_cpu_us_per_msg"):
                entry[f"{key}_vs_telemetry"] = (
                    round(entry[key] / reference[key], 2) if reference[key] else None
                )
    return found


# -- the run -------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def services(settings: Settings) -> AsyncIterator[Bench]:
    doc = example_roles()
    with tempfile.TemporaryDirectory(prefix="bench-mqtt-gateway-") as workdir:
        async with (
            Postgres(settings={"track_commit_timestamp": "on"}) as postgres,
            Mosquitto() as broker,
        ):
            names = [f"sensor-{n:04d}" for n in range(settings.devices)]
            ingest_dsn = await prepare_database(postgres, doc, names)
            password = secrets.token_urlsafe(12)
            broker.add_users([MqttUser(name, password) for name in names])
            yield Bench(postgres, broker, settings, password, ingest_dsn, Path(workdir))


def ratio(bare: float, gateway: float) -> float:
    return round(bare / gateway, 2) if gateway else float("inf")


def compare(results: dict[str, Any]) -> dict[str, Any]:
    """The figures against the goals; a mode that did not run is left out."""
    limit = GOALS["max_bare_to_gateway_ratio"]
    found: dict[str, Any] = {}
    met = True
    for shape, gateway in results["gateway"].items():
        bare = results["bare_subscriber"][shape]
        entry: dict[str, Any] = {}
        if "drain" in gateway:
            goal = GOALS[f"drain_rows_per_s_{shape}"]
            drain_ratio = ratio(bare["drain"]["msgs_per_s"], gateway["drain"]["msgs_per_s"])
            entry.update(
                drain_rows_per_s=gateway["drain"]["rows_per_s"],
                drain_goal_rows_per_s=goal,
                drain_goal_met=gateway["drain"]["rows_per_s"] >= goal,
                bare_to_gateway_drain=drain_ratio,
                within_2x_drain=drain_ratio <= limit,
            )
            met = met and entry["drain_goal_met"] and entry["within_2x_drain"]
        if "live" in gateway:
            live_ratio = ratio(bare["live"]["msgs_per_s"], gateway["live"]["msgs_per_s"])
            entry.update(bare_to_gateway_live=live_ratio, within_2x_live=live_ratio <= limit)
            met = met and entry["within_2x_live"]
        found[shape] = entry
    found["all_goals_met"] = met
    return found


async def run_profiles(settings: Settings, shapes: list[int], top: int) -> dict[str, Any]:
    results: dict[str, Any] = {
        "benchmark": "mqtt_gateway_profile",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "profile": {},
    }
    async with services(settings) as bench:
        for readings in shapes:
            found = await profile_phase(bench, readings, top)
            results["profile"][f"readings_{readings}"] = found
            say(f"-- profile, {readings} reading(s): {found['seconds_under_profiler']} s")
            for stage, share in found["tottime_share_by_stage"].items():
                say(f"  {share:6.1%}  {stage}")
            for entry in found["top_tottime"][:15]:
                say(f"  {entry['share']:6.1%}  {entry['calls']:>9}  {entry['function']}")
    return results


async def run(
    settings: Settings,
    shapes: list[int],
    modes: list[str],
    extras: bool,
    shaped: tuple[list[str], int] | None = None,
) -> dict[str, Any]:
    results: dict[str, Any] = {
        "benchmark": "mqtt_gateway",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": loadavg(),
        "settings": {
            "messages_per_drain": {str(k): v for k, v in settings.messages.items()},
            "messages_per_shaped_drain": settings.shaped_messages,
            "devices": settings.devices,
            "fleet_processes": settings.processes,
            "warmup_s": settings.warmup,
            "window_s": settings.window,
            "receive_maximum": settings.receive_maximum,
            "batching": "5000 rows, 4 MiB or 50 ms (default)",
            "postgres": "18 (embedded), fsync on, track_commit_timestamp on",
        },
        "gateway": {},
        "bare_subscriber": {},
    }
    started = time.monotonic()
    async with services(settings) as bench:
        for readings in shapes if {"drain", "live"} & set(modes) else []:
            shape = f"readings_{readings}"
            say(f"-- {readings} reading(s) per message")
            bare: dict[str, Any] = {}
            gateway: dict[str, Any] = {}
            if "drain" in modes:
                bare["drain"] = await bare_drain(bench, readings)
                say(f"bare drain      {bare['drain']['msgs_per_s']:>9,} msg/s")
                gateway["drain"] = await gateway_drain(bench, readings)
                say(
                    f"gateway drain   {gateway['drain']['msgs_per_s']:>9,} msg/s "
                    f"{gateway['drain']['rows_per_s']:>10,} rows/s"
                )
            if "live" in modes:
                bare["live"] = await bare_live(bench, readings)
                say(f"bare live       {bare['live']['msgs_per_s']:>9,} msg/s")
                gateway["live"] = await gateway_live(bench, readings)
                say(
                    f"gateway live    {gateway['live']['msgs_per_s']:>9,} msg/s "
                    f"{gateway['live']['rows_per_s']:>10,} rows/s"
                )
                half = gateway["live"]["msgs_per_s"] / 2
                gateway["latency"] = await gateway_latency(bench, readings, half)
                say(
                    f"latency at {half:,.0f} msg/s: p50 {gateway['latency']['p50_ms']} ms, "
                    f"p99 {gateway['latency']['p99_ms']} ms"
                )
            results["bare_subscriber"][shape] = bare
            results["gateway"][shape] = gateway
        if shaped is not None:
            say("-- routes with declared shapes, drains")
            results["shaped"] = await shaped_runs(bench, *shaped)
        if extras:
            results["copy_ceiling"] = {}
            for connections in (1, 2):
                copied = await copy_phase(bench, connections)
                results["copy_ceiling"][f"connections_{connections}"] = copied
                say(f"COPY, {connections} conn    {copied['rows_per_s']:>10,} rows/s")
            results["naive_consumer"] = await naive_phase(bench)
            say(f"naive consumer  {results['naive_consumer']['msgs_per_s']:>9,} msg/s")
    phases = [
        phase_result for shape in results["gateway"].values() for phase_result in shape.values()
    ]
    results["gateway_peak_rss_mb"] = max(
        (p.get("gateway_vm_hwm_mb", p.get("gateway_peak_rss_mb", 0)) for p in phases), default=0
    )
    results["comparison"] = compare(results)
    results["seconds"] = round(time.monotonic() - started, 1)
    results["loadavg_at_end"] = loadavg()
    return results


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=300_000, help="drain, 1-reading")
    parser.add_argument("--messages-10", type=int, default=100_000, help="drain, 10-reading")
    parser.add_argument("--readings", type=int, nargs="+", default=[1, 10], choices=[1, 10])
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["drain", "live"],
        choices=["drain", "live", "shaped"],
        help="live includes the latency phase at half the live rate; shaped drains the "
        "--variants (telemetry, a wide table, device state, telemetry + state)",
    )
    parser.add_argument(
        "--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), help="shaped"
    )
    parser.add_argument("--shaped-messages", type=int, default=100_000, help="shaped: per drain")
    parser.add_argument(
        "--shaped-rounds", type=int, default=2, help="shaped: rounds, every other one backwards"
    )
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--fleet-processes", type=int, default=2)
    parser.add_argument("--warmup", type=float, default=3.0, help="live: seconds before the window")
    parser.add_argument("--window", type=float, default=10.0, help="live: seconds measured")
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--receive-maximum", type=int, default=10_000)
    parser.add_argument("--copy-rows", type=int, default=1_000_000)
    parser.add_argument("--naive-messages", type=int, default=20_000)
    parser.add_argument(
        "--quiet",
        type=float,
        default=0.15,
        help="before each phase, wait for other processes to use less than this share of the "
        "CPUs (0: do not wait)",
    )
    parser.add_argument("--quiet-limit", type=float, default=30, help="seconds to wait for it")
    parser.add_argument("--no-extras", action="store_true", help="skip COPY and naive phases")
    parser.add_argument(
        "--scrape-interval",
        type=float,
        help="drain: count rows in the database, not on /metrics, and scrape /metrics every "
        "this many seconds meanwhile (0: never)",
    )
    parser.add_argument(
        "--profile",
        type=int,
        metavar="TOP",
        help="instead: profile the in-process gateway's drains (cProfile), show TOP functions",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    settings = Settings(
        messages={1: args.messages, 10: args.messages_10},
        devices=args.devices,
        processes=args.fleet_processes,
        warmup=args.warmup,
        window=args.window,
        latency_seconds=args.latency_seconds,
        receive_maximum=args.receive_maximum,
        copy_rows=args.copy_rows,
        naive_messages=args.naive_messages,
        quiet=args.quiet,
        quiet_limit=args.quiet_limit,
        scrape_interval=args.scrape_interval,
        shaped_messages=args.shaped_messages,
    )
    if args.profile:
        results = asyncio.run(run_profiles(settings, args.readings, args.profile))
    else:
        shaped = (args.variants, args.shaped_rounds) if "shaped" in args.modes else None
        results = asyncio.run(run(settings, args.readings, args.modes, not args.no_extras, shaped))
        summarise(results)
    json.dump(results, sys.stdout, default=str)
    sys.stdout.write("\n")


def summarise(results: dict[str, Any]) -> None:
    comparison = results["comparison"]
    for shape, entry in comparison.items():
        if not isinstance(entry, dict):
            continue
        parts = []
        if "drain_rows_per_s" in entry:
            verdict = "met" if entry["drain_goal_met"] else "MISSED"
            parts.append(
                f"drain {entry['drain_rows_per_s']:,} rows/s "
                f"(goal {entry['drain_goal_rows_per_s']:,}: {verdict}), "
                f"bare/gateway drain {entry['bare_to_gateway_drain']}x"
            )
        if "bare_to_gateway_live" in entry:
            parts.append(f"live {entry['bare_to_gateway_live']}x")
        say(f"{shape}: " + ", ".join(parts))
    say(
        f"gateway peak RSS {results['gateway_peak_rss_mb']} MB; all goals met: "
        f"{comparison['all_goals_met']}; {results['seconds']} s; load {results['loadavg_at_end']}"
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
