"""The gateway's memory while PostgreSQL is down and devices send the largest payloads the broker
allows: peak resident size of `gateway run` against the bound its configuration implies.

`gateway run` (default batching and limits) starts against Mosquitto (the shipped limits) and
PostgreSQL; once it is idle, PostgreSQL stops; `--devices` devices then publish QoS 1 payloads
just under `limits.max_payload_bytes` as fast as the broker takes them, for `--seconds`. The
gateway's VmRSS is sampled every 0.1 s (and VmHWM read at the end). Then `--big` messages of
`--big-mb` MB each, one connection each, over the broker's packet limit: what the broker does with
them is reported. Then PostgreSQL starts again and the rows are counted against what the broker
acknowledged (a broker drops what exceeds a session's queue limits: that is reported too).

The bound is the README's formula (`stated_bound`), from the configuration: the idle process,
batching.max_buffered_rows rows of the size measured here, twice the payload bytes the engine may
hold (batching.max_buffered_bytes and one open batch per route, and the rows' text built from
them), what the MQTT v5 client may have read and not handed over (8 MiB and one packet), and the
caches keyed by what senders choose (topic claims, activity, reject budgets). Payload shapes:
`padded` is one reading and a field the decoder ignores (bytes held, few rows); `batch` is a
batch of small readings (rows held). Prints one JSON object on stdout.

    .venv/bin/python benchmarks/memory_bound.py [--shape padded|batch] [--seconds 40]
        [--devices 4] [--receive-maximum N] [--big 60] [--big-mb 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import re
import secrets
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import asyncpg
from _harness import (
    ROLES_FILE,
    MemorySampler,
    example_roles,
    loadavg,
    memory_kb,
    prepare_database,
    print_report,
)
from _publisher import Outcome, Publisher, connect, publish_for
from mqtt_gateway import MQTT_PASSWORD_ENV, GatewayProcess

from gateway import pgtime
from gateway.config import (
    BatchingConfig,
    DatabaseConfig,
    GatewayConfig,
    HttpConfig,
    LimitsConfig,
    MqttSourceConfig,
    Secret,
    SourcesConfig,
)
from gateway.decoder import DecodeLimits, decode
from gateway.services._process import free_port
from gateway.services.mosquitto import BROKER_LIMITS, Mosquitto, MqttUser
from gateway.services.postgres import Postgres
from gateway.sources.mqtt.options import MqttOptions, packet_limit

MIB = 1024 * 1024
LIMITS = LimitsConfig()
BATCHING = BatchingConfig()
PAYLOAD_BYTES = LIMITS.max_payload_bytes - 64  # just under the limit


def payload(shape: str) -> bytes:
    """One payload of the shape, PAYLOAD_BYTES long, with a current timestamp."""
    ts = int(time.time() * 1000)
    if shape == "padded":
        head = b'{"ts":%d,"metric":"temperature","value":21.5,"tags":{"site":"s-1"},"pad":"' % ts
        return head + b"x" * (PAYLOAD_BYTES - len(head) - 2) + b'"}'
    reading = b'{"metric":"temperature","value":21.5,"tags":{"site":"s-1","line":"l-07"}}'
    head = b'{"ts":%d,"readings":[' % ts
    count = (PAYLOAD_BYTES - len(head) - 2) // (len(reading) + 1)
    body = head + b",".join([reading] * count) + b"]}"
    return body + b" " * (PAYLOAD_BYTES - len(body))  # JSON allows trailing whitespace


def row_bytes(shape: str) -> dict[str, Any]:
    """Bytes per row held: a synthetic row tuple, and the rows `decode` makes of the payload."""
    now = pgtime.now()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    identity = "sensor-0000"  # one object per message, shared by its rows
    rows = [
        (now + n, identity, f"metric-{n % 7}", n * 0.5, '{"site":"s-1"}', now)
        for n in range(100_000)
    ]
    synthetic = (tracemalloc.get_traced_memory()[0] - base) / len(rows)
    del rows
    data = payload(shape)
    base = tracemalloc.get_traced_memory()[0]
    decoded = [decode(data, identity, now, DecodeLimits(), False) for _ in range(20)]
    made = sum(len(r) for r in decoded)
    per_row = (tracemalloc.get_traced_memory()[0] - base) / made
    tracemalloc.stop()
    return {
        "synthetic_row_bytes": round(synthetic),
        "synthetic_row": "(int ts, str identity shared, str metric, float, str tags, int)",
        "decoded_rows_per_message": made // len(decoded),
        "decoded_row_bytes": round(per_row),
    }


def gateway_config(
    postgres: Postgres, broker: Mosquitto, receive_maximum: int | None
) -> GatewayConfig:
    os.environ[MQTT_PASSWORD_ENV] = broker.gateway.password
    extra = {} if receive_maximum is None else {"receive_maximum": receive_maximum}
    return GatewayConfig(
        database=DatabaseConfig(
            host=postgres.address.host,
            port=postgres.address.port,
            dbname="postgres",
            roles_file=ROLES_FILE,
        ),
        sources=SourcesConfig(
            mqtt=[
                MqttSourceConfig(
                    name="mosquitto",
                    host=broker.host,
                    port=broker.port,
                    username=broker.gateway.username,
                    password=Secret(env=MQTT_PASSWORD_ENV),
                    client_id="bench-memory",
                    **extra,
                )
            ]
        ),
        batching=BatchingConfig(),
        http=HttpConfig(host="127.0.0.1", port=free_port()),
    )


async def count_rows(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM ingest.telemetry"))
    finally:
        await conn.close()


async def send_big(broker: Mosquitto, user: MqttUser, count: int, size: int) -> dict[str, Any]:
    """Each message on a connection of its own: the broker hangs up on a packet over its limit."""
    data = b'{"pad":"' + b"x" * (size - 10) + b'"}'
    ends: dict[str, int] = {}
    total = Outcome()
    for _ in range(count):
        publisher = Publisher(
            user.username,
            user.password,
            f"devices/{user.username}/telemetry",
            lambda _n: data,
            window=1,
        )
        try:
            await connect(broker.host, broker.port, publisher)
        except (OSError, RuntimeError) as exc:
            ends[f"connect failed: {exc}"] = ends.get(f"connect failed: {exc}", 0) + 1
            continue
        publisher.start()
        publisher.stop()  # one message only: the window of 1 sent it
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(publisher.closed), 5)
        ended = publisher.outcome.disconnect or "still connected after 5 s"
        if publisher.transport is not None:
            publisher.transport.close()
        ends[ended] = ends.get(ended, 0) + 1
        total.merge(publisher.outcome)
    return {
        "messages": count,
        "bytes_each": len(data),
        "acked": total.acked,
        "refused": dict(total.refused),
        "connection_ends": ends,
    }


class Timeline:
    """The gateway's RSS and buffer gauges every `every` seconds."""

    def __init__(self, gateway: GatewayProcess, started: float, every: float = 2.0) -> None:
        self.gateway, self.started, self.every = gateway, started, every
        self.points: list[dict[str, float]] = []
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            point = {
                "t": round(time.monotonic() - self.started, 1),
                "rss_mb": round(memory_kb(self.gateway.pid).get("VmRSS", 0) / 1024, 1),
                "held_mb": round(await self.gateway.counter("gateway_buffer_held_bytes") / MIB, 1),
                "held_rows": await self.gateway.counter("gateway_buffer_held_rows"),
                "received": await self.gateway.counter("gateway_messages_received_total"),
            }
            self.points.append(point)
            await asyncio.sleep(self.every)

    async def stop(self) -> list[dict[str, float]]:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        return self.points


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = row_bytes(args.shape)
    doc = example_roles()
    names = [f"sensor-{n:04d}" for n in range(args.devices)]
    password = secrets.token_urlsafe(12)
    results: dict[str, Any] = {
        "benchmark": "memory_bound",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": loadavg(),
        "shape": args.shape,
        "payload_bytes": len(payload(args.shape)),
        "devices": args.devices,
        "publish_seconds": args.seconds,
        "device_window": args.window,
        "broker_limits": BROKER_LIMITS,
        "row_size": sizes,
    }
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as workdir:
        async with Postgres() as postgres, Mosquitto() as broker:
            await prepare_database(postgres, doc, names)
            broker.add_users([MqttUser(name, password) for name in names])
            config = gateway_config(postgres, broker, args.receive_maximum)
            receive_maximum = config.sources.mqtt[0].receive_maximum
            packet = packet_limit(config.limits.max_payload_bytes)
            rows_bytes = config.batching.max_buffered_rows * sizes["decoded_row_bytes"]
            gateway = GatewayProcess(config, Path(workdir) / "gateway.log")
            await gateway.start()
            mosquitto_pid = broker._process.process.pid  # type: ignore[union-attr]
            await asyncio.sleep(3)
            idle = memory_kb(gateway.pid)
            await postgres.stop()
            started = time.monotonic()
            timeline = Timeline(gateway, started)
            sampler = MemorySampler(gateway.pid)
            sampler.start()
            publishers = [
                Publisher(
                    name,
                    password,
                    f"devices/{name}/telemetry",
                    lambda _n, s=args.shape: payload(s),
                    args.window,
                )
                for name in names
            ]
            outcome = await publish_for(broker.host, broker.port, publishers, args.seconds)
            await asyncio.sleep(3)  # what arrived settles
            held = {
                "held_bytes_mb": round(await gateway.counter("gateway_buffer_held_bytes") / MIB, 1),
                "held_rows": await gateway.counter("gateway_buffer_held_rows"),
                "received_messages": await gateway.counter("gateway_messages_received_total"),
            }
            flood = await sampler.stop()
            mosquitto_flood = memory_kb(mosquitto_pid)
            big_sampler = MemorySampler(gateway.pid)
            big_sampler.start()
            big = await send_big(
                broker, MqttUser(names[0], password), args.big, args.big_mb * 10**6
            )
            big["gateway_during"] = await big_sampler.stop()
            await postgres.start()
            landed_started = time.monotonic()
            expected_rows = outcome.acked * sizes["decoded_rows_per_message"]
            last, stable_since = -1.0, time.monotonic()
            while time.monotonic() - stable_since < 15 and time.monotonic() - landed_started < 900:
                written = await gateway.counter("gateway_rows_written_total")
                if written != last:
                    last, stable_since = written, time.monotonic()
                if written >= expected_rows:
                    break
                await asyncio.sleep(1)
            drain_s = time.monotonic() - landed_started
            final = memory_kb(gateway.pid)
            points = await timeline.stop()
            stopped = await gateway.stop()
            rows = await count_rows(postgres.dsn)
            log = broker.log_path.read_text(errors="replace")
            drops = re.findall(r"Outgoing messages are being dropped for client (\S+)", log)
            too_large = len(re.findall(r"(?i)packet too large|exceeded|maximum packet", log))
    window_bytes = receive_maximum * packet
    results.update(
        receive_maximum=receive_maximum,
        receive_maximum_is_default=args.receive_maximum is None,
        packet_limit=packet,
        idle_rss_mb=round(idle.get("VmRSS", 0) / 1024, 1),
        peak_rss_mb=flood["peak_rss_mb"],
        vm_hwm_mb_after_flood=flood["vm_hwm_mb"],
        vm_hwm_mb_at_end=round(final.get("VmHWM", 0) / 1024, 1),
        held_after_flood=held,
        mosquitto_after_flood_mb={k: round(v / 1024, 1) for k, v in mosquitto_flood.items()},
        bound_mb=stated_bound(config, idle.get("VmRSS", 0) * 1024, rows_bytes, packet),
        # What the in-flight window alone would allow, were the gateway to read it all: it
        # stops reading at its byte bound, so this stays in the broker.
        inflight_window_mb=round(window_bytes / MIB, 1),
        publish=asdict_outcome(outcome),
        big_messages=big,
        after_restart={
            "drain_s": round(drain_s, 1),
            "rows_in_table": rows,
            "rows_expected_from_acked": expected_rows,
            "messages_landed": rows // sizes["decoded_rows_per_message"],
            "messages_acked_by_broker": outcome.acked,
            "broker_dropped_notices_for": sorted(set(drops)),
            "broker_log_lines_about_size": too_large,
            "gateway_rejected": stopped["rejected"],
        },
        timeline=points,
        loadavg_at_end=loadavg(),
    )
    return results


