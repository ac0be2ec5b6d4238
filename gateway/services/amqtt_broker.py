"""The child process of `gateway.services.amqtt.Amqtt`: an amqtt broker with two plugins that
enforce a password file and one publish level under a device's own name (`devices/<user>/+`).

    python -m gateway.services.amqtt_broker CONFIG.json
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from gateway.services.amqtt import password_matches

__all__ = ["DeviceTopics", "PasswordFile", "main"]

# The plugins by their import path, also when this module runs as __main__.
MODULE = "gateway.services.amqtt_broker"


class PasswordFile(BaseAuthPlugin):  # type: ignore[misc]  # amqtt ships no types
    """Accounts from the launcher's JSON file, read again whenever it was replaced."""

    @dataclass
    class Config:
        password_file: str = ""

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self._stamp = -1
        self._users: dict[str, str] = {}

    async def authenticate(self, *, session: Session) -> bool:
        stored = self._accounts().get(session.username or "")
        return stored is not None and password_matches(session.password or "", stored)

    def _accounts(self) -> dict[str, str]:
        # A small local file, read again only after the launcher replaced it.
        source = Path(self.config.password_file)
        stamp = source.stat().st_mtime_ns
        if stamp != self._stamp:
            self._users = json.loads(source.read_text())
            self._stamp = stamp
        return self._users


class DeviceTopics(BaseTopicPlugin):  # type: ignore[misc]
    """A device publishes only one level under `devices/<its user name>/`; only the gateway
    reads."""

    @dataclass
    class Config:
        gateway_user: str = "gateway"

    async def topic_filtering(
        self,
        *,
        session: Session | None = None,
        topic: str | None = None,
        action: Action | None = None,
    ) -> bool:
        user = session.username if session is not None else None
        if not user or not topic:
            return False
        if action == Action.PUBLISH:
            prefix = f"devices/{user}/"
            return topic.startswith(prefix) and "/" not in topic[len(prefix) :]
        return user == self.config.gateway_user and topic.startswith("devices/")


async def serve(config: dict[str, Any]) -> None:
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"{config['host']}:{config['port']}"}},
            "plugins": {
                f"{MODULE}.PasswordFile": {"password_file": config["password_file"]},
                f"{MODULE}.DeviceTopics": {"gateway_user": config["gateway_user"]},
            },
        }
    )
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    await broker.start()
    await stopped.wait()
    await broker.shutdown()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(serve(json.loads(Path(sys.argv[1]).read_text())))


if __name__ == "__main__":
    main()
