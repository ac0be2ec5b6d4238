"""`make demo` runs the whole product on embedded services and reports what happened, route by
route (sensors' telemetry and state, environment sensors' wide rows from JSON and MessagePack);
`--hold` keeps them up for commands that run as printed, and nothing outlives the demo however
it ends."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).parents[2]
INTERRUPTED = 130  # what Ctrl-C gives


def demo_argv(*options: str) -> list[str]:
    return [sys.executable, "-m", "gateway.cli", "demo", *options]


def number(text: str) -> int:
    return int(text.replace(",", ""))


# amqtt is what a machine without Mosquitto gets: MQTT 3.1.1, the gateway's compatibility transport.
@pytest.mark.parametrize("broker", ["mosquitto", "amqtt"])
def test_demo_runs_the_gateway_end_to_end(broker: str) -> None:
    done = subprocess.run(
        demo_argv("--devices", "10", "--rate", "500", "--duration", "3", "--broker", broker),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    written = {
        table: number(rows)
        for rows, table in re.findall(
            r"written\s+([\d,]+) rows as telemetry_ingest into (\S+)", out
        )
    }
    expected = re.search(r"expected\s+([\d,]+) rows", out)
    assert expected and set(written) == {"ingest.telemetry", "ingest.environment"}, out
    assert sum(written.values()) == number(expected[1])  # every accepted message landed
    assert re.search(
        r"upserted\s+[1-9][\d,]* states as state_writer into ingest.device_state", out
    ), out
    assert_routes(out, written, sensors=10)
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
    assert "demo --hold" in out


def assert_routes(out: str, written: dict[str, int], sensors: int) -> None:
    """The per-route section: the rows of each route, one state per sensor, a sample state."""
    routes = out.partition("\nRoutes\n")[2]
    telemetry = re.search(
        r"telemetry\s+stream telemetry -> ingest.telemetry: ([\d,]+) rows", routes
    )
    table = re.search(
        r"table\s+streams env, envpack \(msgpack\) -> ingest.environment: ([\d,]+) rows "
        r"\(([\d,]+) from MessagePack\)",
        routes,
    )
    state = re.search(
        r"state\s+stream telemetry -> ingest.device_state: ([\d,]+) rows, one per device, "
        r"each its newest reading",
        routes,
    )
    assert telemetry and table and state, out
    assert number(telemetry[1]) == written["ingest.telemetry"] > 0
    assert number(table[1]) == written["ingest.environment"] > number(table[2]) > 0
    assert number(state[1]) == sensors  # one row per sensor, none for the environment sensors
    assert re.search(r"sample\s+sensor-\d{4}'s state as of \S+: \{.*\"metric\"", routes), out


def test_the_last_progress_line_agrees_with_the_summary() -> None:
    done = subprocess.run(
        demo_argv("--devices", "10", "--rate", "500", "--duration", "3"),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    progress, _, summary = done.stdout.partition("\nSummary\n")
    lines = re.findall(
        r"^\s+([\d.]+) s\s+published\s+([\d,]+)\s+refused by broker\s+([\d,]+)"
        r"\s+rows\s+([\d,]+) \(\s*([\d,]+)/s\)\s+rejects\s+([\d,]+)\s+buffered\s+([\d,]+)",
        progress,
        re.MULTILINE,
    )
    assert lines, done.stdout
    times = [float(line[0]) for line in lines]
    assert times == sorted(set(times)), f"a progress line repeats: {times}"
    published, _, rows, rate, rejects, buffered = (number(value) for value in lines[-1][1:])
    written = sum(number(n) for n in re.findall(r"written\s+([\d,]+) rows", summary))
    rejected = sum(number(n) for n in re.findall(r"rejected\s+([\d,]+) x", summary))
    fleet = re.search(r"fleet\s+([\d,]+) messages in ([\d.]+) s", summary)
    assert fleet, summary
    assert (rows, rejects, buffered) == (written, rejected, 0), done.stdout
    assert published == number(fleet[1]), done.stdout
    # The run's average, not a last interval's spike or zero.
    assert 0 < rate <= number(fleet[1]) / float(fleet[2]), done.stdout


@pytest.fixture
def scratch() -> Iterator[Path]:
    """The held demo's TMPDIR, so its services' folders are found; readable by the PostgreSQL
    server's own OS user (pytest's tmp_path is not)."""
    path = Path(tempfile.mkdtemp(prefix="gateway-demo-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


class HeldDemo:
    """`gateway demo --hold` in a subprocess, read until it holds."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.process = subprocess.Popen(
            demo_argv("--hold", "--devices", "5", "--rate", "200", "--duration", "1"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPOSITORY,
            env={**os.environ, "TMPDIR": str(scratch)},
        )
        self.output = ""
        self.commands: list[str] = []
        assert self.process.stdout is not None
        while not self.output.rstrip().endswith("grep ^gateway_"):
            line = self.process.stdout.readline()
            assert line, f"the demo ended before it held:\n{self.output}"
            self.output += line
            if self.commands or "services stay up" in line:
                self.commands.append(line.strip())
        self.commands = self.commands[1:]

    def services(self) -> list[str]:
        """Command lines of live processes working in the demo's folders (servers, watchdogs)."""
        found = []
        for entry in Path("/proc").iterdir():
            try:
                argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, ValueError):
                continue
            if str(self.scratch) in argv and entry.name != str(self.process.pid):
                found.append(argv)
        return found

    def end(self, sig: int) -> int:
        self.process.send_signal(sig)
        code = self.process.wait(60)
        assert self.process.stdout is not None
        self.output += self.process.stdout.read()
        self.process.stdout.close()
        return code


