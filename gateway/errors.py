"""Every error the gateway raises on purpose, in one tree.

    GatewayError
    ├── ServiceError            a local service (PostgreSQL, Mosquitto, Kafka) failed to start
    └── MqttError               the MQTT transport
        ├── MqttConnectError    the broker refused the connection (carries the reason code)
        ├── MqttSubscribeError  the broker refused a subscription (carries the reason codes)
        └── MqttConnectionLost  the connection dropped; `retriable` is True

Each error says whether trying again can help (`retriable`), so callers read an attribute
instead of listing types.
"""

from __future__ import annotations

__all__ = ["GatewayError"]


class GatewayError(Exception):
    """Base of all gateway errors."""

    retriable: bool = False
