"""MQTT as a gateway source: the identity claim is the topic level the broker's ACL enforces."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from gateway.config import LimitsConfig, MqttSourceConfig
from gateway.contracts import Source
from gateway.errors import MqttError
from gateway.sources.mqtt.client import MqttClient
from gateway.sources.mqtt.message import Message
from gateway.sources.mqtt.options import MqttOptions, packet_limit
from gateway.topics import TopicTemplate

__all__ = ["DEFAULT_PAYLOAD_LIMIT", "MqttSource", "MqttSourceBase"]

DEFAULT_PAYLOAD_LIMIT: int = LimitsConfig.model_fields["max_payload_bytes"].default


class MqttSourceBase(Source[Message]):
    """What both MQTT transports share: the topic claim and the packet id as position."""

    unclaimed_reason = "topic_mismatch"

    def __init__(self, config: MqttSourceConfig) -> None:
        self.name = config.name
        self.config = config
        self._parse = TopicTemplate(config.topic_template).parse

    def pause(self) -> None:
        """Held acks fill the broker's in-flight window and the broker stops.

        For 3.1.1 clients that window is the broker's setting (Mosquitto: max_inflight_messages,
        and max_packet_size bounds each message); where it is unlimited, paho keeps reading and
        messages wait here instead. The v5 transport also stops reading (`MqttSource.pause`).
        """

    async def resume(self) -> None:
        pass

    def claim(self, message: Message) -> tuple[str, str] | None:
        return self._parse(message.topic)

    def position(self, message: Message) -> int:
        return message.packet_id


class MqttSource(MqttSourceBase):
    """One persistent MQTT v5 session (optionally in a `$share` group) feeding the pipeline.

    `max_payload_bytes` is the decoder's limit (`limits.max_payload_bytes`): the session asks
    the broker for no packet longer than that plus the room a PUBLISH needs (`packet_limit`).
    """

    def __init__(
        self,
        config: MqttSourceConfig,
        *,
        on_connection_change: Callable[[bool], None] | None = None,
        on_lost: Callable[[MqttError], None] | None = None,
        max_payload_bytes: int = DEFAULT_PAYLOAD_LIMIT,
    ) -> None:
        super().__init__(config)
        options = MqttOptions(
            client_id=config.client_id,
            host=config.host,
            port=config.port,
            username=config.username,
            password=config.password.require() if config.password else None,
            subscriptions=[(config.subscription, config.qos)],
            clean_start=False,
            session_expiry_interval=config.session_expiry,
            receive_maximum=config.receive_maximum,
            keep_alive=config.keep_alive,
            ssl=config.tls_context(),
            server_hostname=config.host if config.uses_tls else None,
            max_packet_size=packet_limit(max_payload_bytes),
        )
        self.client = MqttClient(
            options, on_connection_change=on_connection_change, on_lost=on_lost
        )

    @property
    def connected(self) -> bool:
        return self.client.connected

    def ack(self, messages: Sequence[Message]) -> None:
        self.client.ack_many(messages)

    def pause(self) -> None:
        """Stop reading from the broker while the engine's buffers are full (rows or bytes):
        the receive maximum bounds messages in flight, not their bytes, so this is what keeps
        large payloads in the socket and the broker's queue rather than in memory."""
        self.client.hold(True)

    async def resume(self) -> None:
        self.client.hold(False)

    async def start(self) -> None:
        await self.client.start()

    async def receive(self) -> list[Message]:
        return await self.client.receive()

    async def close(self) -> None:
        await self.client.disconnect()
