"""What the engine needs of the parts around it: sources hand over messages, sinks commit rows.

The engine (`pipeline`, `batching`, `decoder`, `activity`, `routes`) is written against these
protocols only, never against MQTT, Kafka or PostgreSQL; `app` picks the concrete parts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

__all__ = ["Decode", "Message", "Route", "Row", "Sink", "Source", "Table", "WriteOutcome"]

Row = tuple[Any, ...]
"""One row for a table, its values in the order of the table's columns."""

Decode = Callable[[bytes, str, str, int], list[Row]]
"""A route's own decoding: (payload, identity, stream, received_at) -> its rows, or raise
`gateway.decoder.Reject`. Telemetry routes have none: the engine's hot path decodes them."""


class Message(Protocol):
    """A message as the engine reads it; sources keep whatever else they need to acknowledge it."""

    @property
    def topic(self) -> str: ...

    payload: bytes
    """Emptied by the engine once a message is rejected: its record keeps what is needed."""


M = TypeVar("M", bound=Message)


class Source(Protocol[M]):
    """What the engine needs of a source; MQTT and Kafka adapters implement it."""

    name: str
    unclaimed_reason: str  # the reject reason when `claim` finds no identity

    @property
    def claim(self) -> Callable[[M], tuple[str, str] | None]:
        """(identity, stream) from the message, or None when it carries no usable claim.

        Read once per list of messages, so a source may hand over a function it chose at start
        (Kafka: key, header or topic) as well as a method.
        """

    def position(self, message: M) -> Any:
        """Where the message sits in its source (packet id, partition/offset) for the audit."""

    def ack(self, messages: Sequence[M]) -> None:
        """The messages are committed (or rejected for good): the source may forget them."""

    async def receive(self) -> list[M]:
        """The next messages, at least one."""

    def pause(self) -> None:
        """Buffers are full: stop taking more in (or rely on holding acknowledgements)."""

    async def resume(self) -> None:
        """Buffers have room again."""

    @property
    def connected(self) -> bool:
        """Whether the source is taking messages in right now (readiness)."""

    async def start(self) -> None:
        """Connect; return once messages can flow, or raise why they cannot."""

    async def close(self) -> None:
        """Stop taking messages in and let the broker keep what was not acknowledged."""


@dataclass
class WriteOutcome:
    """What became of a batch: rows committed, and the rows refused for data reasons, each
    with the database's reason (they can never be written, so they become reject records).

    `held`: the table refuses every row for a reason only an operator can fix (a revoked
    privilege, a dropped table or column, refused authentication), and says which: the error
    text. The batch's rows were not written (a split cut short by it keeps the parts already
    committed in `written` and `bad_rows`); the sink did not retry, so `probe` says when the
    table takes writes again.
    """

    written: int
    bad_rows: list[tuple[Row, str]]
    held: str = ""


class Sink(Protocol):
    """Where committed rows go; PostgreSQL in production, memory in tests and benchmarks."""

    async def write(self, rows: Sequence[Row], positions: dict[str, Any]) -> WriteOutcome:
        """Commit the rows; return how many landed, which were refused for data reasons, and
        whether the table refuses every row (`held`)."""

    async def probe(self) -> str:
        """Whether the table takes writes again, without writing a row: "" when it does, else
        why not (the error text)."""


@dataclass(frozen=True)
class Table:
    """A table rows are written to, and the shape of its rows: the columns each row fills, in
    order, and which of them hold the reading's time and identity (None: the rows have none)."""

    schema: str
    name: str
    columns: tuple[str, ...]
    ts_column: int | None = 0
    identity_column: int | None = 1
    # Rows end with a message id, and a redelivered message must add nothing.
    dedup: bool = False
    # Each batch is recorded in the write log, with the source positions it came from.
    write_log: bool = True
    # PostgreSQL types of `columns`, for a staging table (None: telemetry's and rejects' own).
    types: tuple[str, ...] | None = None
    # An upsert (a state route): the columns naming one row, and the column whose newer value
    # wins; every other column is updated.
    conflict: tuple[str, ...] = ()
    version: str | None = None

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True, slots=True)
class Route:
    """Where a role's readings of one stream go: a table, and the sink that commits rows there.

    Reject records take an ordinary route marked `rejects`: no stream leads to it (the engine
    sends it whatever it refuses), and its rows are records of refusals, not readings, so the
    engine does not count them as rows written.
    """

    role: str
    table: str
    sink: Sink
    stream: str | None = None
    dedup: bool = False
    rejects: bool = False
    decode: Decode | None = None
    # The role whose identities' messages take this route, when not the writing role itself.
    for_role: str | None = None
    # Where a row holds the reading's time and its identity (the table's; None: it has none).
    ts_column: int | None = 0
    identity_column: int | None = 1
