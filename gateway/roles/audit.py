"""`gateway audit`: what is wrong with roles and identities right now, each with a severity.

Drift comes from the same plan `roles apply` would run (one source of truth for "different from
the declaration"); identity findings come from the registry; the findings are meant for a
scheduled job that fails when something needs a person.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import IntEnum
from typing import Any

import asyncpg

from gateway.config import KafkaSourceConfig
from gateway.identities.accounts import AccountPlan
from gateway.roles.apply import plan_with_live
from gateway.roles.declaration import Declaration, Tier
from gateway.roles.plan import Change
from gateway.roles.shadow import (
    PREDEFINED_ROLES,
    SHADOW_CHANGES,
    parents,
    reaches,
    undeclared_superusers,
)
from gateway.roles.shadow import membership_paths as _membership_paths
from gateway.roles.state import Shadow

__all__ = [
    "Finding",
    "Severity",
    "StalePage",
    "broker_findings",
    "kafka_claim_findings",
    "run_audit",
    "shadow_access",
    "stale_identities",
    "stale_thresholds",
]


class Severity(IntEnum):
    INFO = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Finding:
    severity: Severity
    check: str
    subject: str
    message: str

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "severity": str(self.severity)}


# How much each kind of plan change matters when it shows up as drift. Anything granting more
# than declared is high: it is a way in. Anything missing is medium: something will fail.
DRIFT: dict[str, tuple[Severity, str]] = {
    "revoke_privilege": (Severity.HIGH, "undeclared_grant"),
    "revoke_membership": (Severity.HIGH, "undeclared_membership"),
    "revoke_attribute": (Severity.HIGH, "role_escalation"),
    "drop_role": (Severity.MEDIUM, "orphaned_role"),
    "alter_role": (Severity.MEDIUM, "role_attributes"),
    "reset_setting": (Severity.LOW, "undeclared_setting"),
    "set_setting": (Severity.MEDIUM, "role_setting"),
    "set_password": (Severity.MEDIUM, "password_mismatch"),
    "grant_privilege": (Severity.MEDIUM, "missing_grant"),
    "grant_membership": (Severity.MEDIUM, "missing_membership"),
    "create_role": (Severity.MEDIUM, "missing_role"),
    "rename_role": (Severity.LOW, "pending_rename"),
    "mark_role": (Severity.LOW, "unmarked_role"),
    "register_role": (Severity.LOW, "unregistered_role"),
    "retire_role": (Severity.LOW, "unregistered_role"),
    # An append-only trail or the identity change feed that stopped firing: a way to edit
    # history, or to keep gateways from seeing a retirement.
    "enable_trigger": (Severity.HIGH, "trigger_disabled"),
    # An owner holds every privilege on what it owns, whatever was granted.
    "reown": (Severity.HIGH, "object_owner"),
}

WRITE_TIERS = frozenset({Tier.INGEST, Tier.TRANSACTIONAL})
# Write tiers go quiet when a device is switched off; a reader, auditor or admin login unused
# for a week is a credential nobody watches, so it is found sooner and ranks higher.
WRITE_STALE_DAYS = 30.0
PRIVILEGED_STALE_DAYS = 7.0
STALE_SEVERITY = {tier: Severity.LOW if tier in WRITE_TIERS else Severity.MEDIUM for tier in Tier}
STALE_PAGE = 1000


def drift_finding(change: Change) -> Finding:
    severity, check = DRIFT.get(change.kind, (Severity.MEDIUM, change.kind))
    return Finding(severity, check, change.subject, change.summary)


# Broker drift, by the change `brokers apply` would make: anything that lets a sender in where
# the registry says no is high; an account missing or disabled only stops an active identity.
BROKER_DRIFT: dict[tuple[str, str], tuple[Severity, str]] = {
    ("mosquitto", "create"): (Severity.MEDIUM, "broker_account_missing"),
    ("mosquitto", "device_role"): (Severity.MEDIUM, "broker_account_missing"),
    ("mosquitto", "device_acls"): (Severity.HIGH, "broker_permissions_wider"),
    ("mosquitto", "reset"): (Severity.MEDIUM, "broker_account_disabled"),
    ("mosquitto", "enable"): (Severity.MEDIUM, "broker_account_disabled"),
    ("mosquitto", "disable"): (Severity.HIGH, "broker_account_without_identity"),
    ("mosquitto", "bind"): (Severity.HIGH, "broker_client_id_unbound"),
    ("mosquitto", "roles"): (Severity.HIGH, "broker_permissions_wider"),
    ("mosquitto", "role_acls"): (Severity.HIGH, "broker_permissions_wider"),
    ("mosquitto", "defaults"): (Severity.HIGH, "broker_permissions_wider"),
    ("mosquitto", "report"): (Severity.MEDIUM, "broker_name_conflict"),
    ("kafka", "create"): (Severity.MEDIUM, "broker_account_missing"),
    ("kafka", "grant"): (Severity.MEDIUM, "broker_acl_missing"),
    ("kafka", "delete"): (Severity.HIGH, "broker_credential_unwanted"),
    ("kafka", "reset"): (Severity.MEDIUM, "broker_credential_unknown"),
    ("kafka", "revoke"): (Severity.HIGH, "broker_permissions_wider"),
    ("kafka", "report"): (Severity.MEDIUM, "broker_unmanaged_principal"),
}


def broker_findings(plan: AccountPlan) -> list[Finding]:
    """Each difference between the registry and the brokers, as a finding."""
    findings = []
    for change in plan.changes:
        severity, check = BROKER_DRIFT.get(
            (change.broker, change.action), (Severity.MEDIUM, "broker_drift")
        )
        findings.append(Finding(severity, check, change.name, str(change)))
    return findings


async def kafka_claim_findings(sources: Sequence[KafkaSourceConfig]) -> list[Finding]:
    """Kafka sources whose claims the cluster's ACLs do not bind to who writes: any principal
    that may write as an identity it is not, read as each source's own principal."""
    from gateway.kafka_admin import KafkaAdminError
    from gateway.sources.kafka_claims import topic_writes, unbound_writers

    findings = []
    for source in sources:
        try:
            violations = unbound_writers(source, await topic_writes(source))
        except KafkaAdminError as exc:
            findings.append(
                Finding(Severity.MEDIUM, "kafka_acl_check_failed", source.name, str(exc))
            )
            continue
        findings += [
            Finding(Severity.HIGH, "kafka_claims_unbound", source.name, str(v)) for v in violations
        ]
    return findings


