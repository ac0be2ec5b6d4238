"""`make demo` runs the whole product on embedded services and reports what happened."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest


# amqtt is what a machine without Mosquitto gets: MQTT 3.1.1, the gateway's compatibility transport.
@pytest.mark.parametrize("broker", ["mosquitto", "amqtt"])
def test_demo_runs_the_gateway_end_to_end(broker: str) -> None:
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
            "--broker",
            broker,
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
    assert re.search(rf"{broker}\s+127\.0\.0\.1:\d+", out), out
    if broker == "mosquitto":
        spoofing = re.search(r"spoofing\s+([\d,]+) attempts, ([\d,]+) refused by the broker", out)
        assert spoofing and spoofing[1] == spoofing[2] != "0", out
    else:
        # MQTT 3.1.1 cannot refuse: the broker drops spoofs, so written == expected says it all.
        assert re.search(r"spoofing\s+[1-9][\d,]* attempts, dropped by the broker", out), out
        assert "none got through" in out
    assert re.search(r"rejected\s+[\d,]+ x malformed_json", out), out
    assert "latency      p50" in out
    assert re.search(r"rows\s+[\d,]+ \(\s*[\d,]+/s\)\s+rejects\s+[\d,]+\s+buffered", out), out
