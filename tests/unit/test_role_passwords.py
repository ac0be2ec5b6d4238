"""SCRAM verifiers made here are the ones PostgreSQL makes (checked end to end in integration)."""

from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.roles.passwords import scram_verifier, verifier_matches

# Read from pg_authid after PostgreSQL 18 ran `CREATE ROLE x LOGIN PASSWORD 'secret'`.
POSTGRES_VERIFIER = (
    "SCRAM-SHA-256$4096:lPzoukMlyDTNnBueeYJ0Sw==$"
    "p7bzE0Z535msYEbHMtVWuiY4GmnbQwV2SYo7ghneCyc=:nl+SFtRYp6j8phQNji3048Jmo3P2kqX9lwj2pXXYlbE="
)


def test_matches_a_verifier_from_postgres() -> None:
    assert verifier_matches(POSTGRES_VERIFIER, "secret")
    assert not verifier_matches(POSTGRES_VERIFIER, "Secret")


def test_same_salt_same_verifier() -> None:
    salt = base64.b64decode("lPzoukMlyDTNnBueeYJ0Sw==")
    assert scram_verifier("secret", salt=salt) == POSTGRES_VERIFIER


@settings(max_examples=20, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1))
def test_round_trip(password: str) -> None:
    verifier = scram_verifier(password)
    assert verifier_matches(verifier, password)
    assert not verifier_matches(verifier, password + "x")


def test_anything_else_never_matches() -> None:
    assert not verifier_matches(None, "secret")
    assert not verifier_matches("md5abcdef", "secret")
