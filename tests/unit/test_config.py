"""The example configuration loads; errors name the path and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.validation import ConfigError

EXAMPLE = Path(__file__).parents[2] / "config" / "gateway.toml"


def test_example_configuration_is_valid() -> None:
    config = load_config(EXAMPLE)
    (source,) = config.sources.mqtt
    assert source.subscription == "$share/gateways/devices/+/#"
    assert config.routes[0].table == "ingest.telemetry"


def test_environment_overrides_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_DATABASE__HOST", "db.internal")
    monkeypatch.setenv("GATEWAY_BATCHING__MAX_ROWS", "1000")
    config = load_config(EXAMPLE)
    assert (config.database.host, config.batching.max_rows) == ("db.internal", 1000)


def test_errors_name_path_and_expectation(tmp_path: Path) -> None:
    bad = tmp_path / "gateway.toml"
    bad.write_text(
        '[database]\nport = "five"\n[[sources.mqtt]]\ntopic_template = "x/{stream}"\n'
        '[identities]\nunknown = "allow"\n[batching]\nmax_rows = 10\nmax_buffered_rows = 1\n'
        "[colour]\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(bad)
    problems = dict(caught.value.problems)
    assert "valid integer" in problems["database.port"]
    assert "{identity}" in problems["sources.mqtt[0].topic_template"]
    assert "'reject', 'provision' or 'quarantine'" in problems["identities.unknown"]
    assert "must hold at least one batch" in problems["batching"]
    assert "colour" in problems
