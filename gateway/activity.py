"""Per-identity activity: rows and rejects per minute, aggregated in memory, upserted in bulk.

The data plane never writes per message to the control schema: counts accumulate here and the
control role upserts them every few seconds, moving `last_seen` forward in the same transaction.
Nothing one identity brings can stop the others' activity, or make it grow without bound:

- a name no registered identity can have (too long, not ASCII, a NUL) is refused when recorded;
- entries the database refuses for data reasons are isolated by halving and dropped, the rest
  is written; after any other failure what is not written yet is kept for the next round;
- at most `max_entries` (identity, minute) entries are held, and `last_seen` only for their
  identities. At the bound each identity's older minutes fold into its latest (the counts are
  kept, their minute is less precise); if that is not enough, the oldest entries go.

What is dropped is counted in `dropped`, by reason, and logged at most once a second.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from operator import itemgetter

from gateway.db import Conn
from gateway.identities.model import MAX_NAME_LENGTH
from gateway.sinks.pg_errors import FailureKind, classify, describe

__all__ = ["MAX_ENTRIES", "Activity", "recordable"]

log = logging.getLogger(__name__)

MAX_ENTRIES = 100_000
"""(identity, minute) entries held at most: under 300 bytes each with its name, some 30 MB."""

UPSERT = """
INSERT INTO gateway.identity_activity AS a (identity, minute, rows, rejects, last_seen)
SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::bigint[], $4::bigint[], $5::timestamptz[])
ON CONFLICT (identity, minute) DO UPDATE
   SET rows = a.rows + excluded.rows,
       rejects = a.rejects + excluded.rejects,
       last_seen = greatest(a.last_seen, excluded.last_seen)
"""

LAST_SEEN = """
UPDATE gateway.identities AS i SET last_seen = v.seen
  FROM unnest($1::text[], $2::timestamptz[]) AS v (name, seen)
 WHERE i.name = v.name AND (i.last_seen IS NULL OR i.last_seen < v.seen)
