"""MQTT sources: our asyncio MQTT v5 client over the `mqtt5` codec, and a 3.1.1 fallback.

`mqtt_source` picks the transport a source's configured protocol needs.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.config import MqttSourceConfig
from gateway.errors import MqttError
from gateway.sources.acks import AckWindow
from gateway.sources.mqtt.client import MqttClient
from gateway.sources.mqtt.compat import Mqtt311Source
from gateway.sources.mqtt.message import Message
from gateway.sources.mqtt.options import MqttOptions
from gateway.sources.mqtt.protocol import disconnect_reason
from gateway.sources.mqtt.source import DEFAULT_PAYLOAD_LIMIT, MqttSource

__all__ = [
    "AckWindow",
    "AnyMqttSource",
    "Message",
    "Mqtt311Source",
    "MqttClient",
    "MqttOptions",
    "MqttSource",
    "disconnect_reason",
    "mqtt_source",
]

AnyMqttSource = MqttSource | Mqtt311Source


def mqtt_source(
    config: MqttSourceConfig,
    *,
    max_payload_bytes: int = DEFAULT_PAYLOAD_LIMIT,
    on_lost: Callable[[MqttError], None] | None = None,
) -> AnyMqttSource:
    """MQTT v5 through our client by default; 3.1.1, over aiomqtt, for brokers without v5.

    Only MQTT v5 can tell the broker the largest packet we take (from `max_payload_bytes`),
    and say why it ended a connection (`on_lost`: a DISCONNECT's reason, such as a session
    taken over); under 3.1.1 the broker's own `max_packet_size` is the bound.
    """
    if config.protocol == "3.1.1":
        return Mqtt311Source(config)
    return MqttSource(config, max_payload_bytes=max_payload_bytes, on_lost=on_lost)
