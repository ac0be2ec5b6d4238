"""The gateway writes unchanged into an ingestion table partitioned by time: COPY into the parent
routes each row to its partition, grants on the parent suffice, and dedup still holds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from gateway.app import Gateway
from gateway.bootstrap import bootstrap
from gateway.config import RouteConfig

from .stack import Stack, publish

PARTITIONED = """
DROP TABLE ingest.telemetry;
CREATE TABLE ingest.telemetry (
    ts          timestamptz NOT NULL,
    identity    text NOT NULL,
    metric      text NOT NULL,
    value       double precision,
    tags        jsonb,
    received_at timestamptz NOT NULL DEFAULT now(),
    message_id  text
) PARTITION BY RANGE (ts);
CREATE TABLE ingest.telemetry_before PARTITION OF ingest.telemetry
    FOR VALUES FROM (MINVALUE) TO ('{split}');
CREATE TABLE ingest.telemetry_after PARTITION OF ingest.telemetry
    FOR VALUES FROM ('{split}') TO (MAXVALUE);
CREATE UNIQUE INDEX telemetry_message_id ON ingest.telemetry (identity, message_id, ts)
    WHERE message_id IS NOT NULL;
"""


@pytest.fixture(scope="module")
async def env(deployment: Stack) -> Stack:
    conn = await deployment.admin()
    try:
        split = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
        await conn.execute(PARTITIONED.format(split=split))
        # The new table has no grants yet: bootstrapping again restores them.
        await bootstrap(conn, actor="tests")
    finally:
        await conn.close()
    await deployment.add_devices(["sensor-p0"])
    return deployment


async def test_rows_land_in_their_partitions_exactly_once(env: Stack) -> None:
    config = env.config(
        routes=[RouteConfig(stream="telemetry", table="ingest.telemetry", dedup=True)]
    )
    gateway = Gateway(config)
    await gateway.start()
    try:
        now = datetime.now(UTC)
        payloads = [
            orjson.dumps(
                {
                    "id": f"p0-{n}",
                    "ts": int((now - timedelta(hours=2 * (n % 2))).timestamp() * 1000),
                    "metric": "temp",
                    "value": n,
                }
            )
            for n in range(200)
        ]
        async with env.device("sensor-p0") as client:
            await publish(client, "devices/sensor-p0/telemetry", payloads)
            await publish(client, "devices/sensor-p0/telemetry", payloads[:50])  # redelivered

        async def all_received() -> bool:
            received = gateway.metrics.registry.get_sample_value(
                "gateway_messages_received_total", {"source": "mosquitto"}
            )
            return (received or 0) >= 250

        await env.wait_for(all_received, 30, "250 messages received")
        assert gateway.pipeline is not None
        await gateway.pipeline.flush()
        conn = await env.admin()
        try:
            per_partition = dict(
                await conn.fetch(
                    "SELECT tableoid::regclass::text, count(*) FROM ingest.telemetry GROUP BY 1"
                )
            )
        finally:
            await conn.close()
        assert per_partition == {"ingest.telemetry_before": 100, "ingest.telemetry_after": 100}
        assert await env.count("SELECT count(*) FROM ingest.rejects") == 0
    finally:
        await gateway.stop()
