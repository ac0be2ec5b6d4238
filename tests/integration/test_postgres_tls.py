"""Verified TLS to PostgreSQL: the pools log in only to a server that proves who it is; a wrong
CA, a wrong name or a server posing as PostgreSQL gets no password, and says so clearly.

The TLS server is Debian's PostgreSQL (the embedded wheel's build has no OpenSSL), an older
major version: the login is made by hand here, not by `roles apply`, whose catalog reads need 16+.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gateway.config import DatabaseConfig
from gateway.db import DatabaseError
from gateway.pools import RolePools
from gateway.roles.declaration import load_declaration
from gateway.services.certificates import CertificateAuthority
from gateway.services.postgres import Postgres
from tests.integration.conftest import EXAMPLE_ROLES

ROLE = "telemetry_ingest"
SSL_REQUEST = 80877103


@pytest.fixture(scope="module")
async def tls_server(role_passwords: dict[str, str]) -> AsyncIterator[Postgres]:
    async with Postgres(tls=True) as server:
        admin = await asyncpg.connect(server.dsn)
        try:
            login = f"{ROLE}_login"
            await admin.execute(f"CREATE ROLE {login} LOGIN PASSWORD '{role_passwords[login]}'")
        finally:
            await admin.close()
        yield server


def database(server: Postgres | None = None, **settings: Any) -> DatabaseConfig:
    port = server.port if server is not None else 5432
    return DatabaseConfig.model_validate(
        {"port": port, "dbname": "postgres", "roles_file": EXAMPLE_ROLES, **settings}
    )


async def open_pool(config: DatabaseConfig) -> RolePools:
    pools = RolePools(config, load_declaration(EXAMPLE_ROLES), [ROLE])
    await asyncio.wait_for(pools.open(), 30)
    return pools


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_a_verified_server_gets_the_login(tls_server: Postgres, host: str) -> None:
    config = database(tls_server, host=host, ca_file=tls_server.ca_file)
    pools = await open_pool(config)
    try:
        async with pools[ROLE].acquire() as conn:
            row = await conn.fetchrow(
                "SELECT ssl, current_user AS login FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            )
    finally:
        await pools.close()
    assert dict(row) == {"ssl": True, "login": f"{ROLE}_login"}


async def test_a_server_signed_by_another_ca_is_refused(
    tls_server: Postgres, tmp_path: Path
) -> None:
    stranger = CertificateAuthority(tmp_path / "other").create()
    with pytest.raises(DatabaseError) as refused:
        await open_pool(database(tls_server, ca_file=stranger.cert))
    message = str(refused.value)
    assert "is not the server it claims to be" in message
    assert "certificate verify failed" in message or "unable to get local issuer" in message
    assert "database.ca_file" in message


async def test_a_certificate_for_another_name_is_refused(tls_server: Postgres) -> None:
    config = database(tls_server, ca_file=tls_server.ca_file, server_name="db.example.org")
    with pytest.raises(DatabaseError, match=r"db\.example\.org") as refused:
        await open_pool(config)
    assert "mismatch" in str(refused.value).lower()
    # verify-ca checks the signature, not the name: the same server is accepted
    pools = await open_pool(
        database(
            tls_server,
            ca_file=tls_server.ca_file,
            server_name="db.example.org",
            sslmode="verify-ca",
        )
    )
    await pools.close()


async def test_a_server_posing_as_postgres_never_sees_the_password(
    tls_server: Postgres, tmp_path: Path, role_passwords: dict[str, str]
) -> None:
    """A man in the middle with a certificate of its own, asking for the password in clear
    text: the handshake fails first, and nothing the client sent carries the password."""
    forger = CertificateAuthority(tmp_path / "forger").create()
    pair = forger.server()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(pair.cert), str(pair.key))
    received: list[bytes] = []

    async def pose(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            (length,) = struct.unpack("!I", await reader.readexactly(4))
            (code,) = struct.unpack("!I", await reader.readexactly(length - 4))
            assert code == SSL_REQUEST
            writer.write(b"S")
            await writer.drain()
            await writer.start_tls(context)
            received.append(await reader.read(4096))  # the startup message
            writer.write(b"R" + struct.pack("!II", 8, 3))  # AuthenticationCleartextPassword
            await writer.drain()
            received.append(await reader.read(4096))
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(pose, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        config = DatabaseConfig.model_validate(
            {
                "port": port,
                "dbname": "postgres",
                "roles_file": EXAMPLE_ROLES,
                "ca_file": tls_server.ca_file,
            }
        )
        with pytest.raises(DatabaseError, match="is not the server it claims to be"):
            await open_pool(config)
    finally:
        server.close()
    password = role_passwords[f"{ROLE}_login"].encode()
    assert all(password not in data for data in received)
    assert received == []  # not even a startup message: the handshake failed first
