"""Verifying the trail's hash chains: which rows were edited, deleted or inserted out of band.

Each row of `gateway.audit_log`, `gateway.role_changes` and `gateway.write_log` carries the hash
of the row before it in its chain and its own, sha256(prev_hash || canonical text); the write log
has one chain per (role, table). A row whose content no longer gives its hash
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

# Each table: its number column, the function giving a row's canonical text, and the column
# naming a row's chain when the table holds more than one.
CHAINS: dict[str, tuple[str, str, str | None]] = {
    "gateway.audit_log": ("id", "gateway.audit_entry_text", None),
    "gateway.role_changes": ("version", "gateway.role_change_text", None),
    "gateway.write_log": ("id", "gateway.write_log_text", "chain"),
}


class Link(NamedTuple):
    """One row as the chain sees it: its number, stored hashes, and the hash its content gives."""

    number: int
    prev_hash: bytes | None
    hash: bytes | None
    computed: bytes
    chain: str = ""


@dataclass(frozen=True, slots=True)
class Break:
    """Where a chain does not hold, naming the row."""

    table: str
    number: int
    problem: str
    chain: str = ""

    def __str__(self) -> str:
        chain = f" (chain {self.chain})" if self.chain else ""
        return f"{self.table} row {self.number}{chain}: {self.problem}"

    def as_json(self) -> dict[str, object]:
        found: dict[str, object] = {"table": self.table, "row": self.number}
        if self.chain:
            found["chain"] = self.chain
        return found | {"problem": self.problem}


EDITED = "altered: its content does not give its hash (edited, or written out of band)"
INSERTED = "inserted out of band: the row after it follows the row before it"


class ChainWalk:
    """Walks one chain in number order, row by row (a trail of millions stays out of memory).

    One row of look-ahead decides between a row inserted out of band and rows deleted.
    """

    def __init__(self, table: str, chain: str = "") -> None:
        self.table = table
        self.chain = chain
        self.rows = 0
        self._expected: bytes | None = GENESIS
        self._last: int | None = None
        self._held: Link | None = None  # a row that does not follow: judged by the next one

    def step(self, link: Link) -> list[Break]:
        found: list[Break] = []
        self.rows += 1
        if self._held is not None:
            if link.prev_hash == self._expected:
                found.append(self._break(self._held.number, INSERTED))
            else:
                found += self._misplaced(self._held)
                self._expected, self._last = self._held.hash, self._held.number
            self._held = None
        if link.prev_hash != self._expected:
            self._held = link
            return found
        if link.computed != link.hash:
            found.append(self._break(link.number, EDITED))
        self._expected, self._last = link.hash, link.number
        return found

    def finish(self) -> list[Break]:
        held, self._held = self._held, None
        return [] if held is None else self._misplaced(held)

    def _break(self, number: int, problem: str) -> Break:
        return Break(self.table, number, problem, self.chain)

    def _misplaced(self, link: Link) -> list[Break]:
        after = f"row {self._last}" if self._last is not None else "the start"
        found = [
            self._break(
                link.number,
                f"does not follow {after}: rows between them were deleted, "
                "or it was inserted out of band",
            )
        ]
        if link.computed != link.hash:
            found.append(self._break(link.number, EDITED))
        return found


def find_breaks(table: str, links: Iterable[Link]) -> list[Break]:
    """Every break in one chain, its rows given in number order."""
    walk = ChainWalk(table)
    found = [problem for link in links for problem in walk.step(link)]
    return found + walk.finish()


async def _links(conn: asyncpg.Connection, table: str) -> AsyncIterator[Link]:
    number, text, chain = CHAINS[table]
    name, order = (chain, f"{chain}, {number}") if chain else ("''", number)
    query = (
        f"SELECT {number}, prev_hash, hash, "
        f"gateway.chain_hash(coalesce(prev_hash, ''::bytea), {text}(t)), {name} "
        f"FROM {table} t ORDER BY {order}"
    )
    async for row in conn.cursor(query, prefetch=10_000):
        yield Link(row[0], row[1], row[2], row[3], row[4])


async def verify(conn: asyncpg.Connection) -> tuple[list[Break], dict[str, int]]:
    """Every break in every chain, and the rows checked per table, from one snapshot."""
    breaks: list[Break] = []
    counts: dict[str, int] = {}
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        for table in CHAINS:
            walk = ChainWalk(table)
            counts[table] = 0
            async for link in _links(conn, table):
                if link.chain != walk.chain:
                    breaks += walk.finish()
                    counts[table] += walk.rows
                    walk = ChainWalk(table, link.chain)
                breaks += walk.step(link)
            breaks += walk.finish()
            counts[table] += walk.rows
    return breaks, counts
