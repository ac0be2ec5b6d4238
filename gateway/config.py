"""The gateway's configuration: a TOML file, overridden by `GATEWAY_*` environment variables.

Nested keys use `__` in the environment (`GATEWAY_DATABASE__HOST=db`). Every error names the
path of the bad value and what was expected. Secrets are never in the file, only where to find
them (`Secret`: an environment variable or a file), here and in the roles declaration alike.
"""

from __future__ import annotations

import os
import ssl
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from gateway.identities.provisioning import ProvisionRule
from gateway.tls import client_context, password_exposure, postgres_ssl, postgres_sslmode
from gateway.topics import TopicTemplate
from gateway.validation import ConfigError, from_pydantic

__all__ = [
    "BatchingConfig",
    "BrokersConfig",
    "DatabaseConfig",
    "GatewayConfig",
    "KafkaAccountsConfig",
    "KafkaConnection",
    "KafkaSourceConfig",
    "MosquittoAccountsConfig",
    "MqttConnection",
    "MqttSourceConfig",
    "RouteConfig",
    "Secret",
    "load_config",
]


class Section(BaseModel):
    # Each field's docstring is its description: the configuration reference is generated from
    # these models (`gateway config-reference`), so it cannot drift from what is validated.
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class Secret(Section):
    """A secret's location: an environment variable or a file (e.g. a mounted Kubernetes Secret).

    The one secret type: broker passwords here and role passwords in the roles declaration
    (`roles.<name>.password`) are both written `{ env = "VAR" }` or `{ file = "/path" }`.
    """

    model_config = ConfigDict(frozen=True)

    env: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    """Environment variable holding the secret."""
    file: Path | None = None
    """File holding the secret (surrounding whitespace is ignored)."""

    @model_validator(mode="after")
    def _exactly_one(self) -> Secret:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of `env` or `file`")
        return self

    def describe(self) -> str:
        return f"environment variable {self.env}" if self.env else f"file {self.file}"

    def read(self) -> str | None:
        """The secret, or None while its variable is unset or empty or its file missing or
        empty (read at each use, so a rotated secret is picked up)."""
        if self.env is not None:
            return os.environ.get(self.env) or None
        assert self.file is not None
        try:
            return self.file.read_text().strip() or None
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(
                "secret", [(f"file {self.file}", exc.strerror or "unreadable")]
            ) from exc

    def require(self) -> str:
        """The secret; a ConfigError naming its variable or file when it is not there."""
        value = self.read()
        if value is None:
            raise ConfigError("secret", [(self.describe(), "is not set")])
        return value


class DatabaseConfig(Section):
    """Where PostgreSQL is; each pool logs in as its own role from the roles declaration."""

    host: str = "127.0.0.1"
    """PostgreSQL host."""
    port: int = Field(default=5432, ge=1, le=65535)
    """PostgreSQL port."""
    dbname: str = "postgres"
    """Database holding the `gateway` and `ingest` schemas."""
    roles_file: Path = Path("config/roles.toml")
    """Roles declaration: which roles exist, their pools and where their passwords are."""
    control_role: str = "gateway_control"
    """Declared role of the control pool: registry reads, provisioning, activity upserts."""
    rejects_role: str = "rejects_writer"
    """Declared role that writes `ingest.rejects`."""
    connect_timeout: float = Field(default=10, gt=0)
    """Seconds to wait for a new connection."""
    sslmode: Literal["disable", "prefer", "require", "verify-ca", "verify-full"] | None = None
    """libpq-style TLS mode for every pool: `verify-full` checks the server's certificate and
    name, `verify-ca` only the certificate, `require` encrypts without checking, `prefer`
    encrypts when the server offers it. Default: `verify-full` when `ca_file` is set, else
    `prefer`."""
    ca_file: Path | None = None
    """CA bundle that signed the server's certificate (default for the verified modes: the
    system's CAs)."""
    cert_file: Path | None = None
    """Client certificate, for servers that authenticate by certificate (`require` or stricter)."""
    key_file: Path | None = None
    """Client certificate's private key."""
    server_name: str | None = None
    """Name to check the server's certificate against instead of `host` (an address, a proxy)."""
    allow_unverified_password: bool = False
    """Send role passwords over a connection whose server is not verified. Refused by default
    unless `host` is loopback or a Unix socket: anyone in between could pose as the server and
    ask for the password in clear text. Set `ca_file` (verify-full) instead."""

    @model_validator(mode="after")
    def _password_safe(self) -> DatabaseConfig:
        mode = postgres_sslmode(self.sslmode, self.ca_file)
        if self.cert_file is not None and mode in ("disable", "prefer"):
            raise ValueError(f"`cert_file` needs sslmode `require` or stricter, not {mode}")
        exposure = password_exposure(self.host, mode)
        if exposure and not self.allow_unverified_password:
            raise ValueError(
                f"{exposure}: set `ca_file` (sslmode verify-full), or "
                "`allow_unverified_password = true` on a network you trust"
            )
        return self

    def connect_ssl(self) -> ssl.SSLContext | str | bool:
        """The `ssl` argument of every pool's connections (files read now: OSError if not)."""
        mode = postgres_sslmode(self.sslmode, self.ca_file)
        return postgres_ssl(mode, self.ca_file, self.cert_file, self.key_file, self.server_name)


