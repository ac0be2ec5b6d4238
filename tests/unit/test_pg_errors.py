"""Failures are classified by SQLSTATE class into retry, split, or hold the table."""

from __future__ import annotations

import asyncpg
import pytest
from asyncpg.exceptions import _base

from gateway.sinks.pg_errors import FailureKind, classify, describe


def postgres_error(sqlstate: str, detail: str | None = None) -> asyncpg.PostgresError:
    fields = {"C": sqlstate, "M": "test", "S": "ERROR"}
    if detail is not None:
        fields["D"] = detail
    return asyncpg.PostgresError.new(fields)  # the class of its SQLSTATE


@pytest.mark.parametrize(
    ("sqlstate", "kind"),
    [
        ("08006", FailureKind.TEMPORARY),  # connection failure
        ("53100", FailureKind.TEMPORARY),  # disk full
        ("57P01", FailureKind.TEMPORARY),  # admin shutdown
        ("57P03", FailureKind.TEMPORARY),  # cannot connect now
        ("57014", FailureKind.TEMPORARY),  # statement timeout
        ("58030", FailureKind.TEMPORARY),  # I/O error
        ("40001", FailureKind.TEMPORARY),  # serialization failure
        ("40P01", FailureKind.TEMPORARY),  # deadlock
        ("55P03", FailureKind.TEMPORARY),  # lock not available
        ("25006", FailureKind.TEMPORARY),  # read-only transaction: a standby, mid-failover
        ("22P02", FailureKind.DATA),  # invalid text representation
        ("22021", FailureKind.DATA),  # NUL in text
        ("22P05", FailureKind.DATA),  # \u0000 in jsonb
        ("2200N", FailureKind.DATA),  # invalid XML content
        ("22003", FailureKind.DATA),  # numeric value out of range
        ("23505", FailureKind.DATA),  # unique violation
        ("23502", FailureKind.DATA),  # not null violation
        ("54000", FailureKind.DATA),  # index row size exceeded: a dedup key too long
        ("54001", FailureKind.DATA),  # statement too complex: a smaller batch goes through
        ("42501", FailureKind.HELD),  # insufficient privilege
        ("42P01", FailureKind.HELD),  # undefined table
        ("42703", FailureKind.HELD),  # undefined column
        ("42P10", FailureKind.HELD),  # invalid column reference
        ("42804", FailureKind.HELD),  # a column's type changed
        ("28P01", FailureKind.TEMPORARY),  # a password being rotated
        ("28000", FailureKind.TEMPORARY),  # refused until pg_hba.conf or the password is fixed
        ("3D000", FailureKind.HELD),  # database does not exist
        ("3F000", FailureKind.HELD),  # schema does not exist
        ("0A000", FailureKind.HELD),  # feature not supported (COPY into a view)
        ("XX000", FailureKind.HELD),  # internal error
    ],
)
def test_sqlstates(sqlstate: str, kind: FailureKind) -> None:
    assert classify(postgres_error(sqlstate)) is kind


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "Connection refused"),
        TimeoutError(),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.InterfaceError("connection is closed"),
        asyncpg.InternalClientError(
            "cannot switch to state 15; another operation (2) is in progress"
        ),
    ],
)
def test_lost_connections_are_temporary(error: BaseException) -> None:
    assert classify(error) is FailureKind.TEMPORARY


def test_a_row_this_side_cannot_encode_is_data() -> None:
    surrogate = UnicodeEncodeError("utf-8", "a\udcff", 1, 2, "surrogates not allowed")
    assert classify(surrogate) is FailureKind.DATA
    # asyncpg's client-side DataError is an InterfaceError too, which is otherwise temporary.
    wrong_type = _base.DataError("invalid input for query argument $1: 'abc' (not a number)")
    assert classify(wrong_type) is FailureKind.DATA


def test_anything_else_holds_the_table() -> None:
    assert classify(ValueError("unexpected")) is FailureKind.HELD
    assert classify(KeyError("a bug")) is FailureKind.HELD


def test_values_are_lowercase_words_for_the_metric_label() -> None:
    assert [kind.value for kind in FailureKind] == ["temporary", "data", "held"]


def test_described_with_the_sqlstate_first() -> None:
    assert describe(postgres_error("42501")) == "42501 test"
    assert describe(postgres_error("22P05", "\\u0000 cannot be converted to text.")) == (
        "22P05 test (\\u0000 cannot be converted to text.)"
    )
    assert describe(ValueError("unexpected")) == "ValueError: unexpected"
