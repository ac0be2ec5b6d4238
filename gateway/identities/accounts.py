"""Broker accounts kept from the registry: what the brokers should hold, the difference from
what they hold, and its repair (plan and apply, like roles).

The registry is the source of truth. An active identity has, on each configured broker:
- Mosquitto (dynamic-security plugin, which alone decides: no ACL file beside it): an enabled
  client of its name, bound to its name as client id, holding only its own role, which may
  publish one level under its name (`gateway.identities.mosquitto_accounts`);
- Kafka: a SCRAM credential, and one ALLOW Write binding on its own topic or prefix
  (`gateway.identities.kafka_accounts`).
A retired identity's Mosquitto client is disabled, which disconnects it, and its Kafka
credentials and ALLOW bindings are removed. The gateway pods' Mosquitto accounts
(`gateway_clients`) are bound to their client ids and hold the gateway role. Mosquitto clients
that belong to no identity, and are not declared `unmanaged`, are disabled; Kafka principals that
are not identities are reported, never changed, except their Write bindings on identities'
topics, which are revoked: nothing but the owner may claim an identity.

Credentials of new accounts are generated (or supplied), written for the caller before any
broker is changed, and never logged or stored here: the brokers keep only salted hashes.
"""

from __future__ import annotations

import csv
import os
import secrets
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.config import BrokersConfig, MosquittoAccountsConfig
    from gateway.identities.model import Status
    from gateway.kafka_admin import AclBinding

__all__ = [
    "DEFAULT_ACCESS",
    "AccountChange",
    "AccountPlan",
    "AccountsError",
    "Credential",
    "configured",
    "device_role",
    "device_role_acls",
    "gateway_role_acls",
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

    `action` is one of: create, reset (a new password), enable, disable, bind (client id),
    roles (exactly the wanted roles), device_role / device_acls (a device's own role: create
    it / make its ACLs right), role_acls (the gateway role), defaults (the plugin's default
    access), grant and revoke (a Kafka binding), delete (a Kafka credential of `mechanism`),
    report (nothing is done: a person decides).
    """

    broker: Broker
    action: str
    name: str
    detail: str
    binding: AclBinding | None = None
    mechanism: str | None = None

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


def new_credentials(
    plan: AccountPlan,
    supplied: Mapping[str, str] | None = None,
    gateways: Collection[str] = (),
) -> dict[str, Credential]:
    """One password per identity whose accounts are created or reset on any broker: the supplied
    one, else a generated one. The gateway pods' accounts take the configured gateway password."""
    supplied = supplied or {}
    created = sorted(
        {
            c.name
            for c in plan.actions
            if c.action in ("create", "reset")
            and not (c.broker == "mosquitto" and c.name in gateways)
        }
    )
    return {
        name: Credential(name, supplied.get(name) or secrets.token_urlsafe(24)) for name in created
    }


def write_credentials(path: Path, credentials: Mapping[str, Credential]) -> None:
    """Append to a file only its owner can read, created so before anything is in it; never
    through a symbolic link, nor into a file someone else owns."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", newline="") as out:
        if os.fstat(out.fileno()).st_uid != os.geteuid():
            raise AccountsError(f"{path} belongs to someone else: credentials are not written")
        os.fchmod(out.fileno(), 0o600)
        writer = csv.writer(out)
        if os.fstat(out.fileno()).st_size == 0:
            writer.writerow(["name", "password"])
        for credential in credentials.values():
            writer.writerow([credential.name, credential.password])


def configured(config: BrokersConfig) -> bool:
    """Whether any broker's accounts follow the registry."""
    return config.mosquitto is not None or config.kafka is not None
