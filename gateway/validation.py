"""Validation errors that name the path of the bad value and what was expected there."""

from __future__ import annotations

from collections.abc import Iterable

import pydantic

from gateway.errors import GatewayError

__all__ = ["ConfigError", "from_pydantic", "path_of"]


class ConfigError(GatewayError):
    """A configuration or declaration file is invalid; `problems` lists (path, message)."""

    def __init__(self, source: str, problems: Iterable[tuple[str, str]]) -> None:
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  {path}: {message}" for path, message in self.problems)
        super().__init__(f"{source} is invalid:\n{lines}")


def path_of(location: Iterable[int | str]) -> str:
    """`('roles', 'x', 'grants', 0, 'table')` -> `roles.x.grants[0].table`."""
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(top level)"


def from_pydantic(source: str, error: pydantic.ValidationError) -> ConfigError:
    """Turn pydantic's errors into ours, keeping the offending input in each message."""
    problems = []
    for item in error.errors(include_url=False):
        message = item["msg"]
        if isinstance(item.get("input"), str | int | float | bool):
            message += f" (got {item['input']!r})"
        location = item["loc"]
        if location and location[-1] == "[key]":  # the key itself is wrong, e.g. a role name
            location, message = location[:-1], f"name: {message}"
        problems.append((path_of(location), message))
    return ConfigError(source, problems)
