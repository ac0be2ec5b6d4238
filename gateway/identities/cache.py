"""The data plane's in-memory view of the registry, kept fresh from its change feed.

Every message names an identity, so resolving it must cost one dict lookup: `get` is exactly
that. The registry's triggers (migration 007) append the names whose role or status changed to
`gateway.identity_changes`, in commit order, and notify channel `gateway_identities`. The cache
reads the feed past the last sequence it applied and re-reads those rows, or everything after a
`*` (a role renamed or removed) or a change too large to read by name. A notification is only a
hint to look: any role may NOTIFY any channel, so its payload is ignored and reads are paced,
which bounds what a storm of them costs. Quiet periods are covered by a periodic read too. If
the connection is lost, the cache reconnects with backoff and reloads everything, serving the
last known entries meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple

import asyncpg

from gateway.db import DatabaseError
from gateway.identities.model import CHANNEL, Status
from gateway.lifecycle import Lifecycle

__all__ = ["CachedIdentity", "IdentityCache"]

log = logging.getLogger(__name__)

# A full load groups names per (role, status) into space-joined strings (names never contain a
# space): a few large text values decode far faster than a million rows (measured: 0.2 s
# against 1.2 s for a million names). Four hash bits split each group in 16, which bounds each
# value's size (a text value must stay under 1 GB) and lets the event loop run between them
# while the new dict is built. The bits are boolean expressions because the planner knows a
# boolean has two values: grouping by `hashtext(name) & 15` makes it expect a million groups
# and sort a million rows on disk instead of hashing into a few dozen (0.8 s against 0.25 s).
LOAD_ROLES = "SELECT id, name, login_role FROM gateway.roles"
LOAD_NAMES = """
SELECT role_id, status, string_agg(name, ' ')
  FROM gateway.identities
 GROUP BY role_id, status, hashtext(name) & 1 = 0, hashtext(name) & 2 = 0,
          hashtext(name) & 4 = 0, hashtext(name) & 8 = 0
"""
# The feed's position in the same snapshot as a full load, and what came after a position.
FEED_POSITION = "SELECT coalesce(max(seq), 0) FROM gateway.identity_changes"
FEED = """
SELECT seq, name FROM gateway.identity_changes WHERE seq > $1 ORDER BY seq LIMIT $2
"""
# Past this many changed names at once, one full load is cheaper than reading them by name.
FEED_BATCH = 10_000
# Reads of the feed are at least this far apart however many notifications arrive, so a storm
# of them from any login costs a bounded number of small indexed queries; a change is still
# seen within this delay plus one query.
MIN_READ_INTERVAL = 0.05
REFRESH = """
SELECT i.name, r.name AS role, r.login_role, i.status
  FROM gateway.identities i JOIN gateway.roles r ON r.id = i.role_id
 WHERE i.name = ANY($1::text[])
"""
# Connection loss shows up as any of these; every one is answered by reconnect and reload.
LOST = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)

Connect = Callable[[], Awaitable[asyncpg.Connection]]


class CachedIdentity(NamedTuple):
    """What the data plane needs to route an identity's messages."""

    role: str
    login_role: str
    status: Status

    @property
    def active(self) -> bool:
        return self.status == "active"


class _ConnectionLost(Exception):
    """The listening connection ended; raised inside the follower to trigger a reconnect."""


