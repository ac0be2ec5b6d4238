"""Kafka's accounts and ACLs, read and changed through the admin protocol.

The registry makes each identity's Kafka account (a SCRAM credential) and its ACLs, and the
Kafka source reads the ACLs to know whether the broker enforces its claims. aiokafka 0.14 has
no admin calls for either: its protocol module carries the ACL requests one binding at a time,
and the SCRAM requests (API keys 50 and 51) not at all, so `gateway.kafka_protocol` defines
them and this module sends them through an `AIOKafkaClient`'s own connection.

A SCRAM credential travels as a salt and a salted password (PBKDF2 of the password), never the
password; but the salted password is enough to log in, so it is kept out of reprs and logs too.
"""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import secrets
import ssl
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaClient
from aiokafka.errors import KafkaError, for_code
from aiokafka.protocol.api import Request

from gateway.config import KafkaConnection
from gateway.errors import GatewayError
from gateway.kafka_protocol import (
    AclFilter,
    AlterScram,
    CreateAcls,
    DeleteAcls,
    DescribeAcls,
    DescribeScram,
)
from gateway.lifecycle import Lifecycle

__all__ = [
    "CLUSTER",
    "AclBinding",
    "KafkaAdmin",
    "KafkaAdminError",
    "SaltedCredential",
    "ScramCredential",
    "connection_arguments",
    "salt_credentials",
]

CLUSTER = "kafka-cluster"
"""The name of the one cluster resource (Describe on it lets a principal read ACLs)."""

# Kafka's wire codes (org.apache.kafka.common.acl and .resource), by their enum names.
_RESOURCE_TYPES = {
    "any": 1,
    "topic": 2,
    "group": 3,
    "cluster": 4,
    "transactional_id": 5,
    "delegation_token": 6,
    "user": 7,
}
_PATTERN_TYPES = {"any": 1, "match": 2, "literal": 3, "prefixed": 4}
_OPERATIONS = {
    "any": 1,
    "all": 2,
    "read": 3,
    "write": 4,
    "create": 5,
    "delete": 6,
    "alter": 7,
    "describe": 8,
    "cluster_action": 9,
    "describe_configs": 10,
    "alter_configs": 11,
    "idempotent_write": 12,
    "create_tokens": 13,
    "describe_tokens": 14,
}
_PERMISSIONS = {"any": 1, "deny": 2, "allow": 3}
_MECHANISMS = {"SCRAM-SHA-256": (1, "sha256"), "SCRAM-SHA-512": (2, "sha512")}
_MECHANISM_NAMES = {code: name for name, (code, _) in _MECHANISMS.items()}

# Bounds the size of one request (and of the controller's one metadata batch for it).
BATCH = 1_000
# Below this many credentials, starting worker processes costs more than hashing in a thread.
_POOL_THRESHOLD = 256
_RESOURCE_NOT_FOUND = 91


def _code(table: dict[str, int], what: str, value: str, *, wildcard: bool = False) -> int:
    if value == "any" and not wildcard:
        raise ValueError(f"{what} 'any' is a filter, not a binding")
    try:
        return table[value]
    except KeyError:
        choices = ", ".join(name for name in table if wildcard or name != "any")
        raise ValueError(f"unknown {what} {value!r} (one of {choices})") from None


def _name(table: dict[str, int], code: int) -> str:
    for name, value in table.items():
        if value == code:
            return name
    return f"unknown({code})"


@dataclass(frozen=True, slots=True)
class AclBinding:
    """One ACL: `permission` for `principal` to do `operation` on a resource, from `host`."""

    resource_type: str
    resource_name: str
    pattern_type: str
    principal: str
    operation: str
    permission: str = "allow"
    host: str = "*"

    def __post_init__(self) -> None:
        _code(_RESOURCE_TYPES, "resource type", self.resource_type)
        if self.pattern_type not in ("literal", "prefixed"):
            raise ValueError(f"pattern type {self.pattern_type!r} must be literal or prefixed")
        _code(_OPERATIONS, "operation", self.operation)
        _code(_PERMISSIONS, "permission", self.permission)
        if ":" not in self.principal:
            raise ValueError(f"principal {self.principal!r} must be <type>:<name>, e.g. User:x")

    def __str__(self) -> str:
        prefix = "prefix " if self.pattern_type == "prefixed" else ""
        return (
            f"{self.permission.upper()} {self.principal} {self.operation.upper()} on "
            f"{self.resource_type} {prefix}{self.resource_name!r} from {self.host}"
        )

    def _wire(self) -> tuple[int, str, int, str, str, int, int]:
        return (
            _RESOURCE_TYPES[self.resource_type],
            self.resource_name,
            _PATTERN_TYPES[self.pattern_type],
            self.principal,
            self.host,
            _OPERATIONS[self.operation],
            _PERMISSIONS[self.permission],
        )


@dataclass(frozen=True, slots=True)
class ScramCredential:
    """A SCRAM user and the password it logs in with."""

    user: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class SaltedCredential:
    """What the broker stores of a credential; enough to log in, so kept out of reprs."""

    user: str
    mechanism: str
    iterations: int
    salt: bytes = field(repr=False)
    salted_password: bytes = field(repr=False)


