"""`make demo` runs the whole product on embedded services and reports what happened."""

from __future__ import annotations

import re
import subprocess
import sys


def test_demo_runs_the_gateway_end_to_end() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "demo",
            "--devices",
            "10",
            "--rate",
            "500",
            "--duration",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    written = re.search(r"written\s+([\d,]+) rows as telemetry_ingest", out)
    expected = re.search(r"expected\s+([\d,]+) rows", out)
    assert written and expected, out
    assert written[1] == expected[1]  # every accepted message landed
    spoofing = re.search(r"spoofing\s+([\d,]+) attempts, ([\d,]+) refused by the broker", out)
    assert spoofing and spoofing[1] == spoofing[2], out
    assert re.search(r"rejected\s+[\d,]+ x malformed_json", out), out
    assert "latency      p50" in out