class MqttConnection(Section):
    """Where an MQTT broker is and how to log in to it."""

    host: str = "127.0.0.1"
    """Broker host."""
    port: int = Field(default=1883, ge=1, le=65535)
    """Broker port."""
    username: str | None = None
    """Broker user."""
    password: Secret | None = None
    """Where the broker password is."""
    tls: bool | None = None
    """Connect with TLS, verifying the broker's certificate and name. Default: on when
    `ca_file` is set."""
    ca_file: Path | None = None
    """CA bundle to verify the broker (default: the system's)."""
    cert_file: Path | None = None
    """Client certificate, for brokers that authenticate by certificate."""
    key_file: Path | None = None
    """Client certificate's private key."""
    server_name: str | None = None
    """Name to check the broker's certificate against instead of `host` (an address, a proxy)."""
    allow_plaintext_password: bool = False
    """Send `password` without TLS to a broker off loopback. Refused by default: MQTT sends it
    in clear text, to the broker and to anyone on the way."""

    @property
    def uses_tls(self) -> bool:
        return self.tls if self.tls is not None else self.ca_file is not None

    @model_validator(mode="after")
    def _password_safe(self) -> MqttConnection:
        if self.server_name is not None and not self.uses_tls:
            raise ValueError("`server_name` needs TLS (`tls = true` or a `ca_file`)")
        exposure = password_exposure(self.host, "verify-full" if self.uses_tls else "disable")
        if self.password is not None and exposure and not self.allow_plaintext_password:
            raise ValueError(
                f"the password would cross the network to {self.host} in clear text: use TLS "
                "(`tls = true`, `ca_file`), or `allow_plaintext_password = true` on a network "
                "you trust"
            )
        return self

    def tls_context(self) -> ssl.SSLContext | None:
        """The verifying client context when TLS is on (files read now: OSError if not)."""
        if not self.uses_tls:
            return None
        return client_context(
            self.ca_file, self.cert_file, self.key_file, server_name=self.server_name
        )


class MqttSourceConfig(MqttConnection):
    """One MQTT session (optionally in a shared-subscription group) feeding the gateway. Its
    `username` is the gateway's broker account, bound to `client_id` so no device can take it."""

    name: str = Field(default="mqtt", pattern=r"^[A-Za-z0-9_.-]+$")
    """Source name in metrics, logs and rejects."""
    protocol: Literal["5", "3.1.1"] = "5"
    """MQTT version: 5 uses the fast built-in client; 3.1.1 the aiomqtt compatibility transport."""
    client_id: str = Field(default="gateway-1", min_length=1, max_length=64)
    """Session identity at the broker: one per pod, stable across restarts."""
    session_expiry: int = Field(default=3600, ge=0)
    """Seconds the broker keeps the session (and its unacknowledged messages) while we are away."""
    receive_maximum: int = Field(default=10_000, ge=1, le=65535)
    """Unacknowledged messages in flight at once: bounds memory and the largest batch."""
    keep_alive: int = Field(default=30, ge=0, le=65535)
    """Seconds between keep-alive pings when idle (0 disables them)."""
    topic_template: str = "devices/{identity}/{stream}"
    """Where the identity claim (and the stream) sit in a topic; the ACL must enforce it."""
    share_group: str | None = Field(default=None, pattern=r"^[^/+#]+$")
    """Shared-subscription group: pods in one group split the stream."""
    qos: Literal[0, 1] = 1
    """Subscription QoS; 1 for at-least-once."""

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


