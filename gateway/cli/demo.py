"""`gateway demo`: the whole product on one machine with nothing installed but the package.

It starts an embedded PostgreSQL and an MQTT broker (Mosquitto when installed, else the
pure-Python amqtt, reached over MQTT 3.1.1), applies the example roles, provisions a demo fleet,
runs the gateway and a simulated fleet (with a share of malformed and spoofed messages) under a
live progress line, and ends with what happened and where to look next.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from gateway.app import Gateway
from gateway.config import (
    BatchingConfig,
    DatabaseConfig,
    GatewayConfig,
    HttpConfig,
    MqttSourceConfig,
    Secret,
    SourcesConfig,
)
from gateway.fleet.mqtt import Fleet
from gateway.fleet.options import FleetOptions
from gateway.fleet.report import FleetReport
from gateway.migrate import migrate
from gateway.roles.apply import apply_roles
from gateway.roles.declaration import load_declaration
from gateway.services.amqtt import Amqtt
from gateway.services.mosquitto import Mosquitto, MqttBroker, mosquitto_binary
from gateway.services.postgres import Postgres

__all__ = ["DemoOptions", "run_demo"]

EXAMPLE_ROLES = Path(__file__).parents[2] / "config" / "roles.toml"
MQTT_PASSWORD_ENV = "GATEWAY_DEMO_MQTT_PASSWORD"


@dataclass(frozen=True)
class DemoOptions:
    devices: int = 50
    rate: float = 2000
    duration: float = 10
    readings: int = 1
    malformed: float = 0.02
    spoofed: float = 0.01
    roles_file: Path = EXAMPLE_ROLES
    hold: bool = False
    broker: str = "auto"  # mosquitto | amqtt | auto: Mosquitto when installed


def pick_broker(choice: str) -> MqttBroker:
    if choice == "mosquitto" or (choice == "auto" and mosquitto_binary() is not None):
        return Mosquitto()
    return Amqtt()


def say(text: str = "") -> None:
    print(text, flush=True)


async def run_demo(options: DemoOptions) -> int:
    doc = load_declaration(options.roles_file)
    for spec in doc.roles.values():
        if spec.password.env is not None:
            os.environ.setdefault(spec.password.env, secrets.token_urlsafe(16))
    chosen = pick_broker(options.broker)
    say(f"Starting an embedded PostgreSQL 18 and {chosen.name} ...")
    async with Postgres(settings={"track_commit_timestamp": "on"}) as postgres, chosen as broker:
        say(f"  PostgreSQL  {postgres.address.host}:{postgres.address.port}")
        say(
            f"  {broker.name:<10}  {broker.host}:{broker.port}, MQTT {broker.protocol} "
            "(ACL: devices publish only as themselves)"
        )
        conn = await asyncpg.connect(postgres.dsn)
        try:
            await migrate(conn)
            plan, version = await apply_roles(conn, doc, actor="demo")
            say(f"Applied {len(plan.changes)} role changes as version {version}.")
            names = [f"sensor-{i:04d}" for i in range(options.devices)]
            await conn.executemany(
                "INSERT INTO gateway.identities (name, role_id) "
                "SELECT $1, id FROM gateway.roles WHERE name = 'telemetry_ingest'",
                [(name,) for name in names],
            )
        finally:
            await conn.close()
        device_password = secrets.token_urlsafe(12)
        for name in names:
            broker.add_user(name, device_password)
        say(f"Provisioned {len(names)} devices (registry and broker accounts).")

        os.environ[MQTT_PASSWORD_ENV] = broker.gateway.password
        gateway = Gateway(demo_config(postgres, broker), actor="demo")
        await gateway.start()
        assert gateway.http is not None
        metrics_url = f"http://127.0.0.1:{gateway.http.port}/metrics"
        say(f"Gateway running: {metrics_url}\n")
        try:
            fleet = Fleet(
                FleetOptions(
                    host=broker.host,
                    port=broker.port,
                    devices=options.devices,
                    prefix="sensor-",
                    password=device_password,
                    rate=options.rate,
                    duration=options.duration,
                    readings=options.readings,
                    malformed=options.malformed,
                    spoofed=options.spoofed,
                    protocol=broker.protocol,
                )
            )
            report = await run_with_progress(fleet, postgres.dsn, gateway)
            await settle(postgres.dsn, report)
            await summarise(postgres.dsn, report)
            if options.hold:
                say(f"  psql '{postgres.dsn}'")
                say(f"  curl -s {metrics_url} | grep ^gateway_")
                say("\nServices stay up; press Ctrl-C to stop.")
                await asyncio.Event().wait()
            say("  gateway demo --hold keeps the services up to query them (psql, /metrics)")
        finally:
            await gateway.stop()
    return 0


def demo_config(postgres: Postgres, broker: MqttBroker) -> GatewayConfig:
    return GatewayConfig(
        database=DatabaseConfig(
            host=postgres.address.host,
            port=postgres.address.port,
            dbname="postgres",
            roles_file=EXAMPLE_ROLES,
        ),
        sources=SourcesConfig(
            mqtt=[
                MqttSourceConfig(
                    name=broker.name,
                    protocol=broker.protocol,
                    host=broker.host,
                    port=broker.port,
                    username=broker.gateway.username,
                    password=Secret(env=MQTT_PASSWORD_ENV),
                    client_id="gateway-demo",
                )
            ]
        ),
        batching=BatchingConfig(max_delay_ms=50),
        http=HttpConfig(host="127.0.0.1", port=0),
        activity_interval=1,
    )


async def run_with_progress(fleet: Fleet, dsn: str, gateway: Gateway) -> FleetReport:
    conn = await asyncpg.connect(dsn)
    started = time.monotonic()
    task = asyncio.create_task(fleet.run())
    # A live line on a terminal; one line every two seconds in a log.
    live = sys.stdout.isatty()
    last_rows, last_at = 0, started
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=0.5 if live else 2)
            progress = fleet.progress()
            rows = await conn.fetchval("SELECT count(*) FROM ingest.telemetry")
            rejects = await conn.fetchval("SELECT count(*) FROM ingest.rejects")
            now = time.monotonic()
            rate = (rows - last_rows) / max(now - last_at, 1e-6)
            last_rows, last_at = rows, now
            buffered = gateway.pipeline.buffered_rows if gateway.pipeline is not None else 0
            sys.stdout.write(
                ("\r" if live else "") + f"  {now - started:5.1f} s  published {progress.sent:>8,}"
                f"  refused by broker {progress.refused:>5,}  rows {rows:>8,} ({rate:>7,.0f}/s)"
                f"  rejects {rejects:>5,}  buffered {buffered:>6,} " + ("" if live else "\n")
            )
            sys.stdout.flush()
    finally:
        await conn.close()
        if live:
            say()
    return task.result()


async def settle(dsn: str, report: FleetReport, timeout: float = 30) -> None:
    """Wait until everything the broker accepted is written or rejected."""
    expected = report.expected()
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = await conn.fetchval("SELECT count(*) FROM ingest.telemetry")
            rejects = await conn.fetchval("SELECT count(*) FROM ingest.rejects")
            if rows >= expected["rows"] and rejects >= expected["malformed_messages"]:
                return
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


async def summarise(dsn: str, report: FleetReport) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        per_role = await conn.fetch(
            "SELECT role, target, sum(rows) AS rows, count(*) AS batches "
            "FROM gateway.write_log GROUP BY role, target ORDER BY role"
        )
        per_reason = await conn.fetch(
            "SELECT reason, count(*) AS n FROM ingest.rejects GROUP BY reason ORDER BY reason"
        )
        latency = await conn.fetchrow(
            """
            SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY ms) AS p
              FROM (SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin) - ts) * 1000 AS ms
                      FROM ingest.telemetry) AS latencies
            """
        )
    finally:
        await conn.close()
    expected = report.expected()
    say("\nSummary")
    say(
        f"  fleet        {report.sent:,} messages in {report.duration:.1f} s ({report.rate:,.0f}/s)"
    )
    for row in per_role:
        say(f"  written      {row['rows']:,} rows as {row['role']} into {row['target']}")
    say(f"  expected     {expected['rows']:,} rows")
    for row in per_reason:
        say(f"  rejected     {row['n']:,} x {row['reason']}")
    spoofed = report.kinds["spoofed"]
    if report.protocol == "5":
        say(f"  spoofing     {spoofed.sent:,} attempts, {spoofed.refused:,} refused by the broker")
    else:
        landed = sum(row["rows"] for row in per_role)
        verdict = "none got through" if landed == expected["rows"] else "SOME GOT THROUGH"
        say(
            f"  spoofing     {spoofed.sent:,} attempts, dropped by the broker (MQTT 3.1.1 "
            f"cannot refuse a publish): {verdict}"
        )
    if latency is not None and latency["p"] is not None:
        p50, p99 = latency["p"]
        say(f"  latency      p50 {p50:.0f} ms, p99 {p99:.0f} ms (device clock to commit)")
    say("\nWhere to look next")
    say("  README.md: running, roles and identities, delivery guarantees, reject reasons")
    say("  gateway roles plan / gateway audit / gateway identities list (set GATEWAY_ADMIN_DSN)")
    say("  ingest.telemetry, ingest.rejects, gateway.write_log, gateway.identity_activity")