class KafkaAdminError(GatewayError):
    """Kafka refused an admin request, or could not be reached for it; the message names the
    request and the broker's error."""

    def __init__(self, message: str, *, code: int | None = None, retriable: bool = False):
        super().__init__(message)
        self.code = code
        """Kafka's error code, when the broker answered with one."""
        self.retriable = retriable


def _check(code: int, message: str | None, what: str) -> None:
    if code == 0:
        return
    error = for_code(code)
    detail = f": {message}" if message else ""
    raise KafkaAdminError(
        f"kafka: {what} refused: {error.__name__} (error code {code}){detail}",
        code=code,
        retriable=bool(getattr(error, "retriable", False)),
    )


# --- salting --------------------------------------------------------------------------------


def _salt(
    pairs: Sequence[tuple[str, str]], mechanism: str, iterations: int
) -> list[SaltedCredential]:
    digest = _MECHANISMS[mechanism][1]
    salted = []
    for user, password in pairs:
        salt = secrets.token_bytes(32)
        key = hashlib.pbkdf2_hmac(digest, password.encode(), salt, iterations)
        salted.append(SaltedCredential(user, mechanism, iterations, salt, key))
    return salted


async def salt_credentials(
    credentials: Sequence[ScramCredential],
    *,
    mechanism: str = "SCRAM-SHA-256",
    iterations: int = 4096,
) -> list[SaltedCredential]:
    """Each credential's salt (32 random bytes) and salted password, computed off the event
    loop: in a thread for a few, in worker processes (one per core) for bulk."""
    if mechanism not in _MECHANISMS:
        raise ValueError(f"unknown SCRAM mechanism {mechanism!r} (one of {', '.join(_MECHANISMS)})")
    pairs = [(c.user, c.password) for c in credentials]
    if len(pairs) < _POOL_THRESHOLD:
        return await asyncio.to_thread(_salt, pairs, mechanism, iterations)
    loop = asyncio.get_running_loop()
    # Spawned, not forked: the parent runs an event loop and threads a fork would copy mid-use.
    with ProcessPoolExecutor(mp_context=multiprocessing.get_context("spawn")) as pool:
        chunks = await asyncio.gather(
            *(
                loop.run_in_executor(pool, _salt, chunk, mechanism, iterations)
                for chunk in _chunks(pairs, BATCH)
            )
        )
    return [credential for chunk in chunks for credential in chunk]


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --- the client -----------------------------------------------------------------------------


def connection_arguments(connection: KafkaConnection) -> dict[str, Any]:
    """The keyword arguments an aiokafka client logs in to `connection` with."""
    context: ssl.SSLContext | None = None
    if connection.security_protocol in ("SSL", "SASL_SSL"):
        try:
            context = connection.tls_context()
        except OSError as exc:  # ssl.SSLError is one too
            raise KafkaAdminError(
                f"kafka: cannot load the TLS files (ca_file {connection.ca_file}, cert_file "
                f"{connection.cert_file}, key_file {connection.key_file}): {exc}"
            ) from exc
    sasl = connection.security_protocol.startswith("SASL")
    return {
        "bootstrap_servers": connection.bootstrap_servers,
        "security_protocol": connection.security_protocol,
        "sasl_mechanism": connection.sasl_mechanism,
        "sasl_plain_username": connection.username if sasl else None,
        "sasl_plain_password": (
            connection.password.require() if sasl and connection.password else None
        ),
        "ssl_context": context,
    }


