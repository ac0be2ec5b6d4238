"""The identity registry: add, assign, retire, provision and look up identities, audited.

Every change runs in one transaction with its audit record, so the trail never misses a change
nor records one that did not happen. Roles are named by users and stored by id, so renaming a
role keeps its identities.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson

from gateway import trail
from gateway.identities.model import (
    STATUSES,
    Identity,
    IdentityExistsError,
    IdentityRetiredError,
    InvalidIdentityError,
    Status,
    UnknownIdentityError,
    UnknownRoleError,
    validate_identity_name,
    validate_kind,
)

if TYPE_CHECKING:
    from gateway.identities.provisioning import ProvisionRule

__all__ = ["AuditRecord", "IdentityDetails", "Registry", "identity_from_row"]

COLUMNS = (
    "i.name, i.kind, r.name AS role, i.status, i.attributes, "
    "i.created_at, i.retired_at, i.last_seen"
)
SELECT_ONE = (
    f"SELECT {COLUMNS}, i.role_id FROM gateway.identities i "
    "JOIN gateway.roles r ON r.id = i.role_id WHERE i.name = $1"
)
INSERT = (
    "WITH added AS ("
    " INSERT INTO gateway.identities (name, kind, role_id, attributes)"
    " VALUES ($1, $2, $3, $4::jsonb) ON CONFLICT (name) DO NOTHING RETURNING *"
    f") SELECT {COLUMNS} FROM added i JOIN gateway.roles r ON r.id = i.role_id"
)
# Kept by triggers (migration 003), so counting a role of a million identities reads one row.
COUNT = """
SELECT coalesce(sum(n), 0)::bigint FROM gateway.identity_counts
 WHERE status = ANY($1::text[]) AND ($2::text IS NULL OR role_id = $2)
"""
HISTORY = """
SELECT at, actor, db_user, action, subject, before, after FROM gateway.audit_log
 WHERE subject = $1 ORDER BY at DESC, id DESC LIMIT $2
"""

STATES = (
    "SELECT i.name, i.status, r.name AS role FROM gateway.identities i"
    " JOIN gateway.roles r ON r.id = i.role_id"
)

# What the data plane recorded for the identity over the last day (gateway.identity_activity).
ACTIVITY = """
SELECT coalesce(sum(rows), 0) AS rows, coalesce(sum(rejects), 0) AS rejects,
       max(last_seen) AS last_seen
  FROM gateway.identity_activity
 WHERE identity = $1 AND minute > now() - interval '1 day'
"""


def _page_sql(by_role: bool, statuses: Sequence[Status]) -> str:
    """Keyset pagination by name that stays on an index whatever the filters.

    With a role: one ordered range of the (role_id, status, name) index per status, each cut at
    the page size, merged by name. The role and status must be plain values in each branch
    for the planner to see that the index returns names in order; as a parameter from a join,
    it scans the primary key and filters instead, reading half a table for an empty page.
    Without a role: the primary key, or the partial index of retired names (migration 003).
    Statuses are inlined as literals (only the fixed STATUSES ever are), so that partial index
    can be proven to apply.
    """
    if not by_role:
        where = "" if len(statuses) > 1 else f"AND i.status = '{statuses[0]}'"
        return (
            f"SELECT {COLUMNS} FROM gateway.identities i JOIN gateway.roles r ON r.id = i.role_id"
            f" WHERE i.name > $1 {where} ORDER BY i.name LIMIT $2"
        )
    branches = " UNION ALL ".join(
        "(SELECT * FROM gateway.identities"
        f" WHERE role_id = $3 AND status = '{status}' AND name > $1 ORDER BY name LIMIT $2)"
        for status in statuses
    )
    return (
        f"SELECT {COLUMNS} FROM ({branches}) AS i JOIN gateway.roles r ON r.id = i.role_id"
        " ORDER BY i.name LIMIT $2"
    )


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One entry of the audit trail: who did what to which subject, before and after."""

    at: datetime
    actor: str
    db_user: str
    action: str
    subject: str
    before: Mapping[str, Any] | None
    after: Mapping[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "actor": self.actor,
            "db_user": self.db_user,
            "action": self.action,
            "subject": self.subject,
            "before": self.before,
            "after": self.after,
        }


@dataclass(frozen=True, slots=True)
class IdentityDetails:
    """An identity with its most recent audit entries, newest first."""

    identity: Identity
    history: tuple[AuditRecord, ...]
    rows_last_day: int = 0
    rejects_last_day: int = 0


