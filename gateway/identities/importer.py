"""Bulk import of identities from CSV or JSON Lines: all or nothing, fast enough for 100,000.

The whole file is parsed and checked first and every bad line is reported with its number, so
one run shows everything to fix. Only then are the rows staged with COPY into a temporary table
and moved into `gateway.identities` by one statement that also writes their audit records, in
one transaction: set-based SQL instead of a round trip per identity is what makes it fast.

CSV files start with a header naming the columns: `name,role[,kind][,attributes]` in any order,
attributes being a JSON object. JSON Lines files hold one object a line with the keys `name`,
`role`, and optionally `kind` and `attributes`. Blank lines are ignored in both.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import asyncpg
import orjson

from gateway.identities.model import (
    IdentityError,
    IdentityNameError,
    InvalidIdentityError,
    Kind,
    validate_identity_name,
    validate_kind,
)

__all__ = [
    "Format",
    "ImportFileError",
    "ImportResult",
    "ImportRow",
    "LineError",
    "Parsed",
    "Progress",
    "detect_format",
    "import_file",
    "import_rows",
    "parse",
    "read",
]

Format = Literal["csv", "jsonl"]
Progress = Callable[[str, int, int], None]
"""Called as (phase, done, total) while an import runs; phases: reading, staging, inserting."""

FIELDS = ("name", "role", "kind", "attributes")
REQUIRED = ("name", "role")
EXTENSIONS: dict[str, Format] = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
# Progress is reported every so many rows: often enough to move a bar, rarely enough to cost
# nothing next to parsing.
PROGRESS_EVERY = 2000

STAGE = """
CREATE TEMPORARY TABLE identity_import (
    line       integer NOT NULL,
    name       text NOT NULL,
    kind       text NOT NULL,
    role       text NOT NULL,
    role_id    text NOT NULL,
    attributes jsonb NOT NULL
) ON COMMIT DROP
"""
EXISTING = """
SELECT t.line, t.name FROM identity_import t
  JOIN gateway.identities i ON i.name = t.name
 ORDER BY t.line
"""
DROP_EXISTING = """
DELETE FROM identity_import t USING gateway.identities i WHERE i.name = t.name
"""
# One statement moves the identities and appends one audit record for each row it inserted
# (through the trail's own function, which stamps and chains it);
# ON CONFLICT covers identities added by someone else since the check above (the caller then
# tells the two modes apart by the count). Inserting in name order keeps the primary-key
# index writes local.
MOVE = """
WITH added AS (
    INSERT INTO gateway.identities (name, kind, role_id, attributes)
    SELECT name, kind, role_id, attributes FROM identity_import ORDER BY name
    ON CONFLICT (name) DO NOTHING
    RETURNING name, kind, role_id, status, attributes
)
SELECT count(gateway.append_audit(
           $1, 'identity.import', a.name, NULL,
           jsonb_build_object('kind', a.kind, 'role', r.name, 'role_id', a.role_id,
                              'status', a.status, 'attributes', a.attributes,
                              'source', $2::text)))
  FROM added a JOIN gateway.roles r ON r.id = a.role_id
"""


@dataclass(frozen=True, slots=True)
class ImportRow:
    """One identity to import, with the line it came from; attributes as JSON object text."""

    line: int
    name: str
    role: str
    kind: Kind
    attributes: str


@dataclass(frozen=True, slots=True)
class LineError:
    """Why one line of an import file cannot be imported."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass
class Parsed:
    """The good rows of a file and the errors of its bad lines."""

    rows: list[ImportRow] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What an import did: identities added, and those skipped because they existed."""

    imported: int
    skipped: int
    names: tuple[str, ...] = ()
    """The names this import registered (those added by someone else meanwhile included)."""


class ImportFileError(IdentityError):
    """An import file has bad lines (all listed, by line number); nothing was imported."""

    def __init__(self, source: str, errors: Sequence[LineError], note: str | None = None) -> None:
        self.source = source
        self.errors = tuple(sorted(errors, key=lambda error: error.line))
        count = len(self.errors)
        lines = "\n".join(f"  {error}" for error in self.errors)
        tail = f"\n{note}" if note else ""
        super().__init__(
            f"{source}: {count} bad line{'s' if count != 1 else ''}, "
            f"nothing was imported:\n{lines}{tail}"
        )


def detect_format(path: Path, text: str) -> Format:
    """By extension (.csv, .jsonl, .ndjson), else by content: JSON Lines start with '{'."""
    known = EXTENSIONS.get(path.suffix.lower())
    if known is not None:
        return known
    return "jsonl" if text.lstrip().startswith("{") else "csv"


def parse(
    text: str, fmt: Format, progress: Progress | None = None, *, allow_empty: bool = False
) -> Parsed:
    """Parse and validate every line; duplicates within the text are errors too."""
    parsed = Parsed()
    total = text.count("\n") + 1
    records = _csv_records(text, parsed) if fmt == "csv" else _jsonl_records(text)
    first_line: dict[str, int] = {}
    for count, (line, values) in enumerate(records, 1):
        if progress is not None and count % PROGRESS_EVERY == 0:
            progress("reading", min(line, total), total)
        if isinstance(values, str):
            parsed.errors.append(LineError(line, values))
            continue
        row, problems = _check(line, values)
        if row is not None:
            seen = first_line.setdefault(row.name, line)
            if seen != line:
                problems.append(f"identity {row.name!r} is already on line {seen}")
        if problems:
            parsed.errors.append(LineError(line, "; ".join(problems)))
        elif row is not None:
            parsed.rows.append(row)
    if progress is not None:
        progress("reading", total, total)
    if not parsed.rows and not parsed.errors and not allow_empty:
        parsed.errors.append(LineError(1, "no identities found"))
    return parsed


Record = tuple[int, dict[str, Any] | str]
"""A line number with the fields found there, or with why none could be read."""


def _csv_records(text: str, parsed: Parsed) -> Iterator[Record]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    end = 0
    for values in reader:
        line, end = end + 1, reader.line_num
        if not any(value.strip() for value in values):
            continue
        if header is None:
            header = [value.strip().lower() for value in values]
            problem = _check_header(header)
            if problem:
                # Without a usable header no line can be read: this one error says it all.
                parsed.errors.append(LineError(line, problem))
                return
            continue
        if len(values) != len(header):
            yield line, f"expected {len(header)} fields ({','.join(header)}), found {len(values)}"
            continue
        yield line, dict(zip(header, values, strict=True))


def _check_header(header: list[str]) -> str | None:
    expected = "the first line must name the columns: name,role[,kind][,attributes]"
    unknown = [column for column in header if column not in FIELDS]
    if unknown:
        return f"unknown column(s) {', '.join(map(repr, unknown))}; {expected}"
    missing = [column for column in REQUIRED if column not in header]
    if missing:
        return f"missing column(s) {', '.join(missing)}; {expected}"
    if len(set(header)) != len(header):
        return f"a column is named twice; {expected}"
    return None


def _jsonl_records(text: str) -> Iterator[Record]:
    for line, content in enumerate(text.split("\n"), 1):
        if not content.strip():
            continue
        try:
            values = orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            yield line, f"not valid JSON ({exc})"
            continue
        if not isinstance(values, dict):
            yield line, "expected a JSON object with name, role, kind, attributes"
            continue
        unknown = [key for key in values if key not in FIELDS]
        if unknown:
            yield line, f"unknown key(s) {', '.join(map(repr, unknown))}"
            continue
        yield line, values


def _check(line: int, values: dict[str, Any]) -> tuple[ImportRow | None, list[str]]:
    """The row the values describe, or every problem with them."""
    problems: list[str] = []
    name = _text(values.get("name"), "name", problems)
    if name is not None:
        try:
            validate_identity_name(name)
        except IdentityNameError as exc:
            problems.append(str(exc))
    role = _text(values.get("role"), "role", problems)
    kind = _kind(values.get("kind"), problems)
    attributes, problem = _attributes(values.get("attributes"))
    if problem:
        problems.append(problem)
    if problems or name is None or role is None or kind is None:
        return None, problems
    return ImportRow(line, name, role, kind, attributes), problems


def _text(value: Any, label: str, problems: list[str]) -> str | None:
    """A required text field, stripped (CSV cells often carry stray spaces)."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    problems.append(f"{label} is missing" if not value else f"{label} must be a string")
    return None


