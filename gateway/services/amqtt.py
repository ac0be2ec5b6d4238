"""The pure-Python `amqtt` broker on loopback, for machines without Mosquitto.

It keeps the security boundary of the MQTT path that Mosquitto's ACL draws: no anonymous access,
passwords, and a device may publish only under `devices/<its user name>/` (the gateway's user
reads everything under `devices/`). It speaks only MQTT 3.1.1, so the gateway reaches it through
the 3.1.1 compatibility transport, and a refused publish is dropped silently (3.1.1 has no
negative PUBACK). The broker runs in a child process (`gateway.services.amqtt_broker`), so it can
be stopped and killed like the other launchers' servers. It runs as whoever starts it: the
interpreter it needs may live where only that user can read (a root-owned pyenv, a home folder);
its directory is 0700 and its files 0600.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sys
from pathlib import Path
from typing import Literal

from gateway.services._process import ServiceProcess, hand_over, installed
from gateway.services.mosquitto import MqttBroker, MqttUser

__all__ = ["Amqtt", "hash_password", "password_matches"]

PBKDF2_ROUNDS = 20_000


def hash_password(password: str) -> str:
    """`salt$digest` (PBKDF2-SHA256), so the password file holds no password in clear."""
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, PBKDF2_ROUNDS)
    return f"{salt.hex()}${digest.hex()}"


def password_matches(password: str, stored: str) -> bool:
    salt, _, digest = stored.partition("$")
    given = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt), PBKDF2_ROUNDS)
    return hmac.compare_digest(given.hex(), digest)


class Amqtt(MqttBroker):
    """amqtt with a generated config: passwords and the device rule, MQTT 3.1.1 only."""

    name = "amqtt"
    protocol: Literal["3.1.1"] = "3.1.1"

    def __init__(self, *, gateway_user: str = "gateway", keep_dir: bool = False) -> None:
        installed("amqtt", "amqtt")  # the broker's child process imports it
        super().__init__(gateway_user=gateway_user, keep_dir=keep_dir)
        self._users: dict[str, str] = {}

    @property
    def password_file(self) -> Path:
        return self.directory / "passwords.json"

    @property
    def config_file(self) -> Path:
        return self.directory / "amqtt.json"

    def add_users(self, users: list[MqttUser]) -> None:
        """The running broker reads the file again at its next connection."""
        for user in users:
            self._users[user.username] = hash_password(user.password)
        # Replaced whole, never rewritten in place: the broker must not read half a file.
        partial = self.password_file.with_suffix(".partial")
        partial.touch(mode=0o600)
        partial.write_text(json.dumps(self._users))
        partial.replace(self.password_file)

    async def _prepare(self) -> None:
        self.add_users([self.gateway])
        config = {
            "host": self.host,
            "port": self.port,
            "password_file": str(self.password_file),
            "gateway_user": self.gateway.username,
        }
        self.config_file.write_text(json.dumps(config))
        hand_over(self.directory, None)

    async def _launch(self) -> ServiceProcess:
        return await self._spawn_and_wait(
            [sys.executable, "-m", "gateway.services.amqtt_broker", str(self.config_file)],
            self.port,
            timeout=30,
        )