class IdentityCache(Lifecycle):
    """Identity name -> (role, login role, status) for the whole registry, in memory.

    `connect` is a DSN or a coroutine function returning a new connection; the cache holds one
    connection of its own, because LISTEN belongs to a session. `on_entries` is called with the
    number of entries after every change (the `identity_cache_entries` gauge).
    """

    def __init__(
        self,
        connect: str | Connect,
        *,
        on_entries: Callable[[int], None] | None = None,
        min_backoff: float = 0.1,
        max_backoff: float = 5.0,
        health_interval: float = 10.0,
    ) -> None:
        if isinstance(connect, str):
            dsn = connect

            async def connect_dsn() -> asyncpg.Connection:
                conn: asyncpg.Connection = await asyncpg.connect(dsn, timeout=10)
                return conn

            self._connect: Connect = connect_dsn
        else:
            self._connect = connect
        self._on_entries = on_entries
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._health_interval = health_interval
        self._entries: dict[str, CachedIdentity] = {}
        # Entries are shared per (role, login role, status): a million identities need a few
        # tuples, not a million.
        self._shared: dict[CachedIdentity, CachedIdentity] = {}
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        self._seq = 0
        self._lost = False
        self.notifications = 0
        """Notifications received: hints only, counted to show what a storm cost."""
        self.feed_reads = 0
        """Reads of the change feed so far."""
        self.reloads = 0
        """Full loads done so far (the first one included)."""

    def get(self, name: str) -> CachedIdentity | None:
        """The cached identity, or None if it is not registered: the hot path."""
        return self._entries.get(name)

    @property
    def entries(self) -> int:
        """How many identities are cached."""
        return len(self._entries)

    @property
    def connected(self) -> bool:
        """Whether changes are being followed right now (for readiness)."""
        return self._conn is not None and not self._lost

    async def start(self) -> None:
        """Load every identity and start following changes; fails if the database is unusable."""
        try:
            await self._open()
            await self._load_all()
        except LOST as exc:
            await self._drop_connection()
            raise DatabaseError(f"identity cache could not load the registry: {exc}") from exc
        self._task = asyncio.create_task(self._run(), name="identity-cache")

    async def close(self) -> None:
        """Stop following changes and close the connection; entries stay readable."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._drop_connection()

    async def _run(self) -> None:
        while True:
            try:
                await self._follow()
            except (_ConnectionLost, *LOST) as exc:
                log.warning("identity cache lost its connection (%s); reconnecting", exc)
            except Exception:
                # Whatever went wrong, a cache that stops following is worse than a reload.
                log.exception("identity cache failed; reconnecting")
            await self._drop_connection()
            await self._reconnect()

    async def _follow(self) -> None:
        """Read the feed when notified, and when all is quiet (which also checks the connection:
        a silent network failure leaves no trace but the missing answer)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self._health_interval)
            self._wakeup.clear()
            if self._lost:
                raise _ConnectionLost("connection closed")
            await self._catch_up()
            await asyncio.sleep(MIN_READ_INTERVAL)

    async def _catch_up(self) -> None:
        """Apply what the feed says changed since the last sequence applied."""
        conn = self._require_conn()
        rows = await conn.fetch(FEED, self._seq, FEED_BATCH + 1, timeout=self._health_interval)
        self.feed_reads += 1
        if not rows:
            return
        names = {row["name"] for row in rows}
        if len(rows) > FEED_BATCH or "*" in names:
            await self._load_all()
            return
        await self._refresh(names)
        self._seq = rows[-1]["seq"]

    async def _reconnect(self) -> None:
        """Connect again with growing, jittered delays, then reload everything."""
        delay = self._min_backoff
        while True:
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            try:
                await self._open()
                await self._load_all()
            except Exception as exc:
                log.warning("identity cache cannot reconnect yet (%s)", exc)
                await self._drop_connection()
                delay = min(delay * 2, self._max_backoff)
                continue
            log.info("identity cache reconnected and reloaded %d identities", self.entries)
            return

    async def _open(self) -> None:
        self._lost = False
        conn = await self._connect()
        self._conn = conn
        conn.add_termination_listener(self._on_termination)
        await conn.add_listener(CHANNEL, self._on_notification)

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        conn.remove_termination_listener(self._on_termination)
        try:
            await asyncio.wait_for(conn.close(), 5)
        except LOST:
            conn.terminate()

    def _require_conn(self) -> asyncpg.Connection:
        if self._conn is None or self._lost:
            raise _ConnectionLost("not connected")
        return self._conn

    def _on_notification(self, conn: object, pid: int, channel: str, payload: object) -> None:
        # Whatever it says, and whoever sent it: only the feed is read.
        self.notifications += 1
        self._wakeup.set()

    def _on_termination(self, conn: object) -> None:
        self._lost = True
        self._wakeup.set()

    async def _load_all(self) -> None:
        """Replace every entry from one snapshot; lookups see the old dict until the swap."""
        conn = self._require_conn()
        started = time.perf_counter()
        # The feed's position in the same snapshot: what commits later comes after it.
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            roles = {
                row["id"]: (row["name"], row["login_role"]) for row in await conn.fetch(LOAD_ROLES)
            }
            seq = await conn.fetchval(FEED_POSITION)
            groups = await conn.fetch(LOAD_NAMES)
        entries: dict[str, CachedIdentity] = {}
        for role_id, status, names in groups:
            role, login_role = roles[role_id]
            entries.update(dict.fromkeys(names.split(" "), self._share(role, login_role, status)))
            await asyncio.sleep(0)
        self._entries = entries
        self._seq = seq
        self.reloads += 1
        log.info(
            "identity cache loaded %d identities in %.3f s",
            len(entries),
            time.perf_counter() - started,
        )
        self._report()

    async def _refresh(self, names: set[str]) -> None:
        """Re-read the named identities; a name no longer registered leaves the cache."""
        rows = await self._require_conn().fetch(REFRESH, list(names))
        entries = self._entries
        for row in rows:
            entries[row["name"]] = self._share(row["role"], row["login_role"], row["status"])
            names.discard(row["name"])
        for gone in names:
            entries.pop(gone, None)
        self._report()

    def _share(self, role: str, login_role: str, status: Status) -> CachedIdentity:
        entry = CachedIdentity(role, login_role, status)
        return self._shared.setdefault(entry, entry)

    def _report(self) -> None:
        if self._on_entries is not None:
            self._on_entries(len(self._entries))
