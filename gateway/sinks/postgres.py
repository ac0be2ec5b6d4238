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

    A table with `conflict` (a device's state) is upserted through the same staging: the newest
    `version` per key wins within the batch and against the table, and an older or equal one
    changes nothing, so redelivered or reordered messages never move a state backwards. That
    needs INSERT, UPDATE on the columns it sets, and SELECT on the conflict and version columns
    (the ones it reads in the table); nothing else, so the role cannot read the states.
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
        """One transaction: the rows and their write-log entry; returns the rows committed (an
        upsert's: the batch's rows, each applied or superseded by a newer version)."""
        async with self.pool.acquire() as conn, conn.transaction():
            changed = await self._insert(conn, rows)
            if self.target.write_log:
                await conn.execute(WRITE_LOG, *self._log_entry(rows, positions, changed))
        return len(rows) if self.target.conflict else changed

    async def _insert(self, conn: Conn, rows: Sequence[Row]) -> int:
        """COPY the rows into the table, or through staging for dedup and upserts; the rows the
        table gained or changed."""
        target = self.target
        if not target.dedup and not target.conflict:
            await _copy_records(conn, target.name, target.columns, rows, schema=target.schema)
            return len(rows)
        staging = _staging_name(target)
        # COPY into a session-private staging table, then move what the table should take.
        types = target.types or tuple(STAGING_TYPES[c] for c in target.columns)
        definition = ", ".join(f'"{c}" {t}' for c, t in zip(target.columns, types, strict=True))
        await conn.execute(
            f'CREATE TEMP TABLE IF NOT EXISTS "{staging}" ({definition}) ON COMMIT DELETE ROWS'
        )
        await _copy_records(conn, staging, target.columns, rows)
        changed = 0
        for statement in _move_statements(target, staging):
            status = await conn.execute(statement)
            changed += int(status.rsplit(" ", 1)[1])
        return changed

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


def _staging_name(target: Table) -> str:
    """One staging table per shape: two routes of a role may write tables of one name, or one
    table with different columns, over the same connection."""
    shape = orjson.dumps([target.schema, target.name, target.columns, target.types])
    return f"gateway_staging_{target.name[:32]}_{hashlib.sha256(shape).hexdigest()[:12]}"


def _move_statements(target: Table, staging: str) -> list[str]:
    """From staging into the table: what is not there yet (dedup), or for an upsert the newest
    version per key, inserted where the key is new, then set where the table's is older.

    Not one `ON CONFLICT DO UPDATE SET c = EXCLUDED.c`: PostgreSQL wants SELECT on every column
    read through EXCLUDED, so the role could read every state. Inserting first is safe against
    another writer of the same key: the insert waits for that one's row and skips it, and the
    update then sees it (each statement reads what was committed before it started).
    """
    table = f'"{target.schema}"."{target.name}"'
    columns = ", ".join(f'"{column}"' for column in target.columns)
    if not target.conflict:
        return [
            f'INSERT INTO {table} ({columns}) SELECT {columns} FROM "{staging}" '
            "ON CONFLICT DO NOTHING"
        ]
    if target.version is None:
        raise ValueError(f"an upsert into {target.qualified} needs a version column")
    key = ", ".join(f'"{column}"' for column in target.conflict)
    version = f'"{target.version}"'
    newest = f'SELECT DISTINCT ON ({key}) {columns} FROM "{staging}" ORDER BY {key}, {version} DESC'
    updates = ", ".join(
        f'"{column}" = s."{column}"' for column in target.columns if column not in target.conflict
    )
    same_key = " AND ".join(f't."{column}" = s."{column}"' for column in target.conflict)
    return [
        f"INSERT INTO {table} ({columns}) {newest} ON CONFLICT DO NOTHING",
        f"UPDATE {table} AS t SET {updates} FROM ({newest}) AS s "
        f"WHERE {same_key} AND t.{version} < s.{version}",
    ]


def _bytes_as_hex(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    raise TypeError(f"cannot checksum {type(value).__name__}")
