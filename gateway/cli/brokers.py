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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway import trail
from gateway.config import BrokersConfig, load_config
from gateway.db import admin_dsn, connect
from gateway.errors import GatewayError
from gateway.identities.accounts import AccountPlan, BrokerAccounts, Credential
from gateway.identities.registry import Registry
from gateway.trail import default_actor

__all__ = [
    "CONFIG_ENV",
    "add_broker_options",
    "brokers_config",
    "read_credentials",
    "register",
    "sync_accounts",
    "write_credentials",
]

CONFIG_ENV = "GATEWAY_CONFIG"
EXIT_CHANGES_PENDING = 2
RECORDED_CHANGES = 1000


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


def write_credentials(path: Path, credentials: Mapping[str, Credential]) -> None:
    """Append to a file only its owner can read, created so before anything is in it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "w", newline="") as out:
        os.fchmod(out.fileno(), 0o600)
        writer = csv.writer(out)
        if out.tell() == 0:
            writer.writerow(["name", "password"])
        for credential in credentials.values():
            writer.writerow([credential.name, credential.password])


def _check_delivery(
    plan: AccountPlan, config: BrokersConfig, supplied: Mapping[str, str], out: Path | None
) -> None:
    """Refuse, before changing anything, to make passwords no one will be able to read."""
    if out is not None:
        return
    gateways = set(config.mosquitto.gateway_clients) if config.mosquitto else set()
    missing = sorted(
        {c.name for c in plan.actions if c.action == "create"} - supplied.keys() - gateways
    )
    if missing:
        raise GatewayError(
            f"{len(missing)} new broker account(s) need a password (e.g. {missing[0]}): pass "
            "--credentials-out FILE for generated ones, or --credentials-in FILE"
        )


async def sync_accounts(
    conn: Any,
    config: BrokersConfig,
    actor: str,
    *,
    names: list[str] | None,
    supplied: Mapping[str, str],
    credentials_out: Path | None,
    apply: bool = True,
) -> AccountPlan:
    """Plan (and apply) the brokers' side of the registry, recording what was done."""
    identities = await Registry(conn, actor).states(names)
    async with BrokerAccounts(config) as brokers:
        plan = await brokers.plan(identities, names)
        if not apply or not plan.actions:
            return plan
        _check_delivery(plan, config, supplied, credentials_out)
        created = await brokers.apply(plan, identities, supplied)
    generated = {n: c for n, c in created.items() if n not in supplied}
    if generated and credentials_out is not None:
        write_credentials(credentials_out, generated)
    await trail.record(
        conn,
        actor,
        "brokers.apply",
        "brokers",
        None,
        {
            "changes": [c.as_json() for c in plan.actions[:RECORDED_CHANGES]],
            "total": len(plan.actions),
        },
    )
    return plan


async def run_plan(args: argparse.Namespace) -> int:
    config = brokers_config(args.config)
    _require(config)
    conn = await connect(admin_dsn(args.dsn))
    try:
        plan = await sync_accounts(
            conn,
            config,
            default_actor(),
            names=None,
            supplied={},
            credentials_out=None,
            apply=False,
        )
    finally:
        await conn.close()
    _print(plan, args.json)
    return EXIT_CHANGES_PENDING if plan.actions else 0


async def run_apply(args: argparse.Namespace) -> int:
    config = brokers_config(args.config)
    _require(config)
    conn = await connect(admin_dsn(args.dsn))
    try:
        plan = await sync_accounts(
            conn,
            config,
            args.actor or default_actor(),
            names=None,
            supplied=read_credentials(args.credentials_in),
            credentials_out=args.credentials_out,
        )
    finally:
        await conn.close()
    _print(plan, args.json)
    return 0


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
        command.add_argument("--dsn", help="admin DSN (default: $GATEWAY_ADMIN_DSN)")
        add_broker_options(command)
        command.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "apply":
            command.add_argument("--actor", default=None, help="who the audit log names")
        command.set_defaults(handler=handler)
