"""Machine identities: the record, the rules for names, and the errors the registry raises.

GatewayError
└── IdentityError                the registry refused a request
    ├── InvalidIdentityError     a name, kind or attributes value breaks the rules
    │   └── IdentityNameError    the name is empty, too long or has an unsafe character
    ├── UnknownRoleError         the role is not declared (or was removed); lists the known
    ├── IdentityExistsError      adding a name that is already registered
    ├── UnknownIdentityError     changing or showing a name that is not registered
    ├── IdentityRetiredError     retiring or assigning an identity that is already retired
    └── ImportFileError          an import file has bad lines, listed with their line
                                 numbers (defined in gateway.identities.importer)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args

from gateway.errors import GatewayError

__all__ = [
    "CHANNEL",
    "KINDS",
    "MAX_NAME_LENGTH",
    "STATUSES",
    "Identity",
    "IdentityError",
    "IdentityExistsError",
    "IdentityNameError",
    "IdentityRetiredError",
    "InvalidIdentityError",
    "Kind",
    "Status",
    "UnknownIdentityError",
    "UnknownRoleError",
    "validate_identity_name",
    "validate_kind",
]

Kind = Literal["device", "service"]
Status = Literal["active", "retired"]
KINDS: tuple[Kind, ...] = get_args(Kind)
STATUSES: tuple[Status, ...] = get_args(Status)

# The NOTIFY channel of identity changes: the registry's triggers (migrations 001 and 003) send
# the names whose role or status changed, `roles apply` sends `*` after renaming or removing a
# role; every identity cache listens. Here, beside the record, so both sides share the name.
CHANNEL = "gateway_identities"

MAX_NAME_LENGTH = 128
# The same rule as the CHECK on gateway.identities.name: a name travels in MQTT topic levels
# (so no '/', '+', '#'), in Kafka keys and in log lines, so it keeps to a small ASCII alphabet.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@=-]{0,127}")
_FIRST = re.compile(r"[A-Za-z0-9]")
_BAD_CHAR = re.compile(r"[^A-Za-z0-9._:@=-]")


class IdentityError(GatewayError):
    """The identity registry refused a request."""


class InvalidIdentityError(IdentityError):
    """A value (name, kind, attributes) breaks the rules for identities."""


class IdentityNameError(InvalidIdentityError):
    """The identity name is not usable in MQTT topics and Kafka keys."""


class UnknownRoleError(IdentityError):
    """The role is not declared in gateway.roles, or was removed."""

    def __init__(self, role: str, known: list[str]) -> None:
        listed = ", ".join(known) if known else "none are declared; run `gateway roles apply`"
        super().__init__(f"unknown role {role!r} (known roles: {listed})")
        self.role = role
        self.known = tuple(known)


class IdentityExistsError(IdentityError):
    """An identity with this name is already registered."""


class UnknownIdentityError(IdentityError):
    """No identity with this name is registered."""


class IdentityRetiredError(IdentityError):
    """The identity is retired; retirement is final."""


@dataclass(frozen=True, slots=True)
class Identity:
    """One registered machine identity, with its role by name."""

    name: str
    kind: Kind
    role: str
    status: Status
    attributes: Mapping[str, Any]
    created_at: datetime
    retired_at: datetime | None
    last_seen: datetime | None

    def to_json(self) -> dict[str, Any]:
        """A plain dict for JSON output and audit records."""
        return {
            "name": self.name,
            "kind": self.kind,
            "role": self.role,
            "status": self.status,
            "attributes": dict(self.attributes),
            "created_at": self.created_at.isoformat(),
            "retired_at": self.retired_at.isoformat() if self.retired_at else None,
            "last_seen": self.last_seen.isoformat() if self.last_seen else None,
        }


def validate_identity_name(name: str) -> str:
    """Return `name` unchanged if it is a valid identity name, else say which rule it breaks."""
    if NAME_PATTERN.fullmatch(name):
        return name
    if not name:
        raise IdentityNameError("identity name is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise IdentityNameError(
            f"identity name is {len(name)} characters long; at most {MAX_NAME_LENGTH} are allowed"
        )
    if not _FIRST.match(name):
        raise IdentityNameError(
            f"identity name {name!r} must start with a letter or digit, not {name[0]!r}"
        )
    bad = _BAD_CHAR.search(name)
    assert bad is not None  # the pattern failed for a reason; the other rules are covered above
    raise IdentityNameError(
        f"identity name {name!r} has {bad.group()!r} at position {bad.start() + 1}; "
        "only ASCII letters, digits and . _ : @ = - are allowed"
    )


def validate_kind(kind: str) -> Kind:
    """Return `kind` if it is a known identity kind."""
    for known in KINDS:
        if kind == known:
            return known
    raise InvalidIdentityError(f"unknown kind {kind!r} (expected one of: {', '.join(KINDS)})")
