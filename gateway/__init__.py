"""M2M ingestion gateway: MQTT and Kafka telemetry into PostgreSQL, one least-privileged role
per machine identity, acknowledged only after commit."""

from __future__ import annotations

from gateway.app import Gateway
from gateway.config import GatewayConfig, load_config
from gateway.errors import GatewayError

__all__ = ["Gateway", "GatewayConfig", "GatewayError", "__version__", "load_config"]

__version__ = "0.1.0"
