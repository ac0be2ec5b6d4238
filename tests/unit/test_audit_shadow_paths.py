"""The declared superusers, and the membership paths the shadow-access audit reports."""

from __future__ import annotations

import pytest

from gateway.roles.audit import _holdings, _membership_paths
from gateway.roles.declaration import parse_declaration
from gateway.validation import ConfigError

ROLE = """
[roles.telemetry_ingest]
id = "r-1"
tier = "ingest"
connection_limit = 4
password = { env = "PW_1" }
"""


def test_superusers_default_to_the_bootstrap_one_and_can_be_declared() -> None:
    assert parse_declaration(ROLE).superusers == ["postgres"]
    declared = parse_declaration('superusers = ["postgres", "rdsAdmin"]\n' + ROLE)
    assert declared.superusers == ["postgres", "rdsAdmin"]
    with pytest.raises(ConfigError) as caught:
        parse_declaration('superusers = [""]\n' + ROLE, "roles.toml")
    assert [path for path, _ in caught.value.problems] == ["superusers[0]"]


def test_paths_are_shortest_and_stop_at_managed_roles() -> None:
    parents = {
        "login": ["group", "managed"],
        "group": ["pg_write_all_data", "deeper"],
        "deeper": ["pg_write_all_data"],
        "managed": ["behind_managed"],
    }
    paths = _membership_paths("login", parents, {"managed"})
    assert paths == {
        "login": ["login"],
        "group": ["login", "group"],
        "managed": ["login", "managed"],
        "pg_write_all_data": ["login", "group", "pg_write_all_data"],
        "deeper": ["login", "group", "deeper"],
    }
    assert "behind_managed" in _membership_paths("managed", parents, {"managed"})


def test_cycles_end() -> None:
    assert set(_membership_paths("a", {"a": ["b"], "b": ["a"]}, set())) == {"a", "b"}


def test_holdings_name_the_first_objects_and_count_the_rest() -> None:
    held = {("gateway.identities", "UPDATE"), ("gateway.identities", "SELECT")}
    assert _holdings(held) == "SELECT, UPDATE on gateway.identities"
    many = {(f"ingest.t{i}", "SELECT") for i in range(7)}
    assert _holdings(many).endswith("SELECT on ingest.t4 and 2 more objects")
