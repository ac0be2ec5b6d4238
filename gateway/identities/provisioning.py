"""Rules that let the data plane register unknown identities by name (the `provision` policy).

A rule's `pattern` is a shell-style glob matched case-sensitively against the whole name
(`fnmatch.fnmatchcase`): `*` any run of characters, `?` one character, `[0-9]` a set. Globs
rather than regular expressions because operators write them in config files, and a glob cannot
match more than it shows (no accidental unanchored `sensor-.*`). Rules are tried in order and the
first match wins, so put narrow patterns before broad ones. `Registry.provision` applies a rule.
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

from pydantic import BaseModel, ConfigDict, Field

from gateway.identities.model import Kind

__all__ = ["ProvisionRule", "match_rule"]


class ProvisionRule(BaseModel):
    """Names matching `pattern` are registered with `role` and `kind` on first sight."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pattern: str = Field(min_length=1, description="glob over the whole identity name")
    role: str = Field(min_length=1, description="declared role the new identities get")
    kind: Kind = "device"

    def matches(self, name: str) -> bool:
        # fnmatch caches compiled patterns, so repeated checks cost one regex match.
        return fnmatchcase(name, self.pattern)


def match_rule(rules: Iterable[ProvisionRule], name: str) -> ProvisionRule | None:
    """The first rule whose pattern matches `name`, or None when none does.

    Matching does not validate the name; `Registry.provision` does, before registering it.
    """
    for rule in rules:
        if rule.matches(name):
            return rule
    return None
