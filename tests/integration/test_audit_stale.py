"""`gateway audit` finds stale identities of every tier, stricter for privileged tiers, counts
them all per tier and pages through them instead of stopping at a cap."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest

from gateway.bootstrap import bootstrap
from gateway.services.postgres import Postgres

from .conftest import EXAMPLE_ROLES
from .databases import own_cluster

# name prefix, role id, days since created (never seen), how many
PLANTED = [
    ("sensor-old-", "r-telemetry-ingest", 40, 1203),
    ("sensor-new-", "r-telemetry-ingest", 1, 2),
    ("state-old-", "r-state-writer", 31, 3),
    ("reader-old-", "r-analytics-reader", 10, 2),
    ("auditor-old-", "r-auditor", 8, 1),
    ("admin-recent-", "r-gateway-admin", 3, 1),
]


@pytest.fixture
async def planted(role_passwords: dict[str, str]) -> AsyncIterator[Postgres]:
    async with own_cluster() as server:  # audit findings are about cluster-wide roles
        await bootstrap(server.dsn, actor="tests")
        conn = await asyncpg.connect(server.dsn)
        try:
            for prefix, role_id, days, count in PLANTED:
                await conn.execute(
                    "INSERT INTO gateway.identities (name, role_id, created_at) "
                    "SELECT $1 || lpad(i::text, 4, '0'), $2, now() - make_interval(days => $3) "
                    "FROM generate_series(1, $4) i",
                    prefix,
                    role_id,
                    days,
                    count,
                )
        finally:
            await conn.close()
        yield server


async def audit(server: Postgres, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway.cli", "audit", "--roles", str(EXAMPLE_ROLES), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "GATEWAY_ADMIN_DSN": server.dsn},
        timeout=120,
        check=False,
    )


async def report(server: Postgres, *args: str) -> dict[str, Any]:
    done = await audit(server, "--json", *args)
    assert done.stderr == "", done.stderr
    assert done.returncode == 3
    parsed: dict[str, Any] = orjson.loads(done.stdout)
    return parsed


def stale_names(found: dict[str, Any]) -> list[str]:
    return [f["subject"] for f in found["findings"] if f["check"] == "stale_identity"]


async def test_every_tier_is_counted_and_paged_without_a_silent_cap(planted: Postgres) -> None:
    first = await report(planted)
    tiers = first["stale"]["tiers"]
    assert {tier: t["total"] for tier, t in tiers.items()} == {
        "ingest": 1203,
        "transactional": 3,
        "reader": 2,
        "auditor": 1,
        "admin": 0,
    }
    assert {tier: t["after_days"] for tier, t in tiers.items()} == {
        "ingest": 30,
        "transactional": 30,
        "reader": 7,
        "auditor": 7,
        "admin": 7,
    }
    names = stale_names(first)
    assert len(names) == 1000 == first["stale"]["shown"]
    assert first["stale"]["next_after"] == names[-1]
    totals = {f["subject"]: f for f in first["findings"] if f["check"] == "stale_identities_total"}
    assert set(totals) == {"ingest", "transactional", "reader", "auditor"}
    assert "1203 active identities of tier ingest" in totals["ingest"]["message"]
    assert f"next page: --after {names[-1]}" in totals["ingest"]["message"]

    seen = list(names)
    after = first["stale"]["next_after"]
    while after is not None:
        page = await report(planted, "--limit", "150", "--after", after)
        seen += stale_names(page)
        assert page["stale"]["tiers"]["ingest"]["total"] == 1203  # every page counts them all
        after = page["stale"]["next_after"]
    assert len(seen) == len(set(seen)) == 1203 + 3 + 2 + 1
    assert seen == sorted(seen)
    assert not any(name.startswith(("sensor-new-", "admin-recent-")) for name in seen)


async def test_privileged_tiers_are_stricter_and_rank_higher(planted: Postgres) -> None:
    found = await report(planted, "--limit", "2000")
    severity = {f["subject"]: f["severity"] for f in found["findings"]}
    assert severity["reader-old-0001"] == severity["auditor-old-0001"] == "medium"
    assert severity["sensor-old-0001"] == severity["state-old-0001"] == "low"

    relaxed = await report(planted, "--limit", "2000", "--stale-after-privileged", "30")
    assert relaxed["stale"]["tiers"]["reader"]["total"] == 0
    assert not any(name.startswith(("reader-", "auditor-")) for name in stale_names(relaxed))

    stricter = await report(planted, "--limit", "2000", "--stale-after-privileged", "2")
    assert stricter["stale"]["tiers"]["admin"]["total"] == 1
    assert "admin-recent-0001" in stale_names(stricter)


async def test_text_output_names_each_identity_and_the_totals(planted: Postgres) -> None:
    done = await audit(planted, "--limit", "5")
    assert done.returncode == 3, done.stderr
    lines = done.stdout.splitlines()
    for name in ["auditor-old-0001", "reader-old-0001", "reader-old-0002", "sensor-old-0001"]:
        assert any(f"identity {name} is active on role" in line for line in lines), name
    summary = lines[-1]
    assert summary.startswith("Stale identities per tier: ingest 1203 (> 30 days)")
    assert "reader 2 (> 7 days)" in summary and "admin 0 (> 7 days)" in summary
    assert summary.endswith("next page: --after sensor-old-0002")


async def test_limit_must_be_positive(planted: Postgres) -> None:
    done = await audit(planted, "--limit", "0")
    assert done.returncode == 2 and "must be at least 1" in done.stderr
