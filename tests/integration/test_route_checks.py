"""Table and state routes checked against the real catalog before anything starts: each problem
with its path, and `gateway roles plan --config` refusing a configuration that has any."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from gateway import cli
from gateway.bootstrap import EXAMPLE_ROLES, bootstrap
from gateway.config import GatewayConfig, load_config
from gateway.roles.declaration import Declaration, parse_declaration
from gateway.route_checks import check_routes
from gateway.services.postgres import PostgresAddress

Conn = asyncpg.Connection

WIDE = """
CREATE TABLE ingest.wide (
    at timestamptz NOT NULL, device text NOT NULL, reading double precision, count bigint,
    small integer, ok boolean, note varchar(20), extra jsonb, id uuid,
    seen timestamptz NOT NULL DEFAULT now(), serial bigint GENERATED ALWAYS AS IDENTITY,
    must text NOT NULL
)
"""

# Every type by its short name: the catalog's long names are the same types.
WIDE_ROUTE = """
[[routes]]
stream = "wide"
table = "ingest.wide"
kind = "table"
columns = [
  { name = "at", path = "/at", type = "timestamptz" },
  { name = "device", path = "$identity", type = "text" },
  { name = "reading", path = "/reading", type = "float8" },
  { name = "count", path = "/count", type = "int8" },
  { name = "small", path = "/small", type = "int4" },
  { name = "ok", path = "/ok", type = "bool" },
  { name = "extra", path = "", type = "jsonb" },
  { name = "id", path = "/id", type = "uuid" },
  { name = "must", path = "/must", type = "text" },
]
"""

STATE_ROUTE = """
[[routes]]
stream = "state"
table = "ingest.device_state"
kind = "state"
columns = [
  { name = "identity", path = "$identity", type = "text" },
  { name = "state", path = "", type = "jsonb" },
  { name = "updated_at", path = "/ts", type = "timestamptz" },
]
"""

TELEMETRY_ROUTE = """
[[routes]]
stream = "telemetry"
table = "ingest.telemetry"
"""

# The example's roles, with what an upsert needs granted to the state writer, and the wide table.
GRANTS = """
tables = ["ingest.wide", "ingest.nokey"]

[roles.wide_writer]
id = "r-wide-writer"
tier = "ingest"
connection_limit = 1
password = { env = "PW_WIDE" }
grants = [{ table = "ingest.wide", privileges = ["INSERT"] }]

