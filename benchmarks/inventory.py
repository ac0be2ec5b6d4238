"""A fleet of a million identities as code: plan and apply of an inventory that provisions it,
then of one that reassigns a tenth and drops a tenth (retired by absence). Starts its own
PostgreSQL; prints one JSON object.

    .venv/bin/python benchmarks/inventory.py [--identities 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from gateway.bootstrap import EXAMPLE_ROLES, bootstrap, example_passwords
from gateway.identities.inventory import apply_inventory, plan_inventory
from gateway.roles.declaration import load_declaration
from gateway.services.postgres import Postgres

SCOPE = "fleet"


def write(path: Path, count: int, *, changed: bool) -> None:
    """Every name once; in the changed version a tenth moves role and a tenth is gone."""
    with path.open("w") as out:
        out.write("name,role\n")
        for i in range(count):
            if changed and i % 10 == 9:
                continue
            role = "state_writer" if changed and i % 10 == 0 else "telemetry_ingest"
            out.write(f"dev-{i:07d},{role}\n")


async def timed(work: Any) -> tuple[Any, float]:
    started = time.monotonic()
    result = await work
    return result, round(time.monotonic() - started, 2)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--identities", type=int, default=1_000_000)
    count = parser.parse_args().identities
    doc = load_declaration(EXAMPLE_ROLES)
    example_passwords(doc)
    report: dict[str, Any] = {"benchmark": "inventory", "cpus": os.cpu_count(), "identities": count}
    with tempfile.TemporaryDirectory() as folder:
        first, second = Path(folder) / "v1.csv", Path(folder) / "v2.csv"
        write(first, count, changed=False)
        write(second, count, changed=True)
        async with Postgres() as postgres:
            await bootstrap(postgres.dsn, roles=doc)
            conn = await asyncpg.connect(postgres.dsn)
            try:
                for name, path in (("provision", first), ("change", second)):
                    plan, plan_s = await timed(plan_inventory(conn, path, SCOPE))
                    _, apply_s = await timed(
                        apply_inventory(conn, path, SCOPE, "bench", expect=plan.digest)
                    )
                    again, replan_s = await timed(plan_inventory(conn, path, SCOPE))
                    report[name] = {
                        "counts": plan.counts(),
                        "plan_s": plan_s,
                        "apply_s": apply_s,
                        "plan_after_apply_s": replan_s,
                        "converged": not again.changes,
                    }
            finally:
                await conn.close()
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    asyncio.run(main())
