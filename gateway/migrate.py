"""Schema migrations: numbered SQL files applied once each, in order, by any number of pods at once.

Migrations run under a transaction-scoped advisory lock, so pods starting together apply each file
exactly once; a file's checksum is recorded so an edited, already-applied migration is refused
rather than silently ignored.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

import asyncpg

from gateway.errors import GatewayError

__all__ = ["Migration", "MigrationError", "migrate", "migrations"]

# Any fixed 64-bit number shared by every gateway process; "gw-migr" in ASCII.
ADVISORY_LOCK = 0x67772D6D696772

BOOKKEEPING = """
CREATE SCHEMA IF NOT EXISTS gateway;
CREATE TABLE IF NOT EXISTS gateway.schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""


class MigrationError(GatewayError):
    """The database's schema history disagrees with the migrations this version ships."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations() -> list[Migration]:
    """The migrations shipped in `gateway/migrations/`, ordered by their number."""
    found = []
    for entry in resources.files("gateway.migrations").iterdir():
        if entry.name.endswith(".sql"):
            number, _, rest = entry.name.partition("_")
            found.append(Migration(int(number), rest.removesuffix(".sql"), entry.read_text()))
    return sorted(found, key=lambda m: m.version)


async def migrate(conn: asyncpg.Connection) -> list[Migration]:
    """Apply the migrations not applied yet; returns those this call applied."""
    applied: list[Migration] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", ADVISORY_LOCK)
        await conn.execute(BOOKKEEPING)
        done = {
            row["version"]: row["checksum"]
            for row in await conn.fetch("SELECT version, checksum FROM gateway.schema_migrations")
        }
        for migration in migrations():
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version} ({migration.name}) was changed after "
                        "it was applied; ship a new migration instead"
                    )
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO gateway.schema_migrations (version, name, checksum) "
                "VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.checksum,
            )
            applied.append(migration)
    return applied
