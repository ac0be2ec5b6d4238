"""What a PostgreSQL failure means for a batch: retry it, split out bad rows, or hold the table.

- temporary: class 08 (connection), 53 (resources), 57 (shutdown, cannot connect now, statement
  timeout), 58 (I/O), 40001, 40P01, 55P03, 25006 (a standby refuses writes: a failover is under
  way and new connections reach the new primary), class 28 (authentication: a password being
  rotated, which heals once both sides have the new one), lost connections and OSError, and
  asyncpg's client-side state errors (a connection left mid-operation by a lost server; the pool
  replaces it). The database is restarting, full, overloaded or between two steps of a
  rotation: the same batch will succeed later, so keep it and retry (and alert if it lasts).
- data: class 22 (data exception), 23 (integrity constraint) and 54 (program limit exceeded,
  such as a dedup key longer than a btree index row can hold); and errors raised on this side
  while a row's values are encoded: text that is not UTF-8 (a lone surrogate), a value of the
  wrong type or out of range (asyncpg's client-side `DataError`). Some rows can never be
  written, and retrying them as they are would stall the table: split the batch to isolate
  them; the rest still lands.
- held: 42501 (privilege), 42P01/42703/42P10 and the rest of class 42 (missing table or
  column), 3D000/3F000 (missing database or schema), anything else.
  The table refuses every row for a reason only an operator can fix: retrying holds every
  device behind it (acknowledgements leave in receive order), so the batch is given back as
  held and the table is probed until it takes writes again.
"""

from __future__ import annotations

from enum import StrEnum

import asyncpg
from asyncpg.exceptions import _base

__all__ = ["FailureKind", "classify", "describe"]


class FailureKind(StrEnum):
    TEMPORARY = "temporary"
    DATA = "data"
    HELD = "held"


TEMPORARY_CLASSES = frozenset({"08", "28", "53", "57", "58"})
TEMPORARY_STATES = frozenset({"40001", "40P01", "55P03", "25006"})
DATA_CLASSES = frozenset({"22", "23", "54"})


def classify(error: BaseException) -> FailureKind:
    if isinstance(error, asyncpg.PostgresError):
        state = error.sqlstate or ""
        if state[:2] in TEMPORARY_CLASSES or state in TEMPORARY_STATES:
            return FailureKind.TEMPORARY
        if state[:2] in DATA_CLASSES:
            return FailureKind.DATA
        return FailureKind.HELD
    # Before InterfaceError, which asyncpg's client-side DataError also is.
    if isinstance(error, _base.DataError | UnicodeEncodeError):
        return FailureKind.DATA
    if isinstance(
        error, OSError | TimeoutError | asyncpg.InterfaceError | asyncpg.InternalClientError
    ):
        # Lost or refused connections, asyncpg's "connection is closed", and its "cannot switch
        # to state ...; another operation is in progress" on a connection a restart broke.
        return FailureKind.TEMPORARY
    return FailureKind.HELD


def describe(error: BaseException) -> str:
    """The failure in one line for logs, reject records and a held table: the SQLSTATE first
    when the server sent one."""
    if isinstance(error, asyncpg.PostgresError):
        detail = f" ({error.detail})" if error.detail else ""
        return f"{error.sqlstate} {error.message}{detail}"
    return f"{type(error).__name__}: {error}"
