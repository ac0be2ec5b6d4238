"""The roles declaration refuses what would be unsafe or ambiguous, naming the path each time."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.roles.declaration import Tier, load_declaration, parse_declaration
from gateway.roles.state import desired_state, parse_marker
from gateway.validation import ConfigError

EXAMPLE = Path(__file__).parents[2] / "config" / "roles.toml"

BASE = """
[roles.telemetry_ingest]
id = "r-1"
tier = "ingest"
connection_limit = 4
password = { env = "PW_1" }
grants = [{ table = "ingest.telemetry", privileges = ["INSERT"] }]
"""


def problems(text: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        parse_declaration(text, "roles.toml")
    assert str(caught.value).startswith("roles.toml is invalid:")
    return dict(caught.value.problems)


def test_the_shipped_example_is_valid_and_has_every_tier() -> None:
    doc = load_declaration(EXAMPLE)
    assert {spec.tier for spec in doc.roles.values()} == set(Tier)
    assert {
        "telemetry_ingest",
        "state_writer",
        "rejects_writer",
        "analytics_reader",
        "auditor",
        "gateway_admin",
    } <= set(doc.roles)
    assert len(doc.digest) == 64


def test_unknown_privilege() -> None:
    found = problems(BASE.replace('["INSERT"]', '["INSERT", "UPSERT"]'))
    assert "UPSERT" in found["roles.telemetry_ingest.grants[0].privileges[1]"]


def test_unknown_table() -> None:
    found = problems(BASE.replace("ingest.telemetry", "ingest.nope"))
    assert "unknown table 'ingest.nope'" in found["roles.telemetry_ingest.grants[0].table"]


def test_extra_tables_can_be_declared() -> None:
    doc = parse_declaration('tables = ["ingest.custom"]\n' + BASE.replace('telemetry"', 'custom"'))
    assert doc.roles["telemetry_ingest"].grants[0].table == "ingest.custom"


def test_duplicate_id() -> None:
    second = BASE.replace("[roles.telemetry_ingest]", "[roles.other_ingest]")
    found = problems(BASE + second)
    assert "duplicate id 'r-1'" in found["roles.other_ingest.id"]


def test_ingest_tier_may_only_insert() -> None:
    found = problems(BASE.replace('["INSERT"]', '["INSERT", "SELECT"]'))
    message = found["roles.telemetry_ingest.grants[0].privileges[1]"]
    assert "tier ingest may only be granted INSERT, not SELECT" in message


def test_reader_tier_may_only_select() -> None:
    reader = BASE.replace('tier = "ingest"', 'tier = "reader"')
    found = problems(reader)
    assert "not INSERT" in found["roles.telemetry_ingest.grants[0].privileges[0]"]


def test_inheritance_cycle_and_unknown_parent() -> None:
    a = BASE.replace('id = "r-1"', 'id = "r-1"\ninherits = ["b_role", "ghost"]')
    b = """
[roles.b_role]
id = "r-2"
tier = "ingest"
inherits = ["telemetry_ingest"]
connection_limit = 1
password = { file = "/run/secrets/b" }
"""
    found = problems(a + b)
    assert "unknown role 'ghost'" in found["roles.telemetry_ingest.inherits[1]"]
    cycle = [message for path, message in found.items() if "cycle" in message]
    assert cycle and "telemetry_ingest -> b_role -> telemetry_ingest" in cycle[0]


def test_missing_credential_source() -> None:
    found = problems(BASE.replace('password = { env = "PW_1" }\n', ""))
    assert found["roles.telemetry_ingest.password"] == "Field required"
    found = problems(BASE.replace('{ env = "PW_1" }', '{ env = "PW_1", file = "/x" }'))
    assert "exactly one" in found["roles.telemetry_ingest.password"]


def test_pool_must_fit_the_connection_limit() -> None:
    found = problems(
        BASE.replace("connection_limit = 4", "connection_limit = 4\npool = { max = 9 }")
    )
    assert "exceeds connection_limit" in found["roles.telemetry_ingest"]


def test_login_suffix_is_reserved_and_names_are_identifiers() -> None:
    assert (
        "kept for LOGIN roles"
        in problems(BASE.replace("telemetry_ingest]", "x_login]"))["roles.x_login"]
    )
    assert "roles.Bad-Name" in problems(BASE.replace("telemetry_ingest]", '"Bad-Name"]'))


def test_unknown_keys_and_bad_toml_are_reported() -> None:
    assert "roles.telemetry_ingest.colour" in problems(BASE + 'colour = "red"\n')
    assert "(file)" in problems("roles = [")


def test_desired_state_pairs_a_group_with_a_login_member() -> None:
    state = desired_state(parse_declaration(BASE))
    group, login = state.roles["telemetry_ingest"], state.roles["telemetry_ingest_login"]
    assert not group.login and login.login and login.connection_limit == 4
    assert parse_marker(login.comment) == ("r-1", "login")
    assert ("statement_timeout", "30000") in login.settings
    (membership,) = state.memberships
    assert (membership.role, membership.member, membership.set) == (
        "telemetry_ingest",
        "telemetry_ingest_login",
        False,
    )
