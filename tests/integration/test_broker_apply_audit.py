"""An apply that a broker stops half-way is in the audit trail too: what it attempted, and why
it stopped, since some of its changes may already be made."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import asyncpg
import orjson
import pytest

from gateway.config import BrokersConfig, MosquittoAccountsConfig
from gateway.identities.accounts import (
    AccountChange,
    AccountPlan,
    AccountsError,
    Credential,
    IdentityStates,
)
from gateway.identities.reconcile import BrokerAccounts, sync_accounts
from gateway.identities.registry import Registry


async def test_an_apply_a_broker_stops_is_recorded_with_why(
    conn: asyncpg.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await Registry(conn, "ops").add("half", "telemetry_ingest")

    async def start(self: BrokerAccounts) -> None:
        pass

    async def plan(self: BrokerAccounts, *args: object) -> AccountPlan:
        return AccountPlan((AccountChange("mosquitto", "create", "half", "has no account"),))

    async def apply(
        self: BrokerAccounts,
        plan: AccountPlan,
        identities: IdentityStates,
        credentials: Mapping[str, Credential],
    ) -> None:
        raise AccountsError("mosquitto refused createClient 'half': broker went away")

    monkeypatch.setattr(BrokerAccounts, "start", start)
    monkeypatch.setattr(BrokerAccounts, "plan", plan)
    monkeypatch.setattr(BrokerAccounts, "apply", apply)
    config = BrokersConfig(mosquitto=MosquittoAccountsConfig())
    with pytest.raises(AccountsError):
        await sync_accounts(
            conn, config, "ops", names=None, supplied={}, credentials_out=tmp_path / "out.csv"
        )
    rows = await conn.fetch(
        "SELECT actor, after FROM gateway.audit_log WHERE action = 'brokers.apply'"
    )
    assert [row["actor"] for row in rows] == ["ops"]
    after = orjson.loads(rows[0]["after"])
    assert after["changes"] == [
        {"broker": "mosquitto", "action": "create", "name": "half", "detail": "has no account"}
    ]
    assert "broker went away" in after["failed"]
