"""Mosquitto accounts at fleet scale: live creation through the dynamic-security plugin, a bulk
load into its file while the broker is stopped (directly, and through the registry with
`gateway brokers apply --dynsec-file`), and retiring one device among 100,000. Each device is
what production makes: an account bound to its name and a role of its own (its one ACL).

The plugin rewrites its whole file after every command, so live creation slows as the fleet
grows; the live figures are measured at growing sizes and extrapolated, never run to 100,000.
Starts its own brokers; prints one JSON object.

    .venv/bin/python benchmarks/mqtt_accounts.py [--live 500 2000] [--bulk 100000] [--retires 5]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import secrets
import statistics
import time
from typing import Any

import asyncpg
import mqtt5
import orjson
from _harness import phase

from gateway.bootstrap import EXAMPLE_ROLES, bootstrap, example_passwords
from gateway.config import BrokersConfig, MosquittoAccountsConfig
from gateway.identities.accounts import device_role, device_role_acls
from gateway.identities.dynsec import Dynsec, NewAccount
from gateway.identities.dynsec_file import write_accounts, write_roles
from gateway.identities.reconcile import sync_accounts
from gateway.roles.declaration import load_declaration
from gateway.services.mosquitto import Mosquitto, MqttUser
from gateway.services.postgres import Postgres

PASSWORD = "bench-device-secret"


def fleet(first: int, stop: int) -> list[NewAccount]:
    names = [f"dev-{i:06d}" for i in range(first, stop)]
    return [NewAccount(name, PASSWORD, name, roles=(device_role(name),)) for name in names]


def roles(accounts: list[NewAccount]) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    """Each device's own role, as `brokers apply` makes it."""
    config = MosquittoAccountsConfig()
    return [(device_role(a.username), device_role_acls(config, a.username)) for a in accounts]


async def connect(broker: Mosquitto, user: MqttUser) -> tuple[Any, Any] | None:
    """A logged-in bare session, or None when the broker refused it."""
    reader, writer = await asyncio.open_connection(broker.host, broker.port)
    writer.write(
        mqtt5.ConnectPacket(
            user.username, username=user.username, password=user.password.encode()
        ).write()
    )
    data = await reader.read(1024)
    connack, _ = mqtt5.read(memoryview(data)) if data else (None, 0)
    if isinstance(connack, mqtt5.ConnAckPacket) and connack.reason_code == 0:
        return reader, writer
    writer.close()
    return None