class KafkaConnection(Section):
    """Where a Kafka cluster is and how to log in to it."""

    bootstrap_servers: str = "127.0.0.1:9092"
    """Comma-separated broker addresses."""
    security_protocol: Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL"] = "PLAINTEXT"
    """How to connect; SASL variants need `username` and `password`."""
    sasl_mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"] = "SCRAM-SHA-256"
    """SASL mechanism."""
    username: str | None = None
    """SASL user."""
    password: Secret | None = None
    """Where the SASL password is."""
    ca_file: Path | None = None
    """CA bundle for SSL and SASL_SSL (default: the system's)."""
    cert_file: Path | None = None
    """Client certificate for SSL authentication."""
    key_file: Path | None = None
    """Client certificate's private key."""
    server_name: str | None = None
    """Name to check the brokers' certificates against instead of their hosts (SSL, SASL_SSL)."""
    allow_plain_without_tls: bool = False
    """Allow SASL PLAIN over SASL_PLAINTEXT, which sends the password in clear text. Refused by
    default; SCRAM never sends it."""

    def _check_credentials(self) -> None:
        """Called last by each subclass's validator, so its own problems are named first."""
        if self.security_protocol.startswith("SASL") and not (self.username and self.password):
            raise ValueError(f"{self.security_protocol} needs `username` and `password`")
        if (
            self.security_protocol == "SASL_PLAINTEXT"
            and self.sasl_mechanism == "PLAIN"
            and not self.allow_plain_without_tls
        ):
            raise ValueError(
                "SASL PLAIN over SASL_PLAINTEXT sends the password in clear text: use SASL_SSL, "
                "a SCRAM mechanism, or `allow_plain_without_tls = true` on a network you trust"
            )
        if self.server_name is not None and not self.security_protocol.endswith("SSL"):
            raise ValueError("`server_name` needs TLS (security_protocol SSL or SASL_SSL)")

    def tls_context(self) -> ssl.SSLContext:
        """The verifying client context for SSL and SASL_SSL (files read now: OSError if not)."""
        return client_context(
            self.ca_file, self.cert_file, self.key_file, server_name=self.server_name
        )


