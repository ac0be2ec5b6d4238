"""`gateway migrate`, `roles plan|apply|show`, `audit [verify]`: the schema and roles as code."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any

import orjson

from gateway.cli.brokers import CONFIG_ENV
from gateway.cli.database import add_dsn_options, resolve_dsn
from gateway.config import BrokersConfig, load_config
from gateway.db import connect
from gateway.identities.accounts import configured
from gateway.identities.reconcile import sync_accounts
from gateway.migrate import migrate
from gateway.roles.apply import apply_roles, managed_schemas, plan_roles
from gateway.roles.audit import (
    PRIVILEGED_STALE_DAYS,
    STALE_PAGE,
    WRITE_STALE_DAYS,
    Severity,
    StalePage,
    broker_findings,
    kafka_claim_findings,
    run_audit,
    stale_identities,
    stale_thresholds,
)
from gateway.roles.catalog import read_catalog
from gateway.roles.declaration import load_declaration
from gateway.roles.guards import ALLOW_DROP_FLAG
from gateway.roles.plan import PlanError
from gateway.roles.state import desired_state
from gateway.route_checks import check_routes
from gateway.trail import default_actor
from gateway.trail_verify import verify

__all__ = ["register"]

ROLES_ENV = "GATEWAY_ROLES_FILE"
EXIT_CHANGES_PENDING = 2
EXIT_FINDINGS = 3


def add_roles_options(parser: argparse.ArgumentParser) -> None:
    add_dsn_options(parser)
    parser.add_argument(
        "--roles",
        type=Path,
        default=Path(os.environ.get(ROLES_ENV, "config/roles.toml")),
        help="roles declaration (default: $GATEWAY_ROLES_FILE or config/roles.toml)",
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _digest(text: str) -> str:
    """A reviewed plan's digest; surrounding whitespace forgiven, as a file or ConfigMap value
    usually ends in a newline."""
    digest = text.strip()
    if not re.fullmatch(r"[0-9a-f]{16}", digest):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a plan digest (16 hex digits, printed by `gateway roles plan`)"
        )
    return digest


def emit_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")


async def run_migrate(args: argparse.Namespace) -> int:
    conn = await connect(resolve_dsn(args))
    try:
        applied = await migrate(conn)
    finally:
        await conn.close()
    if applied:
        for migration in applied:
            print(f"applied {migration.version:03d} {migration.name}")
    else:
        print("schema is up to date")
    return 0


async def run_plan(args: argparse.Namespace) -> int:
    doc = load_declaration(args.roles)
    config = load_config(args.config) if args.config is not None else None
    conn = await connect(resolve_dsn(args))
    try:
        # Routes the tables or the declared roles cannot take would only fail once running.
        problems = await check_routes(conn, config, doc) if config is not None else []
        if problems:
            for path, problem in problems:
                print(f"gateway: {args.config}: {path}: {problem}", file=sys.stderr)
            return 1
        plan = await plan_roles(conn, doc)
    finally:
        await conn.close()
    if args.json:
        emit_json(plan.as_json())
    else:
        print(plan.render())
        if not plan.empty:
            print(f"\nApply exactly this plan with: gateway roles apply --expect {plan.digest}")
    return 0 if plan.empty else EXIT_CHANGES_PENDING


async def run_apply(args: argparse.Namespace) -> int:
    doc = load_declaration(args.roles)
    conn = await connect(resolve_dsn(args))
    try:
        plan, version = await apply_roles(
            conn,
            doc,
            actor=args.actor,
            expect=args.expect,
            allow_drop_with_identities=args.allow_drop_with_identities,
        )
    finally:
        await conn.close()
    if args.json:
        emit_json({**plan.as_json(), "version": version})
    elif version is None:
        print(plan.render())
    else:
        print(plan.render())
        print(f"\nApplied as version {version} of the roles (gateway.role_changes).")
    return 0


async def run_show(args: argparse.Namespace) -> int:
    doc = load_declaration(args.roles)
    if args.role is not None and args.role not in doc.roles:
        raise PlanError(f"role {args.role!r} is not declared (declared: {', '.join(doc.roles)})")
    names = [args.role] if args.role else list(doc.roles)
    want = desired_state(doc)
    conn = await connect(resolve_dsn(args))
    try:
        live = await read_catalog(conn, want.roles, managed_schemas(doc))
        counts = {
            row["role_id"]: (row["active"], row["retired"])
            for row in await conn.fetch(
                "SELECT role_id, count(*) FILTER (WHERE status = 'active') AS active, "
                "count(*) FILTER (WHERE status = 'retired') AS retired "
                "FROM gateway.identities WHERE role_id = ANY($1::text[]) GROUP BY role_id",
                [doc.roles[n].id for n in names],
            )
        }
    finally:
        await conn.close()
    shown: list[dict[str, Any]] = []
    for name in names:
        spec = doc.roles[name]
        login = doc.login_role(name)
        role_live = live.roles.get(login)
        active, retired = counts.get(spec.id, (0, 0))
        shown.append(
            {
                "name": name,
                "id": spec.id,
                "tier": spec.tier.value,
                "login_role": login,
                "declared": {
                    "inherits": spec.inherits,
                    "grants": [g.model_dump(mode="json", exclude_none=True) for g in spec.grants],
                    "connection_limit": spec.connection_limit,
                    "statement_timeout": spec.statement_timeout,
                    "pool": spec.pool_size.model_dump(),
                },
                "live": {
                    "exists": role_live is not None,
                    "connection_limit": role_live.connection_limit if role_live else None,
                    "settings": dict(role_live.settings) if role_live else {},
                    "grants": sorted(
                        f"{g.privilege} {g.target}" + (f"({g.column})" if g.column else "")
                        for g in live.grants
                        if g.grantee == name and g.kind != "schema"
                    ),
                    "member_of": sorted({m.role for m in live.memberships if m.member == name}),
                },
                "identities": {"active": active, "retired": retired},
            }
        )
    if args.json:
        emit_json(shown)
        return 0
    for item in shown:
        live_part = item["live"]
        print(f"{item['name']}  (id {item['id']}, tier {item['tier']}, login {item['login_role']})")
        print(f"  declared: {', '.join(_grant_text(g) for g in item['declared']['grants']) or '-'}")
        state = "exists" if live_part["exists"] else "MISSING"
        print(f"  live:     {state}; grants {', '.join(live_part['grants']) or '-'}")
        print(
            f"  limits:   connections {item['declared']['connection_limit']}, "
            f"statement timeout {item['declared']['statement_timeout']}, "
            f"pool {item['declared']['pool']['min']}-{item['declared']['pool']['max']}"
        )
        ids = item["identities"]
        print(f"  identities: {ids['active']} active, {ids['retired']} retired")
    return 0


async def run_audit_command(args: argparse.Namespace) -> int:
    doc = load_declaration(args.roles)
    config = load_config(args.config) if args.config is not None else None
    brokers = config.brokers if config is not None else BrokersConfig()
    conn = await connect(resolve_dsn(args))
    try:
        stale = await stale_identities(
            conn,
            stale_thresholds(args.stale_after, args.stale_after_privileged),
            limit=args.limit,
            after=args.after,
        )
        findings = await run_audit(conn, doc, stale=stale)
        if config is not None and config.sources.kafka:
            findings += await kafka_claim_findings(config.sources.kafka)
        if configured(brokers):
            plan = await sync_accounts(
                conn,
                brokers,
                default_actor(),
                names=None,
                supplied={},
                credentials_out=None,
                apply=False,
            )
            findings += broker_findings(plan)
        findings.sort(key=lambda f: (-f.severity, f.check, f.subject))
    finally:
        await conn.close()
    threshold = Severity[args.fail_on.upper()]
    failing = [f for f in findings if f.severity >= threshold]
    if args.json:
        emit_json(
            {
                "findings": [f.as_json() for f in findings],
                "stale": stale.as_json(),
                "fail_on": args.fail_on,
                "failed": bool(failing),
            }
        )
    elif not findings:
        print("No findings.")
        print(_stale_summary(stale))
    else:
        for finding in findings:
            print(f"{str(finding.severity).upper():<6} {finding.check:<28} {finding.message}")
        print(f"\n{len(findings)} finding(s), {len(failing)} at or above {args.fail_on}.")
        print(_stale_summary(stale))
    return EXIT_FINDINGS if failing else 0


async def run_verify(args: argparse.Namespace) -> int:
    conn = await connect(resolve_dsn(args))
    try:
        breaks, counts = await verify(conn)
    finally:
        await conn.close()
    if args.json:
        emit_json({"rows": counts, "breaks": [b.as_json() for b in breaks]})
    else:
        for problem in breaks:
            print(problem)
        checked = ", ".join(f"{rows} in {table}" for table, rows in counts.items())
        verdict = f"{len(breaks)} break(s)" if breaks else "the chains hold"
        print(f"Checked {checked}: {verdict}.")
    return EXIT_FINDINGS if breaks else 0


def _stale_summary(stale: StalePage) -> str:
    tiers = ", ".join(
        f"{tier.value} {stale.totals[tier]} (> {days:g} days)"
        for tier, days in stale.thresholds.items()
    )
    more = f"; next page: --after {stale.next_after}" if stale.next_after else ""
    return f"Stale identities per tier: {tiers}{more}"


def _grant_text(grant: dict[str, Any]) -> str:
    columns = f"({', '.join(grant['columns'])})" if grant.get("columns") else ""
    return f"{'/'.join(grant['privileges'])} {grant['table']}{columns}"


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    migrate_cmd = commands.add_parser("migrate", help="create or upgrade the gateway's schemas")
    add_dsn_options(migrate_cmd)
    migrate_cmd.set_defaults(handler=run_migrate)

    roles = commands.add_parser("roles", help="PostgreSQL roles as code").add_subparsers(
        dest="roles_command", required=True, metavar="ACTION"
    )
    plan = roles.add_parser("plan", help="show what apply would change (exit 2 if anything)")
    add_roles_options(plan)
    plan.add_argument(
        "--config",
        type=Path,
        help="gateway configuration: first refuse (exit 1) if a table or state route does not "
        "fit its table or no declared role may write it",
    )
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    plan.set_defaults(handler=run_plan)

    apply = roles.add_parser("apply", help="apply the plan in one transaction and record it")
    add_roles_options(apply)
    apply.add_argument(
        "--expect",
        type=_digest,
        metavar="DIGEST",
        help="refuse unless the plan has this digest (printed by `gateway roles plan`)",
    )
    apply.add_argument("--actor", default=default_actor(), help="who applies (audit trail)")
    apply.add_argument(
        ALLOW_DROP_FLAG,
        action="store_true",
        help="drop undeclared roles even while active identities still use them "
        "(they stop writing at once)",
    )
    apply.add_argument("--json", action="store_true", help="machine-readable output")
    apply.set_defaults(handler=run_apply)

    audit = commands.add_parser(
        "audit", help=f"report drift and identity problems (exit {EXIT_FINDINGS} on findings)"
    )
    add_roles_options(audit)
    audit.add_argument(
        "--stale-after",
        type=float,
        default=WRITE_STALE_DAYS,
        metavar="DAYS",
        help="active identities of write tiers (ingest, transactional) unseen this long are "
        f"findings (default {WRITE_STALE_DAYS:g})",
    )
    audit.add_argument(
        "--stale-after-privileged",
        type=float,
        default=PRIVILEGED_STALE_DAYS,
        metavar="DAYS",
        help="the same for reader, auditor and admin identities "
        f"(default {PRIVILEGED_STALE_DAYS:g})",
    )
    audit.add_argument(
        "--limit",
        type=_positive,
        default=STALE_PAGE,
        metavar="N",
        help=f"stale identities listed per run, in name order (default {STALE_PAGE}); the "
        "totals per tier always count them all",
    )
    audit.add_argument(
        "--after",
        metavar="IDENTITY",
        help="list stale identities after this name (the next page)",
    )
    audit.add_argument(
        "--fail-on",
        choices=[str(s) for s in Severity],
        default="low",
        help="lowest severity that makes the exit code non-zero (default low)",
    )
    audit.add_argument(
        "--config",
        type=Path,
        default=Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None,
        help="gateway configuration: its [brokers] are audited against the registry too "
        "(default: $GATEWAY_CONFIG)",
    )
    audit.add_argument("--json", action="store_true", help="machine-readable output")
    audit.set_defaults(handler=run_audit_command)
    verify_cmd = audit.add_subparsers(dest="audit_command", metavar="CHECK").add_parser(
        "verify",
        help="recompute the trail's hash chains and name every row edited, deleted or inserted "
        f"out of band (exit {EXIT_FINDINGS} if any)",
    )
    add_dsn_options(verify_cmd)
    verify_cmd.add_argument("--json", action="store_true", help="machine-readable output")
    verify_cmd.set_defaults(handler=run_verify)

    show = roles.add_parser("show", help="declared and live state of roles, and their identities")
    add_roles_options(show)
    show.add_argument("role", nargs="?", help="one declared role (default: all)")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(handler=run_show)
