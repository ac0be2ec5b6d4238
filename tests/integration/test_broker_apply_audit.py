"""An apply that a broker stops half-way is in the audit trail too: what it attempted, and why
it stopped, since some of its changes may already be made."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import asyncpg
import orjson
import pytest

from gateway import cli
from gateway.config import BrokersConfig, MosquittoAccountsConfig
from gateway.db import ADMIN_DSN_ENV
from gateway.identities.accounts import (
    AccountChange,
    AccountPlan,
    AccountsError,
    Credential,
    IdentityStates,
)
from gateway.identities.reconcile import BrokerAccounts, sync_accounts
from gateway.identities.registry import Registry
from gateway.services.postgres import PostgresAddress


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


async def test_a_rotation_a_broker_stops_is_recorded_with_why(
    conn: asyncpg.Connection,
    database: PostgresAddress,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await Registry(conn, "ops").add("half", "telemetry_ingest")

    async def start(self: BrokerAccounts) -> None:
        pass

    async def rotate(self: BrokerAccounts, name: str, password: str) -> None:
        raise AccountsError(f"kafka refused the credential of {name!r}: broker went away")

    monkeypatch.setattr(BrokerAccounts, "start", start)
    monkeypatch.setattr(BrokerAccounts, "rotate", rotate)
    monkeypatch.setenv(ADMIN_DSN_ENV, database.dsn)
    config = tmp_path / "gateway.toml"
    config.write_text('[brokers.mosquitto]\nhost = "127.0.0.1"\n')
    code = await asyncio.to_thread(
        cli.main,
        ["identities", "rotate", "half", "--actor", "ops", "--config", str(config),
         "--credentials-out", str(tmp_path / "out.csv")],
    )  # fmt: skip
    assert code == 1, capsys.readouterr().err
    rows = await conn.fetch(
        "SELECT actor, after FROM gateway.audit_log WHERE action = 'identity.rotate'"
    )
    assert [row["actor"] for row in rows] == ["ops"]
    after = orjson.loads(rows[0]["after"])
    assert after["password"] == "rotation failed" and "broker went away" in after["failed"]
