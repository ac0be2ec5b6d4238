"""The roles declaration (`config/roles.toml`): what each PostgreSQL role may do, as code.

Each declared role becomes a NOLOGIN group role holding its privileges plus a LOGIN member role
(`<name>_login`) that exactly one gateway pool uses. Passwords are never in the declaration,
only where to find them (a `Secret`, as in the gateway configuration: a variable or a file).
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from gateway.config import Secret
from gateway.migrate import migrations
from gateway.validation import ConfigError, from_pydantic

__all__ = [
    "Declaration",
    "Grant",
    "Privilege",
    "RoleSpec",
    "Tier",
    "load_declaration",
    "parse_declaration",
    "shipped_tables",
]

LOGIN_SUFFIX = "_login"

RoleName = Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_]{0,56}$")]
RoleId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
Identifier = Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_]{0,62}$")]
TableName = Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*$")]
SuperuserName = Annotated[str, StringConstraints(min_length=1, max_length=63)]
Duration = Annotated[str, StringConstraints(pattern=r"^\d+\s*(ms|s|min|h)$")]


class Tier(StrEnum):
    INGEST = "ingest"
    TRANSACTIONAL = "transactional"
    READER = "reader"
    AUDITOR = "auditor"
    ADMIN = "admin"


class Privilege(StrEnum):
    SELECT = "SELECT"
    INSERT = "INSERT"
    UPDATE = "UPDATE"
    DELETE = "DELETE"
    TRUNCATE = "TRUNCATE"
    REFERENCES = "REFERENCES"
    TRIGGER = "TRIGGER"


# What each tier may ever be granted: the declaration is refused otherwise, so a typo cannot
# quietly give an ingest role the right to read or rewrite what it writes.
TIER_PRIVILEGES: dict[Tier, frozenset[Privilege]] = {
    Tier.INGEST: frozenset({Privilege.INSERT}),
    Tier.TRANSACTIONAL: frozenset(
        {Privilege.SELECT, Privilege.INSERT, Privilege.UPDATE, Privilege.DELETE}
    ),
    Tier.READER: frozenset({Privilege.SELECT}),
    Tier.AUDITOR: frozenset({Privilege.SELECT}),
    Tier.ADMIN: frozenset(Privilege),
}
COLUMN_PRIVILEGES = frozenset(
    {Privilege.SELECT, Privilege.INSERT, Privilege.UPDATE, Privilege.REFERENCES}
)

# Names PostgreSQL or every cluster already has: declaring one would take over the bootstrap
# superuser, a predefined role (`pg_read_all_data`, ...) or a keyword GRANT reads specially.
RESERVED_NAMES = frozenset(
    {"postgres", "public", "none", "current_user", "current_role", "session_user", "system_user"}
)
RESERVED_PREFIX = "pg_"

# The gateway's own registry and trail. Ingest and reader roles hold nothing there: a stolen
# device-tier login must not be able to provision identities, read the registry or forge the
# trail. A batch's write-log entry goes through `gateway.append_write_log`, which checks the
# login itself, so no grant is needed for it.
CONTROL_SCHEMA = "gateway"
CONTROL_BARRED = frozenset({Tier.INGEST, Tier.READER})
# The tiers whose pools write batches, each logged through that function.
BATCH_WRITERS = frozenset({Tier.INGEST, Tier.TRANSACTIONAL})


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Grant(Strict):
    """Privileges on one table, optionally on some of its columns only."""

    table: TableName
    privileges: list[Privilege] = Field(min_length=1)
    columns: list[Identifier] | None = None


class Pool(Strict):
    min: int = Field(default=1, ge=0)
    max: int = Field(default=4, ge=1)

    @model_validator(mode="after")
    def _min_below_max(self) -> Pool:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class RoleSpec(Strict):
    id: RoleId
    tier: Tier
    description: str = ""
    inherits: list[RoleName] = []
    grants: list[Grant] = []
    connection_limit: int = Field(ge=1)
    statement_timeout: Duration = "30s"
    pool: Pool | None = None
    password: Secret
    # Take over a role of this name that exists without the gateway's marker (made by hand or
    # by another tool): without it, plan and apply refuse rather than strip and later drop it.
    adopt: bool = False

    @property
    def pool_size(self) -> Pool:
        """The declared pool, or one to four connections within the connection limit."""
        return self.pool or Pool(min=1, max=min(4, self.connection_limit))

    @property
    def statement_timeout_ms(self) -> int:
        match = re.fullmatch(r"(\d+)\s*(ms|s|min|h)", self.statement_timeout)
        assert match is not None
        scale = {"ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000}[match[2]]
        return int(match[1]) * scale

    @model_validator(mode="after")
    def _pool_within_limit(self) -> RoleSpec:
        if self.pool is not None and self.pool.max > self.connection_limit:
            raise ValueError(
                f"pool.max ({self.pool.max}) exceeds connection_limit ({self.connection_limit})"
            )
        return self


class Declaration(Strict):
    """The whole roles document; `digest` identifies this exact version in the role history."""

    version: Literal[1] = 1
    tables: list[TableName] = []
    roles: dict[RoleName, RoleSpec]
    # The superusers an operator expects (the bootstrap one, a provider's admin): any other is
    # a high audit finding, since a superuser reads and rewrites everything whatever is granted.
    superusers: list[SuperuserName] = ["postgres"]
    digest: str = Field(default="", exclude=True)

    def login_role(self, name: str) -> str:
        return f"{name}{LOGIN_SUFFIX}"

    def by_id(self) -> dict[str, str]:
        return {spec.id: name for name, spec in self.roles.items()}


@cache
def shipped_tables() -> frozenset[str]:
    """Tables created by the shipped migrations: the ones a declaration may name by default."""
    found = set()
    for migration in migrations():
        found.update(re.findall(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+\.\w+)", migration.sql))
    return frozenset(found)


def semantic_problems(doc: Declaration) -> list[tuple[str, str]]:
    """What pydantic cannot see alone: references between roles and tier rules."""
    problems: list[tuple[str, str]] = []
    known_tables = shipped_tables() | set(doc.tables)
    ids: dict[str, str] = {}
    for name, spec in doc.roles.items():
        where = f"roles.{name}"
        if spec.id in ids:
            problems.append((f"{where}.id", f"duplicate id {spec.id!r}, also roles.{ids[spec.id]}"))
        ids.setdefault(spec.id, name)
        if name.endswith(LOGIN_SUFFIX):
            problems.append((where, f"names ending in {LOGIN_SUFFIX!r} are kept for LOGIN roles"))
        for role in (name, doc.login_role(name)):
            if _reserved(role):
                problems.append((where, _reserved_message(name, role)))
                break
        for i, parent in enumerate(spec.inherits):
            if parent not in doc.roles:
                problems.append((f"{where}.inherits[{i}]", f"unknown role {parent!r}"))
        for i, grant in enumerate(spec.grants):
            at = f"{where}.grants[{i}]"
            if grant.table not in known_tables:
                problems.append(
                    (
                        f"{at}.table",
                        f"unknown table {grant.table!r} (known: {sorted(known_tables)})",
                    )
                )
            allowed = TIER_PRIVILEGES[spec.tier]
            for j, privilege in enumerate(grant.privileges):
                if privilege not in allowed:
                    problems.append(
                        (
                            f"{at}.privileges[{j}]",
                            f"a role of tier {spec.tier.value} may only be granted "
                            f"{', '.join(sorted(allowed))}, not {privilege.value}",
                        )
                    )
                if grant.columns is not None and privilege not in COLUMN_PRIVILEGES:
                    problems.append(
                        (f"{at}.columns", f"{privilege.value} cannot be granted on columns")
                    )
            problems.extend(
                (f"{at}.table", message) for message in _control_problems(spec.tier, grant)
            )
    for i, table in enumerate(doc.tables):
        schema = table.split(".")[0]
        if schema.startswith(RESERVED_PREFIX) or schema == "information_schema":
            problems.append((f"tables[{i}]", f"{table!r} is in a system schema"))
    cycles = _cycles(doc)
    problems.extend(cycles)
    if not cycles:
        problems.extend(_inherited_problems(doc))
    return problems


def _reserved(name: str) -> bool:
    return name in RESERVED_NAMES or name.startswith(RESERVED_PREFIX)


def _reserved_message(declared: str, role: str) -> str:
    which = f"{role!r}" if role == declared else f"its LOGIN role {role!r}"
    return (
        f"{which} is reserved (PostgreSQL's own roles: {', '.join(sorted(RESERVED_NAMES))} "
        f"and anything starting {RESERVED_PREFIX!r}); choose another name"
    )


def _control_problems(tier: Tier, grant: Grant) -> list[str]:
    """The privileges of `grant` a role of `tier` may not hold in the control schema."""
    if tier not in CONTROL_BARRED or grant.table.split(".")[0] != CONTROL_SCHEMA:
        return []
    return [
        f"a role of tier {tier.value} holds nothing in the control schema {CONTROL_SCHEMA!r}, "
        f"not {privilege.value} on {grant.table}"
        for privilege in grant.privileges
    ]


def _ancestors(doc: Declaration, name: str) -> dict[str, list[str]]:
    """Every role `name` inherits from, directly or not, with the path that leads to it."""
    found: dict[str, list[str]] = {}
    todo = [[name]]
    while todo:
        path = todo.pop(0)
        for parent in doc.roles[path[-1]].inherits:
            if parent in doc.roles and parent not in found and parent != name:
                found[parent] = [*path, parent]
                todo.append(found[parent])
    return found


def _inherited_problems(doc: Declaration) -> list[tuple[str, str]]:
    """Tier rules on effective privileges: a role holds everything the roles it inherits hold,
    so an ingest role inheriting a transactional one could UPDATE what it writes."""
    problems = []
    for name, spec in doc.roles.items():
        allowed = TIER_PRIVILEGES[spec.tier]
        for parent, path in _ancestors(doc, name).items():
            held = doc.roles[parent]
            chain = " -> ".join(path)
            extra = sorted({p.value for g in held.grants for p in g.privileges if p not in allowed})
            if not TIER_PRIVILEGES[held.tier] <= allowed or extra:
                granted = f" (granted {', '.join(extra)})" if extra else ""
                problems.append(
                    (
                        f"roles.{name}.inherits",
                        f"{chain}: a role of tier {spec.tier.value} may not inherit {parent} "
                        f"of tier {held.tier.value}{granted}; it may only hold "
                        f"{', '.join(sorted(allowed))}",
                    )
                )
                continue
            for grant in held.grants:
                for message in _control_problems(spec.tier, grant):
                    problems.append((f"roles.{name}.inherits", f"{chain}: {message}"))
    return problems


def _cycles(doc: Declaration) -> list[tuple[str, str]]:
    """An inheritance cycle would be refused by PostgreSQL halfway through an apply."""
    problems = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for parent in doc.roles[name].inherits:
            if parent not in doc.roles:
                continue
            if state.get(parent) == 1:
                cycle = " -> ".join([*path[path.index(parent) :], parent])
                problems.append((f"roles.{name}.inherits", f"inheritance cycle: {cycle}"))
            elif parent not in state:
                visit(parent, [*path, parent])
        state[name] = 2

    for name in doc.roles:
        if name not in state:
            visit(name, [name])
    return problems


def parse_declaration(text: str, source: str = "roles declaration") -> Declaration:
    """Validate a TOML roles document; every problem is reported, each with its path."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [("(file)", f"not valid TOML: {exc}")]) from exc
    try:
        doc = Declaration.model_validate(raw)
    except ValidationError as exc:
        raise from_pydantic(source, exc) from exc
    problems = semantic_problems(doc)
    if problems:
        raise ConfigError(source, problems)
    return doc.model_copy(update={"digest": hashlib.sha256(text.encode()).hexdigest()})


def load_declaration(path: Path) -> Declaration:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(str(path), [("(file)", f"cannot read: {exc.strerror}")]) from exc
    return parse_declaration(text, str(path))
