"""The example configuration loads; errors name the path and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.app import Gateway
from gateway.config import (
    DatabaseConfig,
    KafkaSourceConfig,
    MosquittoAccountsConfig,
    MqttSourceConfig,
    RouteConfig,
    Secret,
    load_config,
)
from gateway.db import ALLOW_UNVERIFIED_ENV, DatabaseError, connect, dsn_exposure
from gateway.identities.accounts import device_role_acls, gateway_role_acls
from gateway.roles.declaration import RoleSpec
from gateway.tls import postgres_sslmode
from gateway.validation import ConfigError

EXAMPLE = Path(__file__).parents[2] / "config" / "gateway.toml"


def test_example_configuration_is_valid() -> None:
    config = load_config(EXAMPLE)
    (source,) = config.sources.mqtt
    assert source.subscription == "$share/gateways/devices/+/#"
    assert config.routes[0].table == "ingest.telemetry"


def test_environment_overrides_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_DATABASE__HOST", "db.internal")
    monkeypatch.setenv("GATEWAY_DATABASE__CA_FILE", "/etc/ssl/db-ca.crt")
    monkeypatch.setenv("GATEWAY_BATCHING__MAX_ROWS", "1000")
    config = load_config(EXAMPLE)
    assert (config.database.host, config.batching.max_rows) == ("db.internal", 1000)


@pytest.mark.parametrize(
    ("settings", "mode"),
    [
        ({}, "prefer"),  # loopback: no one in between
        ({"ca_file": "/ca.crt"}, "verify-full"),  # a CA makes verify-full the default
        ({"host": "db", "ca_file": "/ca.crt"}, "verify-full"),
        ({"host": "db", "sslmode": "verify-ca"}, "verify-ca"),  # the system's CAs
        ({"host": "/run/postgresql"}, "prefer"),  # a Unix socket
        ({"host": "db", "sslmode": "require", "allow_unverified_password": True}, "require"),
    ],
)
def test_role_passwords_go_only_where_no_one_can_ask_for_them(
    settings: dict[str, object], mode: str
) -> None:
    database = DatabaseConfig.model_validate(settings)
    assert postgres_sslmode(database.sslmode, database.ca_file) == mode


@pytest.mark.parametrize("sslmode", ["disable", "prefer", "require"])
def test_an_unverified_server_elsewhere_is_refused(sslmode: str) -> None:
    with pytest.raises(ValidationError, match="ask for the password in clear text"):
        DatabaseConfig.model_validate({"host": "db.internal", "sslmode": sslmode})


def test_a_client_certificate_needs_tls_that_is_required() -> None:
    with pytest.raises(ValidationError, match="`cert_file` needs sslmode `require`"):
        DatabaseConfig.model_validate({"sslmode": "prefer", "cert_file": "/client.crt"})


def test_errors_name_path_and_expectation(tmp_path: Path) -> None:
    bad = tmp_path / "gateway.toml"
    bad.write_text(
        '[database]\nport = "five"\n[[sources.mqtt]]\ntopic_template = "x/{stream}"\n'
        '[identities]\nunknown = "allow"\n[batching]\nmax_rows = 10\nmax_buffered_rows = 1\n'
        "[colour]\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(bad)
    problems = dict(caught.value.problems)
    assert "valid integer" in problems["database.port"]
    assert "{identity}" in problems["sources.mqtt[0].topic_template"]
    assert "'reject', 'provision' or 'quarantine'" in problems["identities.unknown"]
    assert "must hold at least one batch" in problems["batching"]
    assert "colour" in problems


def test_kafka_source_errors_name_their_path(tmp_path: Path) -> None:
    bad = tmp_path / "gateway.toml"
    bad.write_text(
        "[[sources.kafka]]\n"
        'name = "a"\nbootstrap_servers = "k:9092"\ngroup_id = "g"\n'
        'topics = ["t"]\ntopic_pattern = "t.*"\nsecurity_protocol = "SASL_SSL"\n'
        "[[sources.kafka]]\n"
        'name = "b"\nbootstrap_servers = "k:9092"\ngroup_id = "g"\ntopics = ["t"]\n'
        'identity_from = "value"\nsasl_mechanism = "SCRAM-SHA-1"\nmax_poll_records = 0\n'
        "[[sources.kafka]]\n"
        'name = "c"\nbootstrap_servers = "k:9092"\ngroup_id = "g"\ntopics = ["t"]\n'
        'identity_from = "topic:telemetry"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_config(bad)
    problems = dict(caught.value.problems)
    assert "either `topics` or `topic_pattern`" in problems["sources.kafka[0]"]
    assert "key|header:.+|topic:.+" in problems["sources.kafka[1].identity_from"]
    assert (
        "'SCRAM-SHA-256', 'SCRAM-SHA-512' or 'PLAIN'" in problems["sources.kafka[1].sasl_mechanism"]
    )
    assert "greater than or equal to 1" in problems["sources.kafka[1].max_poll_records"]
    assert "{identity}" in problems["sources.kafka[2]"]


def test_kafka_source_accepts_a_pattern_scram_512_and_fetch_sizes(tmp_path: Path) -> None:
    good = tmp_path / "gateway.toml"
    good.write_text(
        "[[sources.kafka]]\n"
        'name = "a"\nbootstrap_servers = "k:9092"\ngroup_id = "g"\n'
        'topic_pattern = "telemetry\\\\..*"\n'
        'security_protocol = "SASL_SSL"\nsasl_mechanism = "SCRAM-SHA-512"\n'
        'username = "gw"\npassword = { env = "KAFKA_PASSWORD" }\n'
        "max_poll_records = 2000\nfetch_max_bytes = 1048576\nmax_partition_fetch_bytes = 262144\n"
        'identity_from = "header:device"\n'
    )
    (source,) = load_config(good).sources.kafka
    assert (source.topic_pattern, source.sasl_mechanism) == (r"telemetry\..*", "SCRAM-SHA-512")
    assert (source.max_poll_records, source.fetch_max_bytes) == (2000, 1_048_576)


async def test_the_control_role_may_not_also_write_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Write pools speak integer timestamps; the control pool reads datetimes. One pool cannot
    do both, so sharing a role is refused before anything connects."""
    monkeypatch.setenv("GATEWAY_DATABASE__CONTROL_ROLE", "telemetry_ingest")
    gateway = Gateway(load_config(EXAMPLE))
    with pytest.raises(ConfigError, match=r"database\.control_role"):
        await gateway.start()


