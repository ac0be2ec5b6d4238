"""Launchers fail fast, with the service's own words, when a process dies or never listens, and
leave nothing behind when their own process dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.services._process import LocalService, ServiceError, ServiceProcess, free_port
from gateway.services.watchdog import runs_in


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


# A launcher in a process of its own, holding one scripted server until it is killed.
LAUNCHER = """
import asyncio, sys
from tests.unit.test_service_process import LISTENER, Scripted

async def main() -> None:
    async with Scripted(LISTENER) as service:
        assert service._process is not None
        print(service._process.process.pid, service.directory, flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""
LISTENER = (
    "import socket, time; s = socket.socket(); "
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
    "s.bind(('127.0.0.1', PORT)); s.listen(); time.sleep(60)"
)


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def wait_until(check: Callable[[], bool], timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_server_and_its_directory_do_not_outlive_a_killed_launcher(sig: int) -> None:
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    assert launcher.stdout is not None
    pid_text, directory_text = launcher.stdout.readline().split()
    pid, directory = int(pid_text), Path(directory_text)
    assert not gone(pid) and directory.is_dir()
    launcher.send_signal(sig)
    assert launcher.wait(10) == -sig
    launcher.stdout.close()
    assert wait_until(lambda: gone(pid)), f"server {pid} outlived its launcher"
    assert wait_until(lambda: not directory.exists()), f"{directory} outlived its launcher"


def test_the_watchdog_recognises_only_processes_inside_the_directory(tmp_path: Path) -> None:
    assert runs_in(os.getpid(), Path.cwd())
    assert not runs_in(os.getpid(), tmp_path)
    assert not runs_in(2**22 + 1, Path.cwd())  # above the kernel's pid_max: no such process