def _kind(value: Any, problems: list[str]) -> Kind | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return "device"
    try:
        return validate_kind(value.strip() if isinstance(value, str) else repr(value))
    except InvalidIdentityError as exc:
        problems.append(str(exc))
        return None


def _attributes(value: Any) -> tuple[str, str | None]:
    """Attributes as JSON object text: CSV gives text to check, JSON Lines an object to dump."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return "{}", None
    if isinstance(value, str):
        try:
            decoded = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            return "", f"attributes are not valid JSON ({exc})"
        if not isinstance(decoded, dict):
            return "", "attributes must be a JSON object"
        return value, None
    if isinstance(value, dict):
        return orjson.dumps(value).decode(), None
    return "", "attributes must be a JSON object"


def read(path: Path) -> str:
    """The file's text; a file that is not UTF-8 is reported with the line of the first bad byte."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise IdentityError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ImportFileError(str(path), [LineError(line, "not UTF-8 text")]) from exc


async def import_file(
    conn: asyncpg.Connection,
    actor: str,
    path: Path,
    *,
    skip_existing: bool = False,
    progress: Progress | None = None,
) -> ImportResult:
    """Import every identity in the file, or none: raises ImportFileError listing all bad lines.

    With `skip_existing`, names already registered are skipped (and counted) instead of being
    errors; they are left as they are, even if the file gives them another role.
    """
    text = read(path)
    parsed = parse(text, detect_format(path, text), progress)
    return await import_rows(
        conn,
        actor,
        parsed,
        source=str(path),
        skip_existing=skip_existing,
        progress=progress,
    )


async def import_rows(
    conn: asyncpg.Connection,
    actor: str,
    parsed: Parsed,
    *,
    source: str,
    skip_existing: bool = False,
    progress: Progress | None = None,
) -> ImportResult:
    """Stage the parsed rows and move them in one transaction, unless any line is bad."""
    errors = list(parsed.errors)
    roles = {
        row["name"]: row["id"]
        for row in await conn.fetch(
            "SELECT name, id FROM gateway.roles WHERE removed_at IS NULL ORDER BY name"
        )
    }
    staged = []
    for row in parsed.rows:
        role_id = roles.get(row.role)
        if role_id is None:
            errors.append(LineError(row.line, f"unknown role {row.role!r}"))
        else:
            staged.append((row.line, row.name, row.kind, row.role, role_id, row.attributes))
    note = None
    if len(errors) > len(parsed.errors):
        note = f"known roles: {', '.join(roles) or 'none; run `gateway roles apply`'}"

    async with conn.transaction():
        await conn.execute(STAGE)
        await conn.copy_records_to_table(
            "identity_import", records=_counted(staged, progress), schema_name="pg_temp"
        )
        if skip_existing:
            skipped = int((await conn.execute(DROP_EXISTING)).split()[-1])
        else:
            skipped = 0
            errors += [
                LineError(row["line"], f"identity {row['name']!r} already exists")
                for row in await conn.fetch(EXISTING)
            ]
        if errors:
            raise ImportFileError(source, errors, note)
        if progress is not None:
            progress("inserting", 0, 1)
        imported = int(await conn.fetchval(MOVE, actor, source))
        late = len(staged) - skipped - imported
        if late and not skip_existing:
            raise IdentityError(
                f"{source}: {late} of these identities were added by someone else during the "
                "import; nothing was imported (run it again to see which)"
            )
        if progress is not None:
            progress("inserting", 1, 1)
        names = tuple(row["name"] for row in await conn.fetch("SELECT name FROM identity_import"))
    return ImportResult(imported=imported, skipped=skipped + late, names=names)


def _counted(rows: list[tuple[Any, ...]], progress: Progress | None) -> Iterator[tuple[Any, ...]]:
    """The rows, reporting how many COPY has taken so far."""
    total = len(rows)
    for done, row in enumerate(rows, 1):
        if progress is not None and done % PROGRESS_EVERY == 0:
            progress("staging", done, total)
        yield row
    if progress is not None:
        progress("staging", total, total)