"""

Key = tuple[str, datetime]


def recordable(name: str) -> bool:
    """Could this be a registered identity's name? Only the checks that cost next to nothing
    (length, ASCII, NUL): the full rule is the registry's, and what slips past it is isolated
    when the database refuses it."""
    return len(name) <= MAX_NAME_LENGTH and name.isascii() and "\x00" not in name


class Activity:
    """Counts per identity and minute since the last flush, and when each identity was last
    seen; the pipeline records, the gateway flushes every few seconds."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries}")
        self._max_entries = max_entries
        # (identity, minute) -> [rows, rejects]; last seen of exactly those identities
        self._counts: dict[Key, list[int]] = {}
        self._seen: dict[str, datetime] = {}
        # Dropped so far, by reason: `name` (recordings refused), `database` and `memory`
        # ((identity, minute) entries the database refused, or that did not fit).
        self.dropped: Counter[str] = Counter()
        self._unlogged = 0
        self._logged_at = -1.0

    def __len__(self) -> int:
        return len(self._counts)

    def wrote(self, rows_per_identity: Counter[str]) -> None:
        now = datetime.now(UTC)
        minute = now.replace(second=0, microsecond=0)
        # Called for every batch: the hot path takes the entry straight from the dict.
        for identity, rows in rows_per_identity.items():
            if not recordable(identity):
                self._drop("name", 1, identity)
                continue
            key = (identity, minute)
            entry = self._counts.get(key) or self._new_entry(key)
            entry[0] += rows
            self._seen[identity] = now

    def rejected(self, identity: str) -> None:
        if not recordable(identity):
            self._drop("name", 1, identity)
            return
        now = datetime.now(UTC)
        key = (identity, now.replace(second=0, microsecond=0))
        entry = self._counts.get(key) or self._new_entry(key)
        entry[1] += 1
        self._seen[identity] = now

    def _new_entry(self, key: Key) -> list[int]:
        if len(self._counts) >= self._max_entries:
            self._make_room()
        entry = self._counts[key] = [0, 0]
        return entry

    async def flush(self, conn: Conn) -> int:
        """Upsert what accumulated; returns the (identity, minute) entries written.

        Raises only for failures that are not the data's (connection, privileges, ...): the
        entries not written yet are then kept for the next round."""
        if not self._counts:
            return 0
        counts, seen = self._counts, self._seen
        self._counts, self._seen = {}, {}
        try:
            return await self._write(conn, list(counts), counts, seen)
        except BaseException:
            self._merge_back(counts, seen)
            raise

    async def _write(
        self,
        conn: Conn,
        keys: Sequence[Key],
        counts: dict[Key, list[int]],
        seen: dict[str, datetime],
    ) -> int:
        """One transaction for `keys`; refused for data reasons, each half in its own, until
        the refused entries stand alone and are dropped. Written keys leave `counts`."""
        try:
            async with conn.transaction():
                await conn.execute(
                    UPSERT,
                    [identity for identity, _ in keys],
                    [minute for _, minute in keys],
                    [counts[key][0] for key in keys],
                    [counts[key][1] for key in keys],
                    [seen[identity] for identity, _ in keys],
                )
                names = list(dict.fromkeys(identity for identity, _ in keys))
                await conn.execute(LAST_SEEN, names, [seen[name] for name in names])
        except Exception as exc:
            if classify(exc) is not FailureKind.DATA:
                raise
            if len(keys) == 1:
                del counts[keys[0]]
                self._drop("database", 1, describe(exc))
                return 0
            middle = len(keys) // 2
            first = await self._write(conn, keys[:middle], counts, seen)
            return first + await self._write(conn, keys[middle:], counts, seen)
        for key in keys:
            del counts[key]
        return len(keys)

    def _merge_back(self, counts: dict[Key, list[int]], seen: dict[str, datetime]) -> None:
        """What a failed flush did not write is held again, with what was recorded meanwhile."""
        recorded, recorded_seen = self._counts, self._seen
        self._counts = counts
        self._seen = {identity: seen[identity] for identity, _ in counts}
        for key, (rows, rejects) in recorded.items():
            entry = counts.setdefault(key, [0, 0])
            entry[0] += rows
            entry[1] += rejects
        for identity, when in recorded_seen.items():
            self._seen[identity] = max(when, self._seen.get(identity, when))
        if len(self._counts) > self._max_entries:
            self._make_room()

    def _make_room(self) -> None:
        """Fold each identity's minutes into its latest, then drop the oldest entries, until a
        tenth of the bound is free: the pass costs one walk over the entries, so it runs once
        per that many new ones, not on every one."""
        target = self._max_entries - max(1, self._max_entries // 10)
        latest: dict[str, datetime] = {}
        for identity, minute in self._counts:
            known = latest.get(identity)
            if known is None or minute > known:
                latest[identity] = minute
        folded: dict[Key, list[int]] = {}
        for (identity, _), (rows, rejects) in self._counts.items():
            entry = folded.setdefault((identity, latest[identity]), [0, 0])
            entry[0] += rows
            entry[1] += rejects
        over = len(folded) - target
        if over > 0:
            for key in sorted(folded, key=itemgetter(1))[:over]:
                del folded[key]
            self._seen = {identity: self._seen[identity] for identity, _ in folded}
            self._drop("memory", over, f"more than {self._max_entries} entries held")
        self._counts = folded

    def _drop(self, reason: str, count: int, detail: str) -> None:
        self.dropped[reason] += count
        self._unlogged += count
        now = time.monotonic()
        if now - self._logged_at >= 1.0:
            self._logged_at = now
            log.warning(
                "activity dropped (%s: %s); %d dropped since the last line",
                reason,
                ascii(detail[:200]),  # it may quote what a device sent
                self._unlogged,
            )
            self._unlogged = 0
