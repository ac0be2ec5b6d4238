"""What a declaration lacks for a role to write a route, read from the declaration alone: INSERT
for any route, and for an upsert UPDATE on what it sets and SELECT on its key and version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import RouteConfig, load_config
from gateway.decoder import COLUMNS
from gateway.roles.declaration import Declaration, parse_declaration
from gateway.route_checks import route_problems
from gateway.routes import build_routes
from gateway.sinks.memory import MemorySink
from gateway.validation import ConfigError

EXAMPLE_CONFIG = Path(__file__).parents[2] / "config" / "gateway.toml"
STATE_COLUMNS = [
    {"name": "identity", "path": "$identity", "type": "text"},
    {"name": "state", "path": "", "type": "jsonb"},
    {"name": "updated_at", "path": "/ts", "type": "timestamptz"},
]


def state_route(**changes: Any) -> RouteConfig:
    fields = {"stream": "state", "table": "ingest.device_state", "kind": "state"}
    return RouteConfig.model_validate({**fields, "columns": STATE_COLUMNS, **changes})


def declaration(grants: str, *, tier: str = "transactional", extra: str = "") -> Declaration:
    return parse_declaration(
        f"""
tables = ["ingest.wide"]

[roles.writer]
id = "r-writer"
tier = "{tier}"
connection_limit = 2
password = {{ env = "PW_WRITER" }}
grants = [{grants}]
{extra}
"""
    )


EXACT = (
    '{ table = "ingest.device_state", privileges = ["INSERT"] },\n'
    '{ table = "ingest.device_state", privileges = ["UPDATE"], '
    'columns = ["state", "updated_at"] },\n'
    '{ table = "ingest.device_state", privileges = ["SELECT"], '
    'columns = ["identity", "updated_at"] },\n'
)


def test_exactly_what_an_upsert_needs_is_enough() -> None:
    assert route_problems(declaration(EXACT), "writer", state_route()) == []


def test_whole_table_grants_are_enough_too() -> None:
    doc = declaration(
        '{ table = "ingest.device_state", privileges = ["SELECT", "INSERT", "UPDATE"] }'
    )
    assert route_problems(doc, "writer", state_route()) == []


def test_the_shipped_state_writer_cannot_compare_versions() -> None:
    doc = declaration(
        """
        { table = "ingest.device_state", privileges = ["INSERT", "UPDATE"] },
        { table = "ingest.device_state", privileges = ["SELECT"], columns = ["identity", "state"] },
        """
    )
    assert route_problems(doc, "writer", state_route()) == [
        "role writer lacks SELECT on ingest.device_state (updated_at): an upsert compares versions"
    ]


@pytest.mark.parametrize(
    ("grants", "problems"),
    [
        (
            '{ table = "ingest.device_state", privileges = ["INSERT"] }',
            [
                "role writer lacks UPDATE on ingest.device_state (state, updated_at): an upsert "
                "sets every column but the key",
                "role writer lacks SELECT on ingest.device_state (identity): an upsert finds the "
                "row by its key",
                "role writer lacks SELECT on ingest.device_state (updated_at): an upsert compares "
                "versions",
            ],
        ),
        (
            EXACT.replace('"state", "updated_at"', '"updated_at"'),
            [
                "role writer lacks UPDATE on ingest.device_state (state): an upsert sets every "
                "column but the key"
            ],
        ),
        (
            EXACT.replace('privileges = ["INSERT"] }', 'privileges = ["DELETE"] }'),
            ["role writer lacks INSERT on ingest.device_state: the route adds rows"],
        ),
    ],
    ids=["insert-only", "update-partly", "no-insert"],
)
def test_each_missing_privilege_is_named_with_why(grants: str, problems: list[str]) -> None:
    assert route_problems(declaration(grants), "writer", state_route()) == problems


def test_privileges_held_through_an_inherited_role_count() -> None:
    doc = declaration(
        "",
        extra=f"""
inherits = ["base"]

[roles.base]
id = "r-base"
tier = "transactional"
connection_limit = 1
password = {{ env = "PW_BASE" }}
grants = [{EXACT}]
""",
    )
    assert route_problems(doc, "writer", state_route()) == []


WIDE = RouteConfig.model_validate(
    {
        "stream": "wide",
        "table": "ingest.wide",
        "kind": "table",
        "columns": [
            {"name": "at", "path": "/at", "type": "timestamptz"},
            {"name": "device", "path": "$identity", "type": "text"},
            {"name": "reading", "path": "/v", "type": "float8"},
        ],
    }
)


def test_a_table_route_needs_insert_on_the_table_or_on_every_column_it_writes() -> None:
    whole = declaration('{ table = "ingest.wide", privileges = ["INSERT"] }', tier="ingest")
    assert route_problems(whole, "writer", WIDE) == []
    columns = declaration(
        '{ table = "ingest.wide", privileges = ["INSERT"], columns = ["at", "device", "reading"] }',
        tier="ingest",
    )
    assert route_problems(columns, "writer", WIDE) == []
    partly = declaration(
        '{ table = "ingest.wide", privileges = ["INSERT"], columns = ["at"] }', tier="ingest"
    )
    assert route_problems(partly, "writer", WIDE) == [
        "role writer lacks INSERT on ingest.wide (device, reading): the route adds rows"
    ]
    # A table route asks nothing more than INSERT: no UPDATE, no SELECT.
    assert route_problems(whole, "writer", WIDE.model_copy(update={"dedup": True})) == []


def test_a_telemetry_route_needs_insert_on_telemetry_and_an_undeclared_role_nothing_else() -> None:
    telemetry = RouteConfig(stream="telemetry", table="ingest.telemetry")
    doc = declaration('{ table = "ingest.telemetry", privileges = ["INSERT"] }', tier="ingest")
    assert route_problems(doc, "writer", telemetry) == []
    assert route_problems(doc, "writer", state_route())[0] == (
        "role writer lacks INSERT on ingest.device_state: the route adds rows"
    )
    assert route_problems(doc, "nobody", telemetry) == ["role nobody is not declared"]


def built(doc: Declaration, route: RouteConfig) -> list[tuple[str, str | None]]:
    """(writing role, role feeding it) of each route `build_routes` makes of `route`."""
    config = load_config(EXAMPLE_CONFIG).model_copy(update={"routes": [route]})
    *routes, _ = build_routes(config, doc, lambda role, table: MemorySink())
    return [(r.role, r.for_role) for r in routes]


def test_routes_are_built_for_exactly_the_roles_the_checks_let_write_them() -> None:
    """One rule decides both: INSERT on the whole table or on every column a route writes."""
    telemetry = RouteConfig(stream="telemetry", table="ingest.telemetry")
    every = ", ".join(f'"{c}"' for c in COLUMNS)
    columns = declaration(
        f'{{ table = "ingest.telemetry", privileges = ["INSERT"], columns = [{every}] }}',
        tier="ingest",
    )
    assert built(columns, telemetry) == [("writer", None)]
    explicit = telemetry.model_copy(update={"role": "writer", "for_roles": ["writer"]})
    assert built(columns, explicit) == [("writer", "writer")]
    partly = declaration(
        '{ table = "ingest.telemetry", privileges = ["INSERT"], columns = ["ts", "identity"] }',
        tier="ingest",
    )
    assert built(partly, telemetry) == []
    with pytest.raises(ConfigError) as refused:
        built(partly, explicit)
    ((path, problem),) = refused.value.problems
    assert path == "routes[0].role"
    assert problem == route_problems(partly, "writer", telemetry)[0]
    assert "(metric, value, tags, received_at)" in problem
