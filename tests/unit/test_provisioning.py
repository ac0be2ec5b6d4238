"""Provisioning rules: globs over the whole name, first match wins, strict configuration."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.identities.provisioning import ProvisionRule, match_rule

RULES = [
    ProvisionRule(pattern="sensor-eu-*", role="eu_ingest"),
    ProvisionRule(pattern="sensor-*", role="telemetry_ingest"),
    ProvisionRule(pattern="svc-[a-z]*", role="state_writer", kind="service"),
    ProvisionRule(pattern="probe-??", role="telemetry_ingest"),
]


@pytest.mark.parametrize(
    ("name", "role"),
    [
        ("sensor-eu-17", "eu_ingest"),
        ("sensor-17", "telemetry_ingest"),
        ("svc-billing", "state_writer"),
        ("probe-01", "telemetry_ingest"),
        ("probe-001", None),
        ("svc-1", None),
        ("Sensor-17", None),  # case-sensitive, whatever the platform
        ("x-sensor-17", None),  # anchored at both ends
        ("", None),
    ],
)
def test_first_match_wins(name: str, role: str | None) -> None:
    rule = match_rule(RULES, name)
    assert (rule.role if rule else None) == role


def test_kind_defaults_to_device() -> None:
    assert match_rule(RULES, "sensor-1").kind == "device"  # type: ignore[union-attr]
    assert match_rule(RULES, "svc-x").kind == "service"  # type: ignore[union-attr]
    assert match_rule([], "sensor-1") is None


@pytest.mark.parametrize(
    "fields",
    [
        {"pattern": "", "role": "r"},
        {"pattern": "*", "role": ""},
        {"pattern": "*", "role": "r", "kind": "robot"},
        {"pattern": "*", "role": "r", "regex": True},
    ],
)
def test_bad_rules_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ProvisionRule.model_validate(fields)


def test_rules_are_immutable_and_hashable() -> None:
    rule = RULES[0]
    with pytest.raises(ValidationError):
        rule.role = "other"
    assert len({rule, ProvisionRule(pattern="sensor-eu-*", role="eu_ingest")}) == 1
