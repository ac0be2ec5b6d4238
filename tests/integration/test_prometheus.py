"""A real Prometheus scrapes a running gateway under a small load and counts what was sent.

Prometheus is Debian's binary (`make prometheus`), started here on a free loopback port with its
own configuration and data directory, never a system service, and as Debian's `prometheus` user
when we are root: it needs no privilege. It also loads the shipped rules
(deploy/prometheus/rules.yml), which must evaluate without error against the real series. The
test fails, never skips, when Prometheus is missing or cannot start.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.app import Gateway
from gateway.services._process import free_port, hand_over, log_tail, run_as, service_user

from .stack import Stack, publish, reading

RULES = Path(__file__).parents[2] / "deploy" / "prometheus" / "rules.yml"
DEVICES = {"prom-a": 30, "prom-b": 20}  # good messages each
GHOST = "prom-ghost"  # a broker account the registry does not know
MALFORMED = b'{"metric": "temp", "value": '
INVALID = b'{"ts": 1, "metric": "temp", "value": "hot"}'
WAIT = 60


class Prometheus:
    """A Prometheus process of this test's own, and its HTTP API."""

    def __init__(self, workdir: Path, target: str) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.log = workdir / "prometheus.log"
        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "rule_files": [str(workdir / RULES.name)],
            # The job name is the one the shipped rules select.
            "scrape_configs": [{"job_name": "gateway", "static_configs": [{"targets": [target]}]}],
        }
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        shutil.copy(RULES, workdir / RULES.name)
        self.user = service_user("prometheus")
        hand_over(workdir, self.user)
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        binary = shutil.which("prometheus")
        assert binary, "prometheus is missing: run `make prometheus` (Debian's package)"
        with self.log.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                binary,
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                stdout=log,
                stderr=log,
                **run_as(self.user),
            )
        deadline = time.monotonic() + WAIT
        while not await asyncio.to_thread(self._ready):
            if self.process.returncode is not None or time.monotonic() > deadline:
                raise AssertionError(f"prometheus did not start:\n{log_tail(self.log)}")
            await asyncio.sleep(0.2)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                return bool(r.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.terminate()
        try:
            await asyncio.wait_for(self.process.wait(), 30)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()

    async def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"

        def get() -> Any:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.loads(response.read())
            assert body["status"] == "success", body
            return body["data"]

        return await asyncio.to_thread(get)

    async def query(self, expr: str) -> dict[tuple[str, ...], float]:
        """An instant vector as {label values in label-name order: value}."""
        data = await self.api("query", query=expr)
        return {
            tuple(v for _, v in sorted(s["metric"].items())): float(s["value"][1])
            for s in data["result"]
        }


@asynccontextmanager
async def prometheus(target: str) -> AsyncIterator[Prometheus]:
    """A server in a directory of its own, outside pytest's (which its user could not reach)."""
    with tempfile.TemporaryDirectory(prefix="gateway-prometheus-") as workdir:
        server = Prometheus(Path(workdir), target)
        try:
            await server.start()
            yield server
        finally:
            await server.stop()


@pytest.fixture(scope="module")
async def env(deployment: Stack) -> Stack:
    await deployment.add_devices(list(DEVICES))
    deployment.devices[GHOST] = deployment.broker.add_user(GHOST)
    return deployment


async def send_load(env: Stack) -> None:
    """Good readings from two devices, a few bad messages, one unknown identity."""
    async with env.device("prom-a") as device:
        topic = "devices/prom-a/telemetry"
        await publish(device, topic, [reading(value=i) for i in range(DEVICES["prom-a"])])
        await publish(device, topic, [MALFORMED] * 3)
    async with env.device("prom-b") as device:
        topic = "devices/prom-b/telemetry"
        await publish(device, topic, [reading(value=i) for i in range(DEVICES["prom-b"])])
        await publish(device, topic, [INVALID] * 2)
    async with env.device(GHOST) as device:
        await publish(device, f"devices/{GHOST}/telemetry", [reading()])


async def settle(
    server: Prometheus, expr: str, expected: dict[tuple[str, ...], float]
) -> dict[tuple[str, ...], float]:
    """Query until Prometheus reports exactly `expected` (or fail with what it has)."""
    deadline = time.monotonic() + WAIT
    while True:
        got = await server.query(expr)
        if got == expected or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.5)


