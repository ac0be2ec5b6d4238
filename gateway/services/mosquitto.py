"""A Mosquitto broker on loopback, with passwords and the ACL that makes identity broker-enforced.

The ACL is the security boundary of the MQTT path: a device may publish only under
`devices/<its user name>/`, so the identity the gateway reads from the topic was checked by the
broker. The same rules ship in `deploy/mosquitto/aclfile` (a test keeps the two equal).

With `tls=True` a second listener speaks TLS with a certificate for `localhost` and 127.0.0.1,
signed by a throwaway CA from `gateway.services.certificates` (`ca_file`), so clients can be
tested both with and without the CA they need to trust.
"""

from __future__ import annotations

import secrets
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gateway.services._process import (
    LOOPBACK,
    LocalService,
    ServiceError,
    ServiceProcess,
    free_port,
    run_tool,
)
from gateway.services.certificates import CertificateAuthority
from gateway.sources.mqtt.options import DEFAULT_PACKET_LIMIT

__all__ = [
    "BROKER_LIMITS",
    "Mosquitto",
    "MqttBroker",
    "MqttUser",
    "acl_rules",
    "mosquitto_binary",
]

BROKER_LIMITS = {
    "max_packet_size": DEFAULT_PACKET_LIMIT,
    "max_queued_messages": 1_000_000,
    "max_queued_bytes": 512 * 1024 * 1024,
    "max_inflight_messages": 0,
    "max_inflight_bytes": 0,
}
"""What bounds Mosquitto's memory and ours, as `deploy/mosquitto/mosquitto.conf` ships them (a
test keeps the two equal; the file says why each value)."""


def mosquitto_binary() -> str | None:
    """Debian's `mosquitto`, when installed (it lives in /usr/sbin, often not on PATH)."""
    found = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    return found if Path(found).exists() else None


def acl_rules(gateway_user: str = "gateway") -> str:
    """The broker ACL: devices write one level under their own name; the gateway reads all."""
    return (
        "# Every device may publish one level under its own user name, which is its identity.\n"
        "# One level (`+`), not `#`: `#` also matches the parent level, so a user named\n"
        "# `victim/telemetry` could write `devices/victim/telemetry`, as `victim`.\n"
        "pattern write devices/%u/+\n"
        "\n"
        "# The gateway reads every device topic, directly or through shared subscriptions.\n"
        f"user {gateway_user}\n"
        "topic read devices/#\n"
        "topic read $share/#\n"
    )


@dataclass(frozen=True)
class MqttUser:
    """Credentials of one broker account."""

    username: str
    password: str = field(repr=False)


class MqttBroker(LocalService):
    """A broker on loopback with accounts and the gateway's own user; `protocol` is the MQTT
    version the gateway reaches it with."""

    protocol: Literal["5", "3.1.1"]

    def __init__(self, *, gateway_user: str, keep_dir: bool) -> None:
        super().__init__(keep_dir=keep_dir)
        self.host = LOOPBACK
        self.port = free_port()
        self.gateway = MqttUser(gateway_user, secrets.token_urlsafe(16))

    def add_user(self, username: str, password: str | None = None) -> MqttUser:
        """Create or update an account; the running broker takes it at once."""
        user = MqttUser(username, password or secrets.token_urlsafe(12))
        self.add_users([user])
        return user

    def add_users(self, users: list[MqttUser]) -> None:
        raise NotImplementedError


