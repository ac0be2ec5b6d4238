"""MQTT sources: our asyncio MQTT v5 client over the `mqtt5` codec, and a 3.1.1 fallback.

`mqtt_source` picks the transport a source's configured protocol needs.
"""

from __future__ import annotations

from gateway.config import MqttSourceConfig
from gateway.sources.acks import AckWindow
from gateway.sources.mqtt.client import MqttClient
from gateway.sources.mqtt.compat import Mqtt311Source
from gateway.sources.mqtt.message import Message
from gateway.sources.mqtt.options import MqttOptions
from gateway.sources.mqtt.source import MqttSource

__all__ = [
    "AckWindow",
    "AnyMqttSource",
    "Message",
    "Mqtt311Source",
    "MqttClient",
    "MqttOptions",
    "MqttSource",
    "mqtt_source",
]

AnyMqttSource = MqttSource | Mqtt311Source


def mqtt_source(config: MqttSourceConfig) -> AnyMqttSource:
    """MQTT v5 through our client by default; 3.1.1, over aiomqtt, for brokers without v5."""
    return Mqtt311Source(config) if config.protocol == "3.1.1" else MqttSource(config)
