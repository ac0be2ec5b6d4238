"""MQTT as a gateway source: the identity claim is the topic level the broker's ACL enforces."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Sequence

from gateway.config import MqttSourceConfig
from gateway.sources.mqtt.client import MqttClient
from gateway.sources.mqtt.message import Message
from gateway.sources.mqtt.options import MqttOptions
from gateway.topics import TopicTemplate

__all__ = ["MqttSource", "tls_context"]


def tls_context(config: MqttSourceConfig) -> ssl.SSLContext | None:
    if not config.tls:
        return None
    context = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
    if config.cert_file is not None:
        context.load_cert_chain(
            str(config.cert_file), str(config.key_file) if config.key_file else None
        )
    return context


class MqttSource:
    """One persistent MQTT v5 session (optionally in a `$share` group) feeding the pipeline."""

    def __init__(
        self,
        config: MqttSourceConfig,
        *,
        on_connection_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.name = config.name
        self.config = config
        self._parse = TopicTemplate(config.topic_template).parse
        options = MqttOptions(
            client_id=config.client_id,
            host=config.host,
            port=config.port,
            username=config.username,
            password=config.password.read() if config.password else None,
            subscriptions=[(config.subscription, config.qos)],
            clean_start=False,
            session_expiry_interval=config.session_expiry,
            receive_maximum=config.receive_maximum,
            keep_alive=config.keep_alive,
            ssl=tls_context(config),
            server_hostname=config.host if config.tls else None,
        )
        self.client = MqttClient(options, on_connection_change=on_connection_change)

    @property
    def connected(self) -> bool:
        return self.client.connected

    unclaimed_reason = "topic_mismatch"

    def pause(self) -> None:
        """Nothing to do: unacknowledged messages fill the receive maximum and the broker stops."""

    async def resume(self) -> None:
        pass

    def claim(self, message: Message) -> tuple[str, str] | None:
        return self._parse(message.topic)

    def position(self, message: Message) -> int:
        return message.packet_id

    def ack(self, messages: Sequence[Message]) -> None:
        self.client.ack_many(messages)

    async def start(self) -> None:
        await self.client.start()

    async def receive(self) -> list[Message]:
        return await self.client.receive()

    async def close(self) -> None:
        await self.client.disconnect()
