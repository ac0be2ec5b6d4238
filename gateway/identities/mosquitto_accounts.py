"""Mosquitto's side of the registry: the plan that makes the dynamic-security plugin's clients
and roles follow it, and its application, live or into the plugin's file.

What an active identity has: an enabled client of its name, bound to its name as client id,
holding exactly its own role (`device_role`), which may publish one level under its name and
nothing else. Changes are applied so that no account is wider at any point: roles are made
right, passwords reset, client ids bound and roles stripped before an account is enabled.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.identities.accounts import (
    DEFAULT_ACCESS,
    AccountChange,
    AccountsError,
    Credential,
    IdentityStates,
    device_role,
    device_role_acls,
    gateway_role_acls,
)

if TYPE_CHECKING:
    from gateway.config import MosquittoAccountsConfig
    from gateway.identities.dynsec import Dynsec, DynsecAccount, NewAccount, RoleAcls

__all__ = ["apply_mosquitto", "apply_mosquitto_file", "plan_mosquitto", "reserved_names"]


def reserved_names(config: MosquittoAccountsConfig) -> set[str]:
    """Accounts that are not identities' and that no identity's change may touch."""
    return {name for name in (config.username, *config.gateway_clients, *config.unmanaged) if name}


def _acls(acls: Sequence[tuple[str, str]]) -> tuple[tuple[str, str, bool], ...]:
    return tuple(sorted((acltype, topic, True) for acltype, topic in acls))


def plan_mosquitto(
    identities: IdentityStates,
    live: Mapping[str, DynsecAccount],
    config: MosquittoAccountsConfig,
    *,
    names: Collection[str] | None = None,
    role_acls: Mapping[str, RoleAcls] | None = None,
    default_access: Mapping[str, bool] | None = None,
    fresh: Collection[str] = (),
) -> list[AccountChange]:
    """The changes that make Mosquitto's clients and roles follow the registry.

    With `names`, only those identities are looked at (a lifecycle command's own change);
    without, every client is, and clients of no identity are disabled. `role_acls` are the
    plugin's roles as read (all, or the named identities' own); `default_access` its defaults.
    Identities in `fresh` are being added now: an account that already has their name was made
    by someone else, and gets a new password before it is used.
    """
    changes: list[AccountChange] = []
    reserved = reserved_names(config)
    scope = identities.keys() if names is None else [n for n in names if n in identities]

    def change(action: str, name: str, detail: str) -> None:
        changes.append(AccountChange("mosquitto", action, name, detail))

    for name in sorted(scope):
        status, role = identities[name]
        account = live.get(name)
        if name in reserved:
            change("report", name, "identity has the name of a gateway, admin or unmanaged account")
            continue
        if status == "retired":
            if account is not None and not account.disabled:
                change("disable", name, "identity is retired; its account is still enabled")
            continue
        own = device_role(name)
        held = None if role_acls is None else role_acls.get(own)
        held = None if held is None else tuple(sorted(held))
        if held is None and (role_acls is not None or account is None):
            change("device_role", name, f"role {own} is missing")
        elif held is not None and held != _acls(device_role_acls(config, name)):
            change("device_acls", name, f"role {own} allows {list(held)}: not its own topics")
        if account is None:
            change("create", name, f"active identity (role {role}) has no account")
            continue
        if name in fresh or account.disabled:
            why = "made before the identity" if name in fresh else "disabled while active"
            change("reset", name, f"account {why}: it gets a new password")
        if account.client_id != name:
            change("bind", name, f"client id is {account.client_id!r}, not its own name")
        if account.roles != (own,) or account.groups:
            extra = [
                *(r for r in account.roles if r != own),
                *(f"group {g}" for g in account.groups),
            ]
            change("roles", name, f"holds {', '.join(extra) or 'not its role'}: wanted only {own}")
        if account.disabled:
            change("enable", name, "identity is active; its account is disabled")

    if names is None:
        for name in sorted(live.keys() - identities.keys() - reserved):
            if not live[name].disabled:
                change("disable", name, "no identity of this name in the registry")
        changes += _gateway_accounts(live, config)
        if role_acls is not None:
            wanted = _acls(gateway_role_acls(config))
            have = sorted(role_acls.get(config.gateway_role, ()))
            if tuple(have) != wanted:
                change("role_acls", config.gateway_role, f"ACLs {have} are not {list(wanted)}")
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
        if account.disabled:
            changes.append(
                AccountChange("mosquitto", "enable", client_id, "gateway account is disabled")
            )
    return changes


def _wanted_roles(name: str, config: MosquittoAccountsConfig) -> list[str]:
    return [config.gateway_role] if name in config.gateway_clients else [device_role(name)]


def _accounts(
    changes: Sequence[AccountChange],
    action: str,
    config: MosquittoAccountsConfig,
    identities: IdentityStates,
    credentials: Mapping[str, Credential],
) -> list[NewAccount]:
    """The accounts to write whole for `action`: devices with their credentials, pods with the
    gateway's. A reset is such a write in the file (a disabled account is reset only on its way
    to being enabled)."""
    from gateway.identities.dynsec import NewAccount

    new = []
    for c in changes:
        if c.action != action:
            continue
        if c.name in config.gateway_clients:
            if config.gateway_password is None:
                raise AccountsError(
                    f"gateway account {c.name} is missing and brokers.mosquitto.gateway_password "
                    "is not set"
                )
            password = config.gateway_password.require()
        else:
            password = credentials[c.name].password
        role = identities[c.name][1] if c.name in identities else "gateway"
        roles = tuple(_wanted_roles(c.name, config))
        new.append(NewAccount(c.name, password, c.name, roles, f"role {role}"))
    return new


def _gateway_role(
    changes: Sequence[AccountChange], config: MosquittoAccountsConfig, new: Sequence[NewAccount]
) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    """The gateway role to make right: when its ACLs differ, or a pod's account is created."""
    if any(c.action == "role_acls" for c in changes) or any(
        a.username in config.gateway_clients for a in new
    ):
        return [(config.gateway_role, gateway_role_acls(config))]
    return []


