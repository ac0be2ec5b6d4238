"""An admin connection to Mosquitto's dynamic-security plugin, where broker accounts are kept.

The plugin is managed over MQTT: JSON commands published to `$CONTROL/dynamic-security/v1`,
one response message per request on `.../v1/response`, its responses in the order of the
commands. Requests go one at a time and each carries correlation data, so a response is matched
to the request that asked for it and never to a stray one. Commands travel in chunks: the
plugin rewrites its whole file after every command, so a fleet is loaded through
`gateway.identities.dynsec_file` while the broker is stopped, not through here.

Passwords travel only inside commands, whose repr hides them; errors name the command, the
account or role and what the broker said, never a password.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

from gateway.config import MosquittoAccountsConfig
from gateway.errors import GatewayError
from gateway.lifecycle import Lifecycle

__all__ = [
    "COMMAND_TOPIC",
    "RESPONSE_TOPIC",
    "Dynsec",
    "DynsecAccount",
    "DynsecError",
    "NewAccount",
    "RoleAcls",
    "account_from",
    "role_acls_from",
]

log = logging.getLogger(__name__)

COMMAND_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{COMMAND_TOPIC}/response"

_PAGE = 1000
_SECRET_KEYS = frozenset({"password"})

RoleAcls = tuple[tuple[str, str, bool], ...]
"""A role's ACLs as (acltype, topic, allow)."""


@dataclass(frozen=True, slots=True)
class DynsecAccount:
    """One client as the plugin holds it."""

    username: str
    client_id: str | None
    disabled: bool
    roles: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    text_name: str | None = None


@dataclass(frozen=True, slots=True)
class NewAccount:
    """An account to create: `client_id` is bound, so no other client id may log in as it (an
    empty one leaves the account unbound, as for a test broker's shared gateway account)."""

    username: str
    password: str = field(repr=False)
    client_id: str
    roles: tuple[str, ...] = ()
    text_name: str | None = None


class DynsecError(GatewayError):
    """The plugin refused commands, the admin login was refused, or no response came.

    `failures` holds (command, username or role, the broker's error) for each refused command.
    """

    def __init__(self, message: str, failures: Sequence[tuple[str, str, str]] = ()) -> None:
        super().__init__(message)
        self.failures = list(failures)


class _Command(dict[str, Any]):
    """A command as sent: its repr hides passwords, so logs and tracebacks never show one."""

    def __repr__(self) -> str:
        shown = {k: ("***" if k in _SECRET_KEYS else v) for k, v in self.items()}
        return f"_Command({shown!r})"

    __str__ = __repr__


def _subject(command: Mapping[str, Any]) -> str:
    for key in ("username", "rolename", "groupname"):
        if key in command:
            return str(command[key])
    return ""


def account_from(data: Mapping[str, Any]) -> DynsecAccount:
    """A client as the plugin describes it, in its replies and in its file alike."""
    return DynsecAccount(
        username=data["username"],
        client_id=data.get("clientid") or None,
        disabled=bool(data.get("disabled", False)),
        roles=tuple(r["rolename"] for r in data.get("roles", ())),
        groups=tuple(g["groupname"] for g in data.get("groups", ())),
        text_name=data.get("textname") or None,
    )


def role_acls_from(data: Mapping[str, Any]) -> RoleAcls:
    """A role's ACLs as the plugin describes them, in its replies and in its file alike."""
    acls = data.get("acls", ())
    return tuple((acl["acltype"], acl["topic"], bool(acl.get("allow", False))) for acl in acls)


