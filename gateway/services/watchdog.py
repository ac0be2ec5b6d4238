"""Stops a launcher's server and removes its directory when the launcher dies without doing so.

A launcher killed with SIGKILL (or crashing) runs no cleanup: its PostgreSQL or broker would
keep running in a temporary directory nobody removes. So each launcher starts this script beside
its service and keeps the write end of a pipe to it. Each line it writes names the server's
current process id (0: none running); `done` means it cleaned up itself. End of input without
`done` means the launcher is gone: the watchdog asks the server to stop as the launcher would
(its stop signal), kills it if it does not within a bound, and removes the directory.

    python -I watchdog.py DIRECTORY STOP_SIGNAL remove|keep

It imports only the standard library and runs by path, so it starts in a few milliseconds.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import time
from pathlib import Path

__all__ = ["main", "runs_in"]

STOP_TIMEOUT = 15.0


def runs_in(pid: int, directory: Path) -> bool:
    """Whether `pid` is a live process working inside `directory`.

    Every server is started with its directory as working directory (PostgreSQL moves into
    its data folder below it), so this tells our server from a process that got its id later.
    """
    try:
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return False
    return cwd == directory or directory in cwd.parents


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _stop(pid: int, directory: Path, stop_signal: int) -> None:
    if not runs_in(pid, directory):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, stop_signal)
    deadline = time.monotonic() + STOP_TIMEOUT
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        # Its own process group (it was started in a new session): helpers die with it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def main(argv: list[str]) -> None:
    # /proc shows working directories with symbolic links resolved.
    directory, stop_signal, mode = Path(argv[0]).resolve(), int(argv[1]), argv[2]
    pid = 0
    for line in sys.stdin:
        word = line.strip()
        if word == "done":
            return
        pid = int(word)
    if pid:
        _stop(pid, directory, stop_signal)
    if mode == "remove":
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
