"""Throwaway certificates for the test brokers' TLS listeners, made with the `openssl` CLI.

A CA in a directory of its own signs a server certificate for `localhost` and 127.0.0.1 and, on
demand, client certificates whose subject is nothing but a CN, so a broker can map the subject
to a principal. Keys are unencrypted EC P-256 keys in PKCS#8 PEM (what `openssl req` writes), the
certificates carry the extensions strict verifiers (Python's `ssl`, Java's JSSE) expect, and
everything lives two days: long enough for a test run, useless if a file leaks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from gateway.services._process import LOOPBACK, run_tool

__all__ = ["CN_PATTERN", "CertificateAuthority", "KeyPair"]

# The CN goes into `openssl -subj` (where `/`, `=` and `+` are syntax) and into file names, and
# brokers turn it into a principal: keep it to characters that mean nothing anywhere.
CN_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

_DAYS = "2"
_NEW_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, both PEM files."""

    cert: Path
    key: Path


class CertificateAuthority:
    """A CA whose key and certificate live in `directory`, with the certificates it signed.

    `create` makes the CA once; `server` and `client` then issue certificates next to it
    (`<name>.crt` and `<name>.key`). Issuing again under the same name replaces the pair.
    """

    def __init__(self, directory: Path, name: str = "gateway test CA") -> None:
        self.directory = directory
        self.name = name

    @property
    def cert(self) -> Path:
        """The CA certificate: what a client or broker must trust."""
        return self.directory / "ca.crt"

    @property
    def key(self) -> Path:
        return self.directory / "ca.key"

    def create(self) -> CertificateAuthority:
        """Make the directory and a self-signed CA in it; returns self for chaining."""
        self.directory.mkdir(parents=True, exist_ok=True)
        run_tool(
            [
                *(
                    "openssl",
                    "req",
                    "-x509",
                    *_NEW_KEY,
                    "-days",
                    _DAYS,
                    "-subj",
                    f"/CN={self.name}",
                ),
                *("-keyout", str(self.key), "-out", str(self.cert)),
                *("-addext", "basicConstraints=critical,CA:TRUE"),
                *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
            ],
            what="making the test CA",
        )
        return self

    def server(self, name: str = "server", host: str = LOOPBACK) -> KeyPair:
        """A server certificate for `localhost` and `host`, as hostname checks want (SANs)."""
        return self._issue(name, "localhost", "serverAuth", f"DNS:localhost,IP:{host}")

    def client(self, cn: str, name: str | None = None) -> KeyPair:
        """A client certificate whose subject is `CN=<cn>`; files are `client-<cn>.*` by default."""
        if not CN_PATTERN.fullmatch(cn):
            raise ValueError(f"certificate CN {cn!r} must match {CN_PATTERN.pattern}")
        return self._issue(name or f"client-{cn}", cn, "clientAuth", None)

    def _issue(self, name: str, cn: str, usage: str, alt_names: str | None) -> KeyPair:
        if not CN_PATTERN.fullmatch(name):
            raise ValueError(f"certificate file name {name!r} must match {CN_PATTERN.pattern}")
        pair = KeyPair(self.directory / f"{name}.crt", self.directory / f"{name}.key")
        csr, ext = self.directory / f"{name}.csr", self.directory / f"{name}.ext"
        run_tool(
            [
                *("openssl", "req", *_NEW_KEY, "-subj", f"/CN={cn}"),
                *("-keyout", str(pair.key), "-out", str(csr)),
            ],
            what=f"making the certificate request of {cn}",
        )
        ext.write_text(
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            f"extendedKeyUsage={usage}\n"
            + (f"subjectAltName={alt_names}\n" if alt_names else "")
            + "authorityKeyIdentifier=keyid\n"
            "subjectKeyIdentifier=hash\n"
        )
        run_tool(
            [
                *("openssl", "x509", "-req", "-in", str(csr), "-days", _DAYS),
                *("-CA", str(self.cert), "-CAkey", str(self.key), "-CAcreateserial"),
                *("-extfile", str(ext), "-out", str(pair.cert)),
            ],
            what=f"signing the certificate of {cn}",
        )
        pair.key.chmod(0o600)
        return pair
