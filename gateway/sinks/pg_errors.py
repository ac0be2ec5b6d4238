"""What a PostgreSQL failure means for a batch: retry it, split out bad rows, or wait for a fix.

- temporary: class 08 (connection), 53 (resources), 57 (shutdown, cannot connect now, statement
  timeout), 58 (I/O), 40001, 40P01, 55P03, lost connections and OSError, and asyncpg's
  client-side state errors (a connection left mid-operation by a lost server; the pool replaces
  it). The database is restarting, full or overloaded: the same batch will succeed later, so
  keep it and retry.
- data: class 22 (data exception) and 23 (integrity constraint). Some rows can never be
  written: split the batch to isolate them; the rest still lands.
- blocked: 42501 (privilege), 42P01/42703 (missing table or column), class 28
  (authentication), anything else. Configuration is wrong and no row can succeed until an
  operator fixes it: keep the batch, retry slowly, and let the failure metric alert.
"""

from __future__ import annotations

from enum import StrEnum

import asyncpg

__all__ = ["FailureKind", "classify"]


class FailureKind(StrEnum):
    TEMPORARY = "temporary"
    DATA = "data"
    BLOCKED = "blocked"


TEMPORARY_CLASSES = frozenset({"08", "53", "57", "58"})
TEMPORARY_STATES = frozenset({"40001", "40P01", "55P03"})
DATA_CLASSES = frozenset({"22", "23"})


def classify(error: BaseException) -> FailureKind:
    if isinstance(error, asyncpg.PostgresError):
        state = error.sqlstate or ""
        if state[:2] in TEMPORARY_CLASSES or state in TEMPORARY_STATES:
            return FailureKind.TEMPORARY
        if state[:2] in DATA_CLASSES:
            return FailureKind.DATA
        return FailureKind.BLOCKED
    if isinstance(
        error, OSError | TimeoutError | asyncpg.InterfaceError | asyncpg.InternalClientError
    ):
        # Lost or refused connections, asyncpg's "connection is closed", and its "cannot switch
        # to state ...; another operation is in progress" on a connection a restart broke.
        return FailureKind.TEMPORARY
    return FailureKind.BLOCKED