class KafkaSourceConfig(KafkaConnection):
    """A consumer group over topics whose writers Kafka's ACLs restrict: the identity claim
    comes from the topic name (each identity's topic writable only by its own principal), or
    from the record key or a header on topics that only `trusted_producers` may write (e.g. a
    bridge). The gateway checks the cluster's ACLs for this at start and while it runs; its
    `username` needs Read on the topics and the group, and Describe on the cluster."""

    name: str = Field(default="kafka", pattern=r"^[A-Za-z0-9_.-]+$")
    """Source name in metrics, logs and rejects."""
    group_id: str = "m2m-gateway"
    """Consumer group: pods in one group split the partitions."""
    client_id: str = "m2m-gateway"
    """Client id in the brokers' logs and quotas."""
    topics: list[str] = []
    """Topics to consume (or give `topic_pattern`)."""
    topic_pattern: str | None = None
    """Regular expression of topics to consume, instead of `topics`."""
    identity_from: str = Field(default="key", pattern=r"^(key|header:.+|topic:.+)$")
    """`key`, `header:<name>`, or `topic:<template>` such as `telemetry.{identity}`."""
    trusted_producers: list[Annotated[str, StringConstraints(pattern=r"^User:.+$")]] = []
    """Principals (`User:<name>`) that may write these topics for any identity, such as an
    MQTT-to-Kafka bridge. With key or header claims every writer must be one of them; with
    topic claims, each identity's topic may be written by its own principal and by these."""
    acl_check_interval: float = Field(default=5, gt=0)
    """Seconds between checks of the cluster's ACLs while running: a writer the claims do not
    allow stops intake from this source until the ACL is gone, and so do ACLs that cannot be
    read for three intervals, until a check succeeds."""
    stream: str = "telemetry"
    """Route stream of the records (unless the topic template has `{stream}`)."""
    max_poll_records: int = Field(default=10_000, ge=1)
    """Records per fetch at most: bounds a batch."""
    fetch_max_bytes: int | None = Field(default=None, ge=1024)
    """Bytes per fetch at most; by default one batch's worth (`batching.max_bytes`), or one
    partition's share when that is more."""
    max_partition_fetch_bytes: int | None = Field(default=None, ge=1024)
    """Bytes per partition per fetch at most; by default 1 MiB, or one largest record
    (`limits.max_payload_bytes` + 4 KiB) when that is more."""
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    """Where a group without committed offsets starts."""
    session_timeout_ms: int = Field(default=10_000, ge=1000)
    """Group session timeout: how fast a dead pod's partitions move."""
    commit_interval_ms: int = Field(default=100, ge=1)
    """Offset commits are coalesced over this interval."""

    @model_validator(mode="after")
    def _topics_or_pattern(self) -> KafkaSourceConfig:
        if bool(self.topics) == (self.topic_pattern is not None):
            raise ValueError("give either `topics` or `topic_pattern`")
        if self.identity_from.startswith("topic:"):
            try:
                TopicTemplate(self.identity_from.removeprefix("topic:"), separator=".")
            except ConfigError as exc:
                raise ValueError("; ".join(m for _, m in exc.problems)) from None
        self._check_credentials()
        return self


class SourcesConfig(Section):
    mqtt: list[MqttSourceConfig] = []
    """MQTT sessions (`[[sources.mqtt]]`)."""
    kafka: list[KafkaSourceConfig] = []
    """Kafka consumer groups (`[[sources.kafka]]`)."""


ColumnType = Literal["timestamptz", "float8", "int8", "int4", "bool", "text", "jsonb", "uuid"]
# Where a column's value comes from when it is not in the payload.
MESSAGE_VALUES = ("$identity", "$stream", "$received_at")


