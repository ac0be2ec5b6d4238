"""Launchers fail fast, with the service's own words, when a process dies or never listens."""

from __future__ import annotations

import sys

import pytest

from gateway.services._process import LocalService, ServiceError, ServiceProcess, free_port


class Scripted(LocalService):
    """A 'service' that runs a Python snippet, standing in for a real server's failure modes."""

    name = "scripted"

    def __init__(self, code: str, timeout: float = 5) -> None:
        super().__init__()
        self.code = code
        self.port = free_port()
        self.timeout = timeout

    async def _prepare(self) -> None:
        (self.directory / "prepared").touch()

    async def _launch(self) -> ServiceProcess:
        argv = [sys.executable, "-c", self.code.replace("PORT", str(self.port))]
        return await self._spawn_and_wait(argv, self.port, timeout=self.timeout)


async def test_a_process_that_exits_fails_with_its_log_tail() -> None:
    service = Scripted(
        "import sys; print('FATAL: bad setting frobnicate', flush=True); sys.exit(3)"
    )
    with pytest.raises(
        ServiceError, match=r"(?s)exited with code 3.*FATAL: bad setting frobnicate"
    ):
        async with service:
            pass
    assert not service._dir or not service._dir.exists()  # cleaned up after failure


async def test_a_process_that_never_listens_times_out_with_its_log() -> None:
    service = Scripted("import time; print('still warming up', flush=True); time.sleep(60)", 1)
    with pytest.raises(ServiceError, match=r"(?s)did not listen.*still warming up"):
        async with service:
            pass


async def test_a_listening_process_is_ready_and_restartable() -> None:
    server = (
        "import socket, time; s = socket.socket(); "
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
        "s.bind(('127.0.0.1', PORT)); s.listen(); time.sleep(60)"
    )
    async with Scripted(server) as service:
        assert service.running
        assert (service.directory / "prepared").exists()
        await service.kill()
        assert not service.running
        await service.start()
        assert service.running
        directory = service.directory
    assert not directory.exists()
