"""Broker accounts kept from the registry: what the brokers should hold, the difference from
what they hold, and its repair (plan and apply, like roles).

The registry is the source of truth. An active identity has, on each configured broker:
- Mosquitto (dynamic-security plugin): an enabled client of its name, bound to its name as client
  id, in no role and no group. Its one permission, publishing one level under its own name, is
  the broker's ACL file line `pattern write devices/%u/+` (the plugin's ACLs in Mosquitto 2.0
  cannot say `%u`, so per-device roles would be one role per device);
- Kafka: a SCRAM credential, and one ALLOW Write binding on its own topic (or prefix).
A retired identity's Mosquitto client is disabled, which disconnects it, and its Kafka credential
and bindings are removed. The gateway pods' Mosquitto accounts (`gateway_clients`) are bound to
their client ids and hold the gateway role. Mosquitto clients that belong to no identity are
disabled; Kafka principals that are not identities are reported, never changed (a cluster is
often shared, and the plan does not delete what it did not make), except their Write bindings on
identities' topics, which are revoked: nothing but the owner may claim an identity.

Credentials of new accounts are generated (or supplied), handed back once to the caller to give
to the device, and never logged or stored here: the brokers keep only salted hashes.
"""

from __future__ import annotations

import csv
import os
import secrets
from collections.abc import Collection, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import asyncpg

from gateway import trail
from gateway.errors import GatewayError
from gateway.identities.registry import Registry
from gateway.lifecycle import Lifecycle
from gateway.topics import TopicTemplate

if TYPE_CHECKING:
    from gateway.config import BrokersConfig, KafkaAccountsConfig, MosquittoAccountsConfig
    from gateway.identities.dynsec import Dynsec, DynsecAccount, NewAccount
    from gateway.identities.model import Status
    from gateway.kafka_admin import AclBinding, KafkaAdmin

__all__ = [
    "DEFAULT_ACCESS",
    "AccountChange",
    "AccountPlan",
    "AccountsError",
    "BrokerAccounts",
    "Credential",
    "device_role",
    "device_role_acls",
    "gateway_role_acls",
    "identity_binding",
    "plan_kafka",
    "plan_mosquitto",
    "sync_accounts",
    "write_credentials",
]

Broker = Literal["mosquitto", "kafka"]
# An apply's audit record lists this many changes at most, and counts them all.
RECORDED_CHANGES = 1000
IdentityStates = Mapping[str, "tuple[Status, str]"]


class AccountsError(GatewayError):
    """A broker refused a change, or the plan cannot be carried out as configured."""