[roles.upserter]
id = "r-upserter"
tier = "transactional"
connection_limit = 1
password = { env = "PW_UPSERTER" }
grants = [
  { table = "ingest.device_state", privileges = ["INSERT"] },
  { table = "ingest.nokey", privileges = ["INSERT"] },
  { table = "ingest.device_state", privileges = ["UPDATE", "SELECT"] },
  { table = "ingest.nokey", privileges = ["UPDATE", "SELECT"] },
]
"""


@pytest.fixture
async def admin(database: PostgresAddress, role_passwords: dict[str, str]) -> AsyncIterator[Conn]:
    await bootstrap(database.dsn, actor="tests")
    conn = await asyncpg.connect(database.dsn)
    await conn.execute(WIDE)
    await conn.execute(
        "CREATE TABLE ingest.nokey (identity text, state jsonb, updated_at timestamptz)"
    )
    yield conn
    await conn.close()


def config(tmp_path: Path, text: str) -> GatewayConfig:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return load_config(path)


def declaration() -> Declaration:
    return parse_declaration(GRANTS)


async def test_a_route_that_fits_its_table_and_a_role_has_no_problems(
    admin: Conn, tmp_path: Path
) -> None:
    routes = config(tmp_path, TELEMETRY_ROUTE + WIDE_ROUTE + STATE_ROUTE)
    assert await check_routes(admin, routes, declaration()) == []


async def test_each_problem_is_named_with_its_path(admin: Conn, tmp_path: Path) -> None:
    wide = (
        WIDE_ROUTE.replace('"reading", path', '"vaule", path')
        .replace(
            '"count", path = "/count", type = "int8"', '"count", path = "/count", type = "int4"'
        )
        .replace('"ok", path = "/ok", type = "bool"', '"note", path = "/n", type = "text"')
        .replace('  { name = "must", path = "/must", type = "text" },\n', "")
    )
    missing = STATE_ROUTE.replace("ingest.device_state", "ingest.gone")
    no_key = STATE_ROUTE.replace("ingest.device_state", "ingest.nokey")
    routes = config(tmp_path, TELEMETRY_ROUTE + wide + missing + no_key)
    problems = await check_routes(admin, routes, declaration())
    assert problems[:5] == [
        ("routes[1].columns[2].name", 'table ingest.wide has no column "vaule"'),
        ("routes[1].columns[3].type", "column count is bigint, declared int4"),
        (
            "routes[1].columns[5].type",
            "column note is character varying(20), declared text (types must match exactly)",
        ),
        ("routes[1].columns", "misses NOT NULL column must"),
        ("routes[2].table", "table ingest.gone does not exist"),
    ]
    assert problems[5][0] == "routes[2]"
    assert problems[5][1].startswith("no role may write it: role wide_writer lacks INSERT on ")
    assert "role upserter lacks INSERT on ingest.gone: the route adds rows" in problems[5][1]
    assert problems[6:] == [
        (
            "routes[3].key",
            "ingest.nokey has no unique index or primary key on exactly (identity): an upsert "
            "needs one",
        )
    ]


async def test_a_deduplicated_route_needs_a_unique_index_on_what_it_writes(
    admin: Conn, tmp_path: Path
) -> None:
    dedup = WIDE_ROUTE.replace('kind = "table"', 'kind = "table"\ndedup = true')
    routes = config(tmp_path, TELEMETRY_ROUTE + dedup)
    assert await check_routes(admin, routes, declaration()) == [
        (
            "routes[1].dedup",
            "ingest.wide has no unique index on columns the route writes: a redelivered "
            "message would land twice",
        )
    ]
    await admin.execute("CREATE UNIQUE INDEX wide_id ON ingest.wide (device, id)")
    try:
        assert await check_routes(admin, routes, declaration()) == []
        # an index on a column the route never writes cannot tell its messages apart
        await admin.execute("DROP INDEX ingest.wide_id")
        await admin.execute("CREATE UNIQUE INDEX wide_serial ON ingest.wide (serial)")
        assert [path for path, _ in await check_routes(admin, routes, declaration())] == [
            "routes[1].dedup"
        ]
    finally:
        await admin.execute("DROP INDEX IF EXISTS ingest.wide_id")
        await admin.execute("DROP INDEX IF EXISTS ingest.wide_serial")


async def gateway(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The command line as a user runs it; it has its own event loop, so in a thread."""
    code = await asyncio.to_thread(cli.main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def test_roles_plan_refuses_a_configuration_with_problems_and_plans_a_good_one(
    admin: Conn, database: PostgresAddress, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        TELEMETRY_ROUTE + WIDE_ROUTE.replace('"/must", type = "text"', '"/m", type = "int8"')
    )
    dsn = tmp_path / "dsn"
    dsn.write_text(database.dsn)
    args = ["roles", "plan", "--dsn-file", str(dsn), "--roles", str(EXAMPLE_ROLES)]
    code, out, err = await gateway(capsys, *args, "--config", str(bad))
    assert code == 1
    assert out == ""
    lines = err.splitlines()
    assert f"gateway: {bad}: routes[1].columns[8].type: column must is text, declared int8" in lines
    assert f"gateway: {bad}: routes[1]: no role may write it: " in err
    good = tmp_path / "good.toml"
    telemetry_table = """
[[routes]]
stream = "readings"
table = "ingest.telemetry"
kind = "table"
columns = [
  { name = "ts", path = "/ts", type = "timestamptz" },
  { name = "identity", path = "$identity", type = "text" },
  { name = "metric", path = "/metric", type = "text" },
  { name = "value", path = "/value", type = "float8" },
]
"""
    good.write_text(TELEMETRY_ROUTE + telemetry_table)
    code, out, err = await gateway(capsys, *args, "--config", str(good))
    assert (code, err) == (0, "")
    # Without --config nothing is checked.
    code, _, err = await gateway(capsys, *args)
    assert (code, err) == (0, "")
