"""The HTTP server's bounds: the connection cap, the head's deadline and size, and what it
answers to anything but GET or HEAD of its three paths."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry, Counter

from gateway.http import HEAD_LIMIT, HttpServer

TIMEOUT = 0.5


@pytest.fixture
async def server() -> AsyncIterator[HttpServer]:
    registry = CollectorRegistry()
    refused = Counter("refused", "closed at accept", registry=registry)
    running = HttpServer(
        "127.0.0.1",
        0,
        registry=registry,
        readiness=lambda: {"pools": True},
        max_connections=2,
        timeout=TIMEOUT,
        on_refused=refused.inc,
    )
    await running.start()
    yield running
    await running.close()


def exchange(port: int, request: bytes) -> bytes:
    """Send `request`, return everything the server answers before it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        return read_to_end(sock)


def read_to_end(sock: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def refused_total(port: int) -> float:
    answer = exchange(port, b"GET /metrics HTTP/1.1\r\n\r\n")
    (line,) = [x for x in answer.split(b"\n") if x.startswith(b"refused_total ")]
    return float(line.split()[1])


@pytest.mark.parametrize(
    ("request_line", "status"),
    [
        (b"GET /healthz", b"200"),
        (b"GET /readyz?verbose", b"200"),
        (b"GET /metrics", b"200"),
        (b"POST /metrics", b"405"),
        (b"DELETE /healthz", b"405"),
        (b"GET /", b"404"),
        (b"POST /admin", b"404"),
    ],
)
async def test_answers_get_of_its_paths_and_refuses_the_rest(
    server: HttpServer, request_line: bytes, status: bytes
) -> None:
    answer = await asyncio.to_thread(exchange, server.port, request_line + b" HTTP/1.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 " + status + b" ")


async def test_head_answers_the_headers_of_get_without_the_body(server: HttpServer) -> None:
    get = await asyncio.to_thread(exchange, server.port, b"GET /readyz HTTP/1.1\r\n\r\n")
    head = await asyncio.to_thread(exchange, server.port, b"HEAD /readyz HTTP/1.1\r\n\r\n")
    headers, _, body = get.partition(b"\r\n\r\n")
    assert body and head == headers + b"\r\n\r\n"


async def test_a_head_over_the_limit_is_refused(server: HttpServer) -> None:
    flood = b"GET /healthz HTTP/1.1\r\nX-Pad: " + b"a" * (2 * HEAD_LIMIT)
    answer = await asyncio.to_thread(exchange, server.port, flood)
    assert answer.startswith(b"HTTP/1.1 431 ")


def hold_idle(port: int, count: int) -> list[socket.socket]:
    """`count` connections that send nothing (accepted in the order they were made)."""
    return [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(count)]


async def test_connections_over_the_cap_are_closed_and_counted_until_idle_ones_time_out(
    server: HttpServer,
) -> None:
    idle = await asyncio.to_thread(hold_idle, server.port, 2)
    try:
        # The cap is full of sockets that say nothing: the next one is closed at once.
        answer = await asyncio.to_thread(exchange, server.port, b"GET /healthz HTTP/1.1\r\n\r\n")
        assert answer == b""
        # The idle ones are dropped at the deadline, unanswered, and their slots come back.
        for sock in idle:
            assert await asyncio.to_thread(read_to_end, sock) == b""
    finally:
        for sock in idle:
            sock.close()
    answer = await asyncio.to_thread(exchange, server.port, b"GET /healthz HTTP/1.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert await asyncio.to_thread(refused_total, server.port) == 1


def trickle(port: int, request: bytes) -> tuple[int, bytes]:
    """Send `request` a byte at a time, 0.1 s apart; returns how many bytes went out before
    the server hung up, and what it answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        for sent, byte in enumerate(request):
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                return sent, b""
            time.sleep(0.1)
        return len(request), read_to_end(sock)


async def test_a_client_sending_its_head_byte_by_byte_is_dropped(server: HttpServer) -> None:
    request = b"GET /healthz HTTP/1.1\r\nUser-Agent: " + b"s" * 200 + b"\r\n\r\n"
    sent, answer = await asyncio.to_thread(trickle, server.port, request)
    assert sent < len(request) and answer == b""
    # and it held no slot after: the server still answers
    answer = await asyncio.to_thread(exchange, server.port, b"GET /healthz HTTP/1.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")


async def test_an_address_in_use_fails_start() -> None:
    registry = CollectorRegistry()
    first = HttpServer("127.0.0.1", 0, registry=registry, readiness=dict)
    await first.start()
    try:
        second = HttpServer("127.0.0.1", first.port, registry=registry, readiness=dict)
        with pytest.raises(OSError):
            await second.start()
        await second.close()
    finally:
        await first.close()
