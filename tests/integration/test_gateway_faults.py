"""Faults under load lose nothing: database outage, SIGKILL, SIGTERM, broker restart, scale-out."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator

import pytest

from gateway.app import Gateway
from gateway.config import BatchingConfig, RouteConfig

from .databases import own_cluster
from .stack import GatewayProcess, Publisher, Stack, publish, reading, stack

DEVICES = [f"sensor-f{i}" for i in range(8)]


@pytest.fixture(scope="module")
async def env(role_passwords: dict[str, str]) -> AsyncIterator[Stack]:
    async with own_cluster() as server, stack(server) as deployment:  # its tests stop the server
        await deployment.add_devices(DEVICES)
        yield deployment


async def rows_of(env: Stack, device: str) -> int:
    return await env.count("SELECT count(*) FROM ingest.telemetry WHERE identity = $1", device)


async def distinct_rows_of(env: Stack, device: str) -> int:
    return await env.count(
        "SELECT count(DISTINCT value) FROM ingest.telemetry WHERE identity = $1", device
    )


async def wait_complete(env: Stack, device: str, published: int, timeout: float = 60) -> None:
    async def complete() -> bool:
        return await distinct_rows_of(env, device) >= published

    await env.wait_for(complete, timeout, f"{published} distinct readings of {device}")


async def test_database_outage_under_load_loses_nothing(env: Stack) -> None:
    gateway = Gateway(env.config())
    await gateway.start()
    publisher = Publisher(env, "sensor-f0", rate=400)
    publisher.start()
    try:
        await asyncio.sleep(1)
        await env.postgres.stop()
        await asyncio.sleep(10)
        await env.postgres.start()
        await asyncio.sleep(1)
        published = await publisher.stop()
        await wait_complete(env, "sensor-f0", published)
        # Acked only after commit: nothing was acknowledged while the database was away, so
        # nothing needed redelivery and nothing was written twice.
        assert await rows_of(env, "sensor-f0") == published
        assert (
            gateway.metrics.flush_failures.labels(
                "telemetry_ingest", "ingest.telemetry", "temporary"
            )._value.get()
            > 0
        )
    finally:
        await gateway.stop()


async def test_sigkill_under_load_loses_nothing(env: Stack) -> None:
    config = env.config(client_id="gw-killed")
    first = GatewayProcess(config)
    await first.start()
    publisher = Publisher(env, "sensor-f1", rate=1000)
    publisher.start()
    await asyncio.sleep(2)
    await first.kill()
    await asyncio.sleep(1)
    published = await publisher.stop()
    second = GatewayProcess(config)  # same client id: the broker kept the session
    await second.start()
    try:
        await wait_complete(env, "sensor-f1", published)
        assert await rows_of(env, "sensor-f1") >= published  # at least once
    finally:
        await second.signal(signal.SIGTERM)
        assert await second.wait() == 0


async def test_sigterm_drains_and_exits_zero(env: Stack) -> None:
    config = env.config(client_id="gw-terminated")
    gateway = GatewayProcess(config)
    await gateway.start()
    publisher = Publisher(env, "sensor-f2", rate=1000)
    publisher.start()
    await asyncio.sleep(1.5)
    published = await publisher.stop()
    await gateway.signal(signal.SIGTERM)
    assert await gateway.wait(timeout=30) == 0, gateway.log.decode()[-2000:]
    assert b"gateway stopped" in gateway.log
    # Everything received before the signal was committed and acknowledged; anything still on
    # the broker comes with the next start of the same session.
    restarted = GatewayProcess(config)
    await restarted.start()
    try:
        await wait_complete(env, "sensor-f2", published)
        assert await rows_of(env, "sensor-f2") == published  # drained: no duplicates
    finally:
        await restarted.signal(signal.SIGTERM)
        assert await restarted.wait() == 0


async def test_broker_restart_resumes(env: Stack) -> None:
    gateway = Gateway(env.config(client_id="gw-broker-restart"))
    await gateway.start()
    publisher = Publisher(env, "sensor-f3", rate=300)
    try:
        await env.broker.restart()
        publisher.start()
        await asyncio.sleep(2)
        published = await publisher.stop()
        await wait_complete(env, "sensor-f3", published)
    finally:
        await gateway.stop()


async def test_full_buffers_hold_acks_so_the_broker_stops_sending(env: Stack) -> None:
    config = env.config(
        client_id="gw-backpressure",
        receive_maximum=500,
        batching=BatchingConfig(max_rows=100, max_buffered_rows=300),
    )
    gateway = Gateway(config)
    await gateway.start()
    try:
        await env.postgres.stop()
        payloads = [reading(value=i) for i in range(2000)]
        async with env.device("sensor-f7") as client:
            await publish(client, "devices/sensor-f7/telemetry", payloads)
        await asyncio.sleep(3)
        assert gateway.pipeline is not None and not gateway.pipeline.has_capacity
        # Nothing is acknowledged while the database is away: the broker's in-flight window
        # (our receive maximum) is all the gateway holds; the rest waits in the broker.
        assert gateway.pipeline.buffered_rows <= 300 + 100
        received = gateway.metrics.registry.get_sample_value(
            "gateway_messages_received_total", {"source": "mosquitto"}
        )
        assert received is not None and received <= 500
        await env.postgres.start()
        await wait_complete(env, "sensor-f7", 2000)
        assert await rows_of(env, "sensor-f7") == 2000  # acks only after commit: no redelivery
    finally:
        await gateway.stop()


async def test_broker_restart_with_messages_in_flight_loses_nothing(env: Stack) -> None:
    # Batches wait five seconds: the restart comes while all 500 are held, unacknowledged.
    config = env.config(
        client_id="gw-restart-in-flight",
        batching=BatchingConfig(max_delay_ms=5000),
        routes=[RouteConfig(stream="telemetry", table="ingest.telemetry", dedup=True)],
    )
    gateway = Gateway(config)
    await gateway.start()
    try:
        payloads = [reading(value=i, id=f"f6-{i}") for i in range(500)]
        async with env.device("sensor-f6") as client:
            await publish(client, "devices/sensor-f6/telemetry", payloads)

        async def held() -> bool:
            assert gateway.pipeline is not None
            return gateway.pipeline.buffered_rows >= 500

        await env.wait_for(held, 4, "500 messages held by the gateway")
        assert await rows_of(env, "sensor-f6") == 0
        await env.broker.restart()
        # The PUBACKs of the old connection are lost with it: the persistent session delivers
        # the 500 again, and dedup keeps one row each.
        await wait_complete(env, "sensor-f6", 500)
        await asyncio.sleep(6)  # past the next batch delay: a second copy would have landed
        assert await rows_of(env, "sensor-f6") == 500
    finally:
        await gateway.stop()


async def test_sigkill_with_dedup_gives_exactly_one_row_per_reading(env: Stack) -> None:
    config = env.config(
        client_id="gw-dedup",
        routes=[RouteConfig(stream="telemetry", table="ingest.telemetry", dedup=True)],
    )
    publisher = Publisher(env, "sensor-f4", rate=1500)
    for attempt in range(2):  # killed twice mid-stream, each time restarted on the same session
        gateway = GatewayProcess(config)
        await gateway.start()
        if attempt == 0:
            publisher.start()  # once the session exists: the broker keeps nothing for no one
        await asyncio.sleep(1.5)
        await gateway.kill()
    final = GatewayProcess(config)
    await final.start()
    try:
        await asyncio.sleep(1)
        published = await publisher.stop()
        await wait_complete(env, "sensor-f4", published)
        await asyncio.sleep(1)  # anything redelivered late would show up now
        assert await rows_of(env, "sensor-f4") == published
    finally:
        await final.signal(signal.SIGTERM)
        assert await final.wait() == 0


def received(gateway: GatewayProcess) -> float:
    for line in gateway.metrics().splitlines():
        if line.startswith('gateway_messages_received_total{source="mosquitto"}'):
            return float(line.split()[-1])
    return 0.0


async def test_two_gateways_share_the_load_and_a_killed_one_loses_nothing(env: Stack) -> None:
    configs = [env.config(client_id=f"gw-share-{i}", share_group="gateways") for i in range(2)]
    first, second = GatewayProcess(configs[0]), GatewayProcess(configs[1])
    await first.start()
    await second.start()
    publisher = Publisher(env, "sensor-f5", rate=1500)
    publisher.start()
    await asyncio.sleep(2)
    assert received(first) > 0 and received(second) > 0  # the broker splits the stream
    await second.kill()
    await asyncio.sleep(1.5)
    published = await publisher.stop()
    # The killed pod's persistent session keeps what it had not acknowledged; its replacement
    # (same client id) picks it up.
    replacement = GatewayProcess(configs[1])
    await replacement.start()
    try:
        await wait_complete(env, "sensor-f5", published)
        assert await rows_of(env, "sensor-f5") >= published
    finally:
        for gateway in (first, replacement):
            await gateway.signal(signal.SIGTERM)
            assert await gateway.wait() == 0
