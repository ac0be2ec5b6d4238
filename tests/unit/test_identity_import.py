"""Parsing import files: every bad line reported with its number, formats told apart."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.identities.importer import (
    ImportFileError,
    ImportRow,
    LineError,
    detect_format,
    parse,
    read,
)
from gateway.identities.model import IdentityError


def errors(text: str, fmt: str = "csv") -> dict[int, str]:
    return {error.line: error.message for error in parse(text, fmt).errors}  # type: ignore[arg-type]


def test_csv_columns_in_any_order_with_defaults() -> None:
    parsed = parse(
        'Role, Name ,attributes\ntelemetry_ingest, sensor-1 ,"{""a"": 1}"\n\nstate_writer,svc-1,\n',
        "csv",
    )
    assert parsed.errors == []
    assert parsed.rows == [
        ImportRow(2, "sensor-1", "telemetry_ingest", "device", '{"a": 1}'),
        ImportRow(4, "svc-1", "state_writer", "device", "{}"),
    ]


def test_csv_line_numbers_survive_multiline_fields() -> None:
    parsed = parse('name,role,attributes\nsensor-1,r,"{\n""a"": 1\n}"\nbad+name,r,\n', "csv")
    assert parsed.rows[0].line == 2
    assert parsed.errors == [LineError(5, parsed.errors[0].message)]
    assert "'+'" in parsed.errors[0].message


def test_every_bad_csv_line_is_reported() -> None:
    found = errors(
        "name,role,kind,attributes\n"
        "ok,r,device,\n"  # 2
        ",r,device,\n"  # 3
        "x/y,,robot,[1]\n"  # 4: several problems at once
        "ok,r,device,{bad json\n"  # 5
        "too,many,fields,{},here\n"  # 6
        "ok,r2,service,\n"  # 7: duplicate of line 2
    )
    assert sorted(found) == [3, 4, 5, 6, 7]
    assert found[3] == "name is missing"
    assert "'/'" in found[4] and "role is missing" in found[4] and "'robot'" in found[4]
    assert "attributes must be a JSON object" in found[4]
    assert "attributes are not valid JSON" in found[5]
    assert "expected 4 fields" in found[6]
    assert found[7] == "identity 'ok' is already on line 2"


@pytest.mark.parametrize(
    ("header", "says"),
    [
        ("name,rol\n", "unknown column(s) 'rol'"),
        ("name,kind\n", "missing column(s) role"),
        ("name,role,name\n", "named twice"),
        ("sensor-1,telemetry_ingest\n", "unknown column(s) 'sensor-1'"),
    ],
)
def test_csv_header_problems(header: str, says: str) -> None:
    found = errors("\n" + header + "a,b\n")
    assert list(found) == [2] and says in found[2]


def test_jsonl_rows_and_errors() -> None:
    parsed = parse(
        '{"name": "sensor-1", "role": "r", "attributes": {"floor": 3}}\n'
        "\n"
        '{"name": "svc-1", "role": "r", "kind": "service"}\n'
        "not json\n"
        "[1, 2]\n"
        '{"name": "x", "role": "r", "rol": "typo"}\n'
        '{"name": 7, "role": "r", "attributes": "{}"}\n'
        '{"name": "y", "role": "r", "kind": null, "attributes": null}\n',
        "jsonl",
    )
    assert parsed.rows == [
        ImportRow(1, "sensor-1", "r", "device", '{"floor":3}'),
        ImportRow(3, "svc-1", "r", "service", "{}"),
        ImportRow(8, "y", "r", "device", "{}"),
    ]
    found = {error.line: error.message for error in parsed.errors}
    assert sorted(found) == [4, 5, 6, 7]
    assert "not valid JSON" in found[4]
    assert "expected a JSON object" in found[5]
    assert "unknown key(s) 'rol'" in found[6]
    assert found[7] == "name must be a string"


def test_empty_files_are_refused() -> None:
    assert errors("") == {1: "no identities found"}
    assert errors("name,role\n") == {1: "no identities found"}
    assert errors("\n\n", "jsonl") == {1: "no identities found"}


def test_format_by_extension_then_content(tmp_path: Path) -> None:
    assert detect_format(Path("a.CSV"), "{") == "csv"
    assert detect_format(Path("a.ndjson"), "name,role") == "jsonl"
    assert detect_format(Path("a.txt"), '  {"name": "x"}') == "jsonl"
    assert detect_format(Path("a"), "name,role\n") == "csv"


def test_non_utf8_is_reported_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"name,role\nok,r\nsens\xf6r,r\n")
    with pytest.raises(ImportFileError) as failure:
        read(path)
    assert failure.value.errors == (LineError(3, "not UTF-8 text"),)


def test_unreadable_files_say_why(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match=r"cannot read .*missing.csv: No such file"):
        read(tmp_path / "missing.csv")
    with pytest.raises(IdentityError, match="Is a directory"):
        read(tmp_path)


def test_progress_is_reported_sparingly() -> None:
    seen: list[tuple[str, int, int]] = []
    text = "name,role\n" + "".join(f"n-{i},r\n" for i in range(10_000))
    parse(text, "csv", lambda *report: seen.append(report))
    assert 3 <= len(seen) <= 10
    assert seen[-1] == ("reading", 10_002, 10_002)
    assert all(phase == "reading" and done <= total for phase, done, total in seen)


def test_error_message_lists_all_lines_in_order() -> None:
    error = ImportFileError("f.csv", [LineError(9, "b"), LineError(3, "a")], note="known roles: r")
    assert (
        str(error)
        == "f.csv: 2 bad lines, nothing was imported:\n  line 3: a\n  line 9: b\nknown roles: r"
    )
