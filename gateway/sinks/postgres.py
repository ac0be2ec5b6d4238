"""COPY a batch into one table over one role's pool: retried while the database is away, split
when some rows can never be written, and logged in `gateway.write_log` in the same transaction.
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

from gateway.contracts import Row, Sink, Table, WriteOutcome
from gateway.db import Conn
from gateway.sinks.pg_errors import FailureKind, classify

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
}

WRITE_LOG = (
    "INSERT INTO gateway.write_log "
    "(role, target, rows, identities, positions, first_ts, last_ts, checksum) "
    "VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8)"
)


class PostgresSink(Sink):
    """Writes batches for one (role, table); never gives up on a batch it can still write.

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
        blocked_backoff: float = 15.0,
    ) -> None:
        self.role = role
        self.target = target
        self.pool = pool
        self._on_failure = on_failure
        self._max_backoff = max_backoff
        self._blocked_backoff = blocked_backoff
        self._last_error = ""

    async def write(self, rows: Sequence[Row], positions: dict[str, Any]) -> WriteOutcome:
        """Commit the rows; returns how many landed and the rows refused for data reasons."""
        inserted = await self._attempt(rows, positions)
        if inserted is not None:
            return WriteOutcome(inserted, [])
        return await self._split(rows, positions)

    async def _attempt(self, rows: Sequence[Row], positions: dict[str, Any]) -> int | None:
        """Write until committed (rows inserted) or refused for data reasons (None); waits out
        everything else, however long it takes: the batch is never dropped."""
        attempt = 0
        while True:
            try:
                return await self._copy(rows, positions)
            except Exception as exc:
                kind = classify(exc)
                self._on_failure(kind)
                if kind is FailureKind.DATA:
                    self._last_error = f"{type(exc).__name__}: {exc}"
                    return None
                delay = self._delay(kind, attempt)
                attempt += 1
                log.warning(
                    "write to %s as %s failed (%s, attempt %d), retrying in %.2fs: %s",
                    self.target.qualified,
                    self.role,
                    kind,
                    attempt,
                    delay,
                    exc,
                    extra={"role": self.role, "table": self.target.qualified},
                )
                await asyncio.sleep(delay)

    def _delay(self, kind: FailureKind, attempt: int) -> float:
        ceiling = self._blocked_backoff if kind is FailureKind.BLOCKED else self._max_backoff
        return random.uniform(0.5, 1.0) * min(ceiling, 0.05 * 2.0**attempt)

    async def _split(self, rows: Sequence[Row], positions: dict[str, Any]) -> WriteOutcome:
        """Halve until the refused rows stand alone; every other row still lands."""
        if len(rows) == 1:
            return WriteOutcome(0, [(rows[0], self._last_error)])
        middle = len(rows) // 2
        written, bad = 0, []
        for part in (rows[:middle], rows[middle:]):
            inserted = await self._attempt(part, positions)
            if inserted is not None:
                written += inserted
            else:
                outcome = await self._split(part, positions)
                written += outcome.written
                bad += outcome.bad_rows
        return WriteOutcome(written, bad)

    async def _copy(self, rows: Sequence[Row], positions: dict[str, Any]) -> int:
        """One transaction: the rows and their write-log entry; returns the rows inserted."""
        target = self.target
        async with self.pool.acquire() as conn, conn.transaction():
            if target.dedup:
                inserted = await self._copy_deduplicated(conn, rows)
            else:
                await conn.copy_records_to_table(
                    target.name, schema_name=target.schema, columns=target.columns, records=rows
                )
                inserted = len(rows)
            if target.write_log:
                await conn.execute(WRITE_LOG, *self._log_entry(rows, positions, inserted))
        return inserted

    async def _copy_deduplicated(self, conn: Conn, rows: Sequence[Row]) -> int:
        """COPY into a session-private staging table, then insert what is not there yet."""
        target = self.target
        staging = f"gateway_staging_{target.name}"
        columns = ", ".join(f'"{column}"' for column in target.columns)
        definition = ", ".join(f'"{c}" {STAGING_TYPES[c]}' for c in target.columns)
        await conn.execute(
            f'CREATE TEMP TABLE IF NOT EXISTS "{staging}" ({definition}) ON COMMIT DELETE ROWS'
        )
        await conn.copy_records_to_table(staging, columns=target.columns, records=rows)
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
        if target.ts_column is not None:
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


def _bytes_as_hex(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    raise TypeError(f"cannot checksum {type(value).__name__}")
