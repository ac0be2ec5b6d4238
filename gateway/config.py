"""The gateway's configuration: a TOML file, overridden by `GATEWAY_*` environment variables.

Nested keys use `__` in the environment (`GATEWAY_DATABASE__HOST=db`). Every error names the
path of the bad value and what was expected. Secrets are never in the file: passwords come from
an environment variable or a file named here, or from the roles declaration's credential sources.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from gateway.provisioning import ProvisionRule
from gateway.topics import TopicTemplate
from gateway.validation import ConfigError, from_pydantic

__all__ = [
    "BatchingConfig",
    "DatabaseConfig",
    "GatewayConfig",
    "KafkaSourceConfig",
    "MqttSourceConfig",
    "RouteConfig",
    "Secret",
    "load_config",
]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Secret(Section):
    """A secret's location: an environment variable or a file (e.g. a mounted Kubernetes Secret)."""

    env: str | None = None
    file: Path | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Secret:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of `env` or `file`")
        return self

    def read(self) -> str:
        if self.env is not None:
            value = os.environ.get(self.env)
            if not value:
                raise ConfigError("secret", [(f"env {self.env}", "is not set")])
            return value
        assert self.file is not None
        try:
            return self.file.read_text().strip()
        except OSError as exc:
            raise ConfigError(
                "secret", [(f"file {self.file}", exc.strerror or "unreadable")]
            ) from exc


class DatabaseConfig(Section):
    """Where PostgreSQL is; each pool logs in as its own role from the roles declaration."""

    host: str = "127.0.0.1"
    port: int = Field(default=5432, ge=1, le=65535)
    dbname: str = "postgres"
    roles_file: Path = Path("config/roles.toml")
    control_role: str = Field(default="gateway_control", description="registry, activity")
    rejects_role: str = Field(default="rejects_writer", description="writes ingest.rejects")
    connect_timeout: float = Field(default=10, gt=0)
    sslmode: Literal["disable", "prefer", "require", "verify-ca", "verify-full"] = "prefer"


class MqttSourceConfig(Section):
    name: str = Field(default="mqtt", pattern=r"^[A-Za-z0-9_.-]+$")
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    protocol: Literal["5", "3.1.1"] = "5"
    username: str | None = None
    password: Secret | None = None
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    client_id: str = Field(default="gateway-1", min_length=1, max_length=64)
    session_expiry: int = Field(default=3600, ge=0, description="seconds a session outlives us")
    receive_maximum: int = Field(default=10_000, ge=1, le=65535)
    keep_alive: int = Field(default=30, ge=0, le=65535)
    topic_template: str = "devices/{identity}/{stream}"
    share_group: str | None = Field(default=None, pattern=r"^[^/+#]+$")
    qos: Literal[0, 1] = 1

    @field_validator("topic_template")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            TopicTemplate(value)
        except ConfigError as exc:
            raise ValueError("; ".join(message for _, message in exc.problems)) from None
        return value

    @property
    def subscription(self) -> str:
        topic = TopicTemplate(self.topic_template).subscription()
        return f"$share/{self.share_group}/{topic}" if self.share_group else topic