async def run_audit(
    conn: asyncpg.Connection,
    doc: Declaration,
    *,
    stale_after_days: float = WRITE_STALE_DAYS,
    stale: StalePage | None = None,
) -> list[Finding]:
    """Every finding; `stale` is a page of stale identities already read (the first page with
    `stale_after_days` for write tiers and the privileged default otherwise when None)."""
    plan, live = await plan_with_live(conn, doc)
    # What plan does to undo shadow access is reported by `shadow_access`, with its path.
    findings = [drift_finding(c) for c in plan.changes if c.kind not in SHADOW_CHANGES]
    findings += await _identities_on_missing_roles(conn, doc)
    if stale is None:
        stale = await stale_identities(conn, stale_thresholds(stale_after_days))
    findings += stale.findings()
    findings += await _unlimited_logins(conn)
    findings += shadow_access(live.shadow, doc)
    return sorted(findings, key=lambda f: (-f.severity, f.check, f.subject))


async def _identities_on_missing_roles(conn: asyncpg.Connection, doc: Declaration) -> list[Finding]:
    """Active identities whose role is undeclared, removed, or has no LOGIN role in the cluster."""
    rows = await conn.fetch(
        """
        SELECT i.role_id, r.name, count(*) AS identities,
               r.removed_at IS NOT NULL AS removed,
               NOT EXISTS (SELECT 1 FROM pg_roles p WHERE p.rolname = r.login_role) AS no_login
        FROM gateway.identities i JOIN gateway.roles r ON r.id = i.role_id
        WHERE i.status = 'active'
        GROUP BY i.role_id, r.name, r.removed_at, r.login_role
        """
    )
    declared = doc.by_id()
    findings = []
    for row in rows:
        why = None
        if row["role_id"] not in declared or row["removed"]:
            why = "is no longer declared"
        elif row["no_login"]:
            why = "has no LOGIN role in the database"
        if why:
            findings.append(
                Finding(
                    Severity.HIGH,
                    "identities_on_missing_role",
                    row["name"],
                    f"{row['identities']} active identities are on role {row['name']} "
                    f"(id {row['role_id']}), which {why}",
                )
            )
    return findings


