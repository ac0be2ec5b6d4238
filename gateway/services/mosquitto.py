"""A Mosquitto broker on loopback whose accounts live in the dynamic-security plugin.

The dynamic-security plugin alone makes identity broker-enforced; there is no ACL file, because
Mosquitto 2.0 lets an ACL file beside the plugin grant any SUBSCRIBE (a device could join the
gateway's shared subscription and take its turn of every device's messages, which the plugin
then refuses to deliver: lost after the sender's PUBACK). Each device's account is bound to its
name as client id, so no device can take another's session or the gateway's, and has a role of
its own letting it publish one level under `devices/<its name>/` (the plugin cannot say `%u`);
the gateway's accounts are in a role that may subscribe to every device topic. Accounts of a
running broker are made through the plugin (`gateway.identities.dynsec`), those of a stopped
one straight into its file (`gateway.identities.dynsec_file`).

With `tls=True` a second listener speaks TLS with a certificate for `localhost` and 127.0.0.1,
signed by a throwaway CA from `gateway.services.certificates` (`ca_file`), so clients can be
tested both with and without the CA they need to trust.

Started by root, the broker runs as Debian's `mosquitto` user, which then owns its directory
(0700) and every file in it (0600): passwords, the plugin's accounts and the TLS key are nobody
else's to read.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gateway.config import MosquittoAccountsConfig, Secret
from gateway.identities.accounts import (
    DEFAULT_ACCESS,
    device_role,
    device_role_acls,
    gateway_role_acls,
)
from gateway.identities.dynsec import Dynsec, NewAccount
from gateway.identities.dynsec_file import init_file, write_accounts, write_role, write_roles
from gateway.services._process import (
    LOOPBACK,
    LocalService,
    ServiceError,
    ServiceProcess,
    free_port,
    hand_over,
    private_file,
    service_user,
)
from gateway.services.certificates import CertificateAuthority
from gateway.sources.mqtt.options import DEFAULT_PACKET_LIMIT

__all__ = [
    "BROKER_LIMITS",
    "DEFAULT_ACCESS",
    "GATEWAY_ACLS",
    "GATEWAY_ROLE",
    "Mosquitto",
    "MqttBroker",
    "MqttUser",
    "dynsec_plugin",
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


_SHIPPED = MosquittoAccountsConfig()

GATEWAY_ROLE = "gateway"
GATEWAY_ACLS = gateway_role_acls(_SHIPPED)
"""The gateway role, as `gateway brokers apply` keeps it (checked: without the `$share`
pattern the plugin alone refuses a shared subscription)."""

_PLUGIN = "mosquitto_dynamic_security.so"
OS_USER = "mosquitto"  # Debian's package makes it


def dynsec_plugin() -> Path | None:
    """The dynamic-security plugin beside the installed broker (Debian: /usr/lib/<arch>/)."""
    roots = [Path("/usr/lib"), Path("/usr/local/lib"), Path("/usr/lib64")]
    candidates = [path for root in roots for path in (root / _PLUGIN, *root.glob(f"*/{_PLUGIN}"))]
    return next((path for path in candidates if path.is_file()), None)


_Role = tuple[str, Sequence[tuple[str, str]]]


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
    """Debian's `mosquitto` with a generated config: no anonymous access, and the
    dynamic-security plugin alone for accounts and what each may do.

    The plugin's admin is `admin` (`accounts_config()` logs in as it); `gateway` is a shared,
    unbound account in the gateway role for tests that start many sessions, while
    `add_gateway(client_id)` makes the product's kind: one account per pod, bound to its client id.

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
        self.admin = MqttUser("admin", secrets.token_urlsafe(16))
        """The dynamic-security admin: may manage accounts, may not publish to devices."""
        binary = mosquitto_binary()
        if binary is None:
            raise ServiceError(
                "mosquitto is not installed: run `apt-get install -y mosquitto` (or `make setup`)"
            )
        plugin = dynsec_plugin()
        if plugin is None:
            raise ServiceError(
                f"Mosquitto's dynamic-security plugin ({_PLUGIN}) is not installed: Debian's "
                "`mosquitto` package ships it (apt-get install -y mosquitto)"
            )
        self._binary = binary
        self._plugin = plugin
        self._os_user = service_user(OS_USER)

    @property
    def dynsec_file(self) -> Path:
        """The plugin's accounts, roles and default access (JSON)."""
        return self.directory / "dynamic-security.json"

    @property
    def admin_password_file(self) -> Path:
        return self.directory / "admin-password"

    @property
    def gateway_password_file(self) -> Path:
        return self.directory / "gateway-password"

    def accounts_config(self, **overrides: object) -> MosquittoAccountsConfig:
        """Where this broker's plugin is, logged in as its admin (password in a 0600 file)."""
        values: dict[str, object] = {
            "host": self.host,
            "port": self.port,
            "username": self.admin.username,
            "password": Secret(file=self.admin_password_file),
            "gateway_password": Secret(file=self.gateway_password_file),
            "gateway_role": GATEWAY_ROLE,
        }
        values.update(overrides)
        return MosquittoAccountsConfig.model_validate(values)

    def add_users(self, users: list[MqttUser]) -> None:
        """Device accounts, each bound to its name as client id and in a role of its own that
        may publish under its name; an existing account (such as the gateway's) only gets the
        new password. A running broker takes them at once."""
        self._upsert(
            [
                NewAccount(u.username, u.password, u.username, roles=(device_role(u.username),))
                for u in users
            ],
            [(device_role(u.username), device_role_acls(_SHIPPED, u.username)) for u in users],
        )

    def add_gateway(self, client_id: str, password: str | None = None) -> MqttUser:
        """A gateway pod's account: named after its client id, bound to it, in the gateway role."""
        user = MqttUser(client_id, password or secrets.token_urlsafe(16))
        self._upsert([NewAccount(client_id, user.password, client_id, roles=(GATEWAY_ROLE,))])
        return user

    def _upsert(self, accounts: Sequence[NewAccount], roles: Sequence[_Role] = ()) -> None:
        """Accounts, and the roles that only they hold (made with a new account, never with an
        existing one)."""
        if not self.running:
            write_roles(self.dynsec_file, roles)
            write_accounts(self.dynsec_file, accounts)
            return
        # Callers are synchronous (tests add users between awaits): the plugin's session runs
        # on a loop of its own, in a thread, while the caller's loop waits.
        with ThreadPoolExecutor(1) as thread:
            thread.submit(asyncio.run, self._upsert_live(accounts, roles)).result()

    async def _upsert_live(self, accounts: Sequence[NewAccount], roles: Sequence[_Role]) -> None:
        # A client id of its own: two admin sessions with one id would take over each other.
        config = self.accounts_config(client_id=f"accounts-{secrets.token_hex(4)}")
        async with Dynsec(config) as dynsec:
            existing = await dynsec.named([a.username for a in accounts])
            new = [a for a in accounts if a.username not in existing]
            needed = {role for account in new for role in account.roles}
            await dynsec.create_roles([(role, acls) for role, acls in roles if role in needed])
            await dynsec.create(new)
            for account in accounts:
                if account.username in existing:
                    await dynsec.set_password(account.username, account.password)

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

    async def _prepare(self) -> None:
        for path, secret in (
            (self.admin_password_file, self.admin.password),
            (self.gateway_password_file, self.gateway.password),
        ):
            path.touch(mode=0o600)
            path.write_text(secret)
        init_file(
            self.dynsec_file,
            self.admin.username,
            self.admin.password,
            default_access=dict(DEFAULT_ACCESS),
        )
        write_role(self.dynsec_file, GATEWAY_ROLE, GATEWAY_ACLS)
        write_accounts(
            self.dynsec_file,
            [NewAccount(self.gateway.username, self.gateway.password, "", roles=(GATEWAY_ROLE,))],
        )
        (self.directory / "data").mkdir()
        self.config_file.write_text(
            f"listener {self.port} {self.host}\n"
            "allow_anonymous false\n"
            f"plugin {self._plugin}\n"
            f"plugin_opt_config_file {self.dynsec_file}\n"
            "persistence true\n"
            f"persistence_location {self.directory / 'data'}/\n"
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
        # The broker appends to its log itself; files written while it was stopped (accounts,
        # certificates) are handed over too.
        private_file(self.log_path)
        hand_over(self.directory, self._os_user)
        return await self._spawn_and_wait(
            [self._binary, "-c", str(self.config_file)],
            self.port,
            timeout=20,
            user=self._os_user,
        )
