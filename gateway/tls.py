"""Client TLS contexts, built one way for every connection the gateway makes to a broker."""

from __future__ import annotations

import ssl
from pathlib import Path

__all__ = ["client_context"]


def client_context(
    ca_file: Path | None, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext:
    """A context that verifies the server (against `ca_file`, else the system's CAs) and, when
    `cert_file` is given, presents that client certificate; unreadable files raise OSError."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if cert_file is not None:
        context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return context
