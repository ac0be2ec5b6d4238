"""A declaration cannot name PostgreSQL's own roles, nor give a role more through `inherits` or
the control schema than its tier allows; each refusal names its path."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.roles.declaration import parse_declaration
from gateway.validation import ConfigError


def role(name: str, tier: str, *, grants: str = "[]", inherits: str = "[]", n: int = 1) -> str:
    return f"""
[roles.{name}]
id = "r-{name.replace("_", "-")}-{n}"
tier = "{tier}"
connection_limit = 2
inherits = {inherits}
password = {{ env = "PW_{n}" }}
grants = {grants}
"""


INGEST = role(
    "telemetry_ingest", "ingest", grants='[{ table = "ingest.telemetry", privileges = ["INSERT"] }]'
)
STATE = role(
    "state_writer",
    "transactional",
    grants='[{ table = "ingest.device_state", privileges = ["INSERT", "UPDATE", "SELECT"] }]',
    n=2,
)
READER = role(
    "analytics_reader",
    "reader",
    grants='[{ table = "ingest.telemetry", privileges = ["SELECT"] }]',
    n=3,
)
AUDITOR = role(
    "auditor", "auditor", grants='[{ table = "gateway.audit_log", privileges = ["SELECT"] }]', n=4
)


def problems(text: str) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        parse_declaration(text, "roles.toml")
    return list(caught.value.problems)


def at(found: list[tuple[str, str]], path: str) -> str:
    messages = [message for where, message in found if where == path]
    assert messages, found
    return "\n".join(messages)


@pytest.mark.parametrize("name", ["postgres", "public", "pg_monitor", "pg_write_all_data", "pg_x"])
def test_postgres_own_role_names_are_reserved(name: str) -> None:
    message = at(problems(role(name, "admin")), f"roles.{name}")
    assert "is reserved" in message and name in message


@given(st.from_regex(r"pg_[a-z0-9_]{0,20}", fullmatch=True))
def test_every_pg_prefixed_name_is_refused(name: str) -> None:
    assert "is reserved" in at(problems(role(name, "ingest")), f"roles.{name}")


def test_a_reserved_role_cannot_be_inherited() -> None:
    found = problems(role("telemetry_ingest", "ingest", inherits='["pg_write_all_data"]'))
    assert "unknown role 'pg_write_all_data'" in at(found, "roles.telemetry_ingest.inherits[0]")


def test_tables_in_system_schemas_cannot_be_declared() -> None:
    found = problems('tables = ["pg_catalog.pg_authid"]\n' + INGEST)
    assert "system schema" in at(found, "tables[0]")


def test_ingest_inheriting_a_transactional_role_is_refused() -> None:
    text = role("telemetry_ingest", "ingest", inherits='["state_writer"]') + STATE
    message = at(problems(text), "roles.telemetry_ingest.inherits")
    assert "telemetry_ingest -> state_writer" in message
    assert "tier transactional" in message and "UPDATE" in message


def test_ingest_inheriting_through_another_ingest_role_is_refused() -> None:
    text = (
        role("telemetry_ingest", "ingest", inherits='["relay"]')
        + role("relay", "ingest", inherits='["state_writer"]', n=5)
        + STATE
    )
    found = problems(text)
    assert "telemetry_ingest -> relay -> state_writer" in at(
        found, "roles.telemetry_ingest.inherits"
    )
    assert "relay -> state_writer" in at(found, "roles.relay.inherits")


@pytest.mark.parametrize("parent", ["analytics_reader", "gateway_admin"])
def test_ingest_inheriting_a_reading_or_admin_role_is_refused(parent: str) -> None:
    text = (
        role("telemetry_ingest", "ingest", inherits=f'["{parent}"]')
        + READER
        + role("gateway_admin", "admin", n=6)
    )
    assert f"may not inherit {parent}" in at(problems(text), "roles.telemetry_ingest.inherits")


def test_stronger_tiers_may_inherit_weaker_ones() -> None:
    text = (
        INGEST
        + role("state_writer", "transactional", inherits='["telemetry_ingest"]', n=2)
        + role("gateway_admin", "admin", inherits='["state_writer", "auditor"]', n=6)
        + AUDITOR
    )
    doc = parse_declaration(text)
    assert doc.roles["gateway_admin"].inherits == ["state_writer", "auditor"]


@pytest.mark.parametrize(
    ("tier", "table", "privilege"),
    [
        ("ingest", "gateway.identities", "INSERT"),
        ("ingest", "gateway.audit_log", "INSERT"),
        ("ingest", "gateway.roles", "INSERT"),
        ("ingest", "gateway.write_log", "INSERT"),  # entries go through a checked function
        ("reader", "gateway.write_log", "SELECT"),
        ("reader", "gateway.identities", "SELECT"),
    ],
)
def test_ingest_and_reader_tiers_hold_nothing_in_the_control_schema(
    tier: str, table: str, privilege: str
) -> None:
    grants = f'[{{ table = "{table}", privileges = ["{privilege}"] }}]'
    message = at(
        problems(role("device_role", tier, grants=grants)), "roles.device_role.grants[0].table"
    )
    assert f"not {privilege} on {table}" in message and "control schema" in message


def test_column_grants_in_the_control_schema_are_refused_too() -> None:
    columns = '[{ table = "gateway.identities", privileges = ["INSERT"], columns = ["name"] }]'
    assert "control schema" in at(
        problems(role("telemetry_ingest", "ingest", grants=columns)),
        "roles.telemetry_ingest.grants[0].table",
    )


def test_a_reader_inheriting_the_auditor_would_read_the_trail() -> None:
    text = role("analytics_reader", "reader", inherits='["auditor"]', n=3) + AUDITOR
    message = at(problems(text), "roles.analytics_reader.inherits")
    assert "analytics_reader -> auditor" in message and "gateway.audit_log" in message


def test_adopt_is_off_unless_declared() -> None:
    doc = parse_declaration(
        INGEST + role("dba", "admin", n=7).replace("tier", "adopt = true\ntier")
    )
    assert not doc.roles["telemetry_ingest"].adopt
    assert doc.roles["dba"].adopt
