"""The Kafka data plane end to end: the gateway from a Kafka topic into PostgreSQL, offsets
committed after the COPY holding their rows commits.

Measured, with single-reading records on a topic of `--partitions` partitions:

- *drain*: N records pre-produced by the Kafka fleet (`gateway.fleet.kafka`, whose own rate is
  reported), then the gateway joins a fresh consumer group and drains them; the time runs from
  its first record in hand (the rows' `received_at`) to the last commit
  (`pg_xact_commit_timestamp`), so start-up and the group join are not counted;
- *live* (with `--live-seconds`): the fleet offers 1.5 times the drain rate (as fast as it
  can would take a core from the gateway for records nobody reads in time) while the gateway
  consumes; committed rows are counted over a window that opens `--warmup` seconds after the
  first record arrived;
- *latency*: the fleet at half the drain rate; per row, commit time minus the producer's send
  time (`ts`, epoch ms), p50 and p99 (PostgreSQL runs with track_commit_timestamp);
- *profile*: the drain again under cProfile, by stage and by function;
- experiments: the drain with Python's default collector settings (what `Gateway.run`'s
  `gc.freeze()` and thresholds buy), and by two gateways each draining half the records from
  half the partitions (two pods once their group settled);
- the producer: the fleet with acks=all (the backlog), acks=1 and 64 KiB batches, against
  aiokafka's `send()` per record.

Beside it, the same way: a bare consumer (aiokafka `getmany`, then a commit of the explicit
offsets after each batch), the ceiling of the Kafka side, on both listeners (SASL/SCRAM and
PLAINTEXT: what authentication costs); and the ceiling of COPY alone (pre-built rows, 5000-row
batches, as `telemetry_ingest_login`, one and two connections). The gateway and the consumers
run in processes of their own on uvloop, the gateway in-process there exactly as `gateway run`
runs it. Each phase holds /tmp/gateway-bench.lock and records the load average. Prints one JSON
object on stdout and a summary on stderr.

    .venv/bin/python benchmarks/kafka_gateway.py [--records 500000] [--listener sasl]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import json
import logging
import os
import platform
import pstats
import resource
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import uvloop
from _harness import (
    INGEST_ROLE,
    ROLES_FILE,
    CpuMeter,
    copy_ceiling,
    example_roles,
    in_child,
    loadavg,
    phase,
    prepare_database,
)
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from gateway.config import (
    BatchingConfig,
    DatabaseConfig,
    GatewayConfig,
    HttpConfig,
    KafkaSourceConfig,
    Secret,
    SourcesConfig,
)
from gateway.fleet.kafka import run_kafka_fleet
from gateway.fleet.options import KafkaFleetOptions
from gateway.services.kafka import Kafka
from gateway.services.postgres import Postgres

ROOT = Path(__file__).resolve().parents[1]
KAFKA_PASSWORD_ENV = "GATEWAY_BENCH_KAFKA_PASSWORD"
ROWS = {"role": INGEST_ROLE, "table": "ingest.telemetry"}
USERS = {"gateway": secrets.token_urlsafe(12), "bridge": secrets.token_urlsafe(12)}

GOALS = {"drain_rows_per_s": 150_000, "max_bare_to_gateway_ratio": 2.0}

log = logging.getLogger("kafka_gateway")


@dataclass(frozen=True)
class Settings:
    """What one run does; every size is a command-line option."""

    records: int
    devices: int
    partitions: int
    listener: str
    live_seconds: float
    warmup: float
    latency_seconds: float
    copy_rows: int
    profile_records: int
    top: int
    quiet: float
    quiet_limit: float


@dataclass(frozen=True)
class KafkaAddress:
    """How a client reaches the broker on one listener, as one user (picklable, for children)."""

    bootstrap: str
    sasl: bool
    username: str
    password: str = field(repr=False)

    def client(self) -> dict[str, Any]:
        if not self.sasl:
            return {"bootstrap_servers": self.bootstrap}
        return {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "SCRAM-SHA-256",
            "sasl_plain_username": self.username,
            "sasl_plain_password": self.password,
        }

    def fleet(self, topic: str, devices: int, **options: Any) -> KafkaFleetOptions:
        sasl: dict[str, Any] = {}
        if self.sasl:
            sasl = {
                "security_protocol": "SASL_PLAINTEXT",
                "username": self.username,
                "password": self.password,
            }
        return KafkaFleetOptions(
            bootstrap_servers=self.bootstrap, topic=topic, devices=devices, **sasl, **options
        )


@dataclass
class Bench:
    """The services of one run and how to reach them."""

    postgres: Postgres
    kafka: Kafka
    settings: Settings
    ingest_dsn: str
    workdir: Path
    topics: int = 0

    def phase(self, name: str) -> contextlib.AbstractAsyncContextManager[dict[str, Any]]:
        return phase(name, quiet=self.settings.quiet, quiet_limit=self.settings.quiet_limit)

    def address(self, user: str, listener: str | None = None) -> KafkaAddress:
        sasl = (listener or self.settings.listener) == "sasl"
        bootstrap = self.kafka.sasl_bootstrap if sasl else self.kafka.bootstrap
        return KafkaAddress(bootstrap, sasl, user, USERS[user])

    def cpu_meter(self) -> CpuMeter:
        """CPU used from now on by the database and the broker."""
        pids = {}
        for name, service in (("postgres", self.postgres), ("kafka", self.kafka)):
            # The launchers keep their process private; the pid is all a meter needs.
            process = service._process
            assert process is not None
            pids[name] = process.process.pid
        meter = CpuMeter(pids)
        meter.start()
        return meter

    async def topic(self, purpose: str, partitions: int | None = None) -> str:
        """A fresh topic that the bridge may write and the gateway may read."""
        self.topics += 1
        name = f"bench-{purpose}-{self.topics}"
        await self.kafka.create_topic(name, partitions or self.settings.partitions)
        await self.kafka.allow("bridge", ["Write", "Describe"], topic=name)
        await self.kafka.allow("gateway", ["Read", "Describe"], topic=name)
        return name

    async def group(self, purpose: str) -> str:
        name = f"bench-{purpose}-{secrets.token_hex(3)}"
        await self.kafka.allow("gateway", ["Read"], group=name)
        return name

    async def produce(self, topic: str, **options: Any) -> dict[str, Any]:
        """The fleet in a child process; raises unless every record was acknowledged."""
        fleet = self.address("bridge").fleet(topic, self.settings.devices, **options)
        report: dict[str, Any] = await in_child(fleet_child, fleet)
        if not report["ok"]:
            raise RuntimeError(f"the fleet did not produce cleanly: {report['errors']}")
        return report

    def gateway_config(self, topic: str, group: str) -> GatewayConfig:
        address = self.address("gateway")
        os.environ[KAFKA_PASSWORD_ENV] = address.password
        source = KafkaSourceConfig(
            name="kafka",
            bootstrap_servers=address.bootstrap,
            security_protocol="SASL_PLAINTEXT" if address.sasl else "PLAINTEXT",
            username=address.username if address.sasl else None,
            password=Secret(env=KAFKA_PASSWORD_ENV) if address.sasl else None,
            group_id=group,
            topics=[topic],
            identity_from="key",
            trusted_producers=["User:bridge"],
        )
        return GatewayConfig(
            database=DatabaseConfig(
                host=self.postgres.address.host,
                port=self.postgres.address.port,
                dbname="postgres",
                roles_file=ROLES_FILE,
            ),
            sources=SourcesConfig(kafka=[source]),
            batching=BatchingConfig(),  # the shipped policy: 5000 rows, 4 MiB or 50 ms
            http=HttpConfig(host="127.0.0.1", port=0),  # several gateways may run at once
        )

    async def sql(self, query: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.postgres.dsn)
        try:
            rows: list[asyncpg.Record] = await conn.fetch(query, *args)
            return rows
        finally:
            await conn.close()

    async def truncate(self) -> None:
        await self.sql("TRUNCATE ingest.telemetry, ingest.rejects")

    async def committed(self, warmup: float = 0.0, window: float = 0.0) -> dict[str, Any]:
        """Rows in the table, first receipt, last commit, and the rows committed in the window
        that opens `warmup` seconds after the first receipt."""
        (row,) = await self.sql(
            """
            WITH t AS (SELECT received_at, pg_xact_commit_timestamp(xmin) AS c
                         FROM ingest.telemetry),
                 f AS (SELECT min(received_at) AS first FROM t)
            SELECT count(*) AS rows, min(t.received_at) AS first, max(t.c) AS last,
                   count(*) FILTER (WHERE t.c >= f.first + make_interval(secs => $1)
                                      AND t.c < f.first + make_interval(secs => $1 + $2))
                     AS in_window
              FROM t, f
            """,
            warmup,
            window,
        )
        return dict(row)

    async def wait_rows(self, expected: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            (row,) = await self.sql("SELECT count(*) AS n FROM ingest.telemetry")
            found = row["n"]
            if found >= expected:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{found} of {expected} rows after {timeout:.0f}s")
            await asyncio.sleep(0.25)


# -- children ------------------------------------------------------------------------------------


def fleet_child(options: KafkaFleetOptions) -> dict[str, Any]:
    """In a child: the fleet, as `gateway simulate --kafka` runs it; its JSON summary."""
    return uvloop.run(run_kafka_fleet(options)).as_json()


@dataclass(frozen=True)
class GatewayRun:
    """What a gateway child does: stop at `rows` rows written or when `stop` appears; with
    `top` > 0 under cProfile; with `default_gc`, Python's own collector settings instead of
    those `Gateway.run` sets (an experiment: what that tuning buys)."""

    config: GatewayConfig
    ready: str
    stop: str
    rows: int | None = None
    top: int = 0
    default_gc: bool = False


def gateway_child(run: GatewayRun) -> dict[str, Any]:
    """In a child: `Gateway.run()` on uvloop, which is all `gateway run` does."""
    return uvloop.run(_gateway(run))


async def _gateway(run: GatewayRun) -> dict[str, Any]:
    from gateway.app import Gateway

    gateway = Gateway(run.config)
    profiler = cProfile.Profile() if run.top else None
    cpu = time.process_time()
    if profiler is not None:
        profiler.enable()
    started = time.perf_counter()
    running = asyncio.create_task(gateway.run())
    while not (gateway.sources and all(gateway.readiness().values())):  # in the group
        if running.done():
            running.result()
            raise RuntimeError("the gateway stopped while starting")
        await asyncio.sleep(0.01)
    if run.default_gc:
        gc.unfreeze()
        gc.set_threshold(700, 10, 10)
    joined = time.perf_counter() - started
    await asyncio.to_thread(Path(run.ready).touch)
    get = gateway.metrics.registry.get_sample_value
    stop = Path(run.stop)
    # Polling the counter: the gateway offers no event for "this many rows committed".
    while True:
        written = get("gateway_rows_written_total", ROWS) or 0
        if run.rows is not None and written >= run.rows:
            break
        if run.rows is None and await asyncio.to_thread(stop.exists):
            break
        await asyncio.sleep(0.005 if run.rows is not None else 0.05)
    seconds = time.perf_counter() - started
    if profiler is not None:
        profiler.disable()
    gateway.request_stop()
    await running
    cpu = time.process_time() - cpu
    result = {
        "joined_s": round(joined, 2),
        "wall_s": round(seconds, 3),
        "cpu_s": round(cpu, 2),
        "rows_written": int(written),
        "rejected": int(get("gateway_messages_rejected_total", {}) or 0),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if profiler is not None:
        result.update(profile_summary(profiler, run.top))
    return result


def bare_child(address: KafkaAddress, topic: str, group: str, count: int) -> dict[str, Any]:
    """In a child: read and commit explicit offsets after each batch, nothing else."""
    return uvloop.run(_bare(address, topic, group, count))


async def _bare(address: KafkaAddress, topic: str, group: str, count: int) -> dict[str, Any]:
    defaults = KafkaSourceConfig(topics=[topic])  # the gateway's fetch sizes
    consumer = AIOKafkaConsumer(
        topic,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=defaults.max_poll_records,
        fetch_max_bytes=defaults.fetch_max_bytes,
        max_partition_fetch_bytes=defaults.max_partition_fetch_bytes,
        **address.client(),
    )
    await consumer.start()
    received = 0
    first = cpu = 0.0
    try:
        async with asyncio.timeout(600):
            while received < count:
                batches = await consumer.getmany(
                    timeout_ms=1000, max_records=defaults.max_poll_records
                )
                if not batches:
                    continue
                if not first:
                    first, cpu = time.time(), time.process_time()
                received += sum(len(records) for records in batches.values())
                await consumer.commit(
                    {tp: records[-1].offset + 1 for tp, records in batches.items()}
                )
        seconds = time.time() - first
        cpu = time.process_time() - cpu
    finally:
        await consumer.stop()
    return {"received": received, "seconds": round(seconds, 3), "cpu_s": round(cpu, 2)}


@contextlib.asynccontextmanager
async def running_gateways(
    bench: Bench, configs: list[GatewayConfig], rows: int | None = None, **options: Any
) -> AsyncIterator[list[asyncio.Future[dict[str, Any]]]]:
    """A gateway per config, each in a child; yields, once every one is in its group, the
    futures of their results. On exit the `stop` file stops those without a row count."""
    token = secrets.token_hex(3)
    stop = bench.workdir / f"{token}.stop"
    runs = [
        GatewayRun(config, str(bench.workdir / f"{token}-{n}.ready"), str(stop), rows, **options)
        for n, config in enumerate(configs)
    ]
    results = [asyncio.ensure_future(in_child(gateway_child, run)) for run in runs]
    try:
        for run, result in zip(runs, results, strict=True):
            while not await asyncio.to_thread(os.path.exists, run.ready):
                if result.done():
                    result.result()
                    raise RuntimeError("a gateway ended before joining its group")
                await asyncio.sleep(0.02)
        yield results
    finally:
        stop.touch()
        await asyncio.wait(results, timeout=600)


async def gateway_drain(
    bench: Bench, topics: list[str], default_gc: bool = False
) -> dict[str, Any]:
    """The backlog drained by one gateway per topic, each in a group of its own.

    With two topics of half the partitions and records each, it is the steady state of a
    two-member consumer group (two pods) without the join and the rebalance, which would
    otherwise fall in the middle of the drain.
    """
    count = bench.settings.records
    configs = [bench.gateway_config(topic, await bench.group("drain")) for topic in topics]
    name = f"gateway drain, {len(topics)} process(es){', default gc' if default_gc else ''}"
    async with bench.phase(name) as info:
        await bench.truncate()
        meter = bench.cpu_meter()
        share = count // len(topics)
        async with running_gateways(bench, configs, share, default_gc=default_gc) as running:
            pass
        results = [result.result() for result in running]
        cpu = {f"gateway{n}": r["cpu_s"] for n, r in enumerate(results)} | meter.stop()
        found = await bench.committed()
    if found["rows"] != count:
        raise RuntimeError(f"drain: {found['rows']} rows in the table, expected {count}")
    seconds = (found["last"] - found["first"]).total_seconds()
    return {
        **info,
        "processes": len(topics),
        "gc": "Python defaults" if default_gc else "as Gateway.run sets it",
        "rows": found["rows"],
        "seconds": round(seconds, 3),
        "rows_per_s": round(count / seconds),
        "group_join_s": [r["joined_s"] for r in results],
        "rejected": sum(r["rejected"] for r in results),
        "cpu_s": cpu,
        "cpu_us_per_row": per_row(cpu, count),
        "gateway_peak_rss_mb": [r["peak_rss_mb"] for r in results],
    }


async def produce_backlog(bench: Bench, topic: str, count: int) -> dict[str, Any]:
    async with bench.phase(f"produce {count} records") as info:
        report = await bench.produce(topic, count=count)
    return {**info, **fleet_summary(report)}


async def producer_phase(bench: Bench, count: int, label: str, **options: Any) -> dict[str, Any]:
    """The fleet with other settings, or a plain `send()` per record, to a scratch topic."""
    topic = await bench.topic("producer")
    async with bench.phase(f"producer: {label}") as info:
        if options.pop("naive", False):
            address = bench.address("bridge")
            result = await in_child(naive_producer_child, address, topic, count)
        else:
            result = fleet_summary(await bench.produce(topic, count=count, **options))
    return {**info, "producer": label, **result}


def naive_producer_child(address: KafkaAddress, topic: str, count: int) -> dict[str, Any]:
    """In a child: `await producer.send()` per record (acks=all, linger 0), then every ack."""
    return uvloop.run(_naive_producer(address, topic, count))


async def _naive_producer(address: KafkaAddress, topic: str, count: int) -> dict[str, Any]:
    from gateway.fleet.payloads import Payloads

    payloads = Payloads("naive", 1)
    names = [name.encode() for name in KafkaFleetOptions(devices=1000).names()]
    producer = AIOKafkaProducer(acks="all", **address.client())
    await producer.start()
    try:
        started = time.perf_counter()
        ts = time.time_ns() // 1_000_000
        futures = [
            await producer.send(topic, payloads.build(n % 1000, n, ts, False), key=names[n % 1000])
            for n in range(count)
        ]
        await asyncio.gather(*futures)
        seconds = time.perf_counter() - started
    finally:
        await producer.stop()
    return {"sent": count, "seconds": round(seconds, 3), "records_per_s": round(count / seconds)}


async def bare_drain(bench: Bench, topic: str, listener: str) -> dict[str, Any]:
    count = bench.settings.records
    group = await bench.group(f"bare-{listener}")
    async with bench.phase(f"bare consumer drain ({listener})") as info:
        meter = bench.cpu_meter()
        result = await in_child(bare_child, bench.address("gateway", listener), topic, group, count)
        cpu = {"consumer": result["cpu_s"], **meter.stop()}
    if result["received"] != count:
        raise RuntimeError(f"bare drain: {result['received']} of {count} records")
    return {
        **info,
        "listener": listener,
        "records": count,
        "seconds": result["seconds"],
        "records_per_s": round(count / result["seconds"]),
        "cpu_s": cpu,
        "cpu_us_per_record": per_row(cpu, count),
    }


async def gateway_live(bench: Bench, rate: float) -> dict[str, Any]:
    settings = bench.settings
    window = settings.live_seconds
    topic, group = await bench.topic("live"), await bench.group("live")
    async with bench.phase("gateway live") as info:
        await bench.truncate()
        async with running_gateways(bench, [bench.gateway_config(topic, group)]):
            meter = bench.cpu_meter()
            report = await bench.produce(topic, rate=rate, duration=settings.warmup + window + 1)
            cpu = meter.stop()
        found = await bench.committed(settings.warmup, window)
    return {
        **info,
        "offered_records_per_s": round(rate),
        "window_s": window,
        "rows_in_window": found["in_window"],
        "rows_per_s": round(found["in_window"] / window),
        "fleet": fleet_summary(report),
        "cpu_s_during_fleet_run": cpu,
    }


async def gateway_latency(bench: Bench, rate: float) -> dict[str, Any]:
    settings = bench.settings
    topic, group = await bench.topic("latency"), await bench.group("latency")
    async with bench.phase("gateway latency") as info:
        await bench.truncate()
        async with running_gateways(bench, [bench.gateway_config(topic, group)]):
            report = await bench.produce(topic, rate=rate, duration=settings.latency_seconds)
            await bench.wait_rows(report["expected"]["rows"], timeout=120)
        (row,) = await bench.sql(
            """
            SELECT count(*) AS rows,
                   percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY ms) AS p,
                   max(ms) AS max
              FROM (SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin) - ts) * 1000 AS ms
                      FROM ingest.telemetry) AS latencies
            """
        )
    p50, p99 = row["p"]
    return {
        **info,
        "target_records_per_s": round(rate),
        "fleet": fleet_summary(report),
        "rows": row["rows"],
        "p50_ms": round(p50, 1),
        "p99_ms": round(p99, 1),
        "max_ms": round(float(row["max"]), 1),
    }


async def profile_phase(bench: Bench) -> dict[str, Any]:
    count = bench.settings.profile_records
    topic, group = await bench.topic("profile"), await bench.group("profile")
    await bench.produce(topic, count=count)
    async with bench.phase("profile gateway drain") as info:
        await bench.truncate()
        config = bench.gateway_config(topic, group)
        async with running_gateways(bench, [config], count, top=bench.settings.top) as done:
            result = await asyncio.wait_for(asyncio.shield(done[0]), 600)
    wall = result.pop("wall_s")
    return {
        **info,
        "rows": count,
        "rows_per_s_under_profiler_incl_startup": round(count / wall),
        **result,
    }


async def copy_phase(bench: Bench, connections: int) -> dict[str, Any]:
    async with bench.phase(f"COPY ceiling, {connections} connection(s)") as info:
        await bench.truncate()
        result = await in_child(
            copy_ceiling, bench.ingest_dsn, bench.settings.copy_rows, connections
        )
        await bench.truncate()
    return {**info, **result}


# -- reporting -----------------------------------------------------------------------------------

STAGES = (  # (stage, substrings of a profile entry's file or name), first match wins
    ("kafka source (gateway)", ("gateway/sources/kafka.py", "gateway/sources/acks.py")),
    ("aiokafka fetch and parse", ("aiokafka", "_crecords", "kafka/")),
    ("decode", ("gateway/decoder.py", "orjson.loads", "fromtimestamp")),
    ("pipeline (route, batch, ack)", ("gateway/pipeline.py", "gateway/batching.py")),
    ("sink (COPY, write_log)", ("gateway/sinks/", "asyncpg", "_hashlib", "orjson.dumps")),
    ("metrics and activity", ("prometheus_client", "gateway/metrics.py", "gateway/activity.py")),
    ("event loop", ("uvloop", "asyncio", "selectors", "<method 'run_forever'")),
)


def profile_summary(profiler: cProfile.Profile, top: int) -> dict[str, Any]:
    entries = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = sum(tottime for _, _, tottime, _, _ in entries.values())
    named = []
    stages: dict[str, float] = {}
    for (path, line, name), (_, calls, tottime, cumtime, _) in entries.items():
        where = f"{path}:{line}({name})"
        stage = next((s for s, keys in STAGES if any(k in where for k in keys)), "other")
        stages[stage] = stages.get(stage, 0.0) + tottime
        short = where.replace(str(ROOT) + "/", "").replace(sys.prefix + "/", "")
        named.append((tottime, cumtime, calls, short))
    named.sort(reverse=True)
    by_cumtime = sorted(named, key=lambda entry: -entry[1])
    return {
        "profiled_cpu_s": round(total, 3),
        "tottime_share_by_stage": {
            stage: round(value / total, 3)
            for stage, value in sorted(stages.items(), key=lambda item: -item[1])
        },
        "top_tottime": [
            {"function": where, "calls": calls, "tottime_s": round(tottime, 3)}
            for tottime, _, calls, where in named[:top]
        ],
        "top_cumtime_gateway": [
            {"function": where, "calls": calls, "cumtime_s": round(cumtime, 3)}
            for _, cumtime, calls, where in by_cumtime
            if where.startswith("gateway/")
        ][:top],
    }


def fleet_summary(report: dict[str, Any]) -> dict[str, Any]:
    return {
        "sent": report["sent"],
        "acked": report["acked"],
        "seconds": report["duration"],
        "records_per_s": round(report["rate"]),
        "acks": report["acks"],
        "ok": report["ok"],
    }


def per_row(cpu: dict[str, float], rows: int) -> dict[str, float]:
    return {name: round(seconds / rows * 1e6, 2) for name, seconds in cpu.items()}


def compare(results: dict[str, Any]) -> dict[str, Any]:
    drain = results["gateway"]["drain"]["rows_per_s"]
    bare = results["bare_consumer"][results["listener"]]["records_per_s"]
    ratio = round(bare / drain, 2)
    found = {
        "drain_rows_per_s": drain,
        "drain_goal_rows_per_s": GOALS["drain_rows_per_s"],
        "drain_goal_met": drain >= GOALS["drain_rows_per_s"],
        "bare_to_gateway_drain": ratio,
        "within_2x": ratio <= GOALS["max_bare_to_gateway_ratio"],
        "copy_ceiling_rows_per_s": max(c["rows_per_s"] for c in results["copy_ceiling"]),
    }
    found["all_met"] = found["drain_goal_met"] and found["within_2x"]
    return found


# -- the run -------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def services(settings: Settings) -> AsyncIterator[Bench]:
    doc = example_roles()
    with tempfile.TemporaryDirectory(prefix="bench-kafka-gateway-") as workdir:
        async with (
            Postgres(settings={"track_commit_timestamp": "on"}) as postgres,
            Kafka(users=USERS) as kafka,
        ):
            names = KafkaFleetOptions(devices=settings.devices).names()
            ingest_dsn = await prepare_database(postgres, doc, names)
            await kafka.allow("gateway", ["Describe"], cluster=True)  # to read the ACLs
            yield Bench(postgres, kafka, settings, ingest_dsn, Path(workdir))


async def run(settings: Settings) -> dict[str, Any]:
    results: dict[str, Any] = {
        "benchmark": "kafka_gateway",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_start": loadavg(),
        "listener": settings.listener,
        "partitions": settings.partitions,
        "devices": settings.devices,
        "records": settings.records,
        "batching": "5000 rows, 4 MiB or 50 ms (shipped defaults)",
    }
    async with services(settings) as bench:
        topic = await bench.topic("drain")
        results["produce_backlog"] = await produce_backlog(bench, topic, settings.records)
        log.warning("produced: %s", results["produce_backlog"])
        sample = min(settings.records, 200_000)
        results["producer"] = [
            await producer_phase(bench, sample, "fleet, acks=1", acks=1),
            await producer_phase(
                bench, sample, "fleet, acks=all, 64 KiB batches", batch_bytes=65536
            ),
            await producer_phase(bench, sample, "aiokafka send() per record, acks=all", naive=True),
        ]
        results["copy_ceiling"] = [await copy_phase(bench, n) for n in (1, 2)]
        log.warning("copy: %s", [c["rows_per_s"] for c in results["copy_ceiling"]])
        other = "plaintext" if settings.listener == "sasl" else "sasl"
        results["bare_consumer"] = {
            listener: await bare_drain(bench, topic, listener)
            for listener in (settings.listener, other)
        }
        log.warning(
            "bare: %s",
            {k: v["records_per_s"] for k, v in results["bare_consumer"].items()},
        )
        drain = await gateway_drain(bench, [topic])
        log.warning("gateway drain: %s rows/s", drain["rows_per_s"])
        results["gateway"] = {"drain": drain}
        # Experiments for the report: what Gateway.run's collector tuning buys, and the
        # design's scale-out, two pods, on this machine.
        untuned = await gateway_drain(bench, [topic], default_gc=True)
        results["gateway"]["drain_default_gc"] = untuned
        log.warning("gateway drain, default gc: %s rows/s", untuned["rows_per_s"])
        halves = [await bench.topic("half", max(1, settings.partitions // 2)) for _ in "ab"]
        for half in halves:
            await bench.produce(half, count=settings.records // 2)
        two = await gateway_drain(bench, halves)
        results["gateway"]["drain_2_processes"] = two
        log.warning("gateway drain, 2 processes: %s rows/s", two["rows_per_s"])
        if settings.live_seconds:
            results["gateway"]["live"] = await gateway_live(bench, 1.5 * drain["rows_per_s"])
            log.warning("gateway live: %s rows/s", results["gateway"]["live"]["rows_per_s"])
        if settings.latency_seconds:
            latency = await gateway_latency(bench, drain["rows_per_s"] / 2)
            results["gateway"]["latency_at_half_rate"] = latency
            log.warning("latency: p50 %s ms, p99 %s ms", latency["p50_ms"], latency["p99_ms"])
        if settings.profile_records:
            results["profile"] = await profile_phase(bench)
    results["goals"] = compare(results)
    results["loadavg_end"] = loadavg()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=500_000, help="records in the drain")
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument(
        "--listener",
        choices=("sasl", "plaintext"),
        default="sasl",
        help="the gateway's and the fleet's listener (the bare consumer runs on both)",
    )
    parser.add_argument("--live-seconds", type=float, default=10.0, help="0: no live phase")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--latency-seconds", type=float, default=10.0, help="0: no latency phase")
    parser.add_argument("--copy-rows", type=int, default=500_000)
    parser.add_argument("--profile-records", type=int, default=200_000, help="0: no profile")
    parser.add_argument("--top", type=int, default=25, help="functions listed in the profile")
    parser.add_argument(
        "--quiet", type=float, default=0.0, help="wait until others use less than this CPU share"
    )
    parser.add_argument("--quiet-limit", type=float, default=30.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    settings = Settings(**{k: v for k, v in vars(args).items()})
    # The launchers spawn with `user=` on the default loop; measured work runs in children.
    results = asyncio.run(run(settings))
    json.dump(results, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
