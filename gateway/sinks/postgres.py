"""COPY a batch into one table over one role's pool: retried while the database is away, split
when some rows can never be written, and logged in `gateway.write_log` in the same transaction.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from gateway.pg_errors import FailureKind, classify

__all__ = ["CopyTarget", "PostgresSink", "WriteOutcome"]

log = logging.getLogger(__name__)

Row = tuple[Any, ...]

WRITE_LOG = (
    "INSERT INTO gateway.write_log "
    "(role, target, rows, identities, positions, first_ts, last_ts, checksum) "
    "VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8)"
)


@dataclass(frozen=True)
class CopyTarget:
    """A table and the columns a row fills, in order; where its time and identity columns are."""

    schema: str
    table: str
    columns: tuple[str, ...]
    ts_column: int | None = 0
    identity_column: int | None = 1
    write_log: bool = True

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"


@dataclass
class WriteOutcome:
    written: int
    bad_rows: list[tuple[Row, str]]


class PostgresSink:
    """Writes batches for one (role, table); never gives up on a batch it can still write."""

    def __init__(
        self,
        role: str,
        target: CopyTarget,
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
        kind = await self._attempt(rows, positions)
        if kind is None:
            return WriteOutcome(len(rows), [])
        return await self._split(rows, positions)

    async def _attempt(self, rows: Sequence[Row], positions: dict[str, Any]) -> FailureKind | None:
        """Write until committed (None) or refused for data reasons (DATA); waits out the rest."""
        attempt = 0
        while True:
            try:
                await self._copy(rows, positions)
                return None
            except Exception as exc:
                kind = classify(exc)
                self._on_failure(kind)
                if kind is FailureKind.DATA:
                    self._last_error = f"{type(exc).__name__}: {exc}"
                    return kind
                delay = self._delay(kind, attempt)
                attempt += 1
                log.warning(
                    "write to %s as %s failed (%s, attempt %d), retrying in %.2fs: %s",
                    self.target.name,
                    self.role,
                    kind,
                    attempt,
                    delay,
                    exc,
                    extra={"role": self.role, "table": self.target.name},
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
            if await self._attempt(part, positions) is None:
                written += len(part)
            else:
                outcome = await self._split(part, positions)
                written += outcome.written
                bad += outcome.bad_rows
        return WriteOutcome(written, bad)

    async def _copy(self, rows: Sequence[Row], positions: dict[str, Any]) -> None:
        target = self.target
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.copy_records_to_table(
                target.table, schema_name=target.schema, columns=target.columns, records=rows
            )
            if target.write_log:
                await conn.execute(WRITE_LOG, *self._log_entry(rows, positions))

    def _log_entry(self, rows: Sequence[Row], positions: dict[str, Any]) -> tuple[Any, ...]:
        target = self.target
        first_ts = last_ts = None
        if target.ts_column is not None:
            stamps = [row[target.ts_column] for row in rows]
            first_ts, last_ts = min(stamps), max(stamps)
        identities = 0
        if target.identity_column is not None:
            identities = len({row[target.identity_column] for row in rows})
        checksum = hashlib.sha256(orjson.dumps(rows, default=_bytes_as_hex))
        return (
            self.role,
            target.name,
            len(rows),
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
