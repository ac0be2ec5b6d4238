"""Reconciling the brokers with the registry: connections to the configured brokers, the plan
between what the registry says and what they hold, and its application, recorded in the audit
trail. The per-broker plans are in `mosquitto_accounts` and `kafka_accounts`; what an account
is, and the credentials handed out, in `accounts`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg

from gateway import trail
from gateway.identities.accounts import (
    RECORDED_CHANGES,
    AccountChange,
    AccountPlan,
    AccountsError,
    Credential,
    IdentityStates,
    device_role,
    new_credentials,
    write_credentials,
)
from gateway.identities.kafka_accounts import apply_kafka, plan_kafka, unmanaged_principals
from gateway.identities.mosquitto_accounts import (
    apply_mosquitto,
    apply_mosquitto_file,
    plan_mosquitto,
    reserved_names,
)
from gateway.identities.registry import Registry
from gateway.lifecycle import Lifecycle

if TYPE_CHECKING:
    from gateway.config import BrokersConfig
    from gateway.identities.dynsec import Dynsec
    from gateway.kafka_admin import KafkaAdmin

__all__ = ["BrokerAccounts", "reserved", "sync_accounts"]


def reserved(config: BrokersConfig) -> set[str]:
    """Names whose broker accounts are not an identity's (the admins, the gateway pods, what is
    declared unmanaged): no identity may have one, and identities' commands never touch them."""

    found = reserved_names(config.mosquitto) if config.mosquitto else set()
    if config.kafka is not None:
        found |= {p.removeprefix("User:") for p in unmanaged_principals(config.kafka)}
    return found


class BrokerAccounts(Lifecycle):
    """Connections to the configured brokers, to plan and apply against what they hold now."""

    def __init__(self, config: BrokersConfig, *, dynsec_file: Path | None = None) -> None:
        self.config = config
        self.dynsec_file = dynsec_file
        """Mosquitto's accounts are read from and written into the plugin's file instead of
        the running plugin (the broker must be stopped)."""
        self._stack = AsyncExitStack()
        self.dynsec: Dynsec | None = None
        self.kafka: KafkaAdmin | None = None

    async def start(self) -> None:
        try:
            if self.config.mosquitto is not None and self.dynsec_file is None:
                from gateway.identities.dynsec import Dynsec

                self.dynsec = await self._stack.enter_async_context(Dynsec(self.config.mosquitto))
            if self.config.kafka is not None:
                from gateway.kafka_admin import KafkaAdmin

                self.kafka = await self._stack.enter_async_context(KafkaAdmin(self.config.kafka))
        except BaseException:
            await self._stack.aclose()
            raise

    async def close(self) -> None:
        await self._stack.aclose()

    async def plan(
        self,
        identities: IdentityStates,
        names: Collection[str] | None = None,
        fresh: Collection[str] = (),
    ) -> AccountPlan:
        """The difference for `names` (a lifecycle command's own), or for everything; `fresh`
        are identities being added now (see the plans)."""

        changes: list[AccountChange] = []
        mosquitto = self.config.mosquitto
        if mosquitto is not None and self.dynsec_file is not None:
            from gateway.identities.dynsec_file import read_state

            state = read_state(self.dynsec_file)
            changes += plan_mosquitto(
                identities,
                state.accounts,
                mosquitto,
                names=names,
                role_acls=state.role_acls,
                default_access=state.default_access if names is None else None,
                fresh=fresh,
            )
        elif mosquitto is not None and self.dynsec is not None:
            if names is None:
                changes += plan_mosquitto(
                    identities,
                    await self.dynsec.accounts(),
                    mosquitto,
                    role_acls=await self.dynsec.role_acls(),
                    default_access=await self.dynsec.default_access(),
                    fresh=fresh,
                )
            else:
                changes += plan_mosquitto(
                    identities,
                    await self.dynsec.named(list(names)),
                    mosquitto,
                    names=names,
                    role_acls=await self.dynsec.roles([device_role(n) for n in names]),
                    fresh=fresh,
                )
        if self.kafka is not None and self.config.kafka is not None:
            changes += plan_kafka(
                identities,
                await self.kafka.scram_users(),
                await self.kafka.describe_acls(),
                self.config.kafka,
                names=names,
                fresh=fresh,
            )
        return AccountPlan(tuple(changes))

    async def apply(
        self,
        plan: AccountPlan,
        identities: IdentityStates,
        credentials: Mapping[str, Credential],
    ) -> None:
        """Carry out the plan with these credentials for what it creates or resets."""

        mosquitto = self.config.mosquitto
        mine = [c for c in plan.actions if c.broker == "mosquitto"]
        if mosquitto is not None and self.dynsec_file is not None:
            apply_mosquitto_file(self.dynsec_file, mine, mosquitto, identities, credentials)
        elif mosquitto is not None and self.dynsec is not None:
            await apply_mosquitto(self.dynsec, mine, mosquitto, identities, credentials)
        if self.kafka is not None and self.config.kafka is not None:
            mine = [c for c in plan.actions if c.broker == "kafka"]
            await apply_kafka(self.kafka, mine, self.config.kafka, credentials)

    async def rotate(self, name: str, password: str) -> None:
        """Give an identity's accounts a new password on every broker; never an account that
        is not an identity's (the admin, a gateway pod, a bridge)."""
        if name in reserved(self.config):
            raise AccountsError(
                f"{name!r} is the name of an admin, gateway or unmanaged broker account: "
                "identities' commands do not change it"
            )
        if self.dynsec is not None:
            await self.dynsec.set_password(name, password)
        if self.kafka is not None and self.config.kafka is not None:
            from gateway.kafka_admin import ScramCredential

            await self.kafka.upsert_scram(
                [ScramCredential(name, password)],
                mechanism=self.config.kafka.mechanism,
                iterations=self.config.kafka.iterations,
            )


