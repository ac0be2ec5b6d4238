"""SCRAM-SHA-256 verifiers computed here, so a plaintext password never reaches SQL text or logs.

PostgreSQL accepts a ready verifier in `ALTER ROLE ... PASSWORD`, and a superuser can read the
live one, so a plan can tell whether a role's password still matches its credential source.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re

__all__ = ["scram_verifier", "verifier_matches"]

_VERIFIER = re.compile(
    r"^SCRAM-SHA-256\$(?P<iterations>\d+):(?P<salt>[^$]+)\$(?P<stored>[^:]+):(?P<server>.+)$"
)


def _keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    return hashlib.sha256(client_key).digest(), server_key


def scram_verifier(password: str, *, salt: bytes | None = None, iterations: int = 4096) -> str:
    """The verifier PostgreSQL would store for this password (RFC 5802/7677 format)."""
    salt = salt or os.urandom(16)
    stored, server = _keys(password, salt, iterations)
    b64 = base64.b64encode
    return (
        f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}"
        f"${b64(stored).decode()}:{b64(server).decode()}"
    )


def verifier_matches(verifier: str | None, password: str) -> bool:
    """Whether a stored verifier was made from this password."""
    match = _VERIFIER.match(verifier or "")
    if match is None:
        return False
    stored, server = _keys(password, base64.b64decode(match["salt"]), int(match["iterations"]))
    return hmac.compare_digest(base64.b64encode(stored).decode(), match["stored"]) and (
        hmac.compare_digest(base64.b64encode(server).decode(), match["server"])
    )