class KafkaAdmin(Lifecycle):
    """An admin connection to one Kafka cluster: ACLs and SCRAM credentials.

    Changes return once the controller has committed them; a broker applies them a moment
    later (its authorizer and credential cache follow the metadata log).
    """

    def __init__(self, connection: KafkaConnection) -> None:
        self._connection = connection
        self._client: AIOKafkaClient | None = None

    async def start(self) -> None:
        client = AIOKafkaClient(**connection_arguments(self._connection))
        try:
            await client.bootstrap()
        except KafkaError as exc:
            await client.close()
            raise KafkaAdminError(
                f"kafka: cannot connect to {self._connection.bootstrap_servers} as "
                f"{self._connection.username or 'an anonymous client'} "
                f"({type(exc).__name__}: {exc}); check the address and credentials",
                retriable=bool(getattr(exc, "retriable", False)),
            ) from exc
        self._client = client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _send(self, request: Request[Any], what: str) -> Any:
        if self._client is None:
            raise KafkaAdminError("kafka: the admin client is not open; use `async with`")
        try:
            response = await self._client.send(self._client.get_random_node(), request)
        except KafkaError as exc:
            raise KafkaAdminError(
                f"kafka: {what} failed: {type(exc).__name__}: {exc}",
                retriable=bool(getattr(exc, "retriable", False)),
            ) from exc
        return response.to_object()

    async def describe_acls(
        self,
        *,
        resource_type: str = "any",
        resource_name: str | None = None,
        pattern_type: str = "any",
        principal: str | None = None,
        operation: str = "any",
        permission: str = "any",
    ) -> list[AclBinding]:
        """The ACLs matching a filter: "any" and None match everything; `pattern_type="match"`
        with a `resource_name` gives every ACL that applies to that resource (literal, prefixed
        and the `*` wildcard)."""
        acl_filter: AclFilter = (
            _code(_RESOURCE_TYPES, "resource type", resource_type, wildcard=True),
            resource_name,
            _code(_PATTERN_TYPES, "pattern type", pattern_type, wildcard=True),
            principal,
            None,
            _code(_OPERATIONS, "operation", operation, wildcard=True),
            _code(_PERMISSIONS, "permission", permission, wildcard=True),
        )
        found = await self._send(DescribeAcls(acl_filter), "describing ACLs")
        _check(found["error_code"], found["error_message"], "describing ACLs")
        return [
            AclBinding(
                resource_type=_name(_RESOURCE_TYPES, resource["resource_type"]),
                resource_name=resource["resource_name"],
                pattern_type=_name(_PATTERN_TYPES, resource["resource_pattern_type"]),
                principal=acl["principal"],
                operation=_name(_OPERATIONS, acl["operation"]),
                permission=_name(_PERMISSIONS, acl["permission_type"]),
                host=acl["host"],
            )
            for resource in found["resources"]
            for acl in resource["acls"]
        ]

    async def create_acls(self, bindings: Sequence[AclBinding]) -> None:
        """Create the bindings (those that exist already stay as they are)."""
        for chunk in _chunks(bindings, BATCH):
            response = await self._send(
                CreateAcls([binding._wire() for binding in chunk]), "creating ACLs"
            )
            for binding, result in zip(chunk, response["creation_responses"], strict=True):
                _check(result["error_code"], result["error_message"], f"creating ACL {binding}")

    async def delete_acls(self, bindings: Sequence[AclBinding]) -> None:
        """Delete exactly these bindings; one that does not exist is not an error."""
        for chunk in _chunks(bindings, BATCH):
            response = await self._send(
                DeleteAcls([binding._wire() for binding in chunk]), "deleting ACLs"
            )
            for binding, result in zip(chunk, response["filter_responses"], strict=True):
                what = f"deleting ACL {binding}"
                _check(result["error_code"], result["error_message"], what)
                for match in result["matching_acls"]:
                    _check(match["error_code"], match["error_message"], what)

    async def scram_users(self) -> dict[str, tuple[str, ...]]:
        """Every SCRAM user, with the mechanisms it has a credential for."""
        found = await self._send(DescribeScram(), "describing SCRAM credentials")
        _check(found["error_code"], found["error_message"], "describing SCRAM credentials")
        users: dict[str, tuple[str, ...]] = {}
        for result in found["results"]:
            what = f"describing the SCRAM credentials of {result['user']!r}"
            _check(result["error_code"], result["error_message"], what)
            users[result["user"]] = tuple(
                _MECHANISM_NAMES.get(info["mechanism"], f"unknown({info['mechanism']})")
                for info in result["credential_infos"]
            )
        return users

    async def upsert_scram(
        self,
        credentials: Sequence[ScramCredential],
        *,
        mechanism: str = "SCRAM-SHA-256",
        iterations: int = 4096,
    ) -> None:
        """Create or replace each user's credential for `mechanism` (a new password replaces
        the old one at once for new logins; sessions already open stay)."""
        salted = await salt_credentials(credentials, mechanism=mechanism, iterations=iterations)
        await self.store_scram(salted)

    async def store_scram(self, salted: Sequence[SaltedCredential]) -> None:
        """Send credentials already salted (see `salt_credentials`) to the broker."""
        for chunk in _chunks(salted, BATCH):
            await self._alter_scram([], chunk, "storing SCRAM credentials")

    async def delete_scram(self, users: Sequence[str], *, mechanism: str = "SCRAM-SHA-256") -> None:
        """Delete each user's credential for `mechanism`; a user without one is not an error.
        New logins are refused; sessions already open stay until they reconnect."""
        if mechanism not in _MECHANISMS:
            raise ValueError(f"unknown SCRAM mechanism {mechanism!r}")
        code = _MECHANISMS[mechanism][0]
        for chunk in _chunks(users, BATCH):
            deletions = [(user, code) for user in chunk]
            await self._alter_scram(deletions, [], "deleting SCRAM credentials")

    async def _alter_scram(
        self,
        deletions: list[tuple[str, int]],
        upsertions: Sequence[SaltedCredential],
        what: str,
    ) -> None:
        wire = [
            (c.user, _MECHANISMS[c.mechanism][0], c.iterations, c.salt, c.salted_password)
            for c in upsertions
        ]
        response = await self._send(AlterScram(deletions, wire), what)
        for result in response["results"]:
            if deletions and result["error_code"] == _RESOURCE_NOT_FOUND:
                continue
            user_what = f"{what} of {result['user']!r}"
            _check(result["error_code"], result["error_message"], user_what)
