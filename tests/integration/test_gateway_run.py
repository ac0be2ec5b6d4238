"""`gateway run --config FILE` as an operator runs it: a TOML file, uvloop, JSON logs a line."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import urllib.request
from pathlib import Path

import orjson
import pytest

from gateway.services._process import free_port

from .stack import EXAMPLE_ROLES, MQTT_PASSWORD_ENV, Stack, publish, reading


@pytest.fixture(scope="module")
async def env(deployment: Stack) -> Stack:
    await deployment.add_devices(["sensor-r0"])
    return deployment


def write_config(env: Stack, path: Path, http_port: int) -> None:
    path.write_text(
        f"""
[database]
host = "{env.database.host}"
port = {env.database.port}
dbname = "{env.database.database}"
roles_file = "{EXAMPLE_ROLES}"

[[sources.mqtt]]
name = "mosquitto"
host = "{env.broker.host}"
port = {env.broker.port}
username = "{env.broker.gateway.username}"
password = {{ env = "{MQTT_PASSWORD_ENV}" }}
client_id = "gw-run-file"

[batching]
max_delay_ms = 20

[http]
host = "127.0.0.1"
port = {http_port}
"""
    )


def readyz(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
        return int(answer.status)


async def test_run_from_a_config_file_on_uvloop_with_json_logs(env: Stack, tmp_path: Path) -> None:
    os.environ[MQTT_PASSWORD_ENV] = env.broker.gateway.password
    port = free_port()
    config = tmp_path / "gateway.toml"
    write_config(env, config, port)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "run",
        "--config",
        str(config),
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    assert process.stderr is not None
    try:
        started = orjson.loads(await asyncio.wait_for(process.stderr.readline(), 60))
        while "gateway started" not in started["message"]:
            started = orjson.loads(await asyncio.wait_for(process.stderr.readline(), 60))
        assert started["level"] == "info" and started["message"].startswith(
            "gateway started on uvloop"
        )
        async with env.device("sensor-r0") as client:
            await publish(
                client, "devices/sensor-r0/telemetry", [reading(value=n) for n in range(20)]
            )
        await env.wait_rows(20)
        assert await asyncio.to_thread(readyz, port) == 200
    finally:
        process.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(process.stderr.read(), 60)
        assert await process.wait() == 0
    for line in rest.decode().splitlines():
        entry = orjson.loads(line)  # every line one JSON object
        assert {"ts", "level", "logger", "message"} <= set(entry)
