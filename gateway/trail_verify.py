"""Verifying the trail's hash chains: which rows were edited, deleted or inserted out of band.

Each row of `gateway.audit_log` and `gateway.role_changes` carries the hash of the row before it
and its own, sha256(prev_hash || canonical text). A row whose content no longer gives its hash
was edited; a row that does not follow the one before it marks rows deleted there, or was itself
inserted, which the row after it tells apart (it still follows the row before the intruder).
What no chain can show is rows deleted from the end: compare the last number with a copy kept
elsewhere for that.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import NamedTuple

import asyncpg

__all__ = ["CHAINS", "Break", "ChainWalk", "Link", "find_breaks", "verify"]

GENESIS = b""

# Each chain: its table, its number column, and the function giving a row's canonical text.
CHAINS = {
    "gateway.audit_log": ("id", "gateway.audit_entry_text"),
    "gateway.role_changes": ("version", "gateway.role_change_text"),
}


class Link(NamedTuple):
    """One row as the chain sees it: its number, stored hashes, and the hash its content gives."""

    number: int
    prev_hash: bytes | None
    hash: bytes | None
    computed: bytes


@dataclass(frozen=True, slots=True)
class Break:
    """Where a chain does not hold, naming the row."""

    table: str
    number: int
    problem: str

    def __str__(self) -> str:
        return f"{self.table} row {self.number}: {self.problem}"

    def as_json(self) -> dict[str, object]:
        return {"table": self.table, "row": self.number, "problem": self.problem}


EDITED = "altered: its content does not give its hash (edited, or written out of band)"
INSERTED = "inserted out of band: the row after it follows the row before it"


class ChainWalk:
    """Walks one chain in number order, row by row (a trail of millions stays out of memory).

    One row of look-ahead decides between a row inserted out of band and rows deleted.
    """

    def __init__(self, table: str) -> None:
        self.table = table
        self.rows = 0
        self._expected: bytes | None = GENESIS
        self._last: int | None = None
        self._held: Link | None = None  # a row that does not follow: judged by the next one

    def step(self, link: Link) -> list[Break]:
        found: list[Break] = []
        self.rows += 1
        if self._held is not None:
            if link.prev_hash == self._expected:
                found.append(Break(self.table, self._held.number, INSERTED))
            else:
                found += _misplaced(self.table, self._held, self._last)
                self._expected, self._last = self._held.hash, self._held.number
            self._held = None
        if link.prev_hash != self._expected:
            self._held = link
            return found
        if link.computed != link.hash:
            found.append(Break(self.table, link.number, EDITED))
        self._expected, self._last = link.hash, link.number
        return found

    def finish(self) -> list[Break]:
        held, self._held = self._held, None
        return [] if held is None else _misplaced(self.table, held, self._last)


def find_breaks(table: str, links: Iterable[Link]) -> list[Break]:
    """Every break in one chain, its rows given in number order."""
    walk = ChainWalk(table)
    found = [problem for link in links for problem in walk.step(link)]
    return found + walk.finish()


def _misplaced(table: str, link: Link, last: int | None) -> list[Break]:
    after = f"row {last}" if last is not None else "the start"
    found = [
        Break(
            table,
            link.number,
            f"does not follow {after}: rows between them were deleted, "
            "or it was inserted out of band",
        )
    ]
    if link.computed != link.hash:
        found.append(Break(table, link.number, EDITED))
    return found


async def _links(conn: asyncpg.Connection, table: str) -> AsyncIterator[Link]:
    number, text = CHAINS[table]
    query = (
        f"SELECT {number}, prev_hash, hash, "
        f"gateway.chain_hash(coalesce(prev_hash, ''::bytea), {text}(t)) "
        f"FROM {table} t ORDER BY {number}"
    )
    async for row in conn.cursor(query, prefetch=10_000):
        yield Link(row[0], row[1], row[2], row[3])


async def verify(conn: asyncpg.Connection) -> tuple[list[Break], dict[str, int]]:
    """Every break in both chains, and the rows checked per table, from one snapshot."""
    breaks: list[Break] = []
    counts: dict[str, int] = {}
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        for table in CHAINS:
            walk = ChainWalk(table)
            async for link in _links(conn, table):
                breaks += walk.step(link)
            breaks += walk.finish()
            counts[table] = walk.rows
    return breaks, counts