class ColumnConfig(Section):
    """One column of a `table` or `state` route: where its value comes from, and its type."""

    name: str = Field(pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    """Column of the target table."""
    path: str = Field(pattern=r"^(/.*|\$identity|\$stream|\$received_at)?$")
    """Where the value is: a JSON pointer into the payload (`/env/temp`; `""` for the whole
    payload, e.g. into a jsonb column), or `$identity`, `$stream`, `$received_at`."""
    type: ColumnType
    """PostgreSQL type the value is checked and converted to: timestamptz (RFC 3339 text or
    epoch milliseconds, within the `limits` clock window), float8, int8, int4, bool, text, jsonb
    (any value), uuid (text)."""
    required: bool = True
    """A message without this field is rejected (`missing_field`, naming the path); otherwise
    `default` is written."""
    default: str | int | float | bool | None = None
    """Written when the field is missing and not required (None: NULL)."""

    @model_validator(mode="after")
    def _message_values(self) -> ColumnConfig:
        if self.path.startswith("$") and self.default is not None:
            raise ValueError(f"{self.path} is always there: it takes no default")
        return self


class RouteConfig(Section):
    """Messages of a stream (the `{stream}` topic level, or the Kafka source's stream) go to a
    table. A stream may feed several routes (e.g. telemetry rows and the device's state), each
    written by its own role in its own transaction; a message is acknowledged once all commit."""

    stream: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    """The stream name (e.g. `telemetry`)."""
    table: str = Field(pattern=r"^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*$")
    """Target table, `schema.table`; identities whose role may write there (INSERT; for `state`
    also UPDATE, and SELECT on `key` and `version`) may use the route."""
    kind: Literal["telemetry", "table", "state"] = "telemetry"
    """`telemetry`: readings `{ts, metric, value, tags}` (or a batch of them) into telemetry's
    columns. `table`: one row per message, its `columns` taken from the payload. `state`: the
    latest state per `key`, upserted; the newest `version` wins, so redelivered or reordered
    messages never move it backwards."""
    format: Literal["json", "msgpack"] = "json"
    """Payload encoding: JSON or MessagePack, with the same limits and reject reasons."""
    columns: list[ColumnConfig] = []
    """`table` and `state` routes: each column, where its value comes from, and its type."""
    key: list[str] = []
    """`state` routes: the columns naming one state (default: the `$identity` column); the
    table needs a unique index on them."""
    version: str | None = None
    """`state` routes: the column whose newer value wins (default: the first timestamptz column
    from the payload)."""
    dedup: bool = False
    """One row per message even after redelivery: `telemetry` needs `message_id` with a unique
    index; a `table` route needs a unique index on the columns that name a message."""
    role: str | None = None
    """Declared role that writes this route, for identities of the roles in `for_roles` (e.g.
    `state_writer` keeping the state of `telemetry_ingest` devices, each write in its own role's
    transaction). Default: each identity's own role, where the declaration lets it write."""
    for_roles: list[str] = []
    """With `role`: the roles whose identities feed this route."""

    @model_validator(mode="after")
    def _shape(self) -> RouteConfig:
        if (self.role is None) != (not self.for_roles):
            raise ValueError("give `role` and `for_roles` together")
        if self.kind == "telemetry":
            if self.columns or self.key or self.version:
                raise ValueError(
                    "a telemetry route has telemetry's columns: no `columns`, `key`, `version`"
                )
            return self
        if not self.columns:
            raise ValueError(f"a {self.kind} route needs `columns`")
        if not any(column.path == "$identity" for column in self.columns):
            raise ValueError(
                f"a {self.kind} route needs a column from `$identity`: every row names its sender"
            )
        names = [column.name for column in self.columns]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"columns named twice: {', '.join(repeated)}")
        if self.kind == "table":
            if self.key or self.version:
                raise ValueError("`key` and `version` are for state routes")
            return self
        if self.dedup:
            raise ValueError("a state route is idempotent by its version: no `dedup`")
        by_name = {column.name: column for column in self.columns}
        if not self.key:
            identity = [c.name for c in self.columns if c.path == "$identity"]
            if not identity:
                raise ValueError("a state route needs `key`, or a column from `$identity`")
            self.key = identity[:1]
        unknown = [name for name in self.key if name not in by_name]
        if unknown:
            raise ValueError(f"`key` names no column: {', '.join(unknown)}")
        if not any(by_name[name].path == "$identity" for name in self.key):
            # else one identity's message could overwrite another identity's state
            raise ValueError("`key` must include the `$identity` column")
        if self.version is None:
            stamps = [
                c.name for c in self.columns if c.type == "timestamptz" and c.path.startswith("/")
            ]
            if not stamps:
                raise ValueError(
                    "a state route needs `version`, or a timestamptz column from the payload"
                )
            self.version = stamps[0]
        version = by_name.get(self.version)
        if version is None:
            raise ValueError(f"`version` names no column: {self.version}")
        if version.type not in ("timestamptz", "int8", "int4") or not version.required:
            raise ValueError(
                f"`version` column {self.version} must be a required timestamptz, int8 or int4"
            )
        if self.version in self.key:
            raise ValueError("`version` cannot be part of `key`")
        return self


class BatchingConfig(Section):
    """When batches are cut. The engine's `BatchPolicy` is built from this model, which states
    the defaults once: here, where the configuration reference documents them."""

    max_rows: int = Field(default=5000, ge=1)
    """A batch is written at this many rows..."""
    max_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    """... or this many payload bytes..."""
    max_delay_ms: float = Field(default=50, gt=0)
    """... or when its first row is this old, whichever comes first."""
    max_buffered_rows: int = Field(default=200_000, ge=1)
    """Rows held in memory at most; beyond it, intake pauses until writes catch up."""
    max_buffered_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """Payload bytes held until their batch commits: intake pauses at this bound or the row
    bound, whichever comes first. A source's last list is taken whole, so what is held may pass
    it by that list (MQTT v5: 8 MiB at most; Kafka: one fetch) and one open batch per route."""

    @model_validator(mode="after")
    def _buffer_holds_a_batch(self) -> BatchingConfig:
        if self.max_buffered_bytes < self.max_bytes:
            raise ValueError(
                f"max_buffered_bytes ({self.max_buffered_bytes}) must hold at least one batch "
                f"(max_bytes {self.max_bytes})"
            )
        if self.max_buffered_rows < self.max_rows:
            raise ValueError(
                f"max_buffered_rows ({self.max_buffered_rows}) must hold at least one batch "
                f"(max_rows {self.max_rows})"
            )
        return self


