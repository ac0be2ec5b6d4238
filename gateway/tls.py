"""Client TLS, built one way for every connection the gateway makes: brokers and PostgreSQL.

A verified connection checks the server's certificate against a CA (the configured file, else
the system's) and its name against the host, or against `server_name` when the host is an
address or a proxy. PostgreSQL follows libpq's `sslmode`; a role's password is sent only where
no one in between can ask for it (see `password_exposure`).
"""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path
from typing import Any

__all__ = ["client_context", "password_exposure", "postgres_ssl", "postgres_sslmode"]

VERIFIED_MODES = frozenset({"verify-ca", "verify-full"})


class _NamedContext(ssl.SSLContext):
    """A context that checks the certificate against a name other than the host dialled."""

    server_name: str

    # asyncio's transports use wrap_bio, blocking clients (paho, under aiomqtt) wrap_socket.
    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        kwargs["server_hostname"] = self.server_name
        return super().wrap_bio(*args[:3], **kwargs)

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        kwargs["server_hostname"] = self.server_name
        return super().wrap_socket(*args[:4], **kwargs)


def client_context(
    ca_file: Path | None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    *,
    server_name: str | None = None,
    check_hostname: bool = True,
    verify: bool = True,
) -> ssl.SSLContext:
    """A context that verifies the server (against `ca_file`, else the system's CAs; its name
    unless `check_hostname` is off) and, when `cert_file` is given, presents that client
    certificate; unreadable files raise OSError. `verify=False` encrypts without checking."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if server_name:
        named = _NamedContext(ssl.PROTOCOL_TLS_CLIENT)
        named.server_name = server_name
        context = named
    if verify:
        if ca_file is not None:
            context.load_verify_locations(cafile=str(ca_file))
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        context.check_hostname = check_hostname
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert_file is not None:
        context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return context


def postgres_sslmode(sslmode: str | None, ca_file: Path | None) -> str:
    """The effective mode: as configured, else `verify-full` once a CA is given, else `prefer`."""
    return sslmode or ("verify-full" if ca_file is not None else "prefer")


def postgres_ssl(
    sslmode: str,
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    server_name: str | None = None,
) -> ssl.SSLContext | str | bool:
    """What asyncpg's `ssl` argument takes for a libpq-style mode: the plain modes as asyncpg
    reads them, `require` and the verified modes as a context of ours (so the CA, the client
    certificate and the server name come from the configuration, not from ~/.postgresql)."""
    if sslmode == "disable":
        return False
    if sslmode in ("allow", "prefer"):
        return sslmode
    return client_context(
        ca_file,
        cert_file,
        key_file,
        server_name=server_name,
        check_hostname=sslmode == "verify-full",
        verify=sslmode in VERIFIED_MODES,
    )


def password_exposure(host: str, sslmode: str) -> str | None:
    """Why a password sent to `host` under `sslmode` could reach someone else, or None.

    On an unverified connection whoever sits in between can pose as the server and ask for the
    password in clear text, which asyncpg then sends (it cannot refuse a method as libpq's
    `require_auth` does). A verified certificate, a Unix socket or the loopback interface leave
    no one in between.
    """
    if sslmode in VERIFIED_MODES or _local(host):
        return None
    return (
        f"sslmode {sslmode} does not verify the server, so anyone between here and {host} "
        "can pose as it and ask for the password in clear text"
    )


def _local(host: str) -> bool:
    if host.startswith("/") or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
