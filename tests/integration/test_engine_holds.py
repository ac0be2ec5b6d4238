"""The engine holds, against the real PostgreSQL and Mosquitto, whatever a sender or a fault does.

A flood of bad messages stores a bounded number of whole reject records and counts the rest; a
redelivered reject adds no second record; a table refusing every write sends its messages to
rejects whole while the other routes flow, and takes writes again once fixed; an unforeseen
error in a source's intake restarts it, while refused credentials still end the gateway; a
slow table holds no more bytes than the configured bound.
"""

from __future__ import annotations

import asyncio
import inspect
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

import gateway.pipeline
from gateway.activity import Activity
from gateway.app import Gateway
from gateway.batching import BatchPolicy
from gateway.config import (
    BatchingConfig,
    DatabaseConfig,
    GatewayConfig,
    LimitsConfig,
    RouteConfig,
)
from gateway.contracts import Sink, Table
from gateway.decoder import DecodeLimits
from gateway.identities.cache import CachedIdentity
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.pools import RolePools
from gateway.reject_budget import OVERFLOW, RejectBudget
from gateway.roles.apply import apply_roles
from gateway.roles.declaration import load_declaration, parse_declaration
from gateway.routes import build_routes, writer_roles
from gateway.sinks.postgres import PostgresSink
from gateway.sources.memory import MemoryBroker, MemorySource

from .stack import EXAMPLE_ROLES, GatewayProcess, Stack, publish, reading

__all__: list[str] = []

FLOODER = "hold-flooder"
BYSTANDER = "hold-bystander"
REDELIVERED = "hold-redelivered"
HELD = "hold-held"
RESTARTED = "hold-restarted"
HEAVY = "hold-heavy"
GHOSTS = [f"hold-ghost-{i}" for i in range(3)]  # broker accounts the registry does not know
MALFORMED = b'{"metric": "temp", "value": '


@pytest.fixture(scope="module")
async def env(deployment: Stack) -> Stack:
    await deployment.add_devices([FLOODER, BYSTANDER, REDELIVERED, HELD, RESTARTED, HEAVY])
    for name in GHOSTS:
        deployment.devices[name] = deployment.broker.add_user(name)
    return deployment


@asynccontextmanager
async def running(config: GatewayConfig) -> AsyncIterator[Gateway]:
    gateway = Gateway(config)
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


