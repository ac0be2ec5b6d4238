"""`gateway audit` finds roles outside the declaration that reach managed data, with the path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gateway.bootstrap import bootstrap
from gateway.services.postgres import Postgres

from .conftest import EXAMPLE_ROLES
from .databases import own_cluster
from .test_audit import audit

SHADOW = {"shadow_grant", "shadow_member", "shadow_predefined", "shadow_superuser"}
SHADOW |= {"undeclared_superuser"}


@pytest.fixture
async def governed_cluster(role_passwords: dict[str, str]) -> AsyncIterator[Postgres]:
    async with own_cluster() as server:  # the planted roles are cluster-wide
        await bootstrap(server.dsn, actor="tests")
        yield server


def shadow(report: dict[str, Any]) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """(check, subject) -> [(severity, message)] for the shadow-access findings only."""
    found: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for f in report["findings"]:
        if f["check"] in SHADOW:
            found.setdefault((f["check"], f["subject"]), []).append((f["severity"], f["message"]))
    return found


def one(found: dict[tuple[str, str], list[tuple[str, str]]], check: str, subject: str) -> str:
    """The severity of the single finding, after checking its message names `subject`."""
    [(severity, message)] = found[(check, subject)]
    assert subject in message
    return severity


async def test_clean_cluster_has_no_shadow_access(governed_cluster: Postgres) -> None:
    _, report = await audit(governed_cluster)
    assert shadow(report) == {}


async def test_undeclared_login_with_all_data_roles_is_high(governed_cluster: Postgres) -> None:
    conn = await asyncpg.connect(governed_cluster.dsn)
    try:
        await conn.execute(
            """
            INSERT INTO gateway.identities (name, role_id, status, retired_at)
            VALUES ('sensor-gone', 'r-telemetry-ingest', 'retired', now());
            CREATE ROLE rogue LOGIN CONNECTION LIMIT 1 PASSWORD 'rogue-secret';
            GRANT pg_read_all_data, pg_write_all_data TO rogue;
            """
        )
    finally:
        await conn.close()
    # The way in is real: the role reads the registry and un-retires an identity unrecorded.
    rogue = await asyncpg.connect(governed_cluster.address.dsn_for("rogue", "rogue-secret"))
    try:
        assert await rogue.fetchval("SELECT count(*) FROM gateway.identities") == 1
        await rogue.execute(
            "UPDATE gateway.identities SET status = 'active', retired_at = NULL "
            "WHERE name = 'sensor-gone'"
        )
    finally:
        await rogue.close()

    code, report = await audit(governed_cluster)
    assert code == 3
    found = shadow(report)
    by_severity = dict(found[("shadow_predefined", "rogue")])
    assert by_severity["high"] == (
        "undeclared LOGIN role rogue may write every table, the registry included, as a member "
        "of pg_write_all_data (through rogue -> pg_write_all_data)"
    )
    assert "pg_read_all_data" in by_severity["medium"]


async def test_each_kind_of_shadow_access_with_its_path(
    governed_cluster: Postgres, tmp_path: Path
) -> None:
    conn = await asyncpg.connect(governed_cluster.dsn)
    try:
        await conn.execute(
            """
            CREATE ROLE files NOLOGIN;
            GRANT pg_execute_server_program TO files;
            CREATE ROLE operator_x LOGIN CONNECTION LIMIT 1;
            GRANT files TO operator_x;

            CREATE ROLE helpers NOLOGIN;
            GRANT SELECT ON gateway.identities TO helpers;
            CREATE ROLE analyst LOGIN CONNECTION LIMIT 1;
            GRANT helpers TO analyst;

            CREATE ROLE fixer LOGIN CONNECTION LIMIT 1;
            GRANT UPDATE ON ingest.device_state TO fixer;
            CREATE ROLE caller LOGIN CONNECTION LIMIT 1;
            GRANT EXECUTE ON FUNCTION gateway.identity_roles_changed() TO caller;

            CREATE ROLE sidecar LOGIN CONNECTION LIMIT 1;
            GRANT analytics_reader TO sidecar;
            CREATE ROLE bridge NOLOGIN;
            GRANT state_writer TO bridge;
            CREATE ROLE batch_job LOGIN CONNECTION LIMIT 1;
            GRANT bridge TO batch_job;

            CREATE ROLE climber LOGIN CONNECTION LIMIT 1;
            GRANT postgres TO climber;
            CREATE ROLE shadow_admin SUPERUSER LOGIN;
            CREATE ROLE dormant_root SUPERUSER NOLOGIN;
            CREATE ROLE borrower LOGIN CONNECTION LIMIT 1;
            GRANT dormant_root TO borrower;
            """
        )
    finally:
        await conn.close()
    code, report = await audit(governed_cluster)
    assert code == 3
    found = shadow(report)
    assert one(found, "shadow_predefined", "operator_x") == "high"
    assert "(through operator_x -> files -> pg_execute_server_program)" in str(found)
    assert one(found, "shadow_predefined", "files") == "high"
    assert one(found, "shadow_grant", "analyst") == "medium"
    [(_, message)] = found[("shadow_grant", "analyst")]
    assert message == (
        "undeclared LOGIN role analyst holds SELECT on gateway.identities in the managed "
        "schemas (through analyst -> helpers)"
    )
    assert one(found, "shadow_grant", "fixer") == "high"
    assert "UPDATE on ingest.device_state in the managed schemas (directly)" in str(found)
    assert one(found, "shadow_grant", "caller") == "high"  # runs as the function's owner
    assert one(found, "shadow_member", "sidecar") == "medium"  # a reader's grants only read
    assert one(found, "shadow_member", "batch_job") == "high"
    assert "(through batch_job -> bridge -> state_writer)" in str(found)
    assert one(found, "shadow_member", "bridge") == "high"
    assert one(found, "shadow_superuser", "climber") == "high"
    assert one(found, "undeclared_superuser", "shadow_admin") == "high"
    # Nobody logs in as a NOLOGIN superuser: its members are the way in.
    assert ("undeclared_superuser", "dormant_root") not in found
    assert one(found, "shadow_superuser", "borrower") == "high"
    # A NOLOGIN group's own grants are plan drift, reported there, not here.
    assert ("shadow_grant", "helpers") not in found

    # A superuser the operator declares is expected.
    text = EXAMPLE_ROLES.read_text().replace(
        "version = 1\n", 'version = 1\nsuperusers = ["postgres", "shadow_admin"]\n', 1
    )
    declared = tmp_path / "roles.toml"
    declared.write_text(text)
    _, report = await audit(governed_cluster, "--roles", str(declared))
    assert ("undeclared_superuser", "shadow_admin") not in shadow(report)
    assert ("shadow_superuser", "climber") in shadow(report)
