"""Topic templates such as `devices/{identity}/{stream}`: where the identity claim sits in a topic.

On MQTT the broker guarantees the `{identity}` level (each device's own role may publish only
`devices/<its name>/+`), so parsing the topic is the identity check; anything that does not fit
the template is rejected.
"""

from __future__ import annotations

from gateway.validation import ConfigError

__all__ = ["REMEMBERED_LENGTH", "REMEMBERED_TOPICS", "TopicTemplate"]

# Claims of this many distinct topics are remembered; a fleet far larger only parses more often.
# Only topics up to REMEMBERED_LENGTH characters are, so that the cache is bounded in bytes
# (36 MB at most, measured) whatever topics a sender invents: longer ones are parsed each time.
REMEMBERED_TOPICS = 65_536
REMEMBERED_LENGTH = 160
_UNSEEN = object()


class TopicTemplate:
    """A compiled template: fixed levels, one `{identity}` level and an optional `{stream}`."""

    __slots__ = (
        "_claims",
        "_fixed",
        "_identity",
        "_levels",
        "_separator",
        "_stream",
        "default_stream",
        "template",
    )

    def __init__(
        self, template: str, *, default_stream: str = "telemetry", separator: str = "/"
    ) -> None:
        self.template = template
        self.default_stream = default_stream
        parts = template.split(separator)
        problems = []
        if parts.count("{identity}") != 1:
            problems.append("must contain `{identity}` exactly once as a whole level")
        if parts.count("{stream}") > 1:
            problems.append("may contain `{stream}` at most once")
        for part in parts:
            if part not in ("{identity}", "{stream}") and (
                "{" in part or "+" in part or "#" in part
            ):
                problems.append(f"level {part!r} must be literal, `{{identity}}` or `{{stream}}`")
        if problems:
            raise ConfigError(f"topic template {template!r}", [("template", p) for p in problems])
        self._levels = len(parts)
        self._identity = parts.index("{identity}")
        self._stream = parts.index("{stream}") if "{stream}" in parts else -1
        self._fixed = [(i, p) for i, p in enumerate(parts) if p not in ("{identity}", "{stream}")]
        self._separator = separator
        self._claims: dict[str, tuple[str, str] | None] = {}

    def parse(self, topic: str) -> tuple[str, str] | None:
        """(identity, stream) of a topic, or None when it does not fit the template.

        Every message of a device repeats its topic, so answers are remembered (boundedly).
        """
        claim = self._claims.get(topic, _UNSEEN)
        if claim is _UNSEEN:
            claim = self._parse(topic)
            if len(topic) <= REMEMBERED_LENGTH:
                claims = self._claims
                if len(claims) >= REMEMBERED_TOPICS:
                    claims.clear()
                claims[topic] = claim
        return claim  # type: ignore[return-value]

    def _parse(self, topic: str) -> tuple[str, str] | None:
        parts = topic.split(self._separator)
        if len(parts) != self._levels:
            return None
        for index, literal in self._fixed:
            if parts[index] != literal:
                return None
        identity = parts[self._identity]
        if not identity:
            return None
        stream = parts[self._stream] if self._stream >= 0 else self.default_stream
        return identity, stream

    def identity_topics(self, identity: str) -> tuple[str, bool]:
        """Where `identity` alone may write: `(name, False)` for the one topic of a template that
        ends at `{identity}`, `(prefix, True)` for every topic under `<levels>/<identity>/` when
        levels follow it. Raises ConfigError when a varying level comes before `{identity}`:
        no one name or prefix would then be that identity's alone."""
        levels = self.template.split(self._separator)
        if self._stream >= 0 and self._stream < self._identity:
            raise ConfigError(
                f"topic template {self.template!r}",
                [("template", "`{stream}` before `{identity}` leaves no topic to one identity")],
            )
        head = self._separator.join([*levels[: self._identity], identity])
        if self._identity == self._levels - 1:
            return head, False
        return head + self._separator, True

    def prefix_identity(self, prefix: str) -> str | None:
        """The identity every topic of this template under `prefix` claims (a prefix that ends
        after the identity level, such as `telemetry.x.`); "" when such topics may claim more
        than one identity (`telemetry.x` also covers `telemetry.x2.y`); None when no topic
        under the prefix fits the template at all."""
        levels = self.template.split(self._separator)
        parts = prefix.split(self._separator)
        if len(parts) > len(levels):
            return None  # its topics have more levels than the template
        at = self._identity
        complete, partial = parts[:-1], parts[-1]  # the last part may be cut short
        for part, level in zip(complete[:at], levels, strict=False):
            if level != "{stream}" and part != level:
                return None
        if len(complete) > at:
            return complete[at] or None
        level = levels[len(complete)]
        if len(complete) < at and level != "{stream}" and not level.startswith(partial):
            return None
        return ""

    def subscription(self) -> str:
        """The MQTT filter to subscribe: everything under the identity level, so that topics
        with extra or missing levels (which the shipped ACL refuses at the broker, and a wider one
        would not) arrive too and are rejected with a record, not ignored."""
        levels = self.template.split(self._separator)[: self._identity + 1]
        prefix = self._separator.join("+" if level.startswith("{") else level for level in levels)
        return f"{prefix}{self._separator}#"
