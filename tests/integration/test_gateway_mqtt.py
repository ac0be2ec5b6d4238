"""The gateway end to end on MQTT: identity -> role -> COPY -> ack, bad input, lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import os
import urllib.request
from datetime import UTC, datetime, timedelta

import aiomqtt
import orjson
import pytest

from gateway.app import Gateway
from gateway.config import IdentitiesConfig
from gateway.identities.provisioning import ProvisionRule
from gateway.identities.registry import Registry
from gateway.roles.apply import apply_roles
from gateway.roles.declaration import load_declaration

from .stack import EXAMPLE_ROLES, Stack, publish, reading

DEVICES = ["sensor-a", "sensor-b", "sensor-c"]


@pytest.fixture(scope="module")
async def env(deployment: Stack) -> Stack:
    await deployment.add_devices([*DEVICES, "sensor-retired", "sensor-moved"])
    return deployment


def http_get(gateway: Gateway, path: str) -> tuple[int, bytes]:
    assert gateway.http is not None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{gateway.http.port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


async def test_readings_land_as_their_role_and_are_logged(env: Stack, gateway: Gateway) -> None:
    before = await env.count()
    for name in DEVICES:
        async with env.device(name) as device:
            await publish(
                device, f"devices/{name}/telemetry", [reading(value=i) for i in range(50)]
            )
            batch = orjson.dumps(
                {
                    "ts": datetime.now(UTC).isoformat(),
                    "readings": [
                        {"metric": f"m{i}", "value": i, "tags": {"k": i}} for i in range(10)
                    ],
                }
            )
            await publish(device, f"devices/{name}/telemetry", [batch])
    await env.wait_rows(before + 3 * 60)
    conn = await env.admin()
    try:
        per_identity = dict(
            await conn.fetch(
                "SELECT identity, count(*) FROM ingest.telemetry WHERE identity = ANY($1) "
                "GROUP BY identity",
                DEVICES,
            )
        )
        assert per_identity == {name: 60 for name in DEVICES}
        tags = await conn.fetchval(
            "SELECT tags FROM ingest.telemetry WHERE metric = 'm3' AND identity = 'sensor-a'"
        )
        assert orjson.loads(tags) == {"k": 3}
        logged = await conn.fetch(
            "SELECT role, db_user, target, rows, checksum FROM gateway.write_log"
        )
        assert {row["db_user"] for row in logged} == {"telemetry_ingest_login"}
        assert {row["role"] for row in logged} == {"telemetry_ingest"}
        assert sum(row["rows"] for row in logged) >= 180
        assert all(len(row["checksum"]) == 64 for row in logged)
    finally:
        await conn.close()
    status, body = await asyncio.to_thread(http_get, gateway, "/metrics")
    assert status == 200
    assert b'gateway_rows_written_total{role="telemetry_ingest",table="ingest.telemetry"}' in body


async def test_each_kind_of_bad_input_is_rejected_and_good_input_lands(
    env: Stack, gateway: Gateway
) -> None:
    old = int((datetime.now(UTC) - timedelta(days=30)).timestamp() * 1000)
    bad = {
        "malformed_json": b'{"metric": "temp", "value": ',
        "invalid_reading": b'{"ts": 1, "metric": "temp", "value": "hot"}',
        "non_finite_value": b'{"ts": 1, "metric": "temp", "value": NaN}',
        "timestamp_out_of_window": orjson.dumps({"ts": old, "metric": "t", "value": 1}),
        "payload_too_large": reading(tags={"blob": "x" * 263_000}),  # under the packet limit
    }
    before = await env.count()
    async with env.device("sensor-b") as device:
        for payload in bad.values():
            await publish(device, "devices/sensor-b/telemetry", [reading(), payload])
        await publish(device, "devices/sensor-b/nosuchstream", [reading()])
    await env.wait_rows(before + len(bad))
    expected = {**{reason: 1 for reason in bad}, "unknown_stream": 1}

    async def all_rejected() -> bool:
        rows = await env.count(
            "SELECT count(*) FROM ingest.rejects WHERE identity = 'sensor-b' OR topic LIKE "
            "'devices/sensor-b/%'"
        )
        return rows >= len(expected)

    await env.wait_for(all_rejected, what="reject records")
    conn = await env.admin()
    try:
        rows = await conn.fetch(
            "SELECT reason, count(*) AS n, min(payload_prefix) AS payload, min(detail) AS detail "
            "FROM ingest.rejects WHERE topic LIKE 'devices/sensor-b/%' GROUP BY reason"
        )
    finally:
        await conn.close()
    assert {row["reason"]: row["n"] for row in rows} == expected
    by_reason = {row["reason"]: row for row in rows}
    assert by_reason["malformed_json"]["payload"] == bad["malformed_json"]
    assert "outside" in by_reason["timestamp_out_of_window"]["detail"]
    assert await env.count() == before + len(bad)  # every good message beside a bad one
    _, body = await asyncio.to_thread(http_get, gateway, "/metrics")
    assert (
        b'gateway_messages_rejected_total{reason="malformed_json",source="mosquitto"} 1.0' in body
    )


async def test_unknown_and_retired_identities_are_rejected(env: Stack, gateway: Gateway) -> None:
    env.devices["sensor-unregistered"] = env.broker.add_user("sensor-unregistered")
    async with env.device("sensor-unregistered") as device:
        await publish(device, "devices/sensor-unregistered/telemetry", [reading()])

    conn = await env.admin()
    try:
        await Registry(conn, "tests").retire("sensor-retired")
    finally:
        await conn.close()
    retired_at = asyncio.get_running_loop().time()

    async def rejected_after_retire() -> bool:
        async with env.device("sensor-retired") as device:
            await publish(device, "devices/sensor-retired/telemetry", [reading()])
        await asyncio.sleep(0.2)
        return (
            await env.count(
                "SELECT count(*) FROM ingest.rejects WHERE identity = 'sensor-retired' "
                "AND reason = 'retired_identity'"
            )
            > 0
        )

    await env.wait_for(rejected_after_retire, what="retired identity rejected")
    # The cache follows NOTIFY: the first message after the retire may be a moment late, but
    # the rejection must come within about a second (plus the probe's own publish and flush).
    assert asyncio.get_running_loop().time() - retired_at < 3

    async def unknown_rejected() -> bool:
        return (
            await env.count(
                "SELECT count(*) FROM ingest.rejects WHERE identity = 'sensor-unregistered' "
                "AND reason = 'unknown_identity'"
            )
            == 1
        )

    await env.wait_for(unknown_rejected, what="unknown identity rejected")


async def test_health_and_readiness(env: Stack, gateway: Gateway) -> None:
    assert (await asyncio.to_thread(http_get, gateway, "/healthz"))[0] == 200
    status, body = await asyncio.to_thread(http_get, gateway, "/readyz")
    assert status == 200, body
    assert orjson.loads(body)["checks"]["source:mosquitto"] is True
    _, metrics = await asyncio.to_thread(http_get, gateway, "/metrics")
    assert b"gateway_ready 1.0" in metrics
    assert b'gateway_readiness_check{check="not_draining"} 1.0' in metrics
    assert b"gateway_buffer_limit_rows 200000.0" in metrics


async def test_not_ready_while_draining_or_disconnected(env: Stack) -> None:
    running = Gateway(env.config())
    await running.start()
    assert all(running.readiness().values())
    await env.broker.stop()
    try:
        await env.wait_for(
            lambda: asyncio.sleep(0, result=not running.readiness()["source:mosquitto"]),
            what="readiness to notice the broker is gone",
        )
    finally:
        await env.broker.start()
    await env.wait_for(
        lambda: asyncio.sleep(0, result=all(running.readiness().values())),
        what="readiness after the broker came back",
    )
    stopping = asyncio.create_task(running.stop())
    await asyncio.sleep(0)
    assert running.readiness()["not_draining"] is False  # out of the Service before draining
    await stopping


async def test_activity_is_recorded_per_identity(env: Stack, gateway: Gateway) -> None:
    async with env.device("sensor-c") as device:
        await publish(device, "devices/sensor-c/telemetry", [reading() for _ in range(5)])

    async def recorded() -> bool:
        return (
            await env.count(
                "SELECT coalesce(sum(rows), 0) FROM gateway.identity_activity "
                "WHERE identity = 'sensor-c'"
            )
            >= 5
        )

    await env.wait_for(recorded, what="identity activity")
    seen = await env.count(
        "SELECT count(*) FROM gateway.identities WHERE name = 'sensor-c' AND last_seen IS NOT NULL"
    )
    assert seen == 1
    conn = await env.admin()
    try:
        details = await Registry(conn, "tests").show("sensor-c")
    finally:
        await conn.close()
    assert details.rows_last_day >= 5
    assert details.identity.last_seen is not None


async def test_rows_the_database_refuses_are_isolated(env: Stack, gateway: Gateway) -> None:
    # JSON allows 1e1000000; jsonb's numeric does not. The decoder cannot know every rule of
    # the database, so the batch is split until the refused row stands alone.
    before = await env.count()
    async with env.device("sensor-a") as device:
        good = [reading(value=i) for i in range(20)]
        ts = orjson.loads(good[0])["ts"]
        poisoned = b'{"ts":%d,"metric":"m","value":1,"tags":{"x":1e1000000}}' % ts
        await publish(device, "devices/sensor-a/telemetry", [*good[:10], poisoned, *good[10:]])
    await env.wait_rows(before + 20)

    async def isolated() -> bool:
        return (
            await env.count(
                "SELECT count(*) FROM ingest.rejects WHERE reason = 'database_refused' "
                "AND identity = 'sensor-a'"
            )
            == 1
        )

    await env.wait_for(isolated, what="the refused row in rejects")
    assert await env.count() == before + 20


async def test_unknown_identities_can_be_provisioned_by_rule(env: Stack) -> None:
    config = env.config(
        identities=IdentitiesConfig(
            unknown="provision",
            provision=[ProvisionRule(pattern="sensor-auto-*", role="telemetry_ingest")],
        )
    )
    running = Gateway(config)
    await running.start()
    try:
        for name in ("sensor-auto-1", "stranger-1"):
            env.devices[name] = env.broker.add_user(name)
            async with env.device(name) as device:
                await publish(device, f"devices/{name}/telemetry", [reading(), reading()])

        async def provisioned() -> bool:
            return (
                await env.count(
                    "SELECT count(*) FROM ingest.telemetry WHERE identity = 'sensor-auto-1'"
                )
                == 2
            )

        await env.wait_for(provisioned, what="rows of the provisioned identity")
        assert (
            await env.count(
                "SELECT count(*) FROM gateway.audit_log WHERE action = 'identity.provision' "
                "AND subject = 'sensor-auto-1'"
            )
            == 1
        )

        async def stranger_rejected() -> bool:
            return (
                await env.count(
                    "SELECT count(*) FROM ingest.rejects WHERE identity = 'stranger-1' "
                    "AND reason = 'unknown_identity'"
                )
                == 2
            )

        await env.wait_for(stranger_rejected, what="the unmatched identity rejected")
    finally:
        await running.stop()


async def test_unknown_identities_can_be_quarantined(env: Stack) -> None:
    running = Gateway(env.config(identities=IdentitiesConfig(unknown="quarantine")))
    await running.start()
    try:
        env.devices["sensor-q"] = env.broker.add_user("sensor-q")
        async with env.device("sensor-q") as device:
            await publish(device, "devices/sensor-q/telemetry", [reading()])

        async def quarantined() -> bool:
            return (
                await env.count(
                    "SELECT count(*) FROM ingest.rejects WHERE identity = 'sensor-q' "
                    "AND reason = 'quarantined'"
                )
                == 1
            )

        await env.wait_for(quarantined, what="quarantined message")
    finally:
        await running.stop()


async def test_password_rotation_needs_no_restart(env: Stack, gateway: Gateway) -> None:
    doc = load_declaration(EXAMPLE_ROLES)
    variable = doc.roles["telemetry_ingest"].password.env
    assert variable is not None
    old = os.environ[variable]
    os.environ[variable] = "rotated-" + old  # the credential source changes (a Secret update)...
    try:
        conn = await env.admin()
        try:
            await apply_roles(conn, doc, actor="tests")  # ...and the role follows it
            # Drop every connection of the role: the next ones must log in with the new password.
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE usename = 'telemetry_ingest_login'"
            )
        finally:
            await conn.close()
        before = await env.count()
        async with env.device("sensor-a") as device:
            await publish(device, "devices/sensor-a/telemetry", [reading() for _ in range(5)])
        await env.wait_rows(before + 5)
    finally:
        os.environ[variable] = old
        conn = await env.admin()
        try:
            await apply_roles(conn, doc, actor="tests")
        finally:
            await conn.close()


async def test_a_user_name_cannot_widen_the_acl_to_another_identity(
    env: Stack, gateway: Gateway
) -> None:
    """`pattern write devices/%u/+`: one level under the user's own name. With `#`, a broker
    user named `victim/telemetry` could write `devices/victim/telemetry`, stored as `victim`."""
    await env.add_devices(["victim"])
    env.devices["victim/telemetry"] = env.broker.add_user("victim/telemetry")
    async with env.device("victim/telemetry") as impostor:
        await publish(impostor, "devices/victim/telemetry", [reading(value=666)])
        # One level under its own name the ACL lets through; the template does not fit it.
        await publish(impostor, "devices/victim/telemetry/x", [reading(value=667)])
    async with env.device("sensor-b") as device:
        await publish(device, "devices/sensor-b/telemetry/extra", [reading(value=668)])

    async def seen() -> bool:
        return (
            await env.count(
                "SELECT count(*) FROM ingest.rejects WHERE topic = 'devices/victim/telemetry/x'"
            )
            == 1
        )

    # Messages of one client arrive in order: once the later one is recorded, the earlier one
    # would have been too, had the broker let it through.
    await env.wait_for(seen, what="the impostor's own-level message")
    assert await env.count("SELECT count(*) FROM ingest.telemetry WHERE identity = 'victim'") == 0
    assert await env.count("SELECT count(*) FROM ingest.rejects WHERE identity = 'victim'") == 0
    assert (
        await env.count(
            "SELECT count(*) FROM ingest.rejects WHERE topic = 'devices/sensor-b/telemetry/extra'"
        )
        == 0
    )  # two levels under its own name: refused by the broker, never seen by the gateway


async def test_a_taken_over_session_is_counted_and_taken_back(env: Stack, gateway: Gateway) -> None:
    """Until client ids are bound to accounts at the broker, any account may connect with the
    gateway's client id, and the broker ends the gateway's connection. Mosquitto 2.0.11 closes
    it without a DISCONNECT (no reason 0x8E to read), so it counts as a lost connection; the
    gateway reconnects, takes its session back, and nothing sent meanwhile is lost."""
    source = gateway.config.sources.mqtt[0]
    user = env.devices["sensor-b"]
    before = await env.count()

    def lost() -> float:
        return sum(
            gateway.metrics.registry.get_sample_value(
                "gateway_mqtt_connections_lost_total", {"source": source.name, "reason": reason}
            )
            or 0.0
            for reason in ("connection", "session_taken_over")
        )

    impostor = aiomqtt.Client(
        env.broker.host,
        env.broker.port,
        username=user.username,
        password=user.password,
        identifier=source.client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
    )
    with contextlib.suppress(aiomqtt.MqttError):  # taken back by the gateway meanwhile
        async with impostor:

            async def counted() -> bool:
                return lost() >= 1

            await env.wait_for(counted, what="the lost connection counted")
            # Held a moment: an impostor that disconnects at once, while the gateway takes its
            # session back, can leave the gateway connected without its subscription
            # (observed with Mosquitto 2.0.11). Client ids bound at the broker prevent both.
            await asyncio.sleep(1)
    async with env.device("sensor-b") as device:
        await publish(device, "devices/sensor-b/telemetry", [reading(value=n) for n in range(5)])
    await env.wait_rows(before + 5)
    assert gateway.sources[0].connected and all(gateway.readiness().values())