def _roles(
    changes: Sequence[AccountChange], config: MosquittoAccountsConfig, action: str
) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    return [
        (device_role(c.name), device_role_acls(config, c.name))
        for c in changes
        if c.action == action
    ]


def _defaults(changes: Sequence[AccountChange]) -> dict[str, bool]:
    return {c.name: DEFAULT_ACCESS[c.name] for c in changes if c.action == "defaults"}


async def apply_mosquitto(
    dynsec: Dynsec,
    changes: Sequence[AccountChange],
    config: MosquittoAccountsConfig,
    identities: IdentityStates,
    credentials: Mapping[str, Credential],
) -> None:
    """Carry out Mosquitto's changes through the running plugin, narrowing before widening."""
    disabling = [c.name for c in changes if c.action == "disable"]
    if disabling:
        await dynsec.set_disabled(disabling, True)
    if defaults := _defaults(changes):
        await dynsec.set_default_access(defaults)
    new = _accounts(changes, "create", config, identities, credentials)
    if wrong := _gateway_role(changes, config, new) + _roles(changes, config, "device_acls"):
        await dynsec.ensure_roles(wrong)
    if missing := _roles(changes, config, "device_role"):
        await dynsec.create_roles(missing)
    if new:
        await dynsec.create(new)
    for c in changes:
        if c.action == "reset":
            await dynsec.set_password(c.name, credentials[c.name].password)
        elif c.action == "bind":
            await dynsec.set_client_id(c.name, c.name)
        elif c.action == "roles":
            await dynsec.set_roles(c.name, _wanted_roles(c.name, config))
    enabling = [c.name for c in changes if c.action == "enable"]
    if enabling:
        await dynsec.set_disabled(enabling, False)


def apply_mosquitto_file(
    path: Path,
    changes: Sequence[AccountChange],
    config: MosquittoAccountsConfig,
    identities: IdentityStates,
    credentials: Mapping[str, Credential],
) -> None:
    """Carry out Mosquitto's changes in the plugin's file, for a broker that is stopped: the
    way to load a fleet, since the running plugin rewrites its whole file after every command."""
    from gateway.identities.dynsec_file import update_clients, write_accounts, write_roles

    new = _accounts(changes, "create", config, identities, credentials)
    roles = _roles(changes, config, "device_role") + _roles(changes, config, "device_acls")
    roles += _gateway_role(changes, config, new)
    if roles:
        write_roles(path, roles)
    resets = _accounts(changes, "reset", config, identities, credentials)
    if new or resets:
        write_accounts(path, [*new, *resets])
    fields: dict[str, dict[str, Any]] = {}
    for c in changes:
        field: dict[str, Any] = {}
        if c.action in ("enable", "disable"):
            field = {"disabled": c.action == "disable"}
        elif c.action == "bind":
            field = {"clientid": c.name}
        elif c.action == "roles":
            field = {"roles": [{"rolename": r} for r in _wanted_roles(c.name, config)]}
            field["groups"] = []
        if field:
            fields.setdefault(c.name, {}).update(field)
    defaults = _defaults(changes)
    if fields or defaults:
        update_clients(path, fields, default_access=defaults)