def settled(check: Callable[[], object], timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_held_demo_stops_cleanly_on_ctrl_c_and_sigterm(sig: int, scratch: Path) -> None:
    demo = HeldDemo(scratch)
    assert demo.services(), "the held demo's services are not found"
    assert sorted(p.name.split("-")[1] for p in scratch.iterdir()) == ["mosquitto", "postgres"]
    assert demo.end(sig) == INTERRUPTED, demo.output
    assert "Traceback" not in demo.output, demo.output
    assert settled(lambda: not demo.services()), demo.services()
    assert list(scratch.iterdir()) == []


def test_nothing_outlives_a_killed_demo(scratch: Path) -> None:
    demo = HeldDemo(scratch)
    assert demo.end(signal.SIGKILL) == -signal.SIGKILL
    assert settled(lambda: not demo.services()), demo.services()
    assert settled(lambda: not list(scratch.iterdir())), list(scratch.iterdir())


def test_what_a_held_demo_prints_runs_as_printed(scratch: Path) -> None:
    demo = HeldDemo(scratch)
    try:
        assert any(
            line.startswith("export GATEWAY_ADMIN_DSN=postgresql://") for line in demo.commands
        )
        curl = demo.commands.pop()
        assert curl.startswith("curl -s http://127.0.0.1:")
        # In a shell with nothing set up, from the folder where the demo ran: no `gateway` on
        # PATH (the virtualenv is not active) and no system psql.
        env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")}
        shell = subprocess.run(
            ["bash", "-e", "-c", "\n".join(demo.commands)],
            capture_output=True,
            text=True,
            cwd=REPOSITORY,
            env=env,
            timeout=120,
            check=False,
        )
        assert shell.returncode == 0, "\n".join([*demo.commands, shell.stdout, shell.stderr])
        assert "No changes: the database matches the declaration." in shell.stdout
        assert re.search(r"sensor-0000\s+device\s+telemetry_ingest\s+active", shell.stdout)
        assert re.search(r"count\s*\n-+\s*\n\s*\d+", shell.stdout), shell.stdout
        assert re.search(r"identity\s*\|\s*state\s*\|\s*updated_at", shell.stdout)
        url = curl.split()[2]
        with urllib.request.urlopen(url, timeout=10) as response:
            assert b"gateway_messages_received_total" in response.read()
    finally:
        demo.end(signal.SIGTERM)
