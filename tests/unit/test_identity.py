"""Identity names: the Python rule is the database's CHECK, and a refusal says which rule."""

from __future__ import annotations

import re
from importlib import resources

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.identities.model import (
    MAX_NAME_LENGTH,
    IdentityNameError,
    InvalidIdentityError,
    validate_identity_name,
    validate_kind,
)


def database_rule() -> re.Pattern[str]:
    """The CHECK on gateway.identities.name, read from the migration that creates it."""
    sql = resources.files("gateway.migrations").joinpath("001_control.sql").read_text()
    found = re.search(r"CHECK \(name ~ '\^(.+?)\$'\)", sql)
    assert found is not None
    return re.compile(found.group(1))


DATABASE_RULE = database_rule()
# Characters that matter in MQTT topics, Kafka keys and logs, plus a sample of everything else.
AWKWARD = st.sampled_from(["+", "#", "/", "\x00", " ", "\n", "$", "*", "é", "ß", "٣", "\u2028"])
NAME_TEXT = st.lists(
    st.one_of(st.characters(), AWKWARD, st.sampled_from("aZ09._:@=-")), max_size=140
).map("".join)


@given(st.from_regex(DATABASE_RULE, fullmatch=True))
def test_every_name_the_database_accepts_is_valid(name: str) -> None:
    assert validate_identity_name(name) == name


@given(NAME_TEXT)
def test_python_and_database_rules_agree(name: str) -> None:
    accepted = DATABASE_RULE.fullmatch(name) is not None
    try:
        validate_identity_name(name)
    except IdentityNameError as exc:
        assert not accepted
        assert str(exc).startswith("identity name")
    else:
        assert accepted


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("", "identity name is empty"),
        ("a" * (MAX_NAME_LENGTH + 1), "is 129 characters long; at most 128"),
        ("-sensor", "must start with a letter or digit, not '-'"),
        (".hidden", "must start with a letter or digit, not '.'"),
        ("devices/sensor-1", "has '/' at position 8"),
        ("sensor+1", "has '+' at position 7"),
        ("sensor#1", "has '#' at position 7"),
        ("sensor 1", "has ' ' at position 7"),
        ("sensor\x001", "has '\\x00' at position 7"),
        ("sensör", "has 'ö' at position 5"),
        ("sensor-1\n", "has '\\n' at position 9"),
    ],
)
def test_refusals_name_the_rule(name: str, says: str) -> None:
    with pytest.raises(IdentityNameError, match=re.escape(says)):
        validate_identity_name(name)


@pytest.mark.parametrize("name", ["a", "sensor-0042", "svc.billing:eu@prod=1", "9" * 128])
def test_typical_names_pass(name: str) -> None:
    assert validate_identity_name(name) == name


def test_kinds() -> None:
    assert validate_kind("service") == "service"
    with pytest.raises(InvalidIdentityError, match="expected one of: device, service"):
        validate_kind("Device")
