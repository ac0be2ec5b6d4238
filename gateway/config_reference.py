"""The configuration reference, generated from the configuration models so it never drifts.

`gateway config-reference > docs/configuration.md`; a test fails when the file is stale.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from gateway.config import GatewayConfig

__all__ = ["reference"]

HEADER = """# Configuration reference

Generated from the configuration models by `gateway config-reference`; do not edit by hand.

Settings come from a TOML file (`gateway run --config FILE`) and from environment variables,
which win. A key `section.key` is `GATEWAY_SECTION__KEY` in the environment; a list of tables
(`[[sources.mqtt]]`, `[[routes]]`) is given whole as JSON (`GATEWAY_ROUTES='[...]'`).
Secrets are given as `{ env = "VAR" }` or `{ file = "/run/secrets/name" }`, never inline.
"""


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The models inside an annotation: `Model`, `Model | None`, `list[Model]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found = []
    for arg in typing.get_args(annotation):
        found.extend(_models(arg))
    return found


def _type(annotation: Any) -> str:
    text = str(annotation) if not isinstance(annotation, type) else annotation.__name__
    for noise in (
        "typing.",
        "pathlib.",
        "gateway.config.",
        "gateway.identities.provisioning.",
        "<class '",
        "'>",
    ):
        text = text.replace(noise, "")
    return text.replace("|", "or")


def _default(field: FieldInfo) -> str:
    if field.default is PydanticUndefined:
        return "required"
    value = field.default
    if isinstance(value, BaseModel):
        return ""
    if isinstance(value, Path):
        return f"`'{value}'`"
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        return ", ".join(str(item.model_dump()) for item in value)
    return f"`{value!r}`" if value not in (None, []) else ("" if value is None else "`[]`")


def _rows(model: type[BaseModel], prefix: str, env: str | None) -> Iterator[str]:
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        nested = _models(field.annotation)
        is_list = typing.get_origin(field.annotation) is list
        variable = f"`{env}{name.upper()}`" if env is not None else ""
        description = (field.description or "").replace("\n", " ").replace("|", "\\|")
        if nested and not any(m.__name__ == "Secret" for m in nested):
            if is_list:
                yield f"| `{key}` | {variable} | list of tables | | {description} |"
                yield from _rows(nested[0], f"{key}[].", None)
            else:
                yield from _rows(nested[0], f"{key}.", f"{env}{name.upper()}__" if env else None)
            continue
        kind = "secret: `{ env = ... }` or `{ file = ... }`" if nested else _type(field.annotation)
        yield f"| `{key}` | {variable} | {kind} | {_default(field)} | {description} |"


def reference() -> str:
    lines = [
        HEADER,
        "| key | environment | type | default | meaning |",
        "|---|---|---|---|---|",
        *_rows(GatewayConfig, "", "GATEWAY_"),
    ]
    return "\n".join(lines) + "\n"