class Mosquitto(MqttBroker):
    """Debian's `mosquitto` with a generated config: no anonymous access, passwords, ACLs.

    The limits are the shipped ones (`BROKER_LIMITS`) unless given, e.g. `max_inflight_messages`
    to bound an MQTT 3.1.1 client's window, or `max_packet_size=0` for a broker that takes any
    size (0 is Mosquitto's "no limit" for each of them).
    """

    name = "mosquitto"
    protocol: Literal["5"] = "5"  # the gateway's transport for it

    def __init__(
        self,
        *,
        gateway_user: str = "gateway",
        max_packet_size: int = BROKER_LIMITS["max_packet_size"],
        max_queued_messages: int = BROKER_LIMITS["max_queued_messages"],
        max_queued_bytes: int = BROKER_LIMITS["max_queued_bytes"],
        max_inflight_messages: int = BROKER_LIMITS["max_inflight_messages"],
        max_inflight_bytes: int = BROKER_LIMITS["max_inflight_bytes"],
        tls: bool = False,
        keep_dir: bool = False,
    ) -> None:
        super().__init__(gateway_user=gateway_user, keep_dir=keep_dir)
        self.limits = {
            "max_packet_size": max_packet_size,
            "max_queued_messages": max_queued_messages,
            "max_queued_bytes": max_queued_bytes,
            "max_inflight_messages": max_inflight_messages,
            "max_inflight_bytes": max_inflight_bytes,
        }
        """The config lines that bound memory, 0 meaning no limit, as Mosquitto reads them."""
        self.tls_port: int | None = free_port() if tls else None
        binary = mosquitto_binary()
        if binary is None:
            raise ServiceError(
                "mosquitto is not installed: run `apt-get install -y mosquitto` (or `make setup`)"
            )
        self._binary = binary

    @property
    def password_file(self) -> Path:
        return self.directory / "passwords"

    @property
    def acl_file(self) -> Path:
        return self.directory / "aclfile"

    @property
    def config_file(self) -> Path:
        return self.directory / "mosquitto.conf"

    @property
    def ca_file(self) -> Path:
        """The CA certificate that signed the TLS listener's certificate."""
        return self._ca.cert

    @property
    def _ca(self) -> CertificateAuthority:
        return CertificateAuthority(self.directory / "tls")

    def add_users(self, users: list[MqttUser]) -> None:
        """A running broker reloads its password file at once (SIGHUP)."""
        for user in users:
            run_tool(
                ["mosquitto_passwd", "-b", str(self.password_file), user.username, user.password],
                what=f"adding MQTT user {user.username}",
            )
        self._reload()

    def _reload(self) -> None:
        if self.running and self._process is not None:
            self._process.process.send_signal(signal.SIGHUP)

    async def _prepare(self) -> None:
        self.password_file.touch(mode=0o600)
        self.add_users([self.gateway])
        self.acl_file.write_text(acl_rules(self.gateway.username))
        self.acl_file.chmod(0o600)
        (self.directory / "data").mkdir()
        self.config_file.write_text(
            f"listener {self.port} {self.host}\n"
            "allow_anonymous false\n"
            f"password_file {self.password_file}\n"
            f"acl_file {self.acl_file}\n"
            "persistence true\n"
            f"persistence_location {self.directory / 'data'}/\n"
            # Root keeps root: the files above belong to whoever runs the tests.
            "user root\n"
            + "".join(
                f"{name} {value}\n"
                for name, value in self.limits.items()
                # No limit is the line left out: Mosquitto refuses `max_packet_size 0`.
                if value or name != "max_packet_size"
            )
            + "set_tcp_nodelay true\n"
            # A file, not stdout: stdout to a pipe is block-buffered and the tail would lag.
            f"log_dest file {self.log_path}\n"
            "log_type error\n"
            "log_type warning\n"
            "log_type notice\n"
            "log_type information\n"
            "connection_messages true\n"
            "log_timestamp_format %Y-%m-%dT%H:%M:%S\n"
        )
        if self.tls_port is not None:
            ca = self._ca.create()
            server = ca.server(host=self.host)
            with self.config_file.open("a") as config:
                config.write(
                    f"listener {self.tls_port} {self.host}\n"
                    f"cafile {ca.cert}\n"
                    f"certfile {server.cert}\n"
                    f"keyfile {server.key}\n"
                )

    async def _launch(self) -> ServiceProcess:
        return await self._spawn_and_wait(
            [self._binary, "-c", str(self.config_file)], self.port, timeout=20
        )
