"""The registry against real PostgreSQL: lifecycle, audit trail, errors, paging, counts, import."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from gateway.identities.importer import ImportFileError, import_file
from gateway.identities.model import (
    IdentityExistsError,
    IdentityNameError,
    IdentityRetiredError,
    InvalidIdentityError,
    Status,
    UnknownIdentityError,
    UnknownRoleError,
    validate_identity_name,
)
from gateway.identities.provisioning import ProvisionRule
from gateway.identities.registry import Registry, _page_sql
from gateway.migrate import migrate
from gateway.services.postgres import PostgresAddress

ROLES = [
    ("r-telemetry", "telemetry_ingest", "ingest", "telemetry_ingest_login", False),
    ("r-state", "state_writer", "transactional", "state_writer_login", False),
    ("r-old", "old_ingest", "ingest", "old_ingest_login", True),
]


async def prepare(conn: asyncpg.Connection) -> None:
    """Migrate and declare roles the way `gateway roles apply` leaves them."""
    await migrate(conn)
    await conn.executemany(
        "INSERT INTO gateway.roles (id, name, tier, login_role, removed_at) "
        "VALUES ($1, $2, $3, $4, CASE WHEN $5 THEN now() END)",
        ROLES,
    )


@pytest.fixture
def registry(conn: asyncpg.Connection) -> Registry:
    return Registry(conn, "alice")


async def audit_entries(conn: asyncpg.Connection, subject: str | None = None) -> list[Any]:
    rows = await conn.fetch(
        "SELECT actor, db_user, action, subject, before, after FROM gateway.audit_log "
        "WHERE $1::text IS NULL OR subject = $1 ORDER BY id",
        subject,
    )
    return [
        {
            **dict(row),
            "before": row["before"] and orjson.loads(row["before"]),
            "after": row["after"] and orjson.loads(row["after"]),
        }
        for row in rows
    ]


async def test_lifecycle_is_audited_with_who_what_before_after(
    registry: Registry, conn: asyncpg.Connection, database: PostgresAddress
) -> None:
    added = await registry.add("sensor-0042", "telemetry_ingest", attributes={"site": "berlin"})
    assert (added.name, added.kind, added.role, added.status) == (
        "sensor-0042",
        "device",
        "telemetry_ingest",
        "active",
    )
    assert added.attributes == {"site": "berlin"}
    assert added.retired_at is None and added.last_seen is None

    moved = await registry.assign("sensor-0042", "state_writer")
    assert moved.role == "state_writer"
    retired = await registry.retire("sensor-0042")
    assert retired.status == "retired" and retired.retired_at is not None

    entries = await audit_entries(conn)
    assert [(e["actor"], e["db_user"], e["action"], e["subject"]) for e in entries] == [
        ("alice", database.superuser, "identity.add", "sensor-0042"),
        ("alice", database.superuser, "identity.assign", "sensor-0042"),
        ("alice", database.superuser, "identity.retire", "sensor-0042"),
    ]
    add, assign, retire = entries
    assert add["before"] is None
    assert add["after"] == {
        "kind": "device",
        "role": "telemetry_ingest",
        "role_id": "r-telemetry",
        "status": "active",
        "attributes": {"site": "berlin"},
    }
    assert assign["before"] == {"role": "telemetry_ingest", "role_id": "r-telemetry"}
    assert assign["after"] == {"role": "state_writer", "role_id": "r-state"}
    assert retire["before"] == {"status": "active"}
    assert retire["after"]["status"] == "retired" and retire["after"]["retired_at"]

    details = await registry.show("sensor-0042")
    assert details.identity == retired
    assert [record.action for record in details.history] == [
        "identity.retire",
        "identity.assign",
        "identity.add",
    ]
    assert details.history[1].before == assign["before"]


async def test_assigning_the_same_role_changes_nothing(
    registry: Registry, conn: asyncpg.Connection
) -> None:
    await registry.add("svc-billing", "state_writer", kind="service")
    same = await registry.assign("svc-billing", "state_writer")
    assert same.role == "state_writer" and same.kind == "service"
    assert [e["action"] for e in await audit_entries(conn)] == ["identity.add"]


async def test_refusals_say_why_and_leave_no_trace(
    registry: Registry, conn: asyncpg.Connection
) -> None:
    with pytest.raises(UnknownRoleError) as unknown:
        await registry.add("sensor-1", "telemetry")
    message = str(unknown.value)
    assert "'telemetry'" in message
    assert "state_writer, telemetry_ingest" in message
    assert "old_ingest" not in message  # removed roles are not offered
    with pytest.raises(UnknownRoleError):
        await registry.add("sensor-1", "old_ingest")

    await registry.add("sensor-1", "telemetry_ingest")
    with pytest.raises(IdentityExistsError, match="'sensor-1' already exists"):
        await registry.add("sensor-1", "state_writer")
    with pytest.raises(UnknownRoleError):
        await registry.assign("sensor-1", "old_ingest")
    for action in (registry.retire, registry.show):
        with pytest.raises(UnknownIdentityError, match="unknown identity 'nobody'"):
            await action("nobody")
    with pytest.raises(UnknownIdentityError):
        await registry.assign("nobody", "state_writer")

    await registry.retire("sensor-1")
    with pytest.raises(IdentityRetiredError, match="already retired"):
        await registry.retire("sensor-1")
    with pytest.raises(IdentityRetiredError, match="cannot be assigned"):
        await registry.assign("sensor-1", "state_writer")

    with pytest.raises(IdentityNameError, match="'/'"):
        await registry.add("devices/sensor-2", "telemetry_ingest")
    with pytest.raises(InvalidIdentityError, match="kind"):
        await registry.add("sensor-2", "telemetry_ingest", kind="robot")
    with pytest.raises(InvalidIdentityError, match="JSON"):
        await registry.add("sensor-2", "telemetry_ingest", attributes={"when": object()})

    assert [e["action"] for e in await audit_entries(conn)] == ["identity.add", "identity.retire"]
    assert await registry.count() == 1


async def test_list_pages_by_name_with_filters_and_counts_follow_changes(
    registry: Registry, conn: asyncpg.Connection
) -> None:
    for number in range(30):
        role = "telemetry_ingest" if number % 3 else "state_writer"
        await registry.add(f"dev-{number:03d}", role)
    for number in (1, 2, 4):
        await registry.retire(f"dev-{number:03d}")
    await conn.execute("UPDATE gateway.identities SET role_id = 'r-old' WHERE name = 'dev-029'")

    telemetry = sorted(f"dev-{n:03d}" for n in range(29) if n % 3)
    pages: list[list[str]] = []
    after = None
    while True:
        page = await registry.list(role="telemetry_ingest", limit=7, after=after)
        if not page:
            break
        pages.append([identity.name for identity in page])
        after = page[-1].name
    assert [name for page in pages for name in page] == telemetry
    assert [len(page) for page in pages] == [7, 7, 5]
    assert all(identity.role == "telemetry_ingest" for identity in page)

    retired = await registry.list(role="telemetry_ingest", status="retired")
    assert [identity.name for identity in retired] == ["dev-001", "dev-002", "dev-004"]
    everyone = await registry.list(limit=1000)
    assert [identity.name for identity in everyone] == [f"dev-{n:03d}" for n in range(30)]
    assert [i.name for i in await registry.list(status="active", limit=3)] == [
        "dev-000",
        "dev-003",
        "dev-005",
    ]
    # A removed role's identities can still be listed (to move them elsewhere).
    assert [i.name for i in await registry.list(role="old_ingest")] == ["dev-029"]

    assert await registry.count() == 30
    assert await registry.count(role="telemetry_ingest") == len(telemetry)
    assert await registry.count(role="telemetry_ingest", status="retired") == 3
    assert await registry.count(status="active") == 27
    assert await registry.count(role="old_ingest") == 1
    await registry.assign("dev-003", "telemetry_ingest")
    assert await registry.count(role="state_writer") == 9
    assert await registry.count(role="telemetry_ingest", status="active") == len(telemetry) - 2

    with pytest.raises(UnknownRoleError):
        await registry.list(role="nope")
    with pytest.raises(UnknownRoleError):
        await registry.count(role="nope")


async def test_counts_match_count_star_after_mixed_changes(
    registry: Registry, conn: asyncpg.Connection
) -> None:
    await conn.execute(
        "INSERT INTO gateway.identities (name, role_id) "
        "SELECT 'bulk-' || g, CASE WHEN g % 2 = 0 THEN 'r-telemetry' ELSE 'r-state' END "
        "FROM generate_series(1, 500) g"
    )
    await conn.execute(
        "UPDATE gateway.identities SET status = 'retired', retired_at = now() "
        "WHERE name LIKE 'bulk-1%'"
    )
    await conn.execute("UPDATE gateway.identities SET role_id = 'r-old' WHERE name LIKE 'bulk-2%'")
    await conn.execute("DELETE FROM gateway.identities WHERE name LIKE 'bulk-3%'")
    await registry.add("one-more", "state_writer")
    kept = await conn.fetch(
        "SELECT role_id, status, n FROM gateway.identity_counts WHERE n <> 0 ORDER BY 1, 2"
    )
    actual = await conn.fetch(
        "SELECT role_id, status, count(*) AS n FROM gateway.identities GROUP BY 1, 2 ORDER BY 1, 2"
    )
    assert [tuple(row) for row in kept] == [tuple(row) for row in actual]


async def test_provision_is_idempotent_and_audited_once(
    database: PostgresAddress, conn: asyncpg.Connection
) -> None:
    rule = ProvisionRule(pattern="svc-*", role="state_writer", kind="service")
    others = [await asyncpg.connect(database.dsn) for _ in range(3)]
    try:
        # Pods seeing the same new identity at the same moment.
        results = await asyncio.gather(
            *(
                Registry(other, f"pod-{n}").provision("svc-billing", rule)
                for n, other in enumerate(others)
            )
        )
    finally:
        for other in others:
            await other.close()
    assert {(r.name, r.role, r.kind, r.status) for r in results} == {
        ("svc-billing", "state_writer", "service", "active")
    }
    entries = await audit_entries(conn, "svc-billing")
    assert len(entries) == 1
    assert entries[0]["action"] == "identity.provision"
    assert entries[0]["after"]["rule"] == "svc-*"
    assert entries[0]["after"]["role"] == "state_writer"

    registry = Registry(conn, "alice")
    await registry.retire("svc-billing")
    again = await registry.provision("svc-billing", rule)
    assert again.status == "retired"  # provisioning never revives a retired identity
    with pytest.raises(UnknownRoleError):
        await registry.provision("svc-other", ProvisionRule(pattern="*", role="old_ingest"))
    with pytest.raises(IdentityNameError):
        await registry.provision("svc+x", rule)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


async def test_import_csv_and_jsonl(
    tmp_path: Path, registry: Registry, conn: asyncpg.Connection
) -> None:
    csv_file = write(
        tmp_path / "fleet.csv",
        "name,role,kind,attributes\n"
        'sensor-1,telemetry_ingest,device,"{""site"": ""berlin""}"\n'
        "\n"
        "svc-1,state_writer,service,\n",
    )
    result = await import_file(conn, "alice", csv_file)
    assert (result.imported, result.skipped) == (2, 0)
    sensor = await registry.get("sensor-1")
    assert (sensor.role, sensor.kind, sensor.attributes) == (
        "telemetry_ingest",
        "device",
        {"site": "berlin"},
    )
    assert (await registry.get("svc-1")).kind == "service"

    # No extension: recognised by content.
    jsonl_file = write(
        tmp_path / "more",
        '{"name": "sensor-2", "role": "telemetry_ingest", "attributes": {"floor": 3}}\n'
        '{"name": "sensor-3", "role": "state_writer", "kind": "device"}\n',
    )
    assert (await import_file(conn, "bob", jsonl_file)).imported == 2
    assert (await registry.get("sensor-2")).attributes == {"floor": 3}

    entries = await audit_entries(conn, "sensor-2")
    assert [(e["actor"], e["action"]) for e in entries] == [("bob", "identity.import")]
    assert entries[0]["after"] == {
        "kind": "device",
        "role": "telemetry_ingest",
        "role_id": "r-telemetry",
        "status": "active",
        "attributes": {"floor": 3},
        "source": str(jsonl_file),
    }
    assert await registry.count() == 4


async def test_import_reports_every_bad_line_and_imports_nothing(
    tmp_path: Path, registry: Registry, conn: asyncpg.Connection
) -> None:
    await registry.add("taken", "telemetry_ingest")
    bad = write(
        tmp_path / "bad.csv",
        "name,role,kind\n"
        "good-1,telemetry_ingest,device\n"  # line 2: fine
        "bad/name,telemetry_ingest,device\n"  # 3
        "good-2,no_such_role,device\n"  # 4
        "good-3,telemetry_ingest,robot\n"  # 5
        "good-1,state_writer,device\n"  # 6: duplicate of line 2
        "taken,state_writer,device\n"  # 7: already registered
        "good-4,old_ingest\n"  # 8: wrong field count
        "good-5,old_ingest,device\n",  # 9: removed role
    )
    with pytest.raises(ImportFileError) as failure:
        await import_file(conn, "alice", bad)
    lines = {error.line: error.message for error in failure.value.errors}
    assert sorted(lines) == [3, 4, 5, 6, 7, 8, 9]
    assert "'/'" in lines[3]
    assert "unknown role 'no_such_role'" in lines[4]
    assert "robot" in lines[5]
    assert "already on line 2" in lines[6]
    assert "already exists" in lines[7]
    assert "expected 3 fields" in lines[8]
    assert "unknown role 'old_ingest'" in lines[9]
    message = str(failure.value)
    assert "7 bad lines, nothing was imported" in message
    assert "known roles: state_writer, telemetry_ingest" in message
    assert await registry.count() == 1
    assert len(await audit_entries(conn)) == 1


async def test_import_can_skip_existing(
    tmp_path: Path, registry: Registry, conn: asyncpg.Connection
) -> None:
    await registry.add("taken", "telemetry_ingest")
    file = write(
        tmp_path / "f.jsonl",
        '{"name":"taken","role":"state_writer"}\n{"name":"new","role":"state_writer"}\n',
    )
    result = await import_file(conn, "alice", file, skip_existing=True)
    assert (result.imported, result.skipped) == (1, 1)
    assert (await registry.get("taken")).role == "telemetry_ingest"  # left as it was
    assert [e["subject"] for e in await audit_entries(conn)] == ["taken", "new"]


async def test_import_of_100000_identities(
    tmp_path: Path, registry: Registry, conn: asyncpg.Connection
) -> None:
    file = tmp_path / "fleet.csv"
    with file.open("w") as out:
        out.write("name,role,attributes\n")
        for number in range(100_000):
            role = "telemetry_ingest" if number % 2 else "state_writer"
            out.write(f'sensor-{number:06d},{role},"{{""n"": {number}}}"\n')
    seen: list[tuple[str, int, int]] = []
    result = await import_file(conn, "alice", file, progress=lambda *report: seen.append(report))
    assert result.imported == 100_000
    assert await registry.count(role="telemetry_ingest") == 50_000
    assert (await registry.get("sensor-099999")).attributes == {"n": 99999}
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM gateway.audit_log WHERE action = 'identity.import'"
        )
        == 100_000
    )
    assert {phase for phase, _, _ in seen} == {"reading", "staging", "inserting"}
    assert all(done <= total for _, done, total in seen)


async def test_name_rule_agrees_with_the_database_check(conn: asyncpg.Connection) -> None:
    rng = random.Random(42)
    alphabet = "aZ09._:@=-+#/ $*é٣\u2028\n\t"
    samples = ["", "a" * 128, "a" * 129, "-a", "a-", "٣", "a\n"] + [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))) for _ in range(3000)
    ]
    # The CHECK as the database holds it, applied by the database's own regex engine.
    check = await conn.fetchval(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = 'gateway.identities'::regclass AND conname = 'identities_name_check'"
    )
    pattern = check.split("'")[1]
    rows = await conn.fetch("SELECT s, s ~ $2 AS ok FROM unnest($1::text[]) s", samples, pattern)
    for row in rows:
        try:
            validate_identity_name(row["s"])
        except IdentityNameError:
            assert not row["ok"], row["s"]
        else:
            assert row["ok"], row["s"]


@pytest.mark.parametrize(
    ("role", "status", "index"),
    [
        ("r-state", None, "identities_role_name"),
        ("r-state", "retired", "identities_role_name"),
        (None, "retired", "identities_retired_name"),
    ],
)
async def test_pages_read_an_index_range_not_the_table(
    conn: asyncpg.Connection, role: str | None, status: Status | None, index: str
) -> None:
    # Names of the listed role sort after everyone else's: a primary-key scan with a filter
    # would read all of those first (an estimate the planner cannot see through).
    await conn.execute(
        "INSERT INTO gateway.identities (name, role_id) "
        "SELECT 'a-' || g, 'r-telemetry' FROM generate_series(1, 20000) g "
        "UNION ALL SELECT 'z-' || g, 'r-state' FROM generate_series(1, 2000) g"
    )
    await conn.execute("ANALYZE gateway.identities")
    statuses: list[Status] = [status] if status else ["active", "retired"]
    sql = _page_sql(role is not None, statuses)
    arguments = ["", 100] + ([role] if role else [])
    # Generic plans (what a prepared statement ends up with) as well as custom ones.
    for mode in ("force_custom_plan", "force_generic_plan"):
        await conn.execute(f"SET plan_cache_mode = {mode}")
        plan = "\n".join(
            row[0] for row in await conn.fetch(f"EXPLAIN (COSTS OFF) {sql}", *arguments)
        )
        assert index in plan, plan
        assert "identities_pkey" not in plan and "Seq Scan on identities" not in plan, plan
    await conn.execute("RESET plan_cache_mode")
