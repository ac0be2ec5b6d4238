"""The shipped configuration reference is exactly what the models generate."""

from __future__ import annotations

from pathlib import Path

from gateway.config import GatewayConfig
from gateway.config_reference import reference

SHIPPED = Path(__file__).parents[2] / "docs" / "configuration.md"


def test_reference_is_current() -> None:
    assert SHIPPED.read_text() == reference(), (
        "docs/configuration.md is stale: run `gateway config-reference > docs/configuration.md`"
    )


def test_every_setting_is_documented() -> None:
    text = reference()
    for section, field in GatewayConfig.model_fields.items():
        assert field.description, f"{section} has no description"
    assert "`batching.max_rows`" in text and "`GATEWAY_BATCHING__MAX_ROWS`" in text
    assert "`sources.mqtt[].receive_maximum`" in text
