"""Fleets as code: `gateway identities plan|apply --inventory` against real PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import orjson
import pytest

from gateway import cli
from gateway.db import ADMIN_DSN_ENV
from gateway.identities.importer import ImportFileError
from gateway.identities.inventory import apply_inventory, plan_inventory
from gateway.identities.model import IdentityError
from gateway.identities.registry import Registry
from gateway.services.postgres import PostgresAddress


def inventory(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("name,role\n" + "".join(f"{name},{role}\n" for name, role in rows))
    return path


async def states(conn: asyncpg.Connection, names: list[str]) -> dict[str, tuple[str, str]]:
    return await Registry(conn, "tests").states(names)


async def test_an_inventory_provisions_reassigns_and_retires_by_absence(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    first = inventory(
        tmp_path / "v1.csv",
        [("svc-a", "telemetry_ingest"), ("svc-b", "telemetry_ingest"), ("svc-c", "state_writer")],
    )
    plan = await plan_inventory(conn, first, "billing")
    assert plan.counts() == {"provision": 3, "reassign": 0, "retire": 0}
    await apply_inventory(conn, first, "billing", "deploy", expect=plan.digest)
    assert (await plan_inventory(conn, first, "billing")).changes == ()  # converged

    second = inventory(tmp_path / "v2.csv", [("svc-a", "state_writer"), ("svc-c", "state_writer")])
    plan = await plan_inventory(conn, second, "billing")
    assert [str(c) for c in plan.changes] == [
        "reassign svc-a: role telemetry_ingest -> state_writer",
        "retire svc-b (role telemetry_ingest): no longer in the inventory",
    ]
    await apply_inventory(conn, second, "billing", "deploy", expect=plan.digest)
    assert await states(conn, ["svc-a", "svc-b", "svc-c"]) == {
        "svc-a": ("active", "state_writer"),
        "svc-b": ("retired", "telemetry_ingest"),
        "svc-c": ("active", "state_writer"),
    }
    actions = [
        row["action"]
        for row in await conn.fetch(
            "SELECT action FROM gateway.audit_log WHERE action LIKE 'identity.inventory.%' "
            "ORDER BY id"
        )
    ]
    assert actions.count("identity.inventory.provision") == 3
    assert actions[-2:] == ["identity.inventory.assign", "identity.inventory.retire"]

    # Decommissioned: an empty inventory retires the whole scope, and only it.
    await Registry(conn, "tests").add("other-1", "telemetry_ingest")
    empty = inventory(tmp_path / "gone.csv", [])
    await apply_inventory(conn, empty, "billing", "deploy")
    found = await states(conn, ["svc-a", "svc-c", "other-1"])
    assert found["svc-a"][0] == found["svc-c"][0] == "retired"
    assert found["other-1"][0] == "active"


async def test_an_inventory_governs_only_its_own_scope(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    await Registry(conn, "tests").add("handmade-1", "telemetry_ingest")
    await apply_inventory(
        conn, inventory(tmp_path / "a.csv", [("svc-x", "telemetry_ingest")]), "alpha", "deploy"
    )
    # Another scope may neither take over its identities nor hand-made ones ...
    taking = inventory(
        tmp_path / "b.csv", [("svc-x", "telemetry_ingest"), ("handmade-1", "telemetry_ingest")]
    )
    with pytest.raises(ImportFileError) as caught:
        await plan_inventory(conn, taking, "beta")
    text = str(caught.value)
    assert "line 2" in text and "scope 'alpha'" in text
    assert "line 3" in text and "no scope" in text
    # ... nor list a retired one back, nor an unknown role, nor a name twice.
    await apply_inventory(conn, inventory(tmp_path / "none.csv", []), "alpha", "deploy")
    back = inventory(
        tmp_path / "c.csv",
        [("svc-x", "telemetry_ingest"), ("svc-y", "no_such_role"), ("svc-z", "telemetry_ingest"),
         ("svc-z", "telemetry_ingest")],
    )  # fmt: skip
    with pytest.raises(ImportFileError) as caught:
        await plan_inventory(conn, back, "alpha")
    assert "unknown role 'no_such_role'" in str(caught.value)
    assert "'svc-z' is already on line 4" in str(caught.value)
    back = inventory(tmp_path / "d.csv", [("svc-x", "telemetry_ingest")])
    with pytest.raises(ImportFileError, match="retirement is final"):
        await plan_inventory(conn, back, "alpha")


async def test_apply_refuses_a_plan_that_changed_since_review(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    path = inventory(tmp_path / "v.csv", [("svc-r", "telemetry_ingest")])
    reviewed = (await plan_inventory(conn, path, "review")).digest
    inventory(path, [("svc-r", "telemetry_ingest"), ("svc-s", "telemetry_ingest")])
    with pytest.raises(IdentityError, match="changed since it was reviewed"):
        await apply_inventory(conn, path, "review", "deploy", expect=reviewed)
    assert await states(conn, ["svc-r", "svc-s"]) == {}  # nothing half-applied


async def test_the_command_line_plans_and_applies_with_a_digest(
    database: PostgresAddress,
    conn: asyncpg.Connection,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ADMIN_DSN_ENV, database.dsn)
    path = inventory(tmp_path / "fleet.csv", [("meter-1", "telemetry_ingest")])
    args = ["--inventory", str(path), "--scope", "meters"]
    code = await asyncio.to_thread(cli.main, ["identities", "plan", *args, "--json"])
    planned = orjson.loads(capsys.readouterr().out)
    assert code == 2 and planned["counts"]["provision"] == 1
    code = await asyncio.to_thread(
        cli.main, ["identities", "apply", *args, "--expect", planned["digest"]]
    )
    assert code == 0, capsys.readouterr().err
    code = await asyncio.to_thread(cli.main, ["identities", "plan", *args])
    assert code == 0 and "no changes" in capsys.readouterr().out