class IdentitiesConfig(Section):
    unknown: Literal["reject", "provision", "quarantine"] = "reject"
    """What to do with an identity the registry does not know."""
    provision: list[ProvisionRule] = []
    """With `unknown = "provision"`: name globs mapped to a role (`[[identities.provision]]`)."""


class LimitsConfig(Section):
    """What a message may be. The decoder's `DecodeLimits` take their defaults from this model,
    so they are stated once: here, where the configuration reference documents them."""

    max_payload_bytes: int = Field(default=256 * 1024, ge=64)
    """Larger messages are rejected as `payload_too_large`; the MQTT client and the shipped
    Mosquitto configuration bound packets by it too, so larger ones never reach memory."""
    max_depth: int = Field(default=32, ge=4, le=200)
    """Payloads nested deeper than this (objects and arrays, in any field) are rejected as
    `too_deeply_nested`, before they are parsed."""
    max_tags: int = Field(default=64, ge=0)
    """A reading's `tags` object may have this many keys."""
    max_topic_length: int = Field(default=1024, ge=16, le=65535)
    """Longer topics (and Kafka keys) are rejected as `topic_too_long` without being parsed."""
    rejects_per_minute: int = Field(default=60, ge=0)
    """Reject records stored whole per identity (per source when the sender is unknown) and
    reason each minute; beyond it one summary row per minute carries the count of the rest."""
    max_age_seconds: float = Field(default=7 * 86400, gt=0)
    """Readings older than this are rejected as `timestamp_out_of_window`."""
    max_ahead_seconds: float = Field(default=300, ge=0)
    """Readings further in the future than this are rejected too."""


class MosquittoAccountsConfig(MqttConnection):
    """Mosquitto's dynamic-security plugin, where identities' broker accounts are kept: its
    admin account (`username`, `password`) is what the registry's commands log in as."""

    username: str | None = "admin"
    """Dynamic-security admin account."""
    client_id: str = Field(default="gateway-accounts", min_length=1, max_length=64)
    """Client id of the admin connection."""
    gateway_clients: list[Annotated[str, StringConstraints(pattern=r"^[^/+#]{1,64}$")]] = []
    """Client ids of the gateway pods (e.g. `gateway-0`, `gateway-1`): each gets an account of
    that name, bound to that client id, in `gateway_role`, with `gateway_password`."""
    gateway_password: Secret | None = None
    """Where the gateway accounts' password is (the pods' `sources.mqtt.password`)."""
    gateway_role: str = "gateway"
    """Dynamic-security role of the gateway accounts: subscribe to every device topic."""
    unmanaged: list[str] = []
    """Accounts that are not identities and are left alone (operators, a bridge, monitoring);
    any other account of no active identity is disabled by `gateway brokers apply`."""
    # `{identity}` a whole level: with `devices/x{identity}/+`, device `abc` would publish where
    # a reader by level sees `xabc`; and the gateway's role reads the levels before it.
    device_topic: str = Field(
        default="devices/{identity}/+", pattern=r"^(?:[^+#{}/]*/)*\{identity\}/\+$"
    )
    """The one topic filter a device may publish to: its own role's one ACL, one level under
    its name. The gateway's role reads everything under the part before `{identity}`."""


