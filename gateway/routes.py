"""Routes and their sinks, from the configuration and the roles declaration.

A role may use a route when the declaration lets it write the route's table (INSERT; for a
state route also UPDATE, and SELECT on its key and version); each such (role, stream) becomes a
route whose sink writes as that role. A route naming its own `role` is written by that role for
the identities of its `for_roles` instead. Reject records take one more route, an ordinary one
marked `rejects`, written by `database.rejects_role`. Which sink writes a table is the caller's
choice (`open_sink`): PostgreSQL when running, memory in tests.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.config import GatewayConfig, RouteConfig
from gateway.contracts import Decode, Route, Row, Sink, Table
from gateway.decoder import COLUMNS, DEDUP_COLUMNS, DecodeLimits, decode
from gateway.pipeline import REJECT_COLUMNS
from gateway.roles.declaration import Declaration
from gateway.route_checks import route_problems
from gateway.shapes import msgpack_as_json, shape_decoder
from gateway.validation import ConfigError

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


def _writers(doc: Declaration, route: RouteConfig) -> list[tuple[str, str | None]]:
    """(writing role, role whose identities feed it, None when the same) for one route."""
    if route.role is not None:
        return [(route.role, fed_by) for fed_by in route.for_roles]
    return [(role, None) for role in doc.roles if not route_problems(doc, role, route)]


def writer_roles(doc: Declaration, config: GatewayConfig) -> dict[str, list[str]]:
    """For each declared role, the route tables it writes (roles with none are left out)."""
    found: dict[str, list[str]] = {}
    for route in config.routes:
        for role, _ in _writers(doc, route):
            tables = found.setdefault(role, [])
            if route.table not in tables:
                tables.append(route.table)
    return found


def build_routes(
    config: GatewayConfig,
    doc: Declaration,
    open_sink: OpenSink,
    limits: DecodeLimits | None = None,
) -> list[Route]:
    """Every route the declaration allows, then the route of reject records.

    A route naming its own writing role must be one the declaration lets write it, and feed only
    declared roles: else a ConfigError naming the route.
    """
    limits = limits or DecodeLimits.from_config(config.limits)
    problems = []
    for index, route in enumerate(config.routes):
        if route.role is None:
            continue
        where = f"routes[{index}]"
        unknown = [r for r in [route.role, *route.for_roles] if r not in doc.roles]
        if unknown:
            problems.append((where, f"roles not in the declaration: {', '.join(unknown)}"))
        elif missing := route_problems(doc, route.role, route):
            problems.append((f"{where}.role", "; ".join(missing)))
    if problems:
        raise ConfigError("gateway configuration", problems)
    routes = []
    sinks: dict[tuple[str, str, bool], Sink] = {}  # streams into one table share its sink
    for index, route in enumerate(config.routes):
        table, decoder = _shape(route, limits, f"routes[{index}]")
        for role, fed_by in _writers(doc, route):
            sink = sinks.get((role, route.table, route.dedup))
            if sink is None:
                sink = sinks[(role, route.table, route.dedup)] = open_sink(role, table)
            routes.append(
                Route(
                    role,
                    route.table,
                    sink,
                    route.stream,
                    dedup=route.dedup,
                    decode=decoder,
                    for_role=fed_by,
                    ts_column=table.ts_column,
                    identity_column=table.identity_column,
                )
            )
    role = config.database.rejects_role
    sink = open_sink(role, REJECTS_TABLE)
    routes.append(Route(role, REJECTS_TABLE.qualified, sink, rejects=True))
    return routes


def _shape(route: RouteConfig, limits: DecodeLimits, where: str) -> tuple[Table, Decode | None]:
    """The table a route writes, and its decoding (None: the telemetry hot path)."""
    schema, name = route.table.split(".")
    if route.kind == "telemetry":
        table = Table(schema, name, DEDUP_COLUMNS if route.dedup else COLUMNS, dedup=route.dedup)
        if route.format == "json":
            return table, None
        dedup = route.dedup

        def telemetry_msgpack(payload: bytes, identity: str, stream: str, at: int) -> list[Row]:
            return decode(msgpack_as_json(payload, limits), identity, at, limits, dedup)

        return table, telemetry_msgpack
    paths = [column.path for column in route.columns]
    stamps = [
        i
        for i, column in enumerate(route.columns)
        if column.type == "timestamptz" and column.path.startswith("/")
    ]
    table = Table(
        schema,
        name,
        tuple(column.name for column in route.columns),
        ts_column=stamps[0] if stamps else None,
        identity_column=paths.index("$identity"),
        dedup=route.dedup,
        types=tuple(column.type for column in route.columns),
        conflict=tuple(route.key) if route.kind == "state" else (),
        version=route.version if route.kind == "state" else None,
    )
    try:
        decoder = shape_decoder(route, limits)
    except ConfigError as exc:
        raise ConfigError(
            "gateway configuration",
            [(f"{where}.{path}", problem) for path, problem in exc.problems],
        ) from exc
    return table, decoder
