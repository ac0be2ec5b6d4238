"""Per-identity activity: rows and rejects per minute, aggregated in memory, upserted in bulk.

The data plane never writes per message to the control schema: counts accumulate here and the
control role upserts them every few seconds in one statement, then moves `last_seen` forward in
one more. A failed upsert keeps the counts for the next round.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime

from gateway.db import Conn

__all__ = ["Activity"]

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


class Activity:
    def __init__(self) -> None:
        # (identity, minute) -> [rows, rejects]; last seen per identity
        self._counts: defaultdict[tuple[str, datetime], list[int]] = defaultdict(lambda: [0, 0])
        self._seen: dict[str, datetime] = {}

    def __len__(self) -> int:
        return len(self._counts)

    def wrote(self, rows_per_identity: Counter[str]) -> None:
        now = datetime.now(UTC)
        minute = now.replace(second=0, microsecond=0)
        for identity, rows in rows_per_identity.items():
            self._counts[(identity, minute)][0] += rows
            self._seen[identity] = now

    def rejected(self, identity: str) -> None:
        now = datetime.now(UTC)
        self._counts[(identity, now.replace(second=0, microsecond=0))][1] += 1
        self._seen[identity] = now

    async def flush(self, conn: Conn) -> int:
        """Upsert what accumulated; returns the number of (identity, minute) rows written."""
        if not self._counts:
            return 0
        counts, seen = self._counts, self._seen
        self._counts, self._seen = defaultdict(lambda: [0, 0]), {}
        try:
            keys = list(counts)
            async with conn.transaction():
                await conn.execute(
                    UPSERT,
                    [identity for identity, _ in keys],
                    [minute for _, minute in keys],
                    [counts[key][0] for key in keys],
                    [counts[key][1] for key in keys],
                    [seen[identity] for identity, _ in keys],
                )
                names = list(seen)
                await conn.execute(LAST_SEEN, names, [seen[name] for name in names])
        except BaseException:
            self._merge_back(counts, seen)
            raise
        return len(keys)

    def _merge_back(
        self, counts: dict[tuple[str, datetime], list[int]], seen: dict[str, datetime]
    ) -> None:
        for key, (rows, rejects) in counts.items():
            self._counts[key][0] += rows
            self._counts[key][1] += rejects
        for name, when in seen.items():
            self._seen[name] = max(when, self._seen.get(name, when))