async def test_prometheus_counts_exactly_what_was_sent_and_loads_the_rules(env: Stack) -> None:
    gateway = Gateway(env.config())
    await gateway.start()
    try:
        assert gateway.http is not None
        async with prometheus(f"127.0.0.1:{gateway.http.port}") as server:
            assert server.process is not None
            status = await asyncio.to_thread(Path(f"/proc/{server.process.pid}/status").read_text)
            (uids,) = [line.split()[1:] for line in status.splitlines() if line.startswith("Uid:")]
            assert "0" not in uids  # never root, even when the tests are
            await send_load(env)
            good = sum(DEVICES.values())
            rows = await settle(
                server,
                "sum by (role, table) (gateway_rows_written_total)",
                {("telemetry_ingest", "ingest.telemetry"): good},
            )
            assert rows == {("telemetry_ingest", "ingest.telemetry"): good}
            rejects = await settle(
                server,
                "sum by (reason) (gateway_messages_rejected_total)",
                {("malformed_json",): 3, ("invalid_reading",): 2, ("unknown_identity",): 1},
            )
            assert rejects == {
                ("malformed_json",): 3,
                ("invalid_reading",): 2,
                ("unknown_identity",): 1,
            }
            received = await server.query("sum by (source) (gateway_messages_received_total)")
            assert received == {("mosquitto",): good + 3 + 2 + 1}
            assert await server.query('count(up{job="gateway"} == 1)') == {(): 1}

            await assert_rules_loaded(server)
            # Recording rules see the real label sets (values need more than one scrape).
            recorded = await settle(
                server,
                "count by (reason) (source_reason:gateway_messages_rejected:rate5m)",
                {("malformed_json",): 1, ("invalid_reading",): 1, ("unknown_identity",): 1},
            )
            assert set(recorded) == {
                ("malformed_json",),
                ("invalid_reading",),
                ("unknown_identity",),
            }
            assert await server.query(
                "count by (role) (role_table:gateway_rows_written:rate5m)"
            ) == {("telemetry_ingest",): 1}
            # Held rows and their limit come from the same target: one ratio, below the limit.
            held = await settle(
                server, "count(instance:gateway_buffer_held_rows:ratio < 1)", {(): 1}
            )
            assert held == {(): 1}
            assert await server.query("min(gateway_readiness_check) * sum(gateway_ready)") == {
                (): 1
            }
            firing = await server.api("alerts")
            assert [a for a in firing["alerts"] if a["state"] == "firing"] == []
    finally:
        await gateway.stop()


async def assert_rules_loaded(server: Prometheus) -> None:
    """Every shipped group and rule is loaded and, once evaluated, healthy."""
    shipped = yaml.safe_load(RULES.read_text())["groups"]
    deadline = time.monotonic() + WAIT
    while True:
        groups = (await server.api("rules"))["groups"]
        health = {
            (group["name"], rule["name"]): (rule["health"], rule.get("lastError", ""))
            for group in groups
            for rule in group["rules"]
        }
        evaluated = all(state != "unknown" for state, _ in health.values())
        if evaluated or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert sorted(g["name"] for g in groups) == sorted(g["name"] for g in shipped)
    expected = {
        (group["name"], rule.get("record") or rule["alert"])
        for group in shipped
        for rule in group["rules"]
    }
    assert set(health) == expected
    broken = {rule: state for rule, state in health.items() if state != ("ok", "")}
    assert not broken, f"rules not evaluating cleanly: {broken}"
