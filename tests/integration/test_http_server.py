"""The gateway's HTTP endpoints, served off the data plane: on the configured address only,
capped, and answering while the data plane's loop is blocked."""

from __future__ import annotations

import asyncio
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator

import orjson
import pytest

from gateway.app import Gateway
from gateway.config import GatewayConfig, HttpConfig

from .stack import Stack


@pytest.fixture(scope="module")
async def env(deployment: Stack) -> Stack:
    return deployment


def get(host: str, port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def refused(gateway: Gateway) -> float:
    assert gateway.http is not None
    _, body = get("127.0.0.1", gateway.http.port, "/metrics")
    (line,) = [
        x for x in body.split(b"\n") if x.startswith(b"gateway_http_connections_refused_total ")
    ]
    return float(line.split()[1])


@pytest.fixture
async def capped(env: Stack) -> AsyncIterator[Gateway]:
    running = Gateway(env.config(http=HttpConfig(host="127.0.0.1", port=0, max_connections=2)))
    await running.start()
    yield running
    await running.stop()


def test_loopback_is_the_default_address() -> None:
    assert GatewayConfig.model_fields["http"].default.host == "127.0.0.1"


async def test_the_configured_address_is_the_only_one_bound(env: Stack) -> None:
    gateway = Gateway(env.config(http=HttpConfig(host="127.0.0.2", port=0)))
    await gateway.start()
    try:
        assert gateway.http is not None
        port = gateway.http.port
        assert (await asyncio.to_thread(get, "127.0.0.2", port, "/healthz"))[0] == 200
        with pytest.raises(urllib.error.URLError) as refused_there:
            await asyncio.to_thread(get, "127.0.0.1", port, "/healthz")
        assert isinstance(refused_there.value.reason, ConnectionRefusedError)
    finally:
        await gateway.stop()


def read_to_end(sock: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def fill_and_knock(port: int, count: int) -> tuple[list[socket.socket], bytes]:
    """`count` idle connections, then one more that asks for /healthz: what it was answered."""
    idle = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(count)]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as extra:
        extra.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        return idle, read_to_end(extra)


async def test_idle_sockets_fill_the_cap_only_until_their_deadline(capped: Gateway) -> None:
    assert capped.http is not None
    port = capped.http.port
    # A fresh gateway: nothing refused yet, no connection open.
    idle, answer = await asyncio.to_thread(fill_and_knock, port, 2)
    try:
        assert answer == b""  # closed at accept
        for sock in idle:  # each dropped at the read deadline, unanswered
            assert await asyncio.to_thread(read_to_end, sock) == b""
    finally:
        for sock in idle:
            sock.close()
    assert (await asyncio.to_thread(get, "127.0.0.1", port, "/healthz"))[0] == 200
    assert await asyncio.to_thread(refused, capped) == 1


async def test_metrics_render_while_the_data_plane_loop_is_blocked(gateway: Gateway) -> None:
    assert gateway.http is not None
    port = gateway.http.port
    blocked = threading.Event()
    answered = threading.Event()
    answers: dict[str, tuple[int, bytes]] = {}
    in_time: list[bool] = []

    def scrape() -> None:
        blocked.wait(30)
        for path in ("/metrics", "/readyz", "/healthz"):
            answers[path] = get("127.0.0.1", port, path)
        answered.set()

    def block() -> None:
        blocked.set()
        # The loop turns no further until the scrapes are answered (or 30 s have gone).
        in_time.append(answered.wait(30))

    scraper = threading.Thread(target=scrape)
    scraper.start()
    asyncio.get_running_loop().call_soon(block)
    await asyncio.sleep(0)
    await asyncio.to_thread(scraper.join)
    assert in_time == [True]
    status, body = answers["/metrics"]
    assert status == 200 and b"gateway_messages_received_total" in body
    # A loop that does not turn is neither ready nor healthy, and the probes say so.
    status, body = answers["/readyz"]
    assert status == 503 and orjson.loads(body)["checks"] == {"event_loop": False}
    assert answers["/healthz"][0] == 503
    # Once it turns again, so do they.
    status, body = await asyncio.to_thread(get, "127.0.0.1", port, "/readyz")
    assert status == 200 and orjson.loads(body)["checks"]["source:mosquitto"] is True
