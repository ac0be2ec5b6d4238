"""The dynamic-security plugin's JSON file, written directly while the broker is stopped.

The plugin rewrites its whole file after every command, so creating a fleet through it is
quadratic (500 accounts on a 1 MB file took 13 s here). A fleet is written here instead, in one
atomic replacement, and the broker reads it when it starts. Passwords are stored as the plugin
stores them: PBKDF2-SHA512, base64 hash and base64 12-byte salt; hashing is the cost, so many
accounts are hashed in a process pool.
"""

from __future__ import annotations

import base64
import hashlib
import json
import multiprocessing
import os
import secrets
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.identities.dynsec import (
    DynsecAccount,
    NewAccount,
    RoleAcls,
    account_from,
    role_acls_from,
)

__all__ = [
    "ADMIN_ROLE",
    "FileState",
    "hash_password",
    "init_file",
    "read_state",
    "update_clients",
    "write_accounts",
    "write_role",
    "write_roles",
]

ADMIN_ROLE = "admin"
ITERATIONS = 101  # what the plugin itself uses

# Below this, starting worker processes costs more than hashing in this one.
_POOL_FROM = 2000

# What `mosquitto_ctrl dynsec init` grants its admin: the plugin's control topics and $SYS, and
# reading (not writing) everything else for inspection.
_ADMIN_ACLS = [
    ("publishClientSend", "$CONTROL/dynamic-security/#"),
    ("publishClientReceive", "$CONTROL/dynamic-security/#"),
    ("subscribePattern", "$CONTROL/dynamic-security/#"),
    ("publishClientReceive", "$SYS/#"),
    ("subscribePattern", "$SYS/#"),
    ("publishClientReceive", "#"),
    ("subscribePattern", "#"),
    ("unsubscribePattern", "#"),
]
_DEFAULT_ACCESS = {
    "publishClientSend": False,
    "publishClientReceive": True,
    "subscribe": False,
    "unsubscribe": True,
}


def hash_password(
    password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS
) -> tuple[str, str]:
    """(hash, salt), both base64, as the plugin stores and checks them."""
    salt = secrets.token_bytes(12) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return base64.b64encode(digest).decode(), base64.b64encode(salt).decode()


def init_file(
    path: Path,
    admin_username: str,
    admin_password: str,
    *,
    default_access: Mapping[str, bool] | None = None,
) -> None:
    """A starting file as `mosquitto_ctrl dynsec init` writes it: the admin and its role, and
    the default access given here in place of the tool's."""
    password, salt = hash_password(admin_password)
    document = {
        "clients": [
            {
                "username": admin_username,
                "textname": "Dynsec admin user",
                "password": password,
                "salt": salt,
                "iterations": ITERATIONS,
                "roles": [{"rolename": ADMIN_ROLE}],
            }
        ],
        "roles": [
            {
                "rolename": ADMIN_ROLE,
                "acls": [{"acltype": t, "topic": topic, "allow": True} for t, topic in _ADMIN_ACLS],
            }
        ],
        "defaultACLAccess": {**_DEFAULT_ACCESS, **(default_access or {})},
    }
    _replace(path, document)


def write_accounts(
    path: Path, accounts: Iterable[NewAccount], *, disabled: Iterable[str] = ()
) -> int:
    """Create or replace these clients in the file (their roles must exist there: see
    `write_role`); the names in `disabled` are written disabled; an empty `client_id` leaves an
    account unbound. Returns how many were written."""
    document: dict[str, Any] = json.loads(path.read_text())
    wanted = list(accounts)
    off = set(disabled)
    hashes = _hash_all([a.password for a in wanted])
    written = {}
    for account, (password, salt) in zip(wanted, hashes, strict=True):
        client: dict[str, Any] = {
            "username": account.username,
            "password": password,
            "salt": salt,
            "iterations": ITERATIONS,
            "roles": [{"rolename": role} for role in account.roles],
        }
        if account.client_id:
            client["clientid"] = account.client_id
        if account.text_name is not None:
            client["textname"] = account.text_name
        if account.username in off:
            client["disabled"] = True
        written[account.username] = client
    kept = [c for c in document.get("clients", []) if c.get("username") not in written]
    document["clients"] = kept + list(written.values())
    _replace(path, document)
    return len(written)


@dataclass(frozen=True)
class FileState:
    """What the file holds, in the shapes the live plugin reports them."""

    accounts: dict[str, DynsecAccount]
    role_acls: dict[str, RoleAcls]
    default_access: dict[str, bool]


def read_state(path: Path) -> FileState:
    """The file's clients, roles and default access, as a plan reads a running plugin's."""
    document: dict[str, Any] = json.loads(path.read_text())
    accounts = [account_from(client) for client in document.get("clients", [])]
    return FileState(
        accounts={account.username: account for account in accounts},
        role_acls={role["rolename"]: role_acls_from(role) for role in document.get("roles", [])},
        default_access={k: bool(v) for k, v in document.get("defaultACLAccess", {}).items()},
    )


def update_clients(
    path: Path,
    fields: Mapping[str, Mapping[str, Any]],
    *,
    default_access: Mapping[str, bool] | None = None,
) -> None:
    """Set these fields of existing clients (`disabled`, `clientid`, `roles` as the file spells
    them), and of the default access, in one atomic replacement."""
    document: dict[str, Any] = json.loads(path.read_text())
    for client in document.get("clients", []):
        changed = fields.get(client.get("username"))
        if changed:
            client.update(changed)
            if client.get("disabled") is False:
                del client["disabled"]
    if default_access:
        document.setdefault("defaultACLAccess", {}).update(default_access)
    _replace(path, document)


def write_role(path: Path, role: str, acls: Sequence[tuple[str, str]]) -> None:
    """Create or replace a role in the file with exactly these allow ACLs (acltype, topic)."""
    write_roles(path, [(role, acls)])


def write_roles(path: Path, roles: Iterable[tuple[str, Sequence[tuple[str, str]]]]) -> int:
    """Create or replace roles, each with exactly these allow ACLs (acltype, topic), in one read
    and one atomic replacement (a fleet has a role per device). Returns how many were written."""
    document: dict[str, Any] = json.loads(path.read_text())
    written = {
        role: {
            "rolename": role,
            "acls": [{"acltype": t, "topic": topic, "allow": True} for t, topic in acls],
        }
        for role, acls in roles
    }
    kept = [r for r in document.get("roles", []) if r.get("rolename") not in written]
    document["roles"] = kept + list(written.values())
    _replace(path, document)
    return len(written)


def _hash_all(passwords: Sequence[str]) -> list[tuple[str, str]]:
    if len(passwords) < _POOL_FROM:
        return [hash_password(p) for p in passwords]
    # Not fork: the caller may have threads (an event loop's executor), and fork copies their locks.
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(os.cpu_count() or 1, mp_context=context) as pool:
        return list(pool.map(hash_password, passwords, chunksize=1000))


def _replace(path: Path, document: dict[str, Any]) -> None:
    """Write beside the file, then rename over it: the broker never reads half a file."""
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            os.fchmod(out.fileno(), 0o600)
            json.dump(document, out, separators=(",", ":"))
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
