"""Why an MQTT connection ended is counted; a session taken over (0x8E) is said loudly."""

from __future__ import annotations

import logging

import pytest

from gateway.app import Gateway
from gateway.config import GatewayConfig
from gateway.errors import MqttConnectionLost
from gateway.sources.mqtt import disconnect_reason


def lost(gateway: Gateway, reason: str) -> float | None:
    return gateway.metrics.registry.get_sample_value(
        "gateway_mqtt_connections_lost_total", {"source": "broker", "reason": reason}
    )


def test_losses_are_counted_by_the_brokers_reason(caplog: pytest.LogCaptureFixture) -> None:
    gateway = Gateway(GatewayConfig())
    with caplog.at_level(logging.ERROR, logger="gateway.app"):
        gateway._mqtt_lost("broker", MqttConnectionLost("gone"))
        assert not caplog.records  # an ordinary loss is the client's to log
        gateway._mqtt_lost("broker", MqttConnectionLost("taken", reason_code=0x8E))
    assert lost(gateway, "connection") == 1
    assert lost(gateway, "session_taken_over") == 1
    assert "taken over" in caplog.records[0].getMessage()


def test_reasons_are_bounded_labels() -> None:
    assert disconnect_reason(0x8E) == "session_taken_over"
    assert disconnect_reason(0x8B) == "server_shutting_down"
    assert disconnect_reason(0x42) == "code_66"  # not a DISCONNECT reason: still one label
