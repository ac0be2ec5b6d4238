"""How many reject records each sender may store whole per minute; the rest become one count.

A device with valid credentials can send nothing but bad messages, as fast as the broker lets
it. Each is still rejected, counted in the metric and acknowledged, but only the first
`per_minute` of each (sender, reason) in a minute are stored whole; the others add to one
summary row per (sender, reason, minute), written when the minute ends. The sender is the
registered identity, or the claimed name or topic when there is none, cut to `KEY_LENGTH`.
The number of senders tracked at once is bounded too: beyond `max_senders` (or, for senders the
registry does not know, beyond `max_unregistered`), every new sender in that minute shares one
overflow entry, so memory and the records an attacker can make stay bounded whatever names it
picks: at most `max_unregistered x per_minute` whole records a minute from unknown names.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["OVERFLOW", "RejectBudget", "Summary"]

KEY_LENGTH = 128
OVERFLOW = "(other senders)"


@dataclass(frozen=True, slots=True)
class Summary:
    """The rejects of one sender and reason in one minute that were counted, not stored."""

    minute: int  # epoch minute
    source: str
    sender: str
    registered: bool
    reason: str
    count: int


class RejectBudget:
    """Per (source, sender, reason): stored whole while under budget, counted after."""

    __slots__ = (
        "_counts",
        "_max_senders",
        "_max_unregistered",
        "_minute",
        "_over",
        "_senders",
        "_unregistered",
        "per_minute",
    )

    def __init__(
        self, per_minute: int, max_senders: int = 10_000, max_unregistered: int = 100
    ) -> None:
        self.per_minute = per_minute
        self._max_senders = max_senders
        self._max_unregistered = max_unregistered
        self._unregistered = 0
        self._minute = -1
        self._counts: dict[tuple[str, str, str], int] = {}
        self._over: dict[tuple[str, str, str], list[int | bool]] = {}  # -> [count, registered]
        self._senders: set[tuple[str, str]] = set()

    def roll(self, minute: int) -> list[Summary]:
        """Start `minute` if it is new; returns what the minute that ended counted."""
        if minute == self._minute:
            return []
        ended = self.take_summaries()
        self._minute = minute
        self._counts.clear()
        self._senders.clear()
        self._unregistered = 0
        return ended

    def admit(self, source: str, sender: str, registered: bool, reason: str) -> bool:
        """Whether this reject may be stored whole; if not, it is counted in its summary."""
        sender = sender[:KEY_LENGTH]
        if (source, sender) not in self._senders:
            if len(self._senders) >= self._max_senders or (
                not registered and self._unregistered >= self._max_unregistered
            ):
                sender, registered = OVERFLOW, False
            elif not registered:
                self._unregistered += 1
            self._senders.add((source, sender))
        key = (source, sender, reason)
        seen = self._counts.get(key, 0)
        self._counts[key] = seen + 1
        if seen < self.per_minute:
            return True
        over = self._over.get(key)
        if over is None:
            self._over[key] = [1, registered]
        else:
            over[0] += 1
        return False

    def take_summaries(self) -> list[Summary]:
        """What was counted and not yet summarised (at a minute's end, or when draining)."""
        summaries = [
            Summary(self._minute, source, sender, bool(registered), reason, int(count))
            for (source, sender, reason), (count, registered) in self._over.items()
        ]
        self._over.clear()
        return summaries
