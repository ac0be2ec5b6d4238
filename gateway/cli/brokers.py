"""`gateway brokers plan|apply`: broker accounts made to follow the identity registry.

The brokers come from the gateway configuration's `[brokers]` section. New accounts get the
passwords given with `--credentials-in` (CSV `name,password`), or generated ones, which are
written only to `--credentials-out` (mode 0600) for handing to the devices: never printed,
never logged.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from pathlib import Path

from gateway.cli.database import add_dsn_options, resolve_dsn
from gateway.config import BrokersConfig, load_config
from gateway.db import connect
from gateway.errors import GatewayError
from gateway.identities.accounts import AccountPlan
from gateway.identities.reconcile import sync_accounts
from gateway.trail import default_actor

__all__ = [
    "CONFIG_ENV",
    "add_broker_options",
    "brokers_config",
    "read_credentials",
    "register",
]

CONFIG_ENV = "GATEWAY_CONFIG"
EXIT_CHANGES_PENDING = 2


def add_broker_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None,
        help="gateway configuration with a [brokers] section (default: $GATEWAY_CONFIG)",
    )
    parser.add_argument(
        "--credentials-in",
        type=Path,
        metavar="CSV",
        help="passwords to give new accounts (name,password); others are generated",
    )
    parser.add_argument(
        "--credentials-out",
        type=Path,
        metavar="CSV",
        help="where generated passwords of new accounts are written (mode 0600)",
    )


def brokers_config(path: Path | None) -> BrokersConfig:
    """The `[brokers]` section, or an empty one when no configuration is given."""
    return load_config(path).brokers if path is not None else BrokersConfig()


def read_credentials(path: Path | None) -> dict[str, str]:
    """`name,password` lines (a header line `name,password` is allowed)."""
    if path is None:
        return {}
    try:
        text = path.read_text()
    except OSError as exc:
        raise GatewayError(f"cannot read credentials {path}: {exc.strerror or exc}") from exc
    found = {}
    for number, row in enumerate(csv.reader(io.StringIO(text)), 1):
        if not row or row == ["name", "password"]:
            continue
        if len(row) != 2 or not row[0] or not row[1]:
            raise GatewayError(f"{path}:{number}: expected name,password")
        found[row[0]] = row[1]
    return found


async def run_plan(args: argparse.Namespace) -> int:
    plan = await _reconcile(args, apply=False)
    return EXIT_CHANGES_PENDING if plan.actions else 0


async def run_apply(args: argparse.Namespace) -> int:
    await _reconcile(args, apply=True)
    return 0


async def _reconcile(args: argparse.Namespace, *, apply: bool) -> AccountPlan:
    """The whole registry against the brokers: planned, and applied when asked."""
    config = brokers_config(args.config)
    _require(config)
    _check_pods(args.config, config)
    conn = await connect(resolve_dsn(args))
    try:
        plan = await sync_accounts(
            conn,
            config,
            getattr(args, "actor", None) or default_actor(),
            names=None,
            supplied=read_credentials(args.credentials_in),
            credentials_out=args.credentials_out,
            apply=apply,
            dynsec_file=args.dynsec_file,
        )
    finally:
        await conn.close()
    _print(plan, args.json)
    return plan


def _check_pods(path: Path | None, config: BrokersConfig) -> None:
    """A full apply disables every account that is not an identity's, a pod's or unmanaged:
    refuse it when the configuration's own MQTT sources log in as none of those."""
    if config.mosquitto is None or path is None:
        return
    known = {*config.mosquitto.gateway_clients, *config.mosquitto.unmanaged}
    for source in load_config(path).sources.mqtt:
        if source.username and source.username not in known:
            raise GatewayError(
                f"source {source.name} logs in as {source.username!r}, which neither "
                "brokers.mosquitto.gateway_clients nor brokers.mosquitto.unmanaged lists: "
                "apply would disable that account"
            )


def _require(config: BrokersConfig) -> None:
    if config.mosquitto is None and config.kafka is None:
        raise GatewayError(
            "no brokers configured: give --config with [brokers.mosquitto] or [brokers.kafka]"
        )


def _print(plan: AccountPlan, as_json: bool) -> None:
    if as_json:
        import orjson

        sys.stdout.write(orjson.dumps(plan.as_json(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(plan.render())


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    brokers = commands.add_parser(
        "brokers", help="broker accounts that follow the identity registry", description=__doc__
    ).add_subparsers(dest="brokers_command", required=True, metavar="ACTION")
    for name, handler, help_text in (
        ("plan", run_plan, f"show what apply would change (exit {EXIT_CHANGES_PENDING} if any)"),
        ("apply", run_apply, "make the brokers' accounts follow the registry"),
    ):
        command = brokers.add_parser(name, help=help_text)
        add_dsn_options(command)
        add_broker_options(command)
        command.add_argument(
            "--dynsec-file",
            type=Path,
            metavar="JSON",
            help="Mosquitto's accounts in the plugin's file, not the running broker, which must "
            "be stopped: how a fleet of thousands is loaded",
        )
        command.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "apply":
            command.add_argument("--actor", default=None, help="who the audit log names")
        command.set_defaults(handler=handler)