class KafkaAccountsConfig(KafkaConnection):
    """Kafka, where identities get SCRAM credentials and Write ACLs through the admin
    protocol; `username` must be allowed to alter SCRAM credentials and ACLs."""

    mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-256"
    """SCRAM mechanism of the identities' credentials."""
    iterations: int = Field(default=4096, ge=4096, le=16384)
    """SCRAM iterations (Kafka accepts 4096 to 16384)."""
    topic_template: str | None = "telemetry.{identity}"
    """Each identity's own topic, which only its principal may write (a literal ACL; a prefixed
    one when the template goes on after `{identity}`). None: identities get credentials only."""
    unmanaged: list[Annotated[str, StringConstraints(pattern=r"^User:.+$")]] = []
    """Principals that are not identities and are left alone (the gateway's own, bridges,
    operators); any other principal is reported when it is not an active identity."""

    @model_validator(mode="after")
    def _template(self) -> KafkaAccountsConfig:
        if self.topic_template is not None:
            try:
                TopicTemplate(self.topic_template, separator=".")
            except ConfigError as exc:
                raise ValueError("; ".join(m for _, m in exc.problems)) from None
            if self.topic_template.split(".")[0] in ("{identity}", "{stream}"):
                # Else every topic that fits would look like an identity's, a cluster's others too.
                raise ValueError("topic_template must start with a literal level, e.g. telemetry.")
        self._check_credentials()
        return self


class BrokersConfig(Section):
    """Brokers whose accounts follow the identity registry."""

    mosquitto: MosquittoAccountsConfig | None = None
    """Mosquitto with the dynamic-security plugin."""
    kafka: KafkaAccountsConfig | None = None
    """Kafka with SCRAM and an ACL authorizer."""


class HttpConfig(Section):
    host: str = "127.0.0.1"
    """Address of `/metrics`, `/healthz` and `/readyz`: loopback unless told otherwise (a pod
    sets `0.0.0.0` for Prometheus and the kubelet, with a NetworkPolicy in front)."""
    port: int = Field(default=9108, ge=0, le=65535)
    """Their port (0 picks a free one)."""
    max_connections: int = Field(default=32, ge=1)
    """Open connections served at once; more are closed at accept, so a flood of scrapers or
    idle sockets cannot hold memory or time of the gateway."""


class GatewayConfig(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_",
        env_nested_delimiter="__",
        extra="forbid",
        use_attribute_docstrings=True,
    )

    database: DatabaseConfig = DatabaseConfig()
    """Where PostgreSQL is and which roles the pools use."""
    sources: SourcesConfig = SourcesConfig()
    """Where messages come from."""
    routes: Annotated[list[RouteConfig], Field(min_length=1)] = [
        RouteConfig(stream="telemetry", table="ingest.telemetry")
    ]
    """Stream to table (`[[routes]]`)."""
    batching: BatchingConfig = BatchingConfig()
    """When batches are written, and how much may wait in memory."""
    identities: IdentitiesConfig = IdentitiesConfig()
    """Policy for identities the registry does not know."""
    brokers: BrokersConfig = BrokersConfig()
    """Broker accounts kept from the registry (`gateway brokers plan|apply`)."""
    limits: LimitsConfig = LimitsConfig()
    """What a message may be."""
    http: HttpConfig = HttpConfig()
    """Metrics and health endpoints."""
    shutdown_timeout: float = Field(default=30, gt=0)
    """Seconds to flush and acknowledge on SIGTERM before giving up (the rest is redelivered)."""
    activity_interval: float = Field(default=5, gt=0)
    """Seconds between per-identity activity upserts."""

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
        accounts = self.brokers.kafka
        if accounts is not None and accounts.topic_template is not None:
            for source in self.sources.kafka:
                claimed = source.identity_from.removeprefix("topic:")
                if source.identity_from.startswith("topic:") and claimed != accounts.topic_template:
                    # Else an identity's own topic could be read as another identity's claim.
                    raise ValueError(
                        f"kafka source {source.name} claims identities by topic:{claimed}, but "
                        f"brokers.kafka.topic_template gives each its own {accounts.topic_template}"
                    )
        targets = [(route.stream, route.table) for route in self.routes]
        repeated = sorted({t for t in targets if targets.count(t) > 1})
        if repeated:
            raise ValueError(
                "a stream feeds a table once: "
                + ", ".join(f"{stream} -> {table}" for stream, table in repeated)
            )
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
