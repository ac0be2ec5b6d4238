"""`/metrics`, `/healthz` and `/readyz` over a tiny HTTP/1.1 server on a thread of its own.

Three fixed GET endpoints do not justify a web framework; Prometheus and Kubernetes probes send
simple requests and read the status code and body. The server runs its own event loop on its own
thread, so rendering `/metrics` (milliseconds for a large registry) and slow or hostile clients
never take time on the data plane's loop. What it reads of the gateway (readiness, the gauges
refreshed before a scrape) is still computed on the data plane's loop, where that state lives,
by a short hop with a bounded wait: a loop that does not answer in time is itself the answer
(not ready, not healthy), and a scrape then renders what the gauges last held.

Bounds, so that no client can hold the server: at most `max_connections` open at once (more are
closed at accept and counted), a request head of at most `HEAD_LIMIT` bytes, and `timeout`
seconds to send it and again to take the answer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import TypeVar

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["HEAD_LIMIT", "HttpServer"]

Readiness = Callable[[], dict[str, bool]]
T = TypeVar("T")

log = logging.getLogger(__name__)

HEAD_LIMIT = 8192
"""Bytes of request line and headers; probes and Prometheus send a few hundred."""

LOOP_WAIT = 0.5
"""Seconds a request waits for the data plane's loop to answer (probes time out at 1 s)."""

PATHS = ("/metrics", "/healthz", "/readyz")


class HttpServer:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        registry: CollectorRegistry,
        readiness: Readiness,
        before_scrape: Callable[[], None] = lambda: None,
        max_connections: int = 32,
        timeout: float = 5.0,
        on_refused: Callable[[], None] = lambda: None,
    ) -> None:
        self._host = host
        self._port = port
        self._registry = registry
        self._readiness = readiness
        self._before_scrape = before_scrape
        self._max_connections = max_connections
        self._timeout = timeout
        self._on_refused = on_refused
        self._data_loop: asyncio.AbstractEventLoop | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._bound: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._finished: concurrent.futures.Future[None] = concurrent.futures.Future()

    @property
    def port(self) -> int:
        return self._bound.result(timeout=0)

    async def start(self) -> None:
        """Bind and serve on a new thread; raises here if the address cannot be bound."""
        self._data_loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="gateway-http", daemon=True)
        self._thread.start()
        await asyncio.wrap_future(self._bound)

    async def close(self) -> None:
        """Stop accepting, end open connections, and let the thread finish."""
        if self._thread is None:
            return
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # its loop already ended
                loop.call_soon_threadsafe(stop.set)
        await asyncio.wrap_future(self._finished)
        self._thread.join()
        self._thread = None

    # -- the server's thread --------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            if not self._bound.done():
                self._bound.set_exception(exc)
        finally:
            self._finished.set_result(None)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        connections: set[asyncio.Task[None]] = set()

        def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if len(connections) >= self._max_connections:
                self._on_refused()
                writer.transport.abort()
                return
            task = asyncio.create_task(self._handle(reader, writer))
            connections.add(task)
            task.add_done_callback(connections.discard)

        server = await asyncio.start_server(accepted, self._host, self._port, limit=HEAD_LIMIT)
        self._bound.set_result(server.sockets[0].getsockname()[1])
        try:
            await self._stop.wait()
        finally:
            server.close()
            for task in connections:
                task.cancel()
            await asyncio.gather(*connections, return_exceptions=True)
            await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self._timeout)
            except asyncio.LimitOverrunError:
                answer = _answer("431 Request Header Fields Too Large", "text/plain", b"too long\n")
            else:
                method, _, rest = head.partition(b" ")
                path = rest.split(b" ", 1)[0].split(b"?", 1)[0].decode("latin-1")
                answer = await self._respond(method.decode("latin-1"), path)
            writer.write(answer)
            writer.close()  # after what is buffered is sent
            await asyncio.wait_for(writer.wait_closed(), self._timeout)
        except (TimeoutError, asyncio.IncompleteReadError, OSError):
            pass  # a client that is slow, gone or broken gets nothing more
        except Exception:
            log.exception("an HTTP request failed; the connection is closed unanswered")
        finally:
            writer.transport.abort()  # no-op once closed; else drops what the client did not take

    async def _respond(self, method: str, path: str) -> bytes:
        if path not in PATHS:
            return _answer("404 Not Found", "text/plain", b"not found\n")
        if method not in ("GET", "HEAD"):
            return _answer("405 Method Not Allowed", "text/plain", b"only GET or HEAD\n")
        status, content_type, body = await self._render(path)
        return _answer(status, content_type, body, with_body=method == "GET")

    async def _render(self, path: str) -> tuple[str, str, bytes]:
        if path == "/metrics":
            # Stale gauges beat no answer: Prometheus records the scrape either way.
            with contextlib.suppress(TimeoutError, RuntimeError):
                await self._on_data_loop(self._before_scrape)
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(self._registry)
        try:
            checks = await self._on_data_loop(self._readiness if path == "/readyz" else dict)
        except (TimeoutError, RuntimeError):
            checks = None  # the loop is stuck or gone: that is the answer
        if path == "/healthz":
            if checks is None:
                return "503 Service Unavailable", "text/plain", b"event loop not answering\n"
            return "200 OK", "text/plain", b"ok\n"
        checks = checks if checks is not None else {"event_loop": False}
        ready = all(checks.values())
        body = orjson.dumps({"ready": ready, "checks": checks}) + b"\n"
        return ("200 OK" if ready else "503 Service Unavailable"), "application/json", body

    async def _on_data_loop(self, call: Callable[[], T]) -> T:
        """`call()` run on the data plane's loop, waited for at most `LOOP_WAIT` seconds."""
        assert self._data_loop is not None
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if future.set_running_or_notify_cancel():  # not given up on meanwhile
                try:
                    future.set_result(call())
                except Exception as exc:
                    future.set_exception(exc)

        self._data_loop.call_soon_threadsafe(run)
        return await asyncio.wait_for(asyncio.wrap_future(future), LOOP_WAIT)


def _answer(status: str, content_type: str, body: bytes, *, with_body: bool = True) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + (body if with_body else b"")