def sample(gateway: Gateway, name: str, **labels: str) -> float:
    value = gateway.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def fetch(env: Stack, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await env.admin()
    try:
        rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
        return rows
    finally:
        await conn.close()


async def execute(env: Stack, sql: str) -> None:
    conn = await env.admin()
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def scrape(gateway: Gateway) -> dict[str, float]:
    """The gateway's /metrics as {sample line name with labels: value}."""
    assert gateway.http is not None
    url = f"http://127.0.0.1:{gateway.http.port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


async def rows_of(env: Stack, device: str) -> int:
    return await env.count("SELECT count(*) FROM ingest.telemetry WHERE identity = $1", device)


async def wait_rows_of(env: Stack, device: str, expected: int) -> None:
    async def enough() -> bool:
        return await rows_of(env, device) >= expected

    await env.wait_for(enough, what=f"{expected} rows of {device}")


@asynccontextmanager
async def engine(config: GatewayConfig, registered: dict[str, str]) -> AsyncIterator[Pipeline]:
    """The engine over the real role pools and PostgreSQL sinks, as `Gateway` wires it."""
    doc = load_declaration(config.database.roles_file)
    writers = [*writer_roles(doc, config), config.database.rejects_role]
    pools = RolePools(config.database, doc, [], row_writers=writers)
    await pools.open()

    def open_sink(role: str, table: Table) -> Sink:
        return PostgresSink(role, table, pools[role])

    def lookup(name: str) -> CachedIdentity | None:
        role = registered.get(name)
        return None if role is None else CachedIdentity(role, doc.login_role(role), "active")

    try:
        pipeline = Pipeline(
            lookup=lookup,
            routes=build_routes(config, doc, open_sink),
            metrics=Metrics(),
            activity=Activity(),
            policy=BatchPolicy.from_config(config.batching),
            limits=DecodeLimits.from_config(config.limits),
            max_buffered_rows=config.batching.max_buffered_rows,
            max_buffered_bytes=config.batching.max_buffered_bytes,
            rejects_per_minute=config.limits.rejects_per_minute,
        )
        try:
            yield pipeline
        finally:
            await pipeline.flush()
            await pipeline.close()
    finally:
        await pools.close()


# -- 1. reject budget ---------------------------------------------------------------------


async def test_a_flood_of_bad_messages_stores_a_budget_and_counts_the_rest(env: Stack) -> None:
    flood, budget = 300, 10
    good = [reading(value=i, id=f"flood-{i}") for i in range(flood // 6)]
    bad = [MALFORMED + str(i).encode() for i in range(flood)]
    interleaved = [*bad]
    for i, payload in enumerate(good):
        interleaved.insert(i * 7, payload)  # a good message among every six bad ones
    ghost_flood = 25
    async with running(env.config(limits=LimitsConfig(rejects_per_minute=budget))) as gateway:
        async with env.device(FLOODER) as device:
            await publish(device, f"devices/{FLOODER}/telemetry", interleaved)
        for name in GHOSTS:
            async with env.device(name) as device:
                await publish(device, f"devices/{name}/telemetry", [reading()] * ghost_flood)

        expected = len(interleaved) + ghost_flood * len(GHOSTS)

        async def all_taken_in() -> bool:
            received = sample(gateway, "gateway_messages_received_total", source="mosquitto")
            return received >= expected

        await env.wait_for(all_taken_in, what="every message received")
        await wait_rows_of(env, FLOODER, len(good))
        rejected = sample(
            gateway,
            "gateway_messages_rejected_total",
            source="mosquitto",
            reason="malformed_json",
        )
        assert rejected == flood  # the metric counts every one
    # Stopped: the summaries of the minute are written as the gateway drains.
    summarised = sample(
        gateway, "gateway_rejects_summarised_total", source="mosquitto", reason="malformed_json"
    )
    rows = await fetch(
        env,
        "SELECT at, date_trunc('minute', at) AS minute, payload_prefix, count, detail "
        "FROM ingest.rejects WHERE identity = $1 AND reason = 'malformed_json'",
        FLOODER,
    )
    whole = [row for row in rows if row["payload_prefix"]]
    summaries = [row for row in rows if not row["payload_prefix"]]
    assert all(row["count"] == 1 for row in whole)
    per_minute: dict[Any, int] = {}
    for row in whole:
        per_minute[row["minute"]] = per_minute.get(row["minute"], 0) + 1
    assert max(per_minute.values()) <= budget, per_minute
    assert {bytes(row["payload_prefix"]) for row in whole} <= set(bad)
    assert summaries, "no summary row"
    assert all(row["at"] == row["minute"] for row in summaries)
    assert all(f"{row['count']} more malformed_json" in row["detail"] for row in summaries)
    assert len({row["minute"] for row in summaries}) == len(summaries)  # one per minute
    assert sum(row["count"] for row in summaries) == summarised
    assert len(whole) + summarised == flood  # every bad message, stored or counted
    # A minute boundary inside the flood can give the new minute fewer than the budget;
    # otherwise the one summary counts all but the budget.
    if len(per_minute) == 1:
        assert len(whole) == budget and summaries[0]["count"] == flood - budget
    assert await rows_of(env, FLOODER) == len(good)  # every good message among them landed

    # Names the registry does not know: each claimed name has a budget of its own, and its
    # summary names it in `topic` (it is no identity).
    for name in GHOSTS:
        stored = await fetch(
            env,
            "SELECT identity, topic, payload_prefix, count, date_trunc('minute', at) AS minute "
            "FROM ingest.rejects WHERE reason = 'unknown_identity' "
            "AND (identity = $1 OR topic = $1)",
            name,
        )
        kept = [row for row in stored if row["payload_prefix"]]
        counted = [row for row in stored if not row["payload_prefix"]]
        assert {row["identity"] for row in kept} == {name}
        assert {(row["identity"], row["topic"]) for row in counted} == {(None, name)}
        assert len(kept) + sum(row["count"] for row in counted) == ghost_flood
        assert len(kept) <= budget * len({row["minute"] for row in stored})


async def test_unknown_senders_beyond_the_bound_share_one_budget(env: Stack) -> None:
    """Every new name an attacker claims costs memory and records: beyond `max_unregistered`
    unknown names in a minute, the rest share one entry, so one whole record and one summary
    row cover them."""
    tracked = inspect.signature(RejectBudget).parameters["max_unregistered"].default
    senders = tracked + 2000
    config = env.config(limits=LimitsConfig(rejects_per_minute=1))
    async with engine(config, {}) as pipeline:
        source = MemorySource("ghosts")
        source.put((f"devices/ghost-{i:05d}/telemetry", reading()) for i in range(senders))
        # One list, one receive time: all of it falls in one minute.
        pipeline.submit(source, await source.receive())
        await pipeline.flush()
        assert len(source.acked) == senders
    rows = await fetch(
        env,
        "SELECT identity, topic, count, payload_prefix FROM ingest.rejects "
        "WHERE source = 'ghosts' AND reason = 'unknown_identity'",
    )
    whole = [row for row in rows if row["payload_prefix"]]
    summaries = [row for row in rows if not row["payload_prefix"]]
    assert len(whole) == tracked + 1  # the first of each tracked name, and of the overflow
    assert len({row["identity"] for row in whole}) == tracked + 1
    assert [(row["identity"], row["topic"], row["count"]) for row in summaries] == [
        (None, OVERFLOW, senders - tracked - 1)
    ]


# -- 2. redelivery ------------------------------------------------------------------------


class LostAcks(MemorySource):
    """A session whose acknowledgements never reach the broker (it dies before they go)."""

    def ack(self, messages: Any) -> None:
        pass


async def test_a_redelivered_reject_is_recorded_once(env: Stack) -> None:
    name = REDELIVERED
    bad = [
        (f"devices/{name}/telemetry", MALFORMED),
        (f"devices/{name}/telemetry", b'{"ts": 1, "metric": "temp", "value": "hot"}'),
        ("devices/hold-nobody/telemetry", reading()),  # unknown identity
        (f"devices/{name}/telemetry/extra", reading()),  # no claim in this topic
    ]
    broker = MemoryBroker()
    async with engine(env.config(), {name: "telemetry_ingest"}) as pipeline:
        first = LostAcks("redelivery", broker=broker)
        first.put(bad)
        pipeline.submit(first, await first.receive())
        await pipeline.flush()
        assert [m.position for m in broker.unacked] == [0, 1, 2, 3]  # committed, not acked
        assert await redelivery_records(env) == 4
        await first.close()
        # The session is taken over: everything unacknowledged comes again.
        second = MemorySource("redelivery", broker=broker)
        again = await second.receive()
        assert [(m.topic, m.payload) for m in again] == bad
        pipeline.submit(second, again)
        await pipeline.flush()
        assert [m.position for m in second.acked] == [0, 1, 2, 3]
        rejected = pipeline.metrics.registry.get_sample_value(
            "gateway_messages_rejected_total", {"source": "redelivery", "reason": "malformed_json"}
        )
        assert rejected == 2  # counted at each delivery, recorded once
    assert await redelivery_records(env) == 4


async def redelivery_records(env: Stack) -> int:
    return await env.count("SELECT count(*) FROM ingest.rejects WHERE source = 'redelivery'")


async def test_a_reject_redelivered_by_mqtt_is_recorded_once(env: Stack) -> None:
    """The first gateway commits the records and never acknowledges (its acks are lost); the
    broker's persistent session gives the messages to the next gateway on the same client id."""
    config = env.config(client_id="gw-hold-redelivery")
    payloads = [MALFORMED + b"mqtt-" + str(i).encode() for i in range(5)]

    async def records() -> int:
        return await env.count(
            "SELECT count(*) FROM ingest.rejects WHERE identity = $1 AND reason = 'malformed_json'"
            " AND payload_prefix LIKE '%mqtt-%'",
            REDELIVERED,
        )

    async with running(config) as first:
        first.sources[0].ack = lambda messages: None  # type: ignore[method-assign]
        async with env.device(REDELIVERED) as device:
            await publish(device, f"devices/{REDELIVERED}/telemetry", payloads)
        await env.wait_for(lambda: _equals(records, len(payloads)), what="the first records")
    async with running(config) as second:

        async def redelivered() -> bool:
            return sample(
                second,
                "gateway_messages_rejected_total",
                source="mosquitto",
                reason="malformed_json",
            ) >= len(payloads)

        await env.wait_for(redelivered, what="the session's messages again")
    assert await records() == len(payloads)


async def _equals(count: Any, expected: int) -> bool:
    return bool(await count() == expected)


# -- 3. a held table ----------------------------------------------------------------------


async def with_events_route(env: Stack, tmp_path: Path) -> GatewayConfig:
    """A second table the telemetry role writes (`ingest.events`, stream `events`), declared,
    applied, and routed: a route that shares the role but not the table."""
    await execute(
        env, "CREATE TABLE IF NOT EXISTS ingest.events (LIKE ingest.telemetry INCLUDING ALL)"
    )
    text = EXAMPLE_ROLES.read_text().replace(
        "version = 1\n", 'version = 1\ntables = ["ingest.events"]\n', 1
    )
    text = text.replace(
        '    { table = "ingest.telemetry", privileges = ["INSERT"] },\n',
        '    { table = "ingest.telemetry", privileges = ["INSERT"] },\n'
        '    { table = "ingest.events", privileges = ["INSERT"] },\n',
        1,
    )
    roles = tmp_path / "roles.toml"
    roles.write_text(text)
    conn = await env.admin()
    try:
        plan, _ = await apply_roles(conn, parse_declaration(text), actor="tests")
    finally:
        await conn.close()
    # Roles are the whole cluster's: the plan must touch this database's new table only.
    assert all('"ingest"."events"' in sql for change in plan.changes for sql in change.sql), plan
    database = env.config().database.model_copy(update={"roles_file": roles})
    assert isinstance(database, DatabaseConfig)
    return env.config(
        database=database,
        routes=[
            RouteConfig(stream="telemetry", table="ingest.telemetry"),
            RouteConfig(stream="events", table="ingest.events"),
        ],
    )


async def test_a_table_refusing_writes_is_held_and_nothing_is_lost(
    env: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway.pipeline, "HELD_PROBE_SECONDS", 0.2)
    config = await with_events_route(env, tmp_path)
    topic, events = f"devices/{HELD}/telemetry", f"devices/{HELD}/events"
    sent: dict[int, bytes] = {}  # by value

    async def send(device: Any, values: range) -> None:
        payloads = [reading(value=v, id=f"held-{v}", tags={"pad": "p" * 300}) for v in values]
        sent.update(zip(values, payloads, strict=True))
        await publish(device, topic, payloads)

    labels = {"role": "telemetry_ingest", "table": "ingest.telemetry"}
    async with running(config) as gw, env.device(HELD) as device:
        await send(device, range(0, 20))
        await wait_rows_of(env, HELD, 20)
        await execute(env, "REVOKE INSERT ON ingest.telemetry FROM telemetry_ingest")
        try:
            # More than the reject budget (60 a minute): no budget applies to these.
            await send(device, range(20, 100))

            async def held() -> bool:
                return sample(gw, "gateway_route_held", **labels) == 1

            await env.wait_for(held, what="the table held")
            await send(device, range(100, 200))
            await publish(device, events, [reading(value=v) for v in range(30)])
            async with env.device(BYSTANDER) as other:
                await publish(other, f"devices/{BYSTANDER}/telemetry", [MALFORMED] * 5)

            async def unavailable() -> bool:
                return len(await unavailable_payloads(env)) == 180 - (await rows_of(env, HELD) - 20)

            await env.wait_for(unavailable, what="route_unavailable records")
            # Other routes flow meanwhile: the same role's other table, and the rejects.
            await env.wait_for(
                lambda: _at_least(
                    env, "SELECT count(*) FROM ingest.events WHERE identity = $1", HELD, 30
                ),
                what="rows in the other table",
            )
            await env.wait_for(
                lambda: _at_least(
                    env, "SELECT count(*) FROM ingest.rejects WHERE identity = $1", BYSTANDER, 5
                ),
                what="another device's reject records",
            )
            assert sample(gw, "gateway_route_held", **labels) == 1
        finally:
            await execute(env, "GRANT INSERT ON ingest.telemetry TO telemetry_ingest")

        async def writable() -> bool:
            return sample(gw, "gateway_route_held", **labels) == 0

        await env.wait_for(writable, what="the table taking writes again")
        await send(device, range(200, 220))
        await env.wait_for(
            lambda: _at_least(
                env,
                "SELECT count(*) FROM ingest.telemetry WHERE identity = $1 AND value >= 200",
                HELD,
                20,
            ),
            what="rows after the grant",
        )
    landed = [
        int(row["value"])
        for row in await fetch(env, "SELECT value FROM ingest.telemetry WHERE identity = $1", HELD)
    ]
    kept = await unavailable_payloads(env)
    recovered = [int(orjson.loads(payload)["value"]) for payload in kept]
    assert sorted(landed + recovered) == sorted(sent)  # each exactly once: a row or a whole record
    assert len(recovered) >= 100  # at least those sent while the route was held
    assert all(payload == sent[int(orjson.loads(payload)["value"])] for payload in kept)


async def unavailable_payloads(env: Stack) -> list[bytes]:
    rows = await fetch(
        env,
        "SELECT payload_prefix FROM ingest.rejects WHERE identity = $1 "
        "AND reason = 'route_unavailable'",
        HELD,
    )
    return [bytes(row["payload_prefix"]) for row in rows]


async def _at_least(env: Stack, sql: str, arg: Any, expected: int) -> bool:
    return await env.count(sql, arg) >= expected


# -- 4. a source's intake survives -------------------------------------------------------


async def test_an_unforeseen_error_in_intake_restarts_it(
    env: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(env.config()) as gw:
        source = gw.sources[0]
        real = source.receive
        failures: list[int] = []

        async def receive_failing_once() -> list[Any]:
            if not failures:
                failures.append(1)
                raise RuntimeError("a fault nobody foresaw")
            return await real()

        # The pump is waiting in the real receive(): the next call, after these, fails.
        monkeypatch.setattr(source, "receive", receive_failing_once)
        async with env.device(RESTARTED) as device:
            topic = f"devices/{RESTARTED}/telemetry"
            await publish(device, topic, [reading(value=i) for i in range(10)])
            await wait_rows_of(env, RESTARTED, 10)
            await env.wait_for(lambda: asyncio.sleep(0, bool(failures)), what="the fault")
            await publish(device, topic, [reading(value=i) for i in range(10, 20)])
            await wait_rows_of(env, RESTARTED, 20)
        assert sample(gw, "gateway_source_restarts_total", source="mosquitto") == 1
        assert all(gw.readiness().values()), gw.readiness()
        assert gw.failure is None
    assert await rows_of(env, RESTARTED) == 20


async def test_refused_credentials_still_end_the_gateway(env: Stack) -> None:
    process = GatewayProcess(env.config(client_id="gw-hold-refused"))
    await process.start()
    password = env.broker.gateway.password
    try:
        # The pod's own account gets another password: the plugin disconnects the gateway,
        # which reconnects with what is now a wrong one.
        env.broker.add_gateway("gw-hold-refused", "not-the-gateway-password")
        code = await process.wait(timeout=60)
    finally:
        env.broker.add_gateway("gw-hold-refused", password)
        if process.process is not None and process.process.returncode is None:
            await process.kill()
    assert code != 0
    assert b"not authorized" in process.log
    assert b"restarting it" not in process.log  # final: not an unforeseen error to survive


# -- 5. memory bound in bytes ------------------------------------------------------------

BATCHING = BatchingConfig(
    max_rows=1000, max_bytes=64 * 1024, max_buffered_bytes=256 * 1024, max_delay_ms=20
)
BLOB = "x" * 40_000  # about 40 KB a reading, well within limits.max_payload_bytes


def heavy(count: int) -> list[bytes]:
    payloads = [reading(value=i, tags={"blob": BLOB}) for i in range(count)]
    assert max(map(len, payloads)) < LimitsConfig().max_payload_bytes
    return payloads


@asynccontextmanager
async def telemetry_locked(env: Stack) -> AsyncIterator[asyncpg.Connection]:
    """Every COPY into ingest.telemetry waits behind this lock until it is released: the
    database is there and takes nothing, as when it is overloaded. Reads go on (EXCLUSIVE
    conflicts with writers only), so the test can count what landed meanwhile."""
    conn = await env.admin()
    try:
        async with conn.transaction():
            await conn.execute("LOCK TABLE ingest.telemetry IN EXCLUSIVE MODE")
            yield conn
    finally:
        await conn.close()


async def test_held_bytes_pause_intake_until_the_table_takes_writes(env: Stack) -> None:
    window, count = 16, 80
    config = env.config(client_id="gw-hold-bytes", batching=BATCHING, receive_maximum=window)
    payloads = heavy(count)
    async with running(config) as gw:
        assert gw.pipeline is not None
        pipeline = gw.pipeline
        peak = 0
        sampling = True

        async def watch() -> None:
            nonlocal peak
            while sampling:
                peak = max(peak, pipeline.buffered_bytes)
                await asyncio.sleep(0.002)

        watcher = asyncio.create_task(watch())
        try:
            async with telemetry_locked(env), env.device(HEAVY) as device:
                publishing = asyncio.create_task(
                    publish(device, f"devices/{HEAVY}/telemetry", payloads)
                )

                async def paused() -> bool:
                    return not pipeline.has_capacity

                await env.wait_for(paused, what="intake paused")
                await asyncio.sleep(1)  # the broker would send more now, if it were not held
                received = sample(gw, "gateway_messages_received_total", source="mosquitto")
                assert received <= window  # no acks: the broker stops at our receive maximum
                scraped = await asyncio.to_thread(scrape, gw)
                assert scraped["gateway_buffer_held_bytes"] >= BATCHING.max_buffered_bytes
                assert scraped["gateway_buffer_limit_bytes"] == BATCHING.max_buffered_bytes
                assert await rows_of(env, HEAVY) == 0
            await publishing
            await wait_rows_of(env, HEAVY, count)
        finally:
            sampling = False
            await watcher
        # What one receive() hands over is buffered whole (see the next test): here that is
        # at most the receive maximum's worth, beyond the bound.
        assert peak <= BATCHING.max_buffered_bytes + window * len(payloads[0]), peak
    assert await rows_of(env, HEAVY) == count  # acknowledged only once committed: once each


async def test_held_bytes_exceed_the_bound_by_at_most_the_list_handed_over(env: Stack) -> None:
    """A source hands over what it has in one list, which the engine takes whole (its bytes
    are in memory already); intake then pauses. So the bytes held stop within that list and
    one open batch per route of `max_buffered_bytes`: each transport bounds its list in bytes
    (MQTT v5: 8 MiB by default, `MqttOptions.max_buffered_bytes`; Kafka: one fetch)."""
    config = env.config(batching=BATCHING)
    payloads = heavy(16)
    handed_over = sum(map(len, payloads))
    bound = BATCHING.max_buffered_bytes + handed_over + 2 * BATCHING.max_bytes
    async with engine(config, {HEAVY: "telemetry_ingest"}) as pipeline:
        source = MemorySource("heavy", max_inflight=len(payloads))
        source.put((f"devices/{HEAVY}/telemetry", payload) for payload in payloads)
        async with telemetry_locked(env):
            pipeline.submit(source, await source.receive())
            held = pipeline.buffered_bytes
            assert not pipeline.has_capacity
            assert held > BATCHING.max_buffered_bytes  # the list was taken whole
        await pipeline.flush()
        assert len(source.acked) == len(payloads)
    assert held <= bound, (
        f"{held} bytes held after one list of {len(payloads)} messages of "
        f"{len(payloads[0])} bytes; max_buffered_bytes {BATCHING.max_buffered_bytes}, "
        f"max_bytes {BATCHING.max_bytes}"
    )