async def sync_accounts(
    conn: asyncpg.Connection,
    config: BrokersConfig,
    actor: str,
    *,
    names: list[str] | None,
    supplied: Mapping[str, str],
    credentials_out: Path | None,
    apply: bool = True,
    dynsec_file: Path | None = None,
    fresh: Collection[str] = (),
) -> AccountPlan:
    """Plan (and apply) the brokers' side of the registry, recording what was done.

    Generated passwords are written to `credentials_out` before any broker is changed, so a
    failure half-way leaves no account with a password nobody has. Identities that the plan
    would give access are read again just before it is applied: one retired meanwhile (a full
    plan takes seconds to read a fleet) is left out, not brought back.
    """
    registry = Registry(conn, actor)
    identities = await registry.states(names)
    async with BrokerAccounts(config, dynsec_file=dynsec_file) as brokers:
        plan = await brokers.plan(identities, names, fresh)
        if not apply or not plan.actions:
            return plan
        plan = await _still_active(plan, registry)
        gateways = config.mosquitto.gateway_clients if config.mosquitto else ()
        credentials = new_credentials(plan, supplied, gateways)
        generated = sorted(n for n in credentials if n not in supplied)
        if generated and credentials_out is None:
            # Refused before changing anything: no password nobody will be able to read.
            raise AccountsError(
                f"{len(generated)} new broker account(s) need a password (e.g. {generated[0]}): "
                "pass --credentials-out FILE for generated ones, or --credentials-in FILE"
            )
        if generated and credentials_out is not None:
            write_credentials(credentials_out, {n: credentials[n] for n in generated})
        try:
            await brokers.apply(plan, identities, credentials)
        except Exception as exc:
            # Some of it may be done: the trail sees what was attempted, and why it stopped.
            await _record(conn, actor, plan, failed=str(exc))
            raise
    await _record(conn, actor, plan)
    return plan


async def _record(
    conn: asyncpg.Connection, actor: str, plan: AccountPlan, *, failed: str | None = None
) -> None:
    after: dict[str, object] = {
        "changes": [c.as_json() for c in plan.actions[:RECORDED_CHANGES]],
        "total": len(plan.actions),
    }
    if failed is not None:
        after["failed"] = failed
    await trail.record(conn, actor, "brokers.apply", "brokers", None, after)


GRANTING = frozenset({"create", "reset", "enable", "grant", "device_role", "bind", "roles"})


async def _still_active(plan: AccountPlan, registry: Registry) -> AccountPlan:
    """The plan without what would give access to an identity that is no longer active."""
    granting = {c.name for c in plan.actions if c.action in GRANTING}
    if not granting:
        return plan
    now = await registry.states(sorted(granting))
    gone = {name for name in granting if name in now and now[name][0] != "active"}
    if not gone:
        return plan
    return AccountPlan(
        tuple(c for c in plan.changes if not (c.name in gone and c.action in GRANTING))
    )