def _load_json(value: str | None) -> Any:
    # asyncpg hands jsonb over as text unless a codec is set; the registry does not change the
    # codecs of a connection it was lent.
    return None if value is None else orjson.loads(value)


def identity_from_row(row: asyncpg.Record) -> Identity:
    """An `Identity` from a row with the registry's column list."""
    return Identity(
        name=row["name"],
        kind=row["kind"],
        role=row["role"],
        status=row["status"],
        attributes=_load_json(row["attributes"]),
        created_at=row["created_at"],
        retired_at=row["retired_at"],
        last_seen=row["last_seen"],
    )


def _snapshot(identity: Identity, role_id: str) -> dict[str, Any]:
    """The state recorded as `after` when an identity comes into being."""
    return {
        "kind": identity.kind,
        "role": identity.role,
        "role_id": role_id,
        "status": identity.status,
        "attributes": dict(identity.attributes),
    }


def _check_attributes(attributes: Mapping[str, Any] | None) -> str:
    if attributes is None:
        return "{}"
    if not isinstance(attributes, Mapping):
        raise InvalidIdentityError("attributes must be a JSON object")
    try:
        return orjson.dumps(dict(attributes)).decode()
    except TypeError as exc:
        raise InvalidIdentityError(f"attributes are not JSON-serializable: {exc}") from exc


def _statuses(status: str | None) -> list[Status]:
    if status is None:
        return list(STATUSES)
    for known in STATUSES:
        if status == known:
            return [known]
    raise InvalidIdentityError(
        f"unknown status {status!r} (expected one of: {', '.join(STATUSES)})"
    )