async def first_login(broker: Mosquitto, user: MqttUser, timeout: float = 300) -> tuple[Any, Any]:
    """The broker says nothing when its plugin has read the file: try until let in."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        session = await connect(broker, user)
        if session is not None:
            return session
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{user.username} was not let in within {timeout:g}s")


async def live(sizes: list[int]) -> dict[str, Any]:
    """Create devices (role, then account) through $CONTROL until each size is reached;
    seconds per device."""
    steps = []
    async with (
        Mosquitto() as broker,
        phase("live") as info,
        Dynsec(broker.accounts_config()) as dynsec,
    ):
        have = 0
        for size in sorted(sizes):
            started = time.monotonic()
            devices = fleet(have, size)
            await dynsec.create_roles(roles(devices))
            await dynsec.create(devices)
            seconds = time.monotonic() - started
            steps.append(
                {
                    "fleet_after": size,
                    "created": size - have,
                    "seconds": round(seconds, 2),
                    "ms_per_account": round(1000 * seconds / (size - have), 2),
                    "file_kb": broker.dynsec_file.stat().st_size // 1024,
                }
            )
            have = size
    # Each command rewrites the file, whose size grows with the fleet: time per account grows
    # linearly, so creating a fleet of n costs about a*n + b*n^2. Fit it to the last two steps.
    (s1, s2) = steps[-2:]
    m1 = (steps[-3]["fleet_after"] if len(steps) > 2 else 0) + s1["created"] / 2
    m2 = s1["fleet_after"] + s2["created"] / 2
    slope = (s2["ms_per_account"] - s1["ms_per_account"]) / (m2 - m1)  # ms per account per account
    base = s1["ms_per_account"] - slope * m1
    n = 100_000
    estimate = (base * n + slope * n * n / 2) / 1000
    return {
        "steps": steps,
        "ms_per_account_growth_per_1000": round(slope * 1000, 3),
        "extrapolated_100k_live_hours": round(estimate / 3600, 1),
        "phase": info,
    }


async def bulk(count: int, retires: int) -> dict[str, Any]:
    """Write `count` devices into a stopped broker's file, start it, then retire devices."""
    async with Mosquitto() as broker:
        async with phase("bulk") as info:
            await broker.stop()
            devices = fleet(0, count)
            started = time.monotonic()
            roles_written = write_roles(broker.dynsec_file, roles(devices))
            roles_s = time.monotonic() - started
            written = write_accounts(broker.dynsec_file, devices)
            write_s = time.monotonic() - started
            started = time.monotonic()
            await broker.start()
            listening_s = time.monotonic() - started
            probe = MqttUser(f"dev-{count - 1:06d}", PASSWORD)
            session = await first_login(broker, probe)
            login_s = time.monotonic() - started
            session[1].close()
        result: dict[str, Any] = {
            "accounts": written,
            "roles": roles_written,
            "write_roles_s": round(roles_s, 2),
            "write_file_s": round(write_s, 2),
            "file_mb": round(broker.dynsec_file.stat().st_size / 1e6, 1),
            "start_to_listening_s": round(listening_s, 2),
            "start_to_first_login_s": round(login_s, 2),
            "phase": info,
        }
        async with phase("retire") as info:
            kicks, replies = [], []
            async with Dynsec(broker.accounts_config()) as dynsec:
                for i in range(retires):
                    user = MqttUser(f"dev-{i:06d}", PASSWORD)
                    reader, writer = await first_login(broker, user)
                    started = time.monotonic()
                    done = asyncio.create_task(dynsec.set_disabled([user.username], True))
                    while await reader.read(1024):
                        pass
                    kicks.append(time.monotonic() - started)
                    await done
                    replies.append(time.monotonic() - started)
                    writer.close()
                    assert await connect(broker, user) is None, "a retired device logged in"
        result["retire"] = {
            "runs": retires,
            "to_disconnect_s_median": round(statistics.median(kicks), 3),
            "to_reply_s_median": round(statistics.median(replies), 3),
            "to_disconnect_s": [round(k, 3) for k in kicks],
            "to_reply_s": [round(r, 3) for r in replies],
            "phase": info,
        }
        return result


async def registry(count: int) -> dict[str, Any]:
    """A fleet registered, then given its accounts by `brokers apply --dynsec-file`: the
    product's own path, planning against the registry and hashing generated passwords."""
    doc = load_declaration(EXAMPLE_ROLES)
    example_passwords(doc)
    names = [f"reg-{i:06d}" for i in range(count)]
    async with Postgres() as postgres, Mosquitto() as broker, phase("registry") as info:
        started = time.monotonic()
        await bootstrap(postgres.dsn, roles=doc, identities=names)
        register_s = time.monotonic() - started
        await broker.stop()
        out = broker.directory / "credentials.csv"
        conn = await asyncpg.connect(postgres.dsn)
        try:
            started = time.monotonic()
            plan = await sync_accounts(
                conn,
                BrokersConfig(mosquitto=broker.accounts_config()),
                "bench",
                names=None,
                supplied={},
                credentials_out=out,
                dynsec_file=broker.dynsec_file,
            )
            apply_s = time.monotonic() - started
        finally:
            await conn.close()
        started = time.monotonic()
        await broker.start()
        with out.open() as handle:
            rows = list(csv.DictReader(handle))
        session = await first_login(broker, MqttUser(rows[-1]["name"], rows[-1]["password"]))
        login_s = time.monotonic() - started
        session[1].close()
    return {
        "identities": count,
        "register_s": round(register_s, 2),
        "brokers_apply_dynsec_file_s": round(apply_s, 2),
        "accounts_created": sum(1 for c in plan.actions if c.action == "create"),
        "start_to_first_login_s": round(login_s, 2),
        "phase": info,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--live", type=int, nargs="+", default=[500, 1000, 2000])
    parser.add_argument("--bulk", type=int, default=100_000)
    parser.add_argument("--retires", type=int, default=5)
    args = parser.parse_args()
    report = {
        "benchmark": "mqtt_accounts",
        "cpus": os.cpu_count(),
        "run": secrets.token_hex(3),
        "live": await live(args.live),
        "bulk": await bulk(args.bulk, args.retires),
        "registry": await registry(args.bulk),
    }
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    asyncio.run(main())