def test_a_secret_names_its_variable_or_file_when_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GATEWAY_TEST_ABSENT", raising=False)
    with pytest.raises(ConfigError, match="environment variable GATEWAY_TEST_ABSENT: is not set"):
        Secret(env="GATEWAY_TEST_ABSENT").require()
    missing = tmp_path / "absent"
    assert Secret(file=missing).read() is None
    with pytest.raises(ConfigError, match=f"file {missing}: is not set"):
        Secret(file=missing).require()
    present = tmp_path / "password"
    present.write_text("s3cret\n")
    assert Secret(file=present).require() == "s3cret"


def test_broker_and_role_passwords_are_one_secret_type(tmp_path: Path) -> None:
    bad = tmp_path / "gateway.toml"
    bad.write_text('[[sources.mqtt]]\npassword = { env = "A", file = "/b" }\n')
    with pytest.raises(ConfigError) as caught:
        load_config(bad)
    assert "exactly one" in dict(caught.value.problems)["sources.mqtt[0].password"]
    assert RoleSpec.model_fields["password"].annotation is Secret


def mqtt(**settings: object) -> MqttSourceConfig:
    return MqttSourceConfig.model_validate({"username": "gw", "password": {"env": "X"}, **settings})


def test_an_mqtt_password_crosses_the_network_only_over_tls() -> None:
    assert not mqtt().uses_tls  # loopback: nothing on the way
    assert mqtt(host="broker", ca_file="/ca.crt").uses_tls  # a CA turns TLS on
    assert mqtt(host="broker", tls=True).uses_tls  # the system's CAs
    assert mqtt(host="broker", allow_plaintext_password=True)  # said out loud
    with pytest.raises(ValidationError, match="to broker in clear text"):
        mqtt(host="broker")
    with pytest.raises(ValidationError, match="`server_name` needs TLS"):
        mqtt(server_name="broker.example")


@pytest.mark.parametrize(
    "topic", ["devices/{identity}/+", "{identity}/+", "site/a/{identity}/+", "/{identity}/+"]
)
def test_a_device_topic_with_its_name_as_a_whole_level_is_taken(topic: str) -> None:
    config = MosquittoAccountsConfig(device_topic=topic)
    assert device_role_acls(config, "abc") == (
        ("publishClientSend", topic.replace("{identity}", "abc")),
    )
    assert gateway_role_acls(config)


@pytest.mark.parametrize(
    "topic",
    [
        "devices/x{identity}/+",  # device `abc` would publish where a reader sees `xabc`
        "devices/{identity}x/+",
        "devices/{identity}/#",  # `#` also matches `devices/<name>`, and any depth
        "devices/{identity}/+/+",
        "devices/+/{identity}/+",  # any device's name in the level before
        "devices/{identity}/{identity}/+",
        "devices/{identity}/telemetry",  # one level under its name, whatever the stream
    ],
)
def test_a_device_topic_that_could_spell_another_name_is_refused(topic: str) -> None:
    with pytest.raises(ValidationError, match="device_topic"):
        MosquittoAccountsConfig(device_topic=topic)


