"""What the MQTT and Kafka fleets share: their errors, device names and quotas, progress, pacing."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from gateway.errors import GatewayError

__all__ = [
    "PACE_TICK",
    "UNLIMITED",
    "FleetError",
    "KafkaFleetError",
    "Progress",
    "device_name",
    "device_quota",
    "load_credentials",
]

UNLIMITED = 1 << 62  # a quota or credit that never runs out
PACE_TICK = 0.01  # seconds between credit grants when the rate is limited


class FleetError(GatewayError):
    """The fleet could not run: invalid options, unreachable broker, or a device refused."""


class KafkaFleetError(FleetError):
    """The Kafka fleet could not run: invalid options, unreachable broker, refused login or
    topic."""


class Progress(NamedTuple):
    """Running totals, for a live progress line (Kafka: `refused` counts failed deliveries)."""

    sent: int
    acked: int
    refused: int


def device_name(prefix: str, devices: int, index: int) -> str:
    """`<prefix><index>`, zero-padded to 4 digits or to the widest index of the fleet."""
    width = max(4, len(str(devices - 1)))
    return f"{prefix}{index:0{width}d}"


def device_quota(count: int | None, devices: int, index: int) -> int | None:
    """Messages device `index` sends: `count` spread evenly, the remainder to the first ones."""
    if count is None:
        return None
    return count // devices + (1 if index < count % devices else 0)


def load_credentials(path: Path) -> dict[str, str]:
    """`name:password` lines (blank lines and `#` comments skipped); the password may hold `:`."""
    credentials = {}
    try:
        text = path.read_text()
    except OSError as exc:
        raise FleetError(f"cannot read credentials file {path}: {exc.strerror}") from None
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, password = line.partition(":")
        if not colon or not name or not password:
            raise FleetError(f"{path}:{number}: expected `name:password`")
        credentials[name] = password
    return credentials