class Dynsec(Lifecycle):
    """The plugin's admin session: `async with Dynsec(config) as dynsec: ...`."""

    def __init__(
        self, config: MosquittoAccountsConfig, *, chunk: int = 100, timeout: float = 300.0
    ) -> None:
        if chunk < 1:
            raise ValueError("chunk must be at least 1")
        self.config = config
        self.chunk = chunk
        # A chunk of commands on a big file takes one file rewrite per command.
        self.timeout = timeout
        self._client: aiomqtt.Client | None = None
        self._lock = asyncio.Lock()
        self._requests = itertools.count(1)
        self._nonce = secrets.token_hex(4)

    async def start(self) -> None:
        config = self.config
        password = config.password.require() if config.password is not None else None
        context = config.tls_context()
        client = aiomqtt.Client(
            config.host,
            config.port,
            username=config.username,
            password=password,
            identifier=config.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            tls_context=context,
            timeout=30,
        )
        try:
            await client.__aenter__()
        except aiomqtt.MqttCodeError as exc:
            raise DynsecError(
                f"Mosquitto at {config.host}:{config.port} refused the dynamic-security admin "
                f"login {config.username!r} (client id {config.client_id!r}): {exc}"
            ) from None
        except aiomqtt.MqttError as exc:
            raise DynsecError(
                f"cannot reach Mosquitto at {config.host}:{config.port}: {exc}"
            ) from None
        self._client = client
        try:
            await client.subscribe(RESPONSE_TOPIC, qos=1)
        except aiomqtt.MqttError as exc:
            await self._close()
            raise DynsecError(
                f"account {config.username!r} may not read {RESPONSE_TOPIC}: {exc}"
            ) from None

    async def close(self) -> None:
        await self._close()

    async def _close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            # Already gone: nothing of ours is left to flush.
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)

    async def execute(self, commands: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Send commands in chunks; the plugin's responses, in order (errors are not raised)."""
        responses: list[dict[str, Any]] = []
        for start in range(0, len(commands), self.chunk):
            responses.extend(await self._request(commands[start : start + self.chunk]))
        return responses

    async def _request(self, commands: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        client = self._client
        if client is None:
            raise DynsecError("the dynamic-security session is not open")
        async with self._lock:
            tag = f"{self._nonce}-{next(self._requests)}"
            sent = [{**c, "correlationData": f"{tag}-{i}"} for i, c in enumerate(commands)]
            try:
                await client.publish(COMMAND_TOPIC, json.dumps({"commands": sent}), qos=1)
                async with asyncio.timeout(self.timeout):
                    while True:
                        message = await anext(client.messages)
                        responses = self._match(message, tag, len(sent))
                        if responses is not None:
                            return responses
            except TimeoutError:
                raise DynsecError(
                    f"no response from the dynamic-security plugin within {self.timeout:g}s "
                    f"to {len(sent)} command(s) starting with {commands[0].get('command')!r}"
                ) from None
            except aiomqtt.MqttError as exc:
                raise DynsecError(f"dynamic-security session lost: {exc}") from None

    @staticmethod
    def _match(message: aiomqtt.Message, tag: str, count: int) -> list[dict[str, Any]] | None:
        if not isinstance(message.payload, bytes | bytearray):
            return None
        try:
            responses = json.loads(message.payload)["responses"]
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed dynamic-security response")
            return None
        if not isinstance(responses, list) or not responses:
            return None
        first = responses[0].get("correlationData") if isinstance(responses[0], dict) else None
        if first != f"{tag}-0":
            return None  # another admin's, or a late one of ours
        if len(responses) != count:
            raise DynsecError(f"{len(responses)} responses to {count} dynamic-security commands")
        for response in responses:
            response.pop("correlationData", None)
        return list(responses)

    async def _checked(
        self, commands: Sequence[Mapping[str, Any]], ignore: frozenset[str] = frozenset()
    ) -> list[dict[str, Any]]:
        """Execute, then raise one DynsecError naming every refused command."""
        responses = await self.execute(commands)
        failures = [
            (str(c.get("command")), _subject(c), str(r["error"]))
            for c, r in zip(commands, responses, strict=True)
            if "error" in r and r["error"] not in ignore
        ]
        if failures:
            shown = "; ".join(f"{cmd} {who!r}: {error}" for cmd, who, error in failures[:10])
            more = f" (and {len(failures) - 10} more)" if len(failures) > 10 else ""
            raise DynsecError(
                f"{len(failures)} dynamic-security command(s) refused: {shown}{more}", failures
            )
        return responses

    async def accounts(self) -> dict[str, DynsecAccount]:
        """Every client the plugin holds, by username."""
        found: dict[str, DynsecAccount] = {}
        offset = 0
        while True:
            (response,) = await self._checked(
                [_Command(command="listClients", verbose=True, count=_PAGE, offset=offset)]
            )
            clients = response.get("data", {}).get("clients", [])
            for data in clients:
                account = account_from(data)
                found[account.username] = account
            offset += len(clients)
            if len(clients) < _PAGE:
                return found

    async def named(self, usernames: Sequence[str]) -> dict[str, DynsecAccount]:
        """Only these clients (those that exist): listing a whole fleet to look at one would
        cost a retirement its second."""
        ordered = sorted(set(usernames))
        responses = await self.execute(
            [_Command(command="getClient", username=name) for name in ordered]
        )
        found = {}
        for response in responses:
            client = (response.get("data") or {}).get("client")
            if client is not None:
                account = account_from(client)
                found[account.username] = account
        return found

    async def create(self, accounts: Sequence[NewAccount]) -> None:
        """Create accounts, each bound to its client id and in its roles."""
        commands = []
        for account in accounts:
            command = _Command(
                command="createClient",
                username=account.username,
                password=account.password,
                roles=[{"rolename": role} for role in account.roles],
            )
            if account.client_id:
                command["clientid"] = account.client_id
            if account.text_name is not None:
                command["textname"] = account.text_name
            commands.append(command)
        await self._checked(commands)

    async def create_roles(self, roles: Sequence[tuple[str, Sequence[tuple[str, str]]]]) -> None:
        """Create roles, each with exactly these allow ACLs (acltype, topic); one that exists
        already is refused, as an existing client is by `create`."""
        await self._checked(
            [
                _Command(
                    command="createRole",
                    rolename=role,
                    acls=[
                        {"acltype": acltype, "topic": topic, "allow": True}
                        for acltype, topic in acls
                    ],
                )
                for role, acls in roles
            ]
        )

    async def set_disabled(self, usernames: Sequence[str], disabled: bool) -> None:
        """Disable (the plugin kicks a connected client at once) or enable accounts."""
        name = "disableClient" if disabled else "enableClient"
        await self._checked([_Command(command=name, username=u) for u in usernames])

    async def delete(self, usernames: Sequence[str]) -> None:
        """Delete accounts (a connected client is kicked)."""
        await self._checked([_Command(command="deleteClient", username=u) for u in usernames])

    async def set_password(self, username: str, password: str) -> None:
        await self._checked(
            [_Command(command="setClientPassword", username=username, password=password)]
        )

    async def set_client_id(self, username: str, client_id: str) -> None:
        await self._checked(
            [_Command(command="setClientId", username=username, clientid=client_id)]
        )

    async def set_roles(self, username: str, roles: Sequence[str]) -> None:
        """Exactly these roles afterwards, and no groups (modifyClient replaces both lists)."""
        await self._checked(
            [
                _Command(
                    command="modifyClient",
                    username=username,
                    roles=[{"rolename": role} for role in roles],
                    groups=[],
                )
            ]
        )

    async def ensure_role(self, role: str, acls: Sequence[tuple[str, str]]) -> None:
        """The role exists with exactly these allow ACLs (acltype, topic), nothing else."""
        await self.ensure_roles([(role, acls)])

    async def ensure_roles(self, roles: Sequence[tuple[str, Sequence[tuple[str, str]]]]) -> None:
        """Each role exists with exactly its allow ACLs (acltype, topic), nothing else; only
        these roles are read, not every device's."""
        have = await self.roles([role for role, _ in roles])
        missing = [(role, acls) for role, acls in roles if role not in have]
        if missing:
            await self.create_roles(missing)
        commands = []
        for role, acls in roles:
            if role not in have:
                continue
            wanted = {(acltype, topic, True) for acltype, topic in acls}
            current = set(have[role])
            commands += [
                _Command(command="removeRoleACL", rolename=role, acltype=acltype, topic=topic)
                for acltype, topic, _ in sorted(current - wanted)
            ]
            commands += [
                _Command(
                    command="addRoleACL", rolename=role, acltype=acltype, topic=topic, allow=True
                )
                for acltype, topic, _ in sorted(wanted - current)
            ]
        if commands:
            await self._checked(commands)

    async def roles(self, names: Sequence[str]) -> dict[str, RoleAcls]:
        """Only these roles' ACLs (those that exist), as `role_acls` gives every role's."""
        responses = await self.execute(
            [_Command(command="getRole", rolename=name) for name in sorted(set(names))]
        )
        found = {}
        for response in responses:
            role = (response.get("data") or {}).get("role")
            if role is not None:
                found[role["rolename"]] = role_acls_from(role)
        return found

    async def role_acls(self) -> dict[str, RoleAcls]:
        """Every role's ACLs as (acltype, topic, allow)."""
        found: dict[str, RoleAcls] = {}
        offset = 0
        while True:
            (response,) = await self._checked(
                [_Command(command="listRoles", verbose=True, count=_PAGE, offset=offset)]
            )
            roles = response.get("data", {}).get("roles", [])
            for data in roles:
                found[data["rolename"]] = role_acls_from(data)
            offset += len(roles)
            if len(roles) < _PAGE:
                return found

    async def default_access(self) -> dict[str, bool]:
        """What the plugin allows when no ACL matches (publishClientSend, publishClientReceive,
        subscribe, unsubscribe)."""
        (response,) = await self._checked([_Command(command="getDefaultACLAccess")])
        return {
            acl["acltype"]: bool(acl["allow"]) for acl in response.get("data", {}).get("acls", ())
        }

    async def set_default_access(self, access: Mapping[str, bool]) -> None:
        """setDefaultACLAccess: change only the given kinds (e.g. publishClientReceive False)."""
        await self._checked(
            [
                _Command(
                    command="setDefaultACLAccess",
                    acls=[{"acltype": kind, "allow": allow} for kind, allow in access.items()],
                )
            ]
        )