class Registry:
    """Identity lifecycle over one connection; `actor` is who the audit trail names."""

    def __init__(self, conn: asyncpg.Connection, actor: str) -> None:
        self._conn = conn
        self.actor = actor

    @property
    def connection(self) -> asyncpg.Connection:
        return self._conn

    async def add(
        self,
        name: str,
        role: str,
        kind: str = "device",
        attributes: Mapping[str, Any] | None = None,
    ) -> Identity:
        """Register a new active identity with a declared role."""
        validate_identity_name(name)
        checked_kind = validate_kind(kind)
        attributes_json = _check_attributes(attributes)
        async with self._conn.transaction():
            role_id = await self._active_role_id(role)
            row = await self._conn.fetchrow(INSERT, name, checked_kind, role_id, attributes_json)
            if row is None:
                raise IdentityExistsError(f"identity {name!r} already exists")
            identity = identity_from_row(row)
            await trail.record(
                self._conn,
                self.actor,
                "identity.add",
                name,
                None,
                _snapshot(identity, role_id),
            )
        return identity

    async def provision(self, name: str, rule: ProvisionRule) -> Identity:
        """Add `name` as the rule says unless it exists; either way return what is registered.

        Idempotent and safe to race: pods that see the same unknown identity at once add it
        once, and only the one that added it writes the audit record. An existing identity is
        returned as it is (it may be retired, or have another role): the caller decides.
        """
        validate_identity_name(name)
        async with self._conn.transaction():
            role_id = await self._active_role_id(rule.role)
            while True:
                row = await self._conn.fetchrow(INSERT, name, rule.kind, role_id, "{}")
                if row is not None:
                    break
                existing = await self._conn.fetchrow(SELECT_ONE, name)
                # None only if the conflicting row was deleted in between: insert again.
                if existing is not None:
                    return identity_from_row(existing)
            identity = identity_from_row(row)
            after = {**_snapshot(identity, role_id), "rule": rule.pattern}
            await trail.record(self._conn, self.actor, "identity.provision", name, None, after)
        return identity

    async def assign(self, name: str, role: str) -> Identity:
        """Move an active identity to another declared role; the same role changes nothing."""
        async with self._conn.transaction():
            current = await self._lock(name)
            if current["status"] == "retired":
                raise IdentityRetiredError(f"identity {name!r} is retired; it cannot be assigned")
            role_id = await self._active_role_id(role)
            if role_id == current["role_id"]:
                return identity_from_row(current)
            row = await self._conn.fetchrow(
                "WITH moved AS ("
                " UPDATE gateway.identities SET role_id = $2 WHERE name = $1 RETURNING *"
                f") SELECT {COLUMNS} FROM moved i JOIN gateway.roles r ON r.id = i.role_id",
                name,
                role_id,
            )
            assert row is not None  # the row is locked above
            await trail.record(
                self._conn,
                self.actor,
                "identity.assign",
                name,
                {"role": current["role"], "role_id": current["role_id"]},
                {"role": row["role"], "role_id": role_id},
            )
        return identity_from_row(row)

    async def retire(self, name: str) -> Identity:
        """Retire an identity for good: its messages are rejected from now on."""
        async with self._conn.transaction():
            current = await self._lock(name)
            if current["status"] == "retired":
                raise IdentityRetiredError(
                    f"identity {name!r} is already retired (since {current['retired_at']})"
                )
            row = await self._conn.fetchrow(
                "WITH retired AS ("
                " UPDATE gateway.identities SET status = 'retired', retired_at = now()"
                " WHERE name = $1 RETURNING *"
                f") SELECT {COLUMNS} FROM retired i JOIN gateway.roles r ON r.id = i.role_id",
                name,
            )
            assert row is not None  # the row is locked above
            identity = identity_from_row(row)
            await trail.record(
                self._conn,
                self.actor,
                "identity.retire",
                name,
                {"status": "active"},
                {"status": "retired", "retired_at": identity.retired_at},
            )
        return identity

    async def get(self, name: str) -> Identity:
        """The identity called `name`."""
        row = await self._conn.fetchrow(SELECT_ONE, name)
        if row is None:
            raise UnknownIdentityError(f"unknown identity {name!r}")
        return identity_from_row(row)

    async def show(self, name: str, history: int = 20) -> IdentityDetails:
        """The identity with its `history` most recent audit entries."""
        identity = await self.get(name)
        rows = await self._conn.fetch(HISTORY, name, history)
        activity = await self._conn.fetchrow(ACTIVITY, name)
        assert activity is not None
        return IdentityDetails(
            identity,
            tuple(
                AuditRecord(
                    at=row["at"],
                    actor=row["actor"],
                    db_user=row["db_user"],
                    action=row["action"],
                    subject=row["subject"],
                    before=_load_json(row["before"]),
                    after=_load_json(row["after"]),
                )
                for row in rows
            ),
            rows_last_day=activity["rows"],
            rejects_last_day=activity["rejects"],
        )

    async def list(
        self,
        role: str | None = None,
        status: Status | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> builtins.list[Identity]:
        """One page of identities ordered by name; pass the last name seen as `after`."""
        if limit < 1:
            raise InvalidIdentityError(f"limit must be at least 1, not {limit}")
        statuses = _statuses(status)
        # Every name sorts after '' (names are never empty), so the first page is no special case.
        arguments: builtins.list[Any] = [after or "", limit]
        if role is not None:
            arguments.append(await self._any_role_id(role))
        rows = await self._conn.fetch(_page_sql(role is not None, statuses), *arguments)
        return [identity_from_row(row) for row in rows]

    async def states(self, names: Sequence[str] | None = None) -> dict[str, tuple[Status, str]]:
        """Status and role name of the named identities (of all when None), which is what their
        broker accounts follow; names that are not registered are left out."""
        if names is None:
            rows = await self._conn.fetch(STATES)
        else:
            rows = await self._conn.fetch(f"{STATES} WHERE i.name = ANY($1::text[])", list(names))
        return {row["name"]: (row["status"], row["role"]) for row in rows}

    async def count(self, role: str | None = None, status: Status | None = None) -> int:
        """How many identities match, without scanning them."""
        statuses = _statuses(status)
        role_id = None if role is None else await self._any_role_id(role)
        total: int = await self._conn.fetchval(COUNT, statuses, role_id)
        return total

    async def _lock(self, name: str) -> asyncpg.Record:
        """The identity's row with its role name, locked until the transaction ends."""
        row = await self._conn.fetchrow(f"{SELECT_ONE} FOR UPDATE OF i", name)
        if row is None:
            raise UnknownIdentityError(f"unknown identity {name!r}")
        return row

    async def _active_role_id(self, role: str) -> str:
        """The id of a declared, not removed role; identities may only be given those."""
        role_id: str | None = await self._conn.fetchval(
            "SELECT id FROM gateway.roles WHERE name = $1 AND removed_at IS NULL", role
        )
        if role_id is None:
            raise await self._unknown_role(role)
        return role_id

    async def _any_role_id(self, role: str) -> str:
        """The id of a role, removed ones included: their identities can still be listed."""
        role_id: str | None = await self._conn.fetchval(
            "SELECT id FROM gateway.roles WHERE name = $1", role
        )
        if role_id is None:
            raise await self._unknown_role(role)
        return role_id

    async def _unknown_role(self, role: str) -> UnknownRoleError:
        known = await self._conn.fetch(
            "SELECT name FROM gateway.roles WHERE removed_at IS NULL ORDER BY name"
        )
        return UnknownRoleError(role, [row["name"] for row in known])
