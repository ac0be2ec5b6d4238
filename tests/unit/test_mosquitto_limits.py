"""The shipped Mosquitto limits agree with the gateway's payload limit and the test launcher."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.config import LimitsConfig
from gateway.services.mosquitto import BROKER_LIMITS
from gateway.sources.mqtt.options import PACKET_HEADROOM, packet_limit

CONF = Path(__file__).parents[2] / "deploy" / "mosquitto" / "mosquitto.conf"


def settings() -> dict[str, str]:
    lines = CONF.read_text().splitlines()
    pairs = [line.split(None, 1) for line in lines if line and not line.startswith("#")]
    return {name: value for name, value in pairs}


def test_the_packet_limit_is_the_payload_limit_plus_headroom() -> None:
    payload = LimitsConfig().max_payload_bytes
    assert int(settings()["max_packet_size"]) == packet_limit(payload) == payload + PACKET_HEADROOM
    # The arithmetic in the comment is the one the code does.
    text = CONF.read_text()
    assert re.search(rf"^#\s+{payload} \(", text, re.M)
    assert re.search(rf"^# \+\s+{PACKET_HEADROOM} \(", text, re.M)
    assert re.search(rf"^# = {packet_limit(payload)}\.", text, re.M)


def test_the_launcher_runs_tests_with_the_shipped_limits() -> None:
    shipped = settings()
    assert {name: int(shipped[name]) for name in BROKER_LIMITS} == BROKER_LIMITS


def test_every_session_queue_is_bounded_in_messages_and_bytes() -> None:
    shipped = settings()
    assert int(shipped["max_queued_messages"]) > 0
    assert 0 < int(shipped["max_queued_bytes"]) < 2 * 1024**3  # the broker's 2Gi in Kubernetes
