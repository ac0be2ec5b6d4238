"""Failures are classified by SQLSTATE class into retry, split, or wait for an operator."""

from __future__ import annotations

import asyncpg
import pytest

from gateway.sinks.pg_errors import FailureKind, classify


def postgres_error(sqlstate: str) -> asyncpg.PostgresError:
    error_class = asyncpg.PostgresError.get_message_class_for_sqlstate(sqlstate)
    return error_class.new({"C": sqlstate, "M": "test", "S": "ERROR"})  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("sqlstate", "kind"),
    [
        ("08006", FailureKind.TEMPORARY),  # connection failure
        ("53100", FailureKind.TEMPORARY),  # disk full
        ("57P01", FailureKind.TEMPORARY),  # admin shutdown
        ("57P03", FailureKind.TEMPORARY),  # cannot connect now
        ("40001", FailureKind.TEMPORARY),  # serialization failure
        ("40P01", FailureKind.TEMPORARY),  # deadlock
        ("22P02", FailureKind.DATA),  # invalid text representation
        ("22021", FailureKind.DATA),  # NUL in text
        ("23505", FailureKind.DATA),  # unique violation
        ("42501", FailureKind.BLOCKED),  # insufficient privilege
        ("42P01", FailureKind.BLOCKED),  # undefined table
        ("28P01", FailureKind.BLOCKED),  # bad password
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


def test_anything_else_waits_for_an_operator() -> None:
    assert classify(ValueError("unexpected")) is FailureKind.BLOCKED