def stale_thresholds(
    write_days: float = WRITE_STALE_DAYS, privileged_days: float = PRIVILEGED_STALE_DAYS
) -> dict[Tier, float]:
    """Days unseen after which an active identity is a finding, per tier."""
    return {tier: write_days if tier in WRITE_TIERS else privileged_days for tier in Tier}


@dataclass(frozen=True)
class StalePage:
    """One page of stale identities over every tier, in name order, with each tier's total
    whatever the page holds: nothing is cut off without saying so."""

    thresholds: dict[Tier, float]
    totals: dict[Tier, int]
    rows: list[asyncpg.Record]
    next_after: str | None

    def findings(self) -> list[Finding]:
        found = [
            Finding(
                STALE_SEVERITY[Tier(row["tier"])],
                "stale_identity",
                row["name"],
                f"identity {row['name']} is active on role {row['role']} (tier {row['tier']}) "
                "but "
                + (
                    f"last seen {row['last_seen']:%Y-%m-%d %H:%M}"
                    if row["last_seen"]
                    else "never seen"
                )
                + f" (older than {self.thresholds[Tier(row['tier'])]:g} days); "
                "retire it if it is gone",
            )
            for row in self.rows
        ]
        shown = Counter(Tier(row["tier"]) for row in self.rows)
        more = f"; next page: --after {self.next_after}" if self.next_after else ""
        for tier, total in self.totals.items():
            if total:
                found.append(
                    Finding(
                        STALE_SEVERITY[tier],
                        "stale_identities_total",
                        tier.value,
                        f"{total} active identities of tier {tier.value} unseen for more than "
                        f"{self.thresholds[tier]:g} days ({shown[tier]} on this page{more})",
                    )
                )
        return found

    def as_json(self) -> dict[str, Any]:
        return {
            "tiers": {
                tier.value: {"total": self.totals[tier], "after_days": self.thresholds[tier]}
                for tier in Tier
            },
            "shown": len(self.rows),
            "next_after": self.next_after,
        }


STALE_IDENTITIES = """
WITH stale AS (
    SELECT i.name, r.name AS role, r.tier, i.last_seen
    FROM gateway.identities i
    JOIN gateway.roles r ON r.id = i.role_id
    JOIN unnest($1::text[], $2::float8[]) AS t (tier, secs) ON t.tier = r.tier
    WHERE i.status = 'active'
      AND coalesce(i.last_seen, i.created_at) < now() - make_interval(secs => t.secs)
)
"""