def test_sasl_plain_without_tls_is_refused_unless_allowed() -> None:
    plain = {
        "topics": ["t"],
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "username": "gw",
        "password": {"env": "X"},
    }
    with pytest.raises(ValidationError, match="SASL PLAIN over SASL_PLAINTEXT"):
        KafkaSourceConfig.model_validate(plain)
    assert KafkaSourceConfig.model_validate(plain | {"allow_plain_without_tls": True})
    assert KafkaSourceConfig.model_validate(plain | {"security_protocol": "SASL_SSL"})
    assert KafkaSourceConfig.model_validate(plain | {"sasl_mechanism": "SCRAM-SHA-512"})


@pytest.mark.parametrize(
    ("dsn", "exposed"),
    [
        ("postgresql://postgres:pw@127.0.0.1:5432/gateway", False),
        ("postgresql://postgres:pw@localhost/gateway", False),
        ("postgresql://postgres:pw@db.internal/gateway", True),
        ("postgresql://postgres:pw@db.internal/gateway?sslmode=require", True),
        ("postgresql://postgres:pw@db.internal/gateway?sslmode=verify-full", False),
        ("postgresql://postgres@/gateway?host=/run/postgresql", False),
        ("postgresql://postgres:pw@/gateway?host=db.internal&sslmode=verify-ca", False),
        # a service file may name any host (and the driver reads it): not taken as local
        ("postgresql://postgres:pw@/gateway?service=central", True),
        ("postgresql://postgres:pw@/gateway?service=central&sslmode=verify-full", False),
        ("postgresql://postgres:pw@localhost/gateway?service=central", False),
    ],
)
def test_an_admin_dsn_exposing_its_password_is_named(dsn: str, exposed: bool) -> None:
    assert bool(dsn_exposure(dsn)) is exposed


async def test_the_admin_login_is_refused_to_an_unverified_server_unless_allowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ALLOW_UNVERIFIED_ENV, raising=False)
    with pytest.raises(DatabaseError, match="refusing to log in: sslmode prefer does not verify"):
        await connect("postgresql://postgres:pw@192.0.2.1:9/gateway")
    monkeypatch.setenv(ALLOW_UNVERIFIED_ENV, "1")  # allowed: then the driver tries, and fails
    with pytest.raises(DatabaseError, match="cannot connect to PostgreSQL"):
        await connect("postgresql://postgres:pw@127.0.0.1:9/gateway?connect_timeout=1")


async def test_an_unreadable_dsn_is_one_line_without_its_text() -> None:
    with pytest.raises(DatabaseError) as refused:
        await connect("postgresql://postgres:s3cret@127.0.0.1:notaport/gateway")
    assert "s3cret" not in str(refused.value) and "not valid" in str(refused.value)


STATE_COLUMNS = [
    {"name": "identity", "path": "$identity", "type": "text"},
    {"name": "site", "path": "/site", "type": "text"},
    {"name": "state", "path": "", "type": "jsonb"},
    {"name": "updated_at", "path": "/ts", "type": "timestamptz"},
]


def state_route(**settings: object) -> RouteConfig:
    return RouteConfig.model_validate(
        {"stream": "s", "table": "ingest.device_state", "kind": "state"}
        | {"columns": STATE_COLUMNS}
        | settings
    )


def test_a_state_route_keys_by_its_sender_and_a_newer_version() -> None:
    route = state_route()
    assert (route.key, route.version) == (["identity"], "updated_at")
    assert state_route(key=["identity", "site"]).key == ["identity", "site"]
    # A key without the sender would let one identity overwrite another's state.
    with pytest.raises(ValidationError, match="must include the `\\$identity` column"):
        state_route(key=["site"])
    with pytest.raises(ValidationError, match="`version` names no column"):
        state_route(version="seen")
    with pytest.raises(ValidationError, match="must be a required timestamptz, int8 or int4"):
        state_route(version="site")


def test_every_shaped_row_names_its_sender() -> None:
    with pytest.raises(ValidationError, match="needs a column from `\\$identity`"):
        RouteConfig.model_validate(
            {
                "stream": "s",
                "table": "ingest.environment",
                "kind": "table",
                "columns": [{"name": "ts", "path": "/ts", "type": "timestamptz"}],
            }
        )
    with pytest.raises(ValidationError, match="give `role` and `for_roles` together"):
        state_route(role="state_writer")
