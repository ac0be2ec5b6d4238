"""`gateway identities ...`: manage machine identities from the command line.

Tables for people by default, `--json` for scripts. Every change is audited under `--actor`
(default: GATEWAY_ACTOR or the OS user).
"""

from __future__ import annotations

import argparse
import secrets
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import IO, Any

import asyncpg
import orjson

from gateway import trail
from gateway.cli.brokers import (
    EXIT_CHANGES_PENDING,
    add_broker_options,
    brokers_config,
    read_credentials,
)
from gateway.cli.database import add_dsn_options, resolve_dsn
from gateway.config import BrokersConfig
from gateway.db import connect
from gateway.identities.accounts import Credential, configured, write_credentials
from gateway.identities.importer import import_file
from gateway.identities.inventory import InventoryPlan, apply_inventory, plan_inventory
from gateway.identities.model import (
    KINDS,
    STATUSES,
    Identity,
    IdentityRetiredError,
    InvalidIdentityError,
)
from gateway.identities.reconcile import BrokerAccounts, reserved, sync_accounts
from gateway.identities.registry import IdentityDetails, Registry
from gateway.trail import default_actor

__all__ = ["ProgressLine", "parse_attributes", "register"]


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `identities` and its subcommands to the `gateway` parser."""
    database = argparse.ArgumentParser(add_help=False)
    add_dsn_options(database)
    # Only what changes something is audited, so only that takes an actor.
    changes = argparse.ArgumentParser(add_help=False, parents=[database])
    changes.add_argument(
        "--actor", default=None, help="who the audit log names (default: $GATEWAY_ACTOR or user)"
    )
    # With brokers configured, every change reaches the identity's broker accounts at once.
    add_broker_options(changes)
    identities = commands.add_parser(
        "identities", help="manage machine identities", description=__doc__
    )
    actions = identities.add_subparsers(dest="action", required=True, metavar="ACTION")

    add = actions.add_parser("add", parents=[changes], help="register one identity")
    add.add_argument("name")
    add.add_argument("--role", required=True, help="declared role name")
    add.add_argument("--kind", choices=KINDS, default="device")
    add.add_argument(
        "--attr",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="attribute with a string value, or KEY:=JSON for any JSON value (repeatable)",
    )
    add.set_defaults(handler=_add)

    imp = actions.add_parser(
        "import", parents=[changes], help="register many identities from CSV or JSON Lines"
    )
    imp.add_argument("file", type=Path, help="CSV (name,role[,kind][,attributes]) or JSON Lines")
    imp.add_argument(
        "--skip-existing",
        action="store_true",
        help="skip names already registered (left unchanged) instead of refusing the file",
    )
    imp.set_defaults(handler=_import)

    lst = actions.add_parser("list", parents=[database], help="list identities, by name")
    lst.add_argument("--role", help="only this role")
    lst.add_argument("--status", choices=STATUSES, help="only this status")
    lst.add_argument("--limit", type=_positive, default=100, help="page size (default 100)")
    lst.add_argument("--after", metavar="NAME", help="start after this name (next page)")
    lst.add_argument("--json", action="store_true", help="print JSON")
    lst.set_defaults(handler=_list, actor=None)

    show = actions.add_parser("show", parents=[database], help="one identity and its history")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=_show, actor=None)

    assign = actions.add_parser("assign", parents=[changes], help="give an identity another role")
    assign.add_argument("name")
    assign.add_argument("--role", required=True, help="declared role name")
    assign.set_defaults(handler=_assign)

    retire = actions.add_parser(
        "retire", parents=[changes], help="retire an identity for good (its accounts disabled)"
    )
    retire.add_argument("name")
    retire.set_defaults(handler=_retire)

    for name, handler, text in (
        ("plan", _inventory_plan, "the changes an inventory makes in its scope (exit 2 if any)"),
        ("apply", _inventory_apply, "make the registry's identities of a scope the inventory"),
    ):
        command = actions.add_parser(name, parents=[changes], help=text)
        command.add_argument(
            "--inventory", type=Path, required=True, help="CSV or JSON Lines, as for import"
        )
        command.add_argument(
            "--scope", required=True, help="the label the inventory governs, e.g. a service"
        )
        command.add_argument("--json", action="store_true", help="print JSON")
        if name == "apply":
            command.add_argument(
                "--expect", metavar="DIGEST", help="refuse unless the plan has this digest"
            )
        command.set_defaults(handler=handler)

    rotate = actions.add_parser(
        "rotate", parents=[changes], help="give an identity's broker accounts a new password"
    )
    rotate.add_argument("name")
    rotate.set_defaults(handler=_rotate)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parse_attributes(pairs: Sequence[str]) -> dict[str, Any]:
    """`KEY=VALUE` gives a string, `KEY:=JSON` any JSON value (as in httpie)."""
    attributes: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or key == ":":
            raise InvalidIdentityError(f"--attr {pair!r}: expected KEY=VALUE or KEY:=JSON")
        if key.endswith(":"):
            try:
                attributes[key[:-1]] = orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                raise InvalidIdentityError(f"--attr {pair!r}: not valid JSON ({exc})") from exc
        else:
            attributes[key] = value
    return attributes


async def _with_registry(
    args: argparse.Namespace, work: Callable[[Registry, asyncpg.Connection], Awaitable[int]]
) -> int:
    conn = await connect(resolve_dsn(args))
    try:
        return await work(Registry(conn, args.actor or default_actor()), conn)
    finally:
        await conn.close()


def _brokers(args: argparse.Namespace, *, creates: bool) -> BrokersConfig | None:
    """The brokers this change reaches, checked before the registry changes: accounts it
    creates need their passwords supplied or somewhere to write generated ones."""
    config = brokers_config(getattr(args, "config", None))
    if not configured(config):
        return None
    if creates and args.credentials_out is None and args.credentials_in is None:
        raise InvalidIdentityError(
            "brokers are configured: pass --credentials-out FILE for the new accounts' "
            "generated passwords, or --credentials-in FILE"
        )
    return config


def _refuse_reserved(config: BrokersConfig | None, names: Sequence[str]) -> None:
    """No identity may be named like an admin, gateway pod or unmanaged broker account: its
    commands would change an account that is not its own."""
    taken = sorted(set(names) & reserved(config)) if config is not None else []
    if taken:
        raise InvalidIdentityError(
            f"{taken[0]!r} is the name of an admin, gateway or unmanaged broker account: "
            "identities' commands do not change it"
        )


def _supplied_password(args: argparse.Namespace, name: str) -> str | None:
    """The password `--credentials-in` gives `name`; None when one is to be generated, which
    needs `--credentials-out` to be handed over."""
    supplied = read_credentials(args.credentials_in).get(name)
    if supplied is None and args.credentials_out is None:
        raise InvalidIdentityError(
            f"--credentials-in has no password for {name}, and there is no "
            "--credentials-out for a generated one"
        )
    return supplied


async def _follow(
    args: argparse.Namespace,
    registry: Registry,
    config: BrokersConfig | None,
    names: list[str],
    *,
    fresh: Sequence[str] = (),
) -> None:
    """Make the identities' broker accounts follow what the registry now says; those `fresh`
    (just added) get new passwords even where an account of their name was already there."""
    if config is None or not names:
        return
    conn = registry.connection
    plan = await sync_accounts(
        conn,
        config,
        registry.actor,
        names=names,
        supplied=read_credentials(args.credentials_in),
        credentials_out=args.credentials_out,
        fresh=fresh,
    )
    done = plan.actions
    if len(done) <= 10:
        for change in done:
            print(f"  {change}")
    else:
        print(f"  {len(done)} broker account changes")
    for report in plan.reports:
        print(f"  note: {report}")


async def _add(args: argparse.Namespace) -> int:
    attributes = parse_attributes(args.attr)

    brokers = _brokers(args, creates=True)
    _refuse_reserved(brokers, [args.name])
    if brokers is not None:
        _supplied_password(args, args.name)

    async def work(registry: Registry, conn: asyncpg.Connection) -> int:
        identity = await registry.add(args.name, args.role, args.kind, attributes)
        print(f"added {identity.name} ({identity.kind}) with role {identity.role}")
        await _follow(args, registry, brokers, [identity.name], fresh=[identity.name])
        return 0

    return await _with_registry(args, work)


async def _import(args: argparse.Namespace) -> int:
    brokers = _brokers(args, creates=True)

    async def work(registry: Registry, conn: asyncpg.Connection) -> int:
        progress = ProgressLine(sys.stderr)
        try:
            result = await import_file(
                conn,
                registry.actor,
                args.file,
                skip_existing=args.skip_existing,
                progress=progress,
            )
        finally:
            progress.finish()
        skipped = f" ({result.skipped} already registered, skipped)" if result.skipped else ""
        print(f"imported {result.imported} identities from {args.file}{skipped}")
        names = list(result.names)
        await _follow(args, registry, brokers, names, fresh=names)
        return 0

    return await _with_registry(args, work)


async def _list(args: argparse.Namespace) -> int:
    async def work(registry: Registry, conn: asyncpg.Connection) -> int:
        page = await registry.list(args.role, args.status, args.limit, args.after)
        total = await registry.count(args.role, args.status)
        next_after = page[-1].name if len(page) == args.limit else None
        if args.json:
            document = {
                "total": total,
                "identities": [identity.to_json() for identity in page],
                "next_after": next_after,
            }
            print(orjson.dumps(document).decode())
            return 0
        print_table(
            ["NAME", "KIND", "ROLE", "STATUS", "CREATED", "LAST SEEN"],
            [_list_row(identity) for identity in page],
        )
        print(f"{len(page)} shown, {total} in total")
        if next_after is not None:
            print(f"next page: --after {next_after}")
        return 0

    return await _with_registry(args, work)


async def _show(args: argparse.Namespace) -> int:
    async def work(registry: Registry, conn: asyncpg.Connection) -> int:
        details = await registry.show(args.name)
        if args.json:
            document = {
                **details.identity.to_json(),
                "activity": {
                    "rows_last_day": details.rows_last_day,
                    "rejects_last_day": details.rejects_last_day,
                },
                "history": [record.to_json() for record in details.history],
            }
            print(orjson.dumps(document, default=str).decode())
        else:
            print_details(details)
        return 0

    return await _with_registry(args, work)


async def _assign(args: argparse.Namespace) -> int:
    brokers = _brokers(args, creates=True)

    async def work(registry: Registry, conn: asyncpg.Connection) -> int:
        before = await registry.get(args.name)
        identity = await registry.assign(args.name, args.role)
        if before.role == identity.role:
            print(f"{identity.name} already has role {identity.role}; nothing changed")
        else:
            print(f"{identity.name}: role {before.role} -> {identity.role}")
        await _follow(args, registry, brokers, [identity.name])
        return 0

    return await _with_registry(args, work)


async def _retire(args: argparse.Namespace) -> int:
    brokers = _brokers(args, creates=False)

    async def work(registry: Registry, conn: asyncpg.Connection) -> int:
        try:
            identity = await registry.retire(args.name)
        except IdentityRetiredError:
            if brokers is None:
                raise
            # Retired before, perhaps with its broker accounts left behind by a failure:
            # retiring again still reaches them.
            identity = await registry.get(args.name)
            print(f"{identity.name} was already retired at {_when(identity.retired_at)}")
        else:
            print(f"retired {identity.name} at {_when(identity.retired_at)}")
        await _follow(args, registry, brokers, [identity.name])
        return 0

    return await _with_registry(args, work)


async def _rotate(args: argparse.Namespace) -> int:
    brokers = _brokers(args, creates=True)
    if brokers is None:
        raise InvalidIdentityError("no brokers configured: give --config with a [brokers] section")

    async def work(registry: Registry, conn: asyncpg.Connection) -> int:
        identity = await registry.get(args.name)
        if identity.status != "active":
            raise IdentityRetiredError(f"identity {identity.name!r} is retired")
        supplied = _supplied_password(args, identity.name)
        credential = Credential(identity.name, supplied or secrets.token_urlsafe(24))
        _refuse_reserved(brokers, [identity.name])
        async with BrokerAccounts(brokers) as accounts:
            # Written first: a failure half-way must not leave a password nobody has.
            if args.credentials_out is not None and supplied is None:
                write_credentials(args.credentials_out, {identity.name: credential})
            try:
                await accounts.rotate(identity.name, credential.password)
            except Exception as exc:
                # One broker may have the new password already: the trail sees the attempt.
                failed = {"password": "rotation failed", "failed": str(exc)}
                await _record_rotation(conn, registry.actor, identity.name, failed)
                raise
        await _record_rotation(conn, registry.actor, identity.name, {"password": "rotated"})
        print(f"rotated the broker password of {identity.name}")
        return 0

    return await _with_registry(args, work)


async def _record_rotation(
    conn: asyncpg.Connection, actor: str, name: str, outcome: dict[str, str]
) -> None:
    await trail.record(conn, actor, "identity.rotate", name, None, outcome)


async def _inventory_plan(args: argparse.Namespace) -> int:
    async def work(registry: Registry, conn: asyncpg.Connection) -> int:
        plan = await plan_inventory(conn, args.inventory, args.scope)
        _print_inventory(plan, args.json)
        return EXIT_CHANGES_PENDING if plan.changes else 0

    return await _with_registry(args, work)


async def _inventory_apply(args: argparse.Namespace) -> int:
    brokers = _brokers(args, creates=True)

    async def work(registry: Registry, conn: asyncpg.Connection) -> int:
        progress = ProgressLine(sys.stderr)
        try:
            plan = await apply_inventory(
                conn, args.inventory, args.scope, registry.actor, expect=args.expect,
                progress=progress,
            )  # fmt: skip
        finally:
            progress.finish()
        _print_inventory(plan, args.json)
        provisioned = [c.name for c in plan.changes if c.action == "provision"]
        names = [c.name for c in plan.changes]
        await _follow(args, registry, brokers, names, fresh=provisioned)
        return 0

    return await _with_registry(args, work)


def _print_inventory(plan: InventoryPlan, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps(plan.as_json(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(plan.render())


def _when(value: Any) -> str:
    return "-" if value is None else value.isoformat(timespec="seconds")


def _list_row(identity: Identity) -> list[str]:
    return [
        identity.name,
        identity.kind,
        identity.role,
        identity.status,
        _when(identity.created_at),
        _when(identity.last_seen),
    ]


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Columns padded to their widest cell; the last column is not padded."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        print("  ".join([*cells, row[-1]]))


def print_details(details: IdentityDetails) -> None:
    identity = details.identity
    fields = [
        ("name", identity.name),
        ("kind", identity.kind),
        ("role", identity.role),
        ("status", identity.status),
        ("attributes", orjson.dumps(dict(identity.attributes)).decode()),
        ("created", _when(identity.created_at)),
        ("retired", _when(identity.retired_at)),
        ("last seen", _when(identity.last_seen)),
        ("last day", f"{details.rows_last_day} rows, {details.rejects_last_day} rejects"),
    ]
    for label, value in fields:
        print(f"{label + ':':<12}{value}")
    if not details.history:
        return
    print("\nhistory (newest first):")
    print_table(
        ["AT", "ACTION", "ACTOR", "DB USER", "CHANGE"],
        [
            [
                _when(record.at),
                record.action,
                record.actor,
                record.db_user,
                _change(record.before, record.after),
            ]
            for record in details.history
        ],
    )


def _change(before: Any, after: Any) -> str:
    def show(value: Any) -> str:
        return "-" if value is None else orjson.dumps(value).decode()

    return f"{show(before)} -> {show(after)}"


class ProgressLine:
    """Import progress on a stream: a redrawn bar on a terminal, else a line every 10 %.

    Redraws only when the whole percentage changes, so it costs nothing next to the work.
    """

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._last: tuple[str, int] | None = None
        self._drawn = False

    def __call__(self, phase: str, done: int, total: int) -> None:
        percent = 100 * done // total if total else 100
        step = percent if self._tty else percent - percent % 10
        if self._last == (phase, step):
            return
        self._last = (phase, step)
        if self._tty:
            bar = "#" * (percent // 4)
            self._stream.write(f"\r{phase:<9} [{bar:<25}] {percent:3d}%  {done}/{total}")
            self._drawn = True
        else:
            self._stream.write(f"{phase} {step}%\n")
        self._stream.flush()

    def finish(self) -> None:
        """End the bar's line, so what follows starts on its own."""
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False
