"""`gateway demo` starts the embedded services, reports them, and cleans up."""

from __future__ import annotations

import subprocess
import sys


def test_demo_starts_embedded_services_and_stops() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "demo", "--for", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "PostgreSQL 127.0.0.1:" in done.stdout
    assert "Mosquitto  127.0.0.1:" in done.stdout
    assert "Stopped and cleaned up." in done.stdout
