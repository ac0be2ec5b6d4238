"""Topic templates: where the identity claim sits, and what subscription covers it."""

from __future__ import annotations

import pytest

from gateway.topics import REMEMBERED_LENGTH, REMEMBERED_TOPICS, TopicTemplate
from gateway.validation import ConfigError


def test_parse_and_subscription() -> None:
    template = TopicTemplate("devices/{identity}/{stream}")
    assert template.parse("devices/sensor-1/telemetry") == ("sensor-1", "telemetry")
    assert template.parse("devices/sensor-1/telemetry/extra") is None
    assert template.parse("devices/sensor-1") is None
    assert template.parse("other/sensor-1/telemetry") is None
    assert template.parse("devices//telemetry") is None
    assert template.subscription() == "devices/+/#"


def test_stream_is_optional() -> None:
    template = TopicTemplate("fleet/{identity}", default_stream="telemetry")
    assert template.parse("fleet/s-9") == ("s-9", "telemetry")


@pytest.mark.parametrize(
    "bad", ["devices/+/{stream}", "devices/{stream}", "a/{identity}/{identity}"]
)
def test_bad_templates_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError):
        TopicTemplate(bad)


def test_remembered_claims_stay_right_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.topics.REMEMBERED_TOPICS", 3)
    template = TopicTemplate("devices/{identity}/{stream}")
    topics = [f"devices/d-{n}/telemetry" for n in range(5)] + ["devices/x"]
    for _ in range(2):  # once parsed, once remembered (or parsed again after a clear)
        assert [template.parse(t) for t in topics] == [
            *((f"d-{n}", "telemetry") for n in range(5)),
            None,
        ]
        assert len(template._claims) <= 3


def test_the_claim_cache_is_bounded_in_bytes_whatever_topics_arrive() -> None:
    template = TopicTemplate("devices/{identity}/{stream}")
    long_topic = "devices/" + "x" * 5000 + "/telemetry"
    assert template.parse(long_topic) == ("x" * 5000, "telemetry")
    assert long_topic not in template._claims  # parsed each time, never remembered
    for n in range(REMEMBERED_TOPICS + 10):
        template.parse(f"devices/d-{n}/telemetry")
    assert len(template._claims) <= REMEMBERED_TOPICS
    assert all(len(topic) <= REMEMBERED_LENGTH for topic in template._claims)