class KafkaSourceConfig(Section):
    """A consumer group over topics whose producers Kafka's ACLs restrict (e.g. a trusted
    bridge): the identity claim comes from the record key, a header, or the topic name."""

    name: str = Field(default="kafka", pattern=r"^[A-Za-z0-9_.-]+$")
    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"] = "SCRAM-SHA-256"
    username: str | None = None
    password: Secret | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    group_id: str = "m2m-gateway"
    client_id: str = "m2m-gateway"
    topics: list[str] = []
    topic_pattern: str | None = Field(default=None, description="regex instead of `topics`")
    identity_from: str = Field(
        default="key",
        pattern=r"^(key|header:.+|topic:.+)$",
        description="`key`, `header:<name>`, or `topic:<template>` such as telemetry.{identity}",
    )
    stream: str = Field(default="telemetry", description="route stream when the topic has none")
    max_poll_records: int = Field(default=10_000, ge=1)
    fetch_max_bytes: int = Field(default=50 * 1024 * 1024, ge=1024)
    max_partition_fetch_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    session_timeout_ms: int = Field(default=10_000, ge=1000)
    commit_interval_ms: int = Field(default=100, ge=1, description="commits are coalesced")

    @model_validator(mode="after")
    def _topics_or_pattern(self) -> KafkaSourceConfig:
        if bool(self.topics) == (self.topic_pattern is not None):
            raise ValueError("give either `topics` or `topic_pattern`")
        if self.identity_from.startswith("topic:"):
            try:
                TopicTemplate(self.identity_from.removeprefix("topic:"), separator=".")
            except ConfigError as exc:
                raise ValueError("; ".join(m for _, m in exc.problems)) from None
        if self.security_protocol.startswith("SASL") and not (self.username and self.password):
            raise ValueError(f"{self.security_protocol} needs `username` and `password`")
        return self


class SourcesConfig(Section):
    mqtt: list[MqttSourceConfig] = []
    kafka: list[KafkaSourceConfig] = []


class RouteConfig(Section):
    """Readings of a stream (the `{stream}` topic level) go to a table with telemetry's columns."""

    stream: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    table: str = Field(pattern=r"^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*$")
    dedup: bool = Field(
        default=False,
        description="one row per message id even after redelivery (needs a message_id column "
        "with a unique index, see migration 005)",
    )


class BatchingConfig(Section):
    max_rows: int = Field(default=5000, ge=1)
    max_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_delay_ms: float = Field(default=50, gt=0)
    max_buffered_rows: int = Field(default=200_000, ge=1)

    @model_validator(mode="after")
    def _buffer_holds_a_batch(self) -> BatchingConfig:
        if self.max_buffered_rows < self.max_rows:
            raise ValueError(
                f"max_buffered_rows ({self.max_buffered_rows}) must hold at least one batch "
                f"(max_rows {self.max_rows})"
            )
        return self


class IdentitiesConfig(Section):
    unknown: Literal["reject", "provision", "quarantine"] = "reject"
    provision: list[ProvisionRule] = []


class LimitsConfig(Section):
    max_payload_bytes: int = Field(default=256 * 1024, ge=64)
    max_age_seconds: float = Field(default=7 * 86400, gt=0)
    max_ahead_seconds: float = Field(default=300, ge=0)


class HttpConfig(Section):
    host: str = "0.0.0.0"
    port: int = Field(default=9108, ge=0, le=65535)


class GatewayConfig(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_", env_nested_delimiter="__", extra="forbid"
    )

    database: DatabaseConfig = DatabaseConfig()
    sources: SourcesConfig = SourcesConfig()
    routes: Annotated[list[RouteConfig], Field(min_length=1)] = [
        RouteConfig(stream="telemetry", table="ingest.telemetry")
    ]
    batching: BatchingConfig = BatchingConfig()
    identities: IdentitiesConfig = IdentitiesConfig()
    limits: LimitsConfig = LimitsConfig()
    http: HttpConfig = HttpConfig()
    shutdown_timeout: float = Field(default=30, gt=0)
    activity_interval: float = Field(default=5, gt=0)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's values arrive as init arguments; the environment overrides them.
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _unique_names(self) -> GatewayConfig:
        names = [s.name for s in self.sources.mqtt] + [s.name for s in self.sources.kafka]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}")
        streams = [route.stream for route in self.routes]
        if len(set(streams)) != len(streams):
            raise ValueError(f"each stream may have one route, got {streams}")
        return self


def load_config(path: Path | None) -> GatewayConfig:
    """Read the TOML file (when given) and the environment; errors name path and expectation."""
    data: dict[str, Any] = {}
    source = str(path) if path else "configuration"
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(source, [("(file)", f"cannot read: {exc.strerror}")]) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(source, [("(file)", f"not valid TOML: {exc}")]) from exc
    try:
        return GatewayConfig(**data)
    except ValidationError as exc:
        raise from_pydantic(source, exc) from exc
