"""The Kafka fleet's pure parts: options, names and partitions, the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from aiokafka.partitioner import murmur2

from gateway.cli.simulate import (
    KAFKA_ONLY,
    MQTT_ONLY,
    kafka_options_from_args,
    options_from_args,
    register,
)
from gateway.fleet.common import FleetError, KafkaFleetError
from gateway.fleet.kafka import device_partitions
from gateway.fleet.options import FleetOptions, KafkaFleetOptions


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"devices": 0}, "devices must be at least 1"),
        ({"topic": "no/slashes"}, "topic must be 1-249 characters"),
        ({"topic": ""}, "topic must be 1-249 characters"),
        ({"bootstrap_servers": " "}, "bootstrap_servers must name"),
        ({"identity_header": ""}, "identity_header must not be empty"),
        ({"rate": -1}, "rate must be 0"),
        ({"count": -1}, "count must not be negative"),
        ({"duration": 0}, "duration must be positive"),
        ({"readings": 0}, "readings must be at least 1"),
        ({"malformed": 1.5}, "malformed is a share between 0 and 1"),
        ({"acks": 2}, "acks must be 0, 1 or 'all'"),
        ({"security_protocol": "SASL_PLAINTEXT"}, "SASL_PLAINTEXT needs a username and a pass"),
        ({"security_protocol": "KERBEROS"}, "security_protocol must be"),
        ({"sasl_mechanism": "GSSAPI"}, "sasl_mechanism must be"),
        ({"batch_bytes": 100}, "batch_bytes must be between 1024 and 1048576"),
        ({"batch_bytes": 2 << 20}, "batch_bytes must be between 1024 and 1048576"),
        ({"drain_timeout": 0}, "timeouts must be positive"),
    ],
)
def test_invalid_options_fail_before_any_connect(changes: dict[str, object], problem: str) -> None:
    with pytest.raises(KafkaFleetError, match=f"^invalid Kafka fleet options: .*{problem}"):
        KafkaFleetOptions(**changes)  # type: ignore[arg-type]


def test_all_problems_are_named_at_once() -> None:
    with pytest.raises(KafkaFleetError) as caught:
        KafkaFleetOptions(devices=0, readings=0, malformed=2)
    assert str(caught.value).count(";") == 2


def test_sasl_options_and_the_password_kept_out_of_repr() -> None:
    options = KafkaFleetOptions(
        security_protocol="SASL_SSL", username="bridge", password="s3cret", acks=1
    )
    assert "s3cret" not in repr(options)


def test_names_are_those_of_the_mqtt_fleet() -> None:
    for devices in (1, 10, 10_000, 12_345):
        kafka = KafkaFleetOptions(devices=devices, prefix="m-")
        mqtt = FleetOptions(devices=devices, prefix="m-", password="x")
        assert kafka.names() == mqtt.names()
    assert KafkaFleetOptions(devices=3).names() == ["sensor-0000", "sensor-0001", "sensor-0002"]


def test_identity_from_is_the_gateway_setting() -> None:
    assert KafkaFleetOptions().identity_from == "key"
    assert KafkaFleetOptions(identity_header="device").identity_from == "header:device"


def test_keyed_devices_go_where_java_producers_put_their_keys() -> None:
    options = KafkaFleetOptions(devices=50)
    partitions = device_partitions(options, {2, 0, 1})
    for name, partition in zip(options.names(), partitions, strict=True):
        assert partition == (murmur2(name.encode()) & 0x7FFFFFFF) % 3
    assert set(partitions) == {0, 1, 2}  # 50 keys spread over every partition


def test_header_devices_go_round_robin() -> None:
    options = KafkaFleetOptions(devices=7, identity_header="device")
    assert device_partitions(options, [3, 1, 0, 2]) == [0, 1, 2, 3, 0, 1, 2]


def parse(*argv: str) -> argparse.Namespace:
    root = argparse.ArgumentParser()
    register(root.add_subparsers(dest="command", required=True))
    return root.parse_args(["simulate", *argv])


def test_kafka_command_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BRIDGE_SECRET", "s3cret")
    args = parse(
        *("--kafka", "--bootstrap-servers", "k1:9093,k2:9093", "--topic", "plant.telemetry"),
        *("--identity-header", "device", "--acks", "1", "--batch-bytes", "65536"),
        *("--security-protocol", "SASL_SSL", "--sasl-mechanism", "SCRAM-SHA-512"),
        *("--username", "bridge", "--sasl-password-env", "BRIDGE_SECRET"),
        *("--ca-file", str(tmp_path / "ca.pem"), "--devices", "5", "--prefix", "k-"),
        *("--rate", "100", "--duration", "3", "--readings", "2", "--malformed", "0.1"),
        *("--drain-timeout", "5"),
    )
    options = kafka_options_from_args(args)
    assert (options.bootstrap_servers, options.topic) == ("k1:9093,k2:9093", "plant.telemetry")
    assert (options.identity_header, options.acks, options.batch_bytes) == ("device", 1, 65536)
    assert (options.security_protocol, options.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    assert (options.username, options.password) == ("bridge", "s3cret")
    assert options.ca_file == tmp_path / "ca.pem"
    assert (options.devices, options.prefix, options.rate) == (5, "k-", 100)
    assert (options.duration, options.count, options.readings) == (3, None, 2)
    assert (options.malformed, options.drain_timeout) == (0.1, 5)
    assert kafka_options_from_args(parse("--kafka", "--acks", "0")).acks == 0
    assert kafka_options_from_args(parse("--kafka")).acks == "all"


def test_kafka_needs_no_device_password_and_takes_none() -> None:
    options = kafka_options_from_args(parse("--kafka", "--count", "10"))
    assert options.security_protocol == "PLAINTEXT" and options.password is None
    with pytest.raises(SystemExit):
        parse("--kafka", "--password", "x")  # device passwords are MQTT's
    with pytest.raises(SystemExit):
        parse("--count", "10")  # without --kafka a device password is still required


def test_one_transport_refuses_the_others_options(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FleetError, match=r"^--spoofed is an MQTT option, not for --kafka$"):
        kafka_options_from_args(parse("--kafka", "--spoofed", "0.1"))
    with pytest.raises(FleetError, match=r"^--port is an MQTT option"):
        kafka_options_from_args(parse("--kafka", "--port", "1884"))
    with pytest.raises(FleetError, match=r"^--topic is a Kafka option: add --kafka$"):
        options_from_args(parse("--password", "x", "--topic", "t"))
    with pytest.raises(FleetError, match=r"^--identity-header is a Kafka option"):
        options_from_args(parse("--password", "x", "--identity-header", "device"))
    monkeypatch.delenv("NO_SUCH_SECRET", raising=False)
    with pytest.raises(FleetError, match=r"\$NO_SUCH_SECRET is not set"):
        kafka_options_from_args(parse("--kafka", "--sasl-password-env", "NO_SUCH_SECRET"))


def test_the_transport_only_defaults_are_the_parsers() -> None:
    """Else every run of the other transport would be refused for an option nobody gave."""
    mqtt, kafka = parse("--password", "x"), parse("--kafka")
    for args in (mqtt, kafka):
        for dest, default in {**MQTT_ONLY, **KAFKA_ONLY}.items():
            assert getattr(args, dest) == default, dest
    options_from_args(mqtt)
    kafka_options_from_args(kafka)