def asdict_outcome(outcome: Outcome) -> dict[str, Any]:
    return {
        "sent": outcome.sent,
        "acked": outcome.acked,
        "refused": dict(outcome.refused),
        "unanswered": outcome.unanswered,
    }


# The caches keyed by what senders choose, at their worst (README: "Memory, bounded in bytes").
CACHES_MB = {"topic_claims": 36, "activity": 28, "reject_budgets": 5}
MQTT_INBOX = MqttOptions.max_buffered_bytes


def stated_bound(
    config: GatewayConfig, idle: int, rows_bytes: int, packet: int
) -> dict[str, float]:
    """The README's worst case for one MQTT v5 source and one route, its terms in MB."""
    batching = config.batching
    routes = len(config.routes)
    terms = {
        "idle": idle / MIB,
        "rows": rows_bytes / MIB,
        "payloads_and_their_text": 2
        * (batching.max_buffered_bytes + (routes + 1) * batching.max_bytes)
        / MIB,
        "mqtt_read_not_taken": (MQTT_INBOX + packet) / MIB,
        **CACHES_MB,
    }
    rounded = {name: round(value, 1) for name, value in terms.items()}
    rounded["total"] = round(sum(terms.values()), 1)
    return rounded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=["padded", "batch"], default="padded")
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--window", type=int, default=16, help="unacked publishes per device")
    parser.add_argument(
        "--receive-maximum", type=int, default=None, help="the gateway's (default: the config's)"
    )
    parser.add_argument("--big", type=int, default=60, help="messages over the packet limit")
    parser.add_argument("--big-mb", type=int, default=10)
    print_report(run, parser.parse_args())


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
