"""COPY a batch into one table over one role's pool: retried while the database is away, split
when some rows can never be written, given back when the table refuses every row, and logged in
`gateway.write_log` in the same transaction.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any

import asyncpg
import orjson
from asyncpg.exceptions import _base

from gateway.contracts import Row, Sink, Table, WriteOutcome
from gateway.db import Conn
from gateway.logs import RateLimitedLog
from gateway.sinks.pg_errors import FailureKind, classify, describe

__all__ = ["PostgresSink"]

log = logging.getLogger(__name__)

# Column types of the telemetry shape, for the staging table of deduplicated routes (typing it
# from the target with `LIKE` would need SELECT on the target, which an ingest role lacks).
STAGING_TYPES = {
    "ts": "timestamptz",
    "identity": "text",
    "metric": "text",
    "value": "double precision",
    "tags": "jsonb",
    "received_at": "timestamptz",
    "message_id": "text",
    # the rejects table's, deduplicated by message key
    "at": "timestamptz",
    "source": "text",
    "reason": "text",
    "topic": "text",
    "payload_prefix": "bytea",
    "detail": "text",
    "message_key": "bytea",
    "count": "integer",
}

# The entry goes through the server's function, which checks the login may write the table as
# the role, and stamps who, when and the entry's place in its hash chain.
WRITE_LOG = "SELECT gateway.append_write_log($1, $2, $3, $4, $5::jsonb, $6, $7, $8)"

# Errors that are not a row's fault, however a COPY raises them (see `_copy_records`).
NOT_A_ROW = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)


class PostgresSink(Sink):
    """Writes batches for one (role, table): retries while the database is away, isolates the
    rows it refuses, and gives a batch back as held when the table refuses every row.

    A table with `dedup` is written through a temporary staging table and `INSERT ... ON
    CONFLICT DO NOTHING`, so a redelivered message adds nothing. That needs only INSERT on the
    table (and TEMP, which every role has by default): no conflict target is named, so no SELECT
    is required.
    """

    def __init__(
        self,
        role: str,
        target: Table,
        pool: asyncpg.Pool,
        *,
        on_failure: Callable[[FailureKind], None] = lambda kind: None,
        max_backoff: float = 5.0,
    ) -> None:
        self.role = role
        self.target = target
        self.pool = pool
        self._on_failure = on_failure
        self._max_backoff = max_backoff
        self._log = RateLimitedLog(log)  # one bad batch is split in dozens of attempts

    async def write(self, rows: Sequence[Row], positions: dict[str, Any]) -> WriteOutcome:
        """Commit the rows in one call: every row that can land does, each refused row comes
        back with its reason, and a table that refuses every row ends the call (`held`)."""
        outcome = WriteOutcome(0, [])
        parts = [rows]  # still to write, the next one last
        while parts:
            part = parts.pop()
            result = await self._attempt(part, positions)
            if isinstance(result, int):
                outcome.written += result
            elif classify(result) is FailureKind.HELD:
                outcome.held = describe(result)
                break
            elif len(part) == 1:
                outcome.bad_rows.append((part[0], describe(result)))
            else:
                # Halve until the refused rows stand alone; every other row still lands.
                middle = len(part) // 2
                parts += [part[middle:], part[:middle]]
        return outcome

    async def probe(self) -> str:
        """Whether the table takes writes again: the write path with no rows, rolled back.

        A COPY checks the table, its columns and the INSERT privilege at its start, whatever
        the number of rows; so do the staging path and the write log's function, whose entry is
        rolled back with the rest. Nothing beyond the privileges of a write is needed.
        """
        try:
            async with self.pool.acquire() as conn:
                transaction = conn.transaction()
                await transaction.start()
                try:
                    await self._insert(conn, ())
                    if self.target.write_log:
                        await conn.execute(WRITE_LOG, *self._log_entry((), {}, 0))
                finally:
                    await transaction.rollback()
        except Exception as exc:
            self._failed(exc, "probed")
            return describe(exc)
        return ""

    async def _attempt(self, rows: Sequence[Row], positions: dict[str, Any]) -> int | Exception:
        """The rows inserted once committed, or the error that refused them for data reasons or
        held the table; waits out everything temporary, however long it takes."""
        attempt = 0
        while True:
            try:
                return await self._copy(rows, positions)
            except Exception as exc:
                if classify(exc) is not FailureKind.TEMPORARY:
                    self._failed(exc, "splitting" if len(rows) > 1 else "refusing the row")
                    return exc
                delay = random.uniform(0.5, 1.0) * min(self._max_backoff, 0.05 * 2.0**attempt)
                attempt += 1
                self._failed(exc, f"retry {attempt} in {delay:.2f}s")
                await asyncio.sleep(delay)

    def _failed(self, exc: Exception, action: str) -> None:
        """Count the failure; log it at most once a second, with the count of those not logged
        since: one bad batch is split in dozens of attempts, and an outage lasts."""
        kind = classify(exc)
        self._on_failure(kind)
        if kind is FailureKind.HELD:
            action = "the table refuses every row until an operator acts"
        self._log.log(
            logging.ERROR if kind is FailureKind.HELD else logging.WARNING,
            "write to %s as %s failed (%s, %s): %s",
            self.target.qualified,
            self.role,
            kind,
            action,
            describe(exc),
            extra={"role": self.role, "table": self.target.qualified},
        )

    async def _copy(self, rows: Sequence[Row], positions: dict[str, Any]) -> int:
        """One transaction: the rows and their write-log entry; returns the rows inserted."""
        async with self.pool.acquire() as conn, conn.transaction():
            inserted = await self._insert(conn, rows)
            if self.target.write_log:
                await conn.execute(WRITE_LOG, *self._log_entry(rows, positions, inserted))
        return inserted

    async def _insert(self, conn: Conn, rows: Sequence[Row]) -> int:
        """COPY the rows into the table, or through staging for dedup; the rows inserted."""
        target = self.target
        if not target.dedup:
            await _copy_records(conn, target.name, target.columns, rows, schema=target.schema)
            return len(rows)
        # COPY into a session-private staging table, then insert what is not there yet.
        staging = f"gateway_staging_{target.name}"
        columns = ", ".join(f'"{column}"' for column in target.columns)
        definition = ", ".join(f'"{c}" {STAGING_TYPES[c]}' for c in target.columns)
        await conn.execute(
            f'CREATE TEMP TABLE IF NOT EXISTS "{staging}" ({definition}) ON COMMIT DELETE ROWS'
        )
        await _copy_records(conn, staging, target.columns, rows)
        status = await conn.execute(
            f'INSERT INTO "{target.schema}"."{target.name}" ({columns}) '
            f'SELECT {columns} FROM "{staging}" ON CONFLICT DO NOTHING'
        )
        return int(status.rsplit(" ", 1)[1])

    def _log_entry(
        self, rows: Sequence[Row], positions: dict[str, Any], inserted: int
    ) -> tuple[Any, ...]:
        target = self.target
        first_ts = last_ts = None
        if target.ts_column is not None and rows:
            stamps = list(map(itemgetter(target.ts_column), rows))
            first_ts, last_ts = min(stamps), max(stamps)
        identities = 0
        if target.identity_column is not None:
            identities = len(set(map(itemgetter(target.identity_column), rows)))
        checksum = hashlib.sha256(orjson.dumps(rows, default=_bytes_as_hex))
        return (
            self.role,
            target.qualified,
            inserted,
            identities,
            orjson.dumps(positions).decode(),
            first_ts,
            last_ts,
            checksum.hexdigest(),
        )


async def _copy_records(
    conn: Conn,
    name: str,
    columns: Sequence[str],
    rows: Sequence[Row],
    *,
    schema: str | None = None,
) -> None:
    """COPY, with an error raised while encoding a row's values called what it is.

    asyncpg encodes each value itself during a COPY and lets the encoder's exception out as it
    is (TypeError for a str where a number goes, struct.error for an int beyond 64 bits,
    UnicodeEncodeError for a lone surrogate); for query arguments it calls any such exception
    invalid input (its client-side DataError). So do we: it is a row's fault, never the table's.
    """
    try:
        await conn.copy_records_to_table(name, schema_name=schema, columns=columns, records=rows)
    except NOT_A_ROW:
        raise
    except Exception as exc:
        raise _base.DataError(f"invalid input in a row: {type(exc).__name__}: {exc}") from exc


def _bytes_as_hex(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    raise TypeError(f"cannot checksum {type(value).__name__}")