async def stale_identities(
    conn: asyncpg.Connection,
    thresholds: dict[Tier, float],
    *,
    limit: int = STALE_PAGE,
    after: str | None = None,
) -> StalePage:
    """Active identities of every tier not seen for longer than their tier's threshold: a
    dormant credential is a way in, the more so the more its role may do."""
    tiers = [tier.value for tier in thresholds]
    secs = [days * 86400 for days in thresholds.values()]
    totals = dict.fromkeys(thresholds, 0)
    for row in await conn.fetch(
        STALE_IDENTITIES + "SELECT tier, count(*) AS n FROM stale GROUP BY tier", tiers, secs
    ):
        totals[Tier(row["tier"])] = row["n"]
    rows = await conn.fetch(
        STALE_IDENTITIES + "SELECT * FROM stale WHERE name > $3 ORDER BY name LIMIT $4",
        tiers,
        secs,
        after or "",
        limit + 1,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return StalePage(thresholds, totals, rows, rows[-1]["name"] if more else None)


async def _unlimited_logins(conn: asyncpg.Connection) -> list[Finding]:
    rows = await conn.fetch(
        "SELECT rolname FROM pg_roles WHERE rolcanlogin AND NOT rolsuper AND rolconnlimit = -1 "
        "ORDER BY rolname"
    )
    return [
        Finding(
            Severity.MEDIUM,
            "unlimited_login",
            row["rolname"],
            f"LOGIN role {row['rolname']} has no connection limit: it can exhaust the database",
        )
        for row in rows
    ]


# How much each predefined role of `PREDEFINED_ROLES` matters: reading is less than the rest.
PREDEFINED_REACH: dict[str, tuple[Severity, str]] = {
    name: (Severity.MEDIUM if name == "pg_read_all_data" else Severity.HIGH, what)
    for name, what in PREDEFINED_ROLES.items()
}
# Privileges that only read (or call what only reads); anything else changes managed data.
READ_PRIVILEGES = frozenset({"SELECT", "USAGE", "REFERENCES", "EXECUTE"})


def shadow_access(shadow: Shadow, doc: Declaration) -> list[Finding]:
    """Roles outside the declaration that reach managed data, each with the membership path it
    takes; `roles plan` undoes each of them (see `gateway.roles.shadow`)."""
    roles = shadow.roles
    up = parents(shadow)

    def held(name: str) -> frozenset[tuple[str, str]]:
        return shadow.held.get(name, frozenset())

    def reach_severity(names: Sequence[str]) -> Severity:
        severity = Severity.MEDIUM
        for name in names:
            if roles[name].superuser or any(p not in READ_PRIVILEGES for _, p in held(name)):
                return Severity.HIGH
            severity = max(severity, PREDEFINED_REACH.get(name, (severity, ""))[0])
        return severity

    findings = [
        Finding(
            Severity.HIGH,
            "undeclared_superuser",
            name,
            f"LOGIN role {name} is a superuser but not one of the declared superusers "
            f"({', '.join(doc.superusers)}): it reads and rewrites everything",
        )
        for name in undeclared_superusers(shadow, doc)
    ]
    for reach in reaches(shadow, doc):
        name, target, path = reach.source, reach.target, reach.path
        kind = "LOGIN" if roles[name].login else "NOLOGIN"
        via = "directly" if len(path) == 1 else "through " + " -> ".join(path)
        if reach.kind == "shadow_member":
            severity = reach_severity(list(_membership_paths(target, up, set())))
            message = (
                f"undeclared {kind} role {name} is a member of managed role {target} "
                f"({via}): it may do what {target} may"
            )
        elif reach.kind == "shadow_superuser":
            severity = Severity.HIGH
            message = f"undeclared {kind} role {name} may SET ROLE to superuser {target} ({via})"
        elif reach.kind == "shadow_predefined":
            severity, what = PREDEFINED_REACH[target]
            message = f"undeclared {kind} role {name} {what} as a member of {target} ({via})"
        else:
            severity = reach_severity([target])
            message = (
                f"undeclared LOGIN role {name} holds {_holdings(set(held(target)))} in the "
                f"managed schemas ({via})"
            )
        findings.append(Finding(severity, reach.kind, name, message))
    return findings


def _holdings(held: set[tuple[str, str]], shown: int = 5) -> str:
    """`SELECT, UPDATE on gateway.identities; ...`, the first few objects only."""
    by_object: dict[str, list[str]] = defaultdict(list)
    for obj, privilege in sorted(held):
        by_object[obj].append(privilege)
    parts = [f"{', '.join(privileges)} on {obj}" for obj, privileges in by_object.items()]
    more = f" and {len(parts) - shown} more objects" if len(parts) > shown else ""
    return "; ".join(parts[:shown]) + more
