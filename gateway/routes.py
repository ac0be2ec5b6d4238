"""Routes and their sinks, from the configuration and the roles declaration.

A role may use a route when the declaration lets it INSERT into the route's whole table; each
such (role, stream) becomes a route whose sink writes as that role. Reject records take one more
route, an ordinary one marked `rejects`, written by `database.rejects_role`. Which sink writes a
table is the caller's choice (`open_sink`): PostgreSQL when running, memory in tests.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.config import GatewayConfig
from gateway.contracts import Route, Sink, Table
from gateway.decoder import COLUMNS, DEDUP_COLUMNS
from gateway.pipeline import REJECT_COLUMNS
from gateway.roles.declaration import Declaration

__all__ = ["REJECTS_TABLE", "OpenSink", "build_routes", "writer_roles"]

REJECTS_TABLE = Table(
    "ingest",
    "rejects",
    REJECT_COLUMNS,
    ts_column=None,
    identity_column=None,
    dedup=True,  # by message key: a redelivered message's reject is not recorded twice
    write_log=False,
)

OpenSink = Callable[[str, Table], Sink]
"""A sink writing rows into a table as a role: `open_sink(role, table)`."""


def writer_roles(doc: Declaration, config: GatewayConfig) -> dict[str, list[str]]:
    """For each declared role, the route tables it may write (roles with none are left out)."""
    found: dict[str, list[str]] = {}
    for role in doc.roles:
        tables = [r.table for r in config.routes if doc.may_insert(role, r.table)]
        if tables:
            found[role] = tables
    return found


def build_routes(config: GatewayConfig, doc: Declaration, open_sink: OpenSink) -> list[Route]:
    """Every (role, stream) route the declaration allows, then the route of reject records."""
    routes = []
    sinks: dict[tuple[str, str, bool], Sink] = {}  # streams into one table share its sink
    for role, tables in writer_roles(doc, config).items():
        for route in config.routes:
            if route.table in tables:
                key = (role, route.table, route.dedup)
                sink = sinks.get(key)
                if sink is None:
                    schema, name = route.table.split(".")
                    columns = DEDUP_COLUMNS if route.dedup else COLUMNS
                    table = Table(schema, name, columns, dedup=route.dedup)
                    sink = sinks[key] = open_sink(role, table)
                routes.append(Route(role, route.table, sink, route.stream, dedup=route.dedup))
    role = config.database.rejects_role
    sink = open_sink(role, REJECTS_TABLE)
    routes.append(Route(role, REJECTS_TABLE.qualified, sink, rejects=True))
    return routes
