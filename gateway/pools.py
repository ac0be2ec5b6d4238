"""One asyncpg pool per declared role, each logging in as that role's own LOGIN member.

Separate pools rather than `SET ROLE` on a shared one: the database itself then enforces each
role's privileges and connection limit, and heavy writers can never take a reader's connections.
Per-role session settings live in the role (`ALTER ROLE ... SET`, applied by `roles apply`) and
in `server_settings`, because asyncpg resets the session when a connection returns to its pool.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterable
from typing import Any

import asyncpg

from gateway.config import DatabaseConfig
from gateway.db import DatabaseError
from gateway.pgtime import use_integer_timestamps
from gateway.roles.declaration import Declaration
from gateway.validation import ConfigError

__all__ = ["RolePools"]

log = logging.getLogger(__name__)


class RolePools:
    """The pools of `roles`; those of `row_writers` speak integer timestamps (`gateway.pgtime`),
    so a role may not be both a row writer and a reader of timestamps (the control role)."""

    def __init__(
        self,
        database: DatabaseConfig,
        doc: Declaration,
        roles: Iterable[str],
        row_writers: Iterable[str] = (),
    ) -> None:
        self._database = database
        self._doc = doc
        try:
            self._ssl = database.connect_ssl()
        except OSError as exc:  # ssl.SSLError is one too
            raise ConfigError(
                "gateway configuration",
                [
                    (
                        "database.ca_file, cert_file, key_file",
                        f"cannot load the TLS files: {exc.strerror or exc}",
                    )
                ],
            ) from exc
        self._row_writers = set(row_writers)
        self._roles = sorted(set(roles) | self._row_writers)
        unknown = [role for role in self._roles if role not in doc.roles]
        if unknown:
            raise ConfigError(
                "gateway configuration",
                [(f"role {role}", f"is not declared in {database.roles_file}") for role in unknown],
            )
        self._pools: dict[str, asyncpg.Pool] = {}

    def __getitem__(self, role: str) -> asyncpg.Pool:
        return self._pools[role]

    def __contains__(self, role: str) -> bool:
        return role in self._pools

    @property
    def roles(self) -> list[str]:
        return list(self._roles)

    def connect_params(self, role: str) -> dict[str, Any]:
        """How to log in as a role's LOGIN member.

        The password is a callable read at every new connection, not once at start: rotate it
        by changing the credential source (e.g. the mounted Secret) and the role's password,
        and new connections follow without a restart (see README, "Rotating a password").
        """
        spec = self._doc.roles[role]
        if spec.password.read() is None:
            raise ConfigError(
                "roles declaration",
                [(f"roles.{role}.password", f"{spec.password.describe()} is not set")],
            )
        db = self._database

        def password() -> str:
            return spec.password.read() or ""

        return {
            "host": db.host,
            "port": db.port,
            "user": self._doc.login_role(role),
            "password": password,
            "database": db.dbname,
            "ssl": self._ssl,
            "timeout": db.connect_timeout,
            "server_settings": {"application_name": f"m2m-gateway/{role}"},
        }

    async def connect(self, role: str) -> asyncpg.Connection:
        """One connection of the role's own, outside its pool (LISTEN needs a session)."""
        conn: asyncpg.Connection = await asyncpg.connect(**self.connect_params(role))
        return conn

    async def open(self) -> None:
        """Create every pool; waits (with backoff) while the database is unreachable."""
        for role in self._roles:
            size = self._doc.roles[role].pool_size
            params = self.connect_params(role)
            delay = 0.2
            while True:
                try:
                    self._pools[role] = await asyncpg.create_pool(
                        min_size=size.min,
                        max_size=size.max,
                        init=use_integer_timestamps if role in self._row_writers else None,
                        **params,
                    )
                    break
                except ssl.SSLCertVerificationError as exc:
                    # Not an outage: a server that cannot prove who it is never gets a password.
                    raise DatabaseError(
                        f"pool {role}: PostgreSQL at {self._database.host}:"
                        f"{self._database.port} is not the server it claims to be: "
                        f"{exc.verify_message or exc.reason} (check database.ca_file and "
                        "database.server_name)"
                    ) from exc
                except (OSError, TimeoutError, asyncpg.CannotConnectNowError) as exc:
                    log.warning("pool %s: database unreachable (%s); retrying", role, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)

    def usage(self) -> dict[str, tuple[int, int]]:
        """(busy, idle) connections per role, for the pool metrics."""
        found = {}
        for role, pool in self._pools.items():
            idle = pool.get_idle_size()
            found[role] = (pool.get_size() - idle, idle)
        return found

    async def close(self) -> None:
        await asyncio.gather(*(pool.close() for pool in self._pools.values()))
        self._pools.clear()
