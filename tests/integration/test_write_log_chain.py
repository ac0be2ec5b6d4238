"""Each batch's write-log entry is stamped and chained by the server: an ingest login cannot log
writes of its choosing, and an entry edited or deleted by a superuser is named by verify."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from gateway import pgtime
from gateway.contracts import Table
from gateway.pgtime import use_integer_timestamps
from gateway.services.postgres import Postgres
from gateway.sinks.postgres import PostgresSink
from gateway.trail_verify import verify

DENIED = asyncpg.InsufficientPrivilegeError
COLUMNS = ("ts", "identity", "metric", "value", "tags", "received_at")
TELEMETRY = Table("ingest", "telemetry", COLUMNS)
APPEND = "SELECT gateway.append_write_log($1, $2, 1, 1, '{}'::jsonb, NULL, NULL, 'x')"
INGEST_LOGIN = "telemetry_ingest_login"


@pytest.fixture
async def ingest(governed: Postgres, role_passwords: dict[str, str]) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(
        governed.address.dsn_for(INGEST_LOGIN, role_passwords[INGEST_LOGIN]),
        min_size=4,
        max_size=4,
        init=use_integer_timestamps,
    )
    yield pool
    await pool.close()


def batch(n: int, size: int = 20) -> list[tuple[object, ...]]:
    now = pgtime.now()
    return [(now, f"chain-{n}", "temp", float(i), "{}", now) for i in range(size)]


async def test_an_ingest_login_logs_only_its_own_writes(
    governed: Postgres, ingest: asyncpg.Pool
) -> None:
    async with ingest.acquire() as conn:
        with pytest.raises(DENIED):
            await conn.execute(
                "INSERT INTO gateway.write_log (role, target, rows, identities, positions, "
                "checksum) VALUES ('telemetry_ingest', 'ingest.telemetry', 1, 1, '{}', 'x')"
            )
        # a role it is not a member of, a table it may not write
        for role, target in [
            ("state_writer", "ingest.telemetry"),
            ("telemetry_ingest", "ingest.device_state"),
            ("telemetry_ingest", "gateway.identities"),
        ]:
            with pytest.raises(DENIED, match="permission denied to log a write"):
                await conn.fetchval(APPEND, role, target)
        entry = await conn.fetchval(APPEND, "telemetry_ingest", "ingest.telemetry")
        with pytest.raises(DENIED):  # nor read the log
            await conn.fetchval("SELECT count(*) FROM gateway.write_log")
    admin = await asyncpg.connect(governed.dsn)
    try:
        row = await admin.fetchrow(
            "SELECT db_user, chain, at > now() - interval '1 minute' AS now FROM gateway.write_log"
            " WHERE id = $1",
            entry,
        )
    finally:
        await admin.close()
    assert dict(row) == {
        "db_user": INGEST_LOGIN,
        "chain": "telemetry_ingest ingest.telemetry",
        "now": True,
    }


async def test_concurrent_batches_of_one_route_make_one_unbroken_chain(
    governed: Postgres, ingest: asyncpg.Pool
) -> None:
    sink = PostgresSink("telemetry_ingest", TELEMETRY, ingest)
    outcomes = await asyncio.gather(*(sink.write(batch(n), {"n": n}) for n in range(40)))
    assert [o.written for o in outcomes] == [20] * 40
    admin = await asyncpg.connect(governed.dsn)
    try:
        breaks, counts = await verify(admin)
        assert breaks == []
        assert counts["gateway.write_log"] >= 40
        links = await admin.fetch(
            "SELECT prev_hash, hash FROM gateway.write_log "
            "WHERE chain = 'telemetry_ingest ingest.telemetry' ORDER BY id"
        )
        assert [link["prev_hash"] for link in links[1:]] == [link["hash"] for link in links[:-1]]
    finally:
        await admin.close()


async def test_verify_names_an_entry_edited_and_one_deleted_by_a_superuser(
    governed: Postgres, ingest: asyncpg.Pool
) -> None:
    sink = PostgresSink("telemetry_ingest", TELEMETRY, ingest)
    for n in range(5):
        assert (await sink.write(batch(n), {"n": n})).written == 20
    admin = await asyncpg.connect(governed.dsn)
    try:
        ids = [
            r["id"]
            for r in await admin.fetch(
                "SELECT id FROM gateway.write_log WHERE positions ? 'n' ORDER BY id DESC LIMIT 5"
            )
        ][::-1]
        assert (await verify(admin))[0] == []
        async with admin.transaction():
            await admin.execute("ALTER TABLE gateway.write_log DISABLE TRIGGER USER")
            await admin.execute("UPDATE gateway.write_log SET rows = 2000 WHERE id = $1", ids[1])
            await admin.execute("DELETE FROM gateway.write_log WHERE id = $1", ids[3])
            await admin.execute("ALTER TABLE gateway.write_log ENABLE TRIGGER USER")
        breaks, _ = await verify(admin)
    finally:
        await admin.close()
    found = {(b.number, b.problem.split(":")[0]) for b in breaks}
    assert found == {(ids[1], "altered"), (ids[4], f"does not follow row {ids[2]}")}
    assert {(b.table, b.chain) for b in breaks} == {
        ("gateway.write_log", "telemetry_ingest ingest.telemetry")
    }
    assert "(chain telemetry_ingest ingest.telemetry)" in str(breaks[0])
