"""Pieces of `gateway identities` that need no database: options, attributes, the progress line."""

from __future__ import annotations

import io

import pytest

from gateway.cli.identities import ProgressLine, parse_attributes
from gateway.cli.main import parser
from gateway.identities.model import InvalidIdentityError


def test_attributes_are_strings_unless_given_as_json() -> None:
    assert parse_attributes(["site=berlin", "serial=007", "floor:=3", 'tags:=["a"]', "x=a=b"]) == {
        "site": "berlin",
        "serial": "007",
        "floor": 3,
        "tags": ["a"],
        "x": "a=b",
    }


@pytest.mark.parametrize("pair", ["novalue", "=x", ":=1", "bad:={"])
def test_bad_attributes(pair: str) -> None:
    with pytest.raises(InvalidIdentityError, match="--attr"):
        parse_attributes([pair])


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_redraws_one_line() -> None:
    stream = Terminal()
    progress = ProgressLine(stream)
    for done in range(0, 1001, 1):
        progress("reading", done, 1000)
    progress.finish()
    text = stream.getvalue()
    assert text.count("\r") == 101  # once per whole percent, not per call
    assert text.endswith("100%  1000/1000\n")


def test_progress_elsewhere_prints_a_line_per_ten_percent() -> None:
    stream = io.StringIO()
    progress = ProgressLine(stream)
    for done in range(0, 1001, 1):
        progress("staging", done, 1000)
    progress.finish()
    assert stream.getvalue().splitlines() == [f"staging {p}%" for p in range(0, 101, 10)]


@pytest.mark.parametrize("action", [["list"], ["show", "sensor-0001"]])
def test_reading_commands_take_no_actor(
    action: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parser().parse_args(["identities", *action, "--actor", "me"])
    assert exited.value.code == 2
    assert "unrecognized arguments: --actor me" in capsys.readouterr().err
    assert parser().parse_args(["identities", *action]).actor is None


@pytest.mark.parametrize(
    "action",
    [
        ["add", "meter-0001", "--role", "telemetry_ingest"],
        ["import", "fleet.csv"],
        ["assign", "meter-0001", "--role", "state_writer"],
        ["retire", "meter-0001"],
    ],
)
def test_changing_commands_name_their_actor(action: list[str]) -> None:
    assert parser().parse_args(["identities", *action, "--actor", "me"]).actor == "me"