@dataclass(frozen=True, slots=True)
class Credential:
    """A new account's password, for the caller to hand to the device; never printed here."""

    name: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class AccountChange:
    """One difference between the registry and a broker, and what apply does about it.

    `action` is one of: create, enable, disable, bind (client id), roles (set exactly the
    wanted roles), role_acls (the gateway role's ACLs), defaults (the plugin's default access),
    grant, revoke (a Kafka binding),
    delete (a Kafka credential), report (nothing is done: a person decides).
    """

    broker: Broker
    action: str
    name: str
    detail: str
    binding: AclBinding | None = None

    def __str__(self) -> str:
        return f"{self.broker}: {self.action} {self.name}: {self.detail}"

    def as_json(self) -> dict[str, Any]:
        return {
            "broker": self.broker,
            "action": self.action,
            "name": self.name,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class AccountPlan:
    """What apply would change, and what it only reports."""

    changes: tuple[AccountChange, ...]

    @property
    def actions(self) -> tuple[AccountChange, ...]:
        return tuple(c for c in self.changes if c.action != "report")

    @property
    def reports(self) -> tuple[AccountChange, ...]:
        return tuple(c for c in self.changes if c.action == "report")

    @property
    def empty(self) -> bool:
        return not self.changes

    def as_json(self) -> dict[str, Any]:
        return {
            "changes": [c.as_json() for c in self.actions],
            "reports": [c.as_json() for c in self.reports],
        }

    def render(self, limit: int = 50) -> str:
        """One line per change; past `limit`, counts per broker and action."""
        if self.empty:
            return "Brokers match the registry: no changes."
        lines = [f"  {c}" for c in self.changes[:limit]]
        if len(self.changes) > limit:
            counts: dict[tuple[str, str], int] = {}
            for change in self.changes[limit:]:
                key = (change.broker, change.action)
                counts[key] = counts.get(key, 0) + 1
            more = ", ".join(f"{n} {b} {a}" for (b, a), n in sorted(counts.items()))
            lines.append(f"  ... and {len(self.changes) - limit} more ({more})")
        summary = f"{len(self.actions)} change(s), {len(self.reports)} to review"
        return "\n".join([f"Broker accounts: {summary}", *lines])


# -- Mosquitto ---------------------------------------------------------------------------------

DEFAULT_ACCESS = {
    "publishClientSend": False,
    "publishClientReceive": False,
    "subscribe": False,
    "unsubscribe": True,
}
"""What the plugin allows when no role says: nothing but unsubscribing. Unlike `mosquitto_ctrl
dynsec init` (receiving allowed): beside an ACL file Mosquitto 2.0.11 grants any SUBSCRIBE, so
with receiving allowed a device subscribed to `devices/#` got every other device's messages."""


def device_role(name: str) -> str:
    """The plugin role of one device: its publish rights and nothing else."""
    return f"device:{name}"


def device_role_acls(config: MosquittoAccountsConfig, name: str) -> tuple[tuple[str, str], ...]:
    """What a device may do: publish one level under its own name (`devices/<name>/+`). One
    role per device, because the plugin's ACLs cannot say `%u`; and the plugin alone decides,
    with no ACL file beside it, since Mosquitto 2.0 lets an ACL file grant any SUBSCRIBE (a
    device could join the gateway's shared subscription and take its share of the fleet)."""
    return (("publishClientSend", config.device_topic.format(identity=name)),)


def gateway_role_acls(config: MosquittoAccountsConfig) -> tuple[tuple[str, str], ...]:
    """The gateway role: subscribe to every device topic, directly or in a shared group (the
    plugin checks a shared filter with its `$share/<group>/` prefix), and receive what is
    published there: with receiving denied by default, no device can read another's."""
    device_levels = config.device_topic.split("/")
    head = "/".join(device_levels[: device_levels.index("{identity}")])
    every = f"{head}/#" if head else "#"
    return (
        ("subscribePattern", every),
        ("subscribePattern", f"$share/+/{every}"),
        ("publishClientReceive", every),
    )


def plan_mosquitto(
    identities: IdentityStates,
    live: Mapping[str, DynsecAccount],
    config: MosquittoAccountsConfig,
    *,
    names: Collection[str] | None = None,
    gateway_acls: Mapping[str, tuple[tuple[str, str, bool], ...]] | None = None,
    default_access: Mapping[str, bool] | None = None,
) -> list[AccountChange]:
    """The changes that make Mosquitto's clients follow the registry.

    With `names`, only those identities are looked at (a lifecycle command's own change);
    without, every client is, and clients of no identity are disabled. `gateway_acls` and
    `default_access` are the plugin's, when read, to check what no device account may widen.
    """
    changes: list[AccountChange] = []
    reserved = {config.username, *config.gateway_clients} - {None}
    scope = identities.keys() if names is None else [n for n in names if n in identities]

    def change(action: str, name: str, detail: str) -> None:
        changes.append(AccountChange("mosquitto", action, name, detail))

    for name in sorted(scope):
        status, role = identities[name]
        account = live.get(name)
        if name in reserved:
            change("report", name, "identity has the name of a gateway or admin account")
            continue
        if status == "retired":
            if account is not None and not account.disabled:
                change("disable", name, "identity is retired; its account is still enabled")
            continue
        if account is None:
            change("create", name, f"active identity (role {role}) has no account")
            continue
        if account.disabled:
            change("enable", name, "identity is active; its account is disabled")
        if account.client_id != name:
            change("bind", name, f"client id is {account.client_id!r}, not its own name")
        if account.roles or account.groups:
            held = ", ".join([*account.roles, *(f"group {g}" for g in account.groups)])
            change("roles", name, f"holds {held}: wider than a device's own topics")

    if names is None:
        for name in sorted(live.keys() - identities.keys() - reserved):
            if not live[name].disabled:
                change("disable", name, "no identity of this name in the registry")
        changes += _gateway_accounts(live, config)
        if gateway_acls is not None:
            wanted = tuple(sorted((t, topic, True) for t, topic in gateway_role_acls(config)))
            have = tuple(sorted(gateway_acls.get(config.gateway_role, ())))
            if have != wanted:
                change("role_acls", config.gateway_role, f"ACLs {have} are not {wanted}")
        if default_access is not None:
            for acltype, wanted_access in DEFAULT_ACCESS.items():
                if default_access.get(acltype, not wanted_access) != wanted_access:
                    allowed = "allowed" if not wanted_access else "denied"
                    change(
                        "defaults",
                        acltype,
                        f"{acltype} is {allowed} by default, for every account without a role "
                        "that says otherwise",
                    )
    return changes


def _gateway_accounts(
    live: Mapping[str, DynsecAccount], config: MosquittoAccountsConfig
) -> list[AccountChange]:
    changes = []
    for client_id in config.gateway_clients:
        account = live.get(client_id)
        if account is None:
            changes.append(
                AccountChange("mosquitto", "create", client_id, "gateway account is missing")
            )
            continue
        if account.disabled:
            changes.append(
                AccountChange("mosquitto", "enable", client_id, "gateway account is disabled")
            )
        if account.client_id != client_id:
            changes.append(
                AccountChange("mosquitto", "bind", client_id, f"client id is {account.client_id!r}")
            )
        if account.roles != (config.gateway_role,) or account.groups:
            changes.append(
                AccountChange(
                    "mosquitto",
                    "roles",
                    client_id,
                    f"roles {list(account.roles)}, groups {list(account.groups)}; "
                    f"wanted only {config.gateway_role}",
                )
            )
    return changes


# -- Kafka -------------------------------------------------------------------------------------


def identity_binding(config: KafkaAccountsConfig, name: str) -> AclBinding | None:
    """The one binding an identity holds: Write on its own topic (or prefix)."""
    from gateway.kafka_admin import AclBinding

    if config.topic_template is None:
        return None
    topic, prefixed = TopicTemplate(config.topic_template, separator=".").identity_topics(name)
    return AclBinding(
        resource_type="topic",
        resource_name=topic,
        pattern_type="prefixed" if prefixed else "literal",
        principal=f"User:{name}",
        operation="write",
    )


def _covers(config: KafkaAccountsConfig, binding: AclBinding) -> tuple[bool, str | None]:
    """Whether a topic binding reaches identities' topics, and the one identity it is bound to
    when it reaches only that one's (a literal topic, or a prefix that ends after the name)."""
    if config.topic_template is None or binding.resource_type != "topic":
        return False, None
    template = TopicTemplate(config.topic_template, separator=".")
    name = binding.resource_name
    if binding.pattern_type != "prefixed":
        if name == "*":
            return True, None
        claim = template.parse(name)
        return claim is not None, claim[0] if claim else None
    levels = template.template.split(".")
    head = "".join(f"{level}." for level in levels[: levels.index("{identity}")])
    if not (head.startswith(name) or name.startswith(head)):
        return False, None
    claim = template.parse(name + "x") if name.endswith(".") else None
    owner = claim[0] if claim and template.identity_topics(claim[0]) == (name, True) else None
    return True, owner


def plan_kafka(
    identities: IdentityStates,
    users: Mapping[str, Collection[str]],
    bindings: Sequence[AclBinding],
    config: KafkaAccountsConfig,
    *,
    names: Collection[str] | None = None,
) -> list[AccountChange]:
    """The changes that make Kafka's credentials and identity bindings follow the registry."""
    changes: list[AccountChange] = []
    unmanaged = set(config.unmanaged)
    if config.username:
        unmanaged.add(f"User:{config.username}")
    scope = set(identities) if names is None else {n for n in names if n in identities}
    writes = [b for b in bindings if b.permission == "allow" and b.operation in ("write", "all")]
    held = set(bindings)

    def change(action: str, name: str, detail: str, binding: AclBinding | None = None) -> None:
        changes.append(AccountChange("kafka", action, name, detail, binding))

    for name in sorted(scope):
        status, role = identities[name]
        principal = f"User:{name}"
        if principal in unmanaged:
            change("report", name, "identity has the name of an unmanaged principal")
            continue
        wanted = identity_binding(config, name)
        has_credential = config.mechanism in users.get(name, ())
        if status == "active":
            if not has_credential:
                change("create", name, f"active identity (role {role}) has no credential")
            if wanted is not None and wanted not in held:
                change("grant", name, f"missing: {wanted}", wanted)
        elif has_credential:
            change("delete", name, "identity is retired; its credential still logs in")
        for binding in bindings:
            if binding.principal == principal and (status != "active" or binding != wanted):
                why = "identity is retired" if status != "active" else "wider than its own topic"
                change("revoke", name, f"{why}: {binding}", binding)

    for binding in writes:
        reaches, owner = _covers(config, binding)
        if not reaches or binding.principal in unmanaged or binding.principal == f"User:{owner}":
            continue
        subject = binding.principal.removeprefix("User:")
        if subject in identities and (names is None or subject in scope):
            continue  # handled above, with the identity
        if names is not None and owner not in scope:
            continue
        change("revoke", subject, f"may write identities' topics: {binding}", binding)

    if names is None:
        for user in sorted(users.keys() - identities.keys()):
            if f"User:{user}" not in unmanaged:
                change("report", user, "SCRAM user is neither an identity nor declared unmanaged")
    return changes


# -- reading, planning and applying against the live brokers -----------------------------------


def new_credentials(
    plan: AccountPlan, supplied: Mapping[str, str] | None = None
) -> dict[str, Credential]:
    """One password per identity created on any broker: the supplied one, else a generated one."""
    supplied = supplied or {}
    created = sorted({c.name for c in plan.actions if c.action == "create"})
    return {
        name: Credential(name, supplied.get(name) or secrets.token_urlsafe(24)) for name in created
    }


def _new_accounts(
    changes: Sequence[AccountChange],
    config: MosquittoAccountsConfig,
    identities: IdentityStates,
    credentials: Mapping[str, Credential],
) -> list[NewAccount]:
    """The accounts to create: devices with their credentials, pods with the gateway's."""
    from gateway.identities.dynsec import NewAccount

    gateways = set(config.gateway_clients)
    new = []
    roles: tuple[str, ...]
    for c in changes:
        if c.action != "create":
            continue
        if c.name in gateways:
            if config.gateway_password is None:
                raise AccountsError(
                    f"gateway account {c.name} is missing and brokers.mosquitto.gateway_password "
                    "is not set"
                )
            password, roles = config.gateway_password.require(), (config.gateway_role,)
        else:
            password, roles = credentials[c.name].password, ()
        role = identities[c.name][1] if c.name in identities else "gateway"
        new.append(NewAccount(c.name, password, c.name, roles, f"role {role}"))
    return new


def _wanted_roles(name: str, config: MosquittoAccountsConfig) -> list[str]:
    return [config.gateway_role] if name in config.gateway_clients else []


async def apply_mosquitto(
    dynsec: Dynsec,
    changes: Sequence[AccountChange],
    config: MosquittoAccountsConfig,
    identities: IdentityStates,
    credentials: Mapping[str, Credential],
) -> None:
    """Carry out Mosquitto's changes through the running plugin."""
    new = _new_accounts(changes, config, identities, credentials)
    if any(c.action == "role_acls" for c in changes) or any(a.roles for a in new):
        await dynsec.ensure_role(config.gateway_role, gateway_role_acls(config))
    defaults = {c.name: DEFAULT_ACCESS[c.name] for c in changes if c.action == "defaults"}
    if defaults:
        await dynsec.set_default_access(defaults)
    if new:
        await dynsec.create(new)
    for action, disabled in (("enable", False), ("disable", True)):
        names = [c.name for c in changes if c.action == action]
        if names:
            await dynsec.set_disabled(names, disabled)
    for c in changes:
        if c.action == "bind":
            await dynsec.set_client_id(c.name, c.name)
        elif c.action == "roles":
            await dynsec.set_roles(c.name, _wanted_roles(c.name, config))


def apply_mosquitto_file(
    path: Path,
    changes: Sequence[AccountChange],
    config: MosquittoAccountsConfig,
    identities: IdentityStates,
    credentials: Mapping[str, Credential],
) -> None:
    """Carry out Mosquitto's changes in the plugin's file, for a broker that is stopped: the
    way to load a fleet, since the running plugin rewrites its whole file after every command."""
    from gateway.identities.dynsec_file import update_clients, write_accounts, write_role

    new = _new_accounts(changes, config, identities, credentials)
    if any(c.action == "role_acls" for c in changes) or any(a.roles for a in new):
        write_role(path, config.gateway_role, gateway_role_acls(config))
    if new:
        write_accounts(path, new)
    fields: dict[str, dict[str, Any]] = {}
    for c in changes:
        field: dict[str, Any] = {}
        if c.action in ("enable", "disable"):
            field = {"disabled": c.action == "disable"}
        elif c.action == "bind":
            field = {"clientid": c.name}
        elif c.action == "roles":
            roles = [{"rolename": r} for r in _wanted_roles(c.name, config)]
            field = {"roles": roles, "groups": []}
        if field:
            fields.setdefault(c.name, {}).update(field)
    defaults = {c.name: DEFAULT_ACCESS[c.name] for c in changes if c.action == "defaults"}
    if fields or defaults:
        update_clients(path, fields, default_access=defaults)


async def apply_kafka(
    admin: KafkaAdmin,
    changes: Sequence[AccountChange],
    config: KafkaAccountsConfig,
    credentials: Mapping[str, Credential],
) -> None:
    """Carry out Kafka's changes: revocations first, so nothing is wider at any point."""
    from gateway.kafka_admin import ScramCredential

    revoked = [c.binding for c in changes if c.action == "revoke" and c.binding is not None]
    if revoked:
        await admin.delete_acls(revoked)
    deleted = [c.name for c in changes if c.action == "delete"]
    if deleted:
        await admin.delete_scram(deleted, mechanism=config.mechanism)
    created = [
        ScramCredential(c.name, credentials[c.name].password)
        for c in changes
        if c.action == "create"
    ]
    if created:
        await admin.upsert_scram(created, mechanism=config.mechanism, iterations=config.iterations)
    granted = [c.binding for c in changes if c.action == "grant" and c.binding is not None]
    if granted:
        await admin.create_acls(granted)


def configured(config: BrokersConfig) -> bool:
    """Whether any broker's accounts follow the registry."""
    return config.mosquitto is not None or config.kafka is not None


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
        self, identities: IdentityStates, names: Collection[str] | None = None
    ) -> AccountPlan:
        """The difference for `names` (a lifecycle command's own), or for everything."""
        changes: list[AccountChange] = []
        if self.dynsec_file is not None and self.config.mosquitto is not None:
            from gateway.identities.dynsec_file import read_state

            state = read_state(self.dynsec_file)
            changes += plan_mosquitto(
                identities,
                state.accounts,
                self.config.mosquitto,
                names=names,
                gateway_acls=state.role_acls if names is None else None,
                default_access=state.default_access if names is None else None,
            )
        if self.dynsec is not None and self.config.mosquitto is not None:
            config = self.config.mosquitto
            if names is None:
                changes += plan_mosquitto(
                    identities,
                    await self.dynsec.accounts(),
                    config,
                    gateway_acls=await self.dynsec.role_acls(),
                    default_access=await self.dynsec.default_access(),
                )
            else:
                changes += plan_mosquitto(
                    identities, await self.dynsec.named(list(names)), config, names=names
                )
        if self.kafka is not None and self.config.kafka is not None:
            changes += plan_kafka(
                identities,
                await self.kafka.scram_users(),
                await self.kafka.describe_acls(resource_type="topic"),
                self.config.kafka,
                names=names,
            )
        return AccountPlan(tuple(changes))

    async def apply(
        self,
        plan: AccountPlan,
        identities: IdentityStates,
        supplied: Mapping[str, str] | None = None,
    ) -> dict[str, Credential]:
        """Carry out the plan; returns the credentials of the identities it created."""
        credentials = new_credentials(plan, supplied)
        mine = [c for c in plan.actions if c.broker == "mosquitto"]
        if self.dynsec_file is not None and self.config.mosquitto is not None:
            apply_mosquitto_file(
                self.dynsec_file, mine, self.config.mosquitto, identities, credentials
            )
        if self.dynsec is not None and self.config.mosquitto is not None:
            await apply_mosquitto(self.dynsec, mine, self.config.mosquitto, identities, credentials)
        if self.kafka is not None and self.config.kafka is not None:
            mine = [c for c in plan.actions if c.broker == "kafka"]
            await apply_kafka(self.kafka, mine, self.config.kafka, credentials)
        gateways = set(self.config.mosquitto.gateway_clients if self.config.mosquitto else ())
        return {name: c for name, c in credentials.items() if name not in gateways}

    async def rotate(self, name: str, password: str) -> None:
        """Give an identity's accounts a new password on every broker."""
        if self.dynsec is not None:
            await self.dynsec.set_password(name, password)
        if self.kafka is not None and self.config.kafka is not None:
            from gateway.kafka_admin import ScramCredential

            await self.kafka.upsert_scram(
                [ScramCredential(name, password)],
                mechanism=self.config.kafka.mechanism,
                iterations=self.config.kafka.iterations,
            )


def write_credentials(path: Path, credentials: Mapping[str, Credential]) -> None:
    """Append to a file only its owner can read, created so before anything is in it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "w", newline="") as out:
        os.fchmod(out.fileno(), 0o600)
        writer = csv.writer(out)
        if os.fstat(out.fileno()).st_size == 0:
            writer.writerow(["name", "password"])
        for credential in credentials.values():
            writer.writerow([credential.name, credential.password])


def check_delivery(
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
        raise AccountsError(
            f"{len(missing)} new broker account(s) need a password (e.g. {missing[0]}): pass "
            "--credentials-out FILE for generated ones, or --credentials-in FILE"
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
) -> AccountPlan:
    """Plan (and apply) the brokers' side of the registry, recording what was done."""
    identities = await Registry(conn, actor).states(names)
    async with BrokerAccounts(config, dynsec_file=dynsec_file) as brokers:
        plan = await brokers.plan(identities, names)
        if not apply or not plan.actions:
            return plan
        check_delivery(plan, config, supplied, credentials_out)
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
