"""The fleet simulator's pure parts: payloads and ids, kind shares, packets, options, report."""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import mqtt5
import orjson
import pytest

from gateway import pgtime
from gateway.cli.simulate import options_from_args, register
from gateway.decoder import DecodeLimits, Reject, decode
from gateway.fleet.mqtt import (
    KINDS,
    FleetError,
    FleetOptions,
    FleetReport,
    KindCounts,
    Mix,
    Payloads,
    device_quota,
    encode_connect_311,
    encode_publish,
    load_credentials,
    topic_header,
)
from gateway.validation import ConfigError

NOW_MS = 1_732_500_000_000


def test_single_reading_has_the_decoder_shape() -> None:
    body = orjson.loads(Payloads("run1", readings=1).build(7, 3, NOW_MS, malformed=False))
    assert set(body) == {"id", "ts", "metric", "value", "tags"}
    assert body["id"] == "run1-7-3"
    assert body["ts"] == NOW_MS
    assert isinstance(body["metric"], str) and body["metric"]
    assert isinstance(body["value"], float)
    assert isinstance(body["tags"], dict)


def test_batch_has_the_decoder_shape() -> None:
    body = orjson.loads(Payloads("run1", readings=5).build(0, 0, NOW_MS, malformed=False))
    assert set(body) == {"id", "ts", "readings"}
    assert len(body["readings"]) == 5
    for reading in body["readings"]:
        assert set(reading) == {"metric", "value", "tags"}
        assert isinstance(reading["value"], float)


@pytest.mark.parametrize("readings", [1, 4])
def test_the_gateway_decodes_valid_bodies_and_rejects_malformed_ones(readings: int) -> None:
    payloads = Payloads("r", readings)
    received = pgtime.from_epoch_ms(NOW_MS)
    rows = decode(payloads.build(1, 1, NOW_MS, malformed=False), "d", received, DecodeLimits())
    assert len(rows) == readings
    assert rows[0][0] == received
    with pytest.raises(Reject) as rejected:
        decode(payloads.build(1, 2, NOW_MS, malformed=True), "d", received, DecodeLimits())
    assert rejected.value.reason == "malformed_json"


def test_malformed_bodies_keep_their_id_but_are_not_json() -> None:
    body = Payloads("run1", readings=1).build(2, 9, NOW_MS, malformed=True)
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(body)
    assert b'"id":"run1-2-9"' in body


def test_ids_are_unique_across_devices_sequences_and_runs() -> None:
    ids = {
        orjson.loads(Payloads(run, 1).build(device, seq, NOW_MS, malformed=False))["id"]
        for run, device, seq in itertools.product(("a", "b"), range(12), range(12))
    }
    assert len(ids) == 2 * 12 * 12


def test_mix_gives_exact_shares_spread_evenly() -> None:
    mix = Mix(malformed=0.01, spoofed=0.02)
    kinds = [mix.next() for _ in range(10_000)]
    assert kinds.count(KINDS.index("malformed")) == 100
    assert kinds.count(KINDS.index("spoofed")) == 200
    spoofs = [i for i, kind in enumerate(kinds) if kind == KINDS.index("spoofed")]
    assert {b - a for a, b in itertools.pairwise(spoofs)} == {50}


@pytest.mark.parametrize(
    ("malformed", "spoofed", "total", "expected"),
    [(0, 0, 1000, (1000, 0, 0)), (0.5, 0.5, 10, (0, 5, 5)), (0.01, 0.0, 50, (49, 1, 0))],
)
def test_mix_counts_round_to_nearest(
    malformed: float, spoofed: float, total: int, expected: tuple[int, int, int]
) -> None:
    mix = Mix(malformed, spoofed)
    kinds = [mix.next() for _ in range(total)]
    assert tuple(kinds.count(k) for k in range(3)) == expected


@pytest.mark.parametrize("payload_size", [0, 90, 200, 16_348, 16_350, 20_000])
@pytest.mark.parametrize("packet_id", [None, 1, 65535])
def test_publish_bytes_match_the_codec(payload_size: int, packet_id: int | None) -> None:
    topic = "devices/sensor-0001/telemetry"
    payload = bytes(range(256)) * (payload_size // 256) + b"x" * (payload_size % 256)
    qos = mqtt5.QoS.AT_MOST_ONCE if packet_id is None else mqtt5.QoS.AT_LEAST_ONCE
    expected = mqtt5.PublishPacket(topic, payload, qos=qos, packet_id=packet_id).write()
    assert encode_publish(topic_header(topic), payload, packet_id) == expected


@pytest.mark.parametrize("payload_size", [0, 200, 20_000])
def test_mqtt_311_publish_has_no_properties_field(payload_size: int) -> None:
    topic, payload = "devices/sensor-0001/telemetry", b"x" * payload_size
    v5 = encode_publish(topic_header(topic), payload, 7)
    v311 = encode_publish(topic_header(topic), payload, 7, properties=b"")
    # The same packet one byte shorter: the length, the topic, the packet id, then the payload.
    assert v311.endswith(topic_header(topic) + b"\x00\x07" + payload)
    assert len(v311) == len(v5) - 1 or payload_size == 20_000


def test_mqtt_311_connect_bytes() -> None:
    assert encode_connect_311("id", "u", "p") == bytes.fromhex(
        "101400044d51545404c2000000026964000175000170"
    )
    assert encode_connect_311("c" * 200, "u", "p")[1:3] == bytes((0xDA, 0x01))  # 218 bytes follow


def test_quotas_spread_the_count_over_devices() -> None:
    quotas = [device_quota(1003, 10, i) for i in range(10)]
    assert quotas == [101, 101, 101] + [100] * 7
    assert device_quota(None, 10, 0) is None


def test_names_topics_and_victims() -> None:
    options = FleetOptions(devices=3, prefix="s-", password="p", stream="events")
    assert options.names() == ["s-0000", "s-0001", "s-0002"]
    assert options.topic("s-0001") == "devices/s-0001/events"
    assert [options.victim(i) for i in range(3)] == ["s-0001", "s-0002", "s-0000"]
    assert FleetOptions(devices=1, password="p").victim(0) == "sensor-0001"
    assert FleetOptions(devices=12_345, password="p").name(7) == "sensor-00007"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"devices": 0}, "devices must be at least 1"),
        ({"processes": 11}, "processes must be between"),
        ({"malformed": 0.7, "spoofed": 0.4}, "must not exceed 1"),
        ({"spoofed": -0.1}, "shares between 0 and 1"),
        ({"qos": 2}, "qos must be 0 or 1"),
        ({"window": 70_000}, "window must be between"),
        ({"readings": 0}, "readings must be at least 1"),
        ({"stream": "a/b"}, "stream must be one topic level"),
        ({"password": None}, "give a password or credentials"),
        ({"password": None, "credentials": {"sensor-0000": "x"}}, "for 9: sensor-0001"),
    ],
)
def test_invalid_options_are_refused(changes: dict[str, object], message: str) -> None:
    settings: dict[str, object] = {"devices": 10, "password": "p", **changes}
    with pytest.raises(FleetError, match=message):
        FleetOptions(**settings)  # type: ignore[arg-type]


def test_a_template_without_identity_is_refused() -> None:
    with pytest.raises(ConfigError, match="identity"):
        FleetOptions(password="p", topic_template="devices/{stream}")


def test_credentials_file(tmp_path: Path) -> None:
    path = tmp_path / "creds"
    path.write_text("# fleet\nsensor-0000:pa:ss\n\nsensor-0001: two\n")
    assert load_credentials(path) == {"sensor-0000": "pa:ss", "sensor-0001": " two"}
    path.write_text("sensor-0000:x\nno-password-here\n")
    with pytest.raises(FleetError, match=r"creds:2: expected `name:password`"):
        load_credentials(path)
    with pytest.raises(FleetError, match="cannot read credentials file"):
        load_credentials(tmp_path / "missing")


def report(protocol: str = "5", **kinds: tuple[int, int, int]) -> FleetReport:
    counts = {name: KindCounts(*kinds.get(name, (0, 0, 0))) for name in KINDS}
    return FleetReport(
        devices=2,
        processes=1,
        qos=1,
        readings=3,
        protocol=protocol,
        planned=None,
        duration=2.0,
        kinds=counts,
        reasons={0: 10, 135: 2},
        errors=[],
    )


def test_report_totals_and_expected_outcome() -> None:
    done = report(valid=(8, 8, 0), malformed=(2, 2, 0), spoofed=(2, 0, 2))
    assert (done.sent, done.acked, done.refused, done.unanswered) == (12, 10, 2, 0)
    assert done.rate == 6.0
    assert done.expected() == {
        "valid_messages": 8,
        "rows": 24,
        "malformed_messages": 2,
        "spoofed_messages": 0,
    }
    assert done.ok
    summary = done.as_json()
    assert summary["malformed_sent"] == 2 and summary["spoofed_sent"] == 2
    assert summary["reasons"] == {"success": 10, "not_authorized": 2}
    text = done.render()
    assert "sent        12 in 2.00 s (6 msg/s)" in text
    assert "spoofed   2 sent: 0 acked, 2 refused" in text
    assert "8 valid messages (24 rows), 2 malformed rejects" in text


def test_report_problems() -> None:
    assert report(valid=(5, 3, 0)).problems() == ["2 of 5 messages got no PUBACK"]
    assert "accepted 1 spoofed" in report(spoofed=(1, 1, 0)).problems()[0]
    # MQTT 3.1.1 cannot refuse a publish: a broker drops spoofs after acknowledging them.
    assert report("3.1.1", spoofed=(1, 1, 0)).problems() == []
    refused = report(valid=(2, 0, 2)).problems()
    assert refused == [
        "the broker refused 2 messages the devices sent to their own topics: "
        "not_authorized (135) x2"
    ]


def test_reports_of_processes_merge() -> None:
    one = report(valid=(8, 8, 0), spoofed=(1, 0, 1))
    two = report(valid=(4, 4, 0))
    two.duration = 3.0
    two.errors = ["sensor-0003: connection lost"]
    merged = FleetReport.merge([one, two], processes=2)
    assert (merged.devices, merged.processes, merged.duration) == (4, 2, 3.0)
    assert merged.kinds["valid"] == KindCounts(12, 12, 0)
    assert merged.reasons == {0: 20, 135: 4}
    assert merged.errors == ["sensor-0003: connection lost"]


def parse(*argv: str) -> argparse.Namespace:
    root = argparse.ArgumentParser()
    register(root.add_subparsers(dest="command", required=True))
    return root.parse_args(["simulate", *argv])


def test_command_line_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_SECRET", "s3cret")
    args = parse(
        *("--port", "1884", "--devices", "5", "--prefix", "m-", "--password-env", "FLEET_SECRET"),
        *("--rate", "100", "--count", "50", "--readings", "3", "--malformed", "0.1"),
        *("--spoofed", "0.2", "--qos", "0", "--processes", "2", "--stream", "events"),
    )
    options = options_from_args(args)
    assert (options.port, options.devices, options.prefix) == (1884, 5, "m-")
    assert options.password_for("m-0000") == "s3cret"
    assert (options.rate, options.count, options.duration, options.readings) == (100, 50, None, 3)
    assert (options.malformed, options.spoofed, options.qos, options.processes) == (
        0.1,
        0.2,
        0,
        2,
    )
    assert options.topic("m-0001") == "devices/m-0001/events"


def test_command_line_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_SECRET", raising=False)
    with pytest.raises(FleetError, match=r"\$NO_SUCH_SECRET is not set"):
        options_from_args(parse("--password-env", "NO_SUCH_SECRET"))
    creds = tmp_path / "creds"
    creds.write_text("d0000:pw0\nd0001:pw1\n")
    options = options_from_args(
        parse("--devices", "2", "--prefix", "d", "--credentials", str(creds))
    )
    assert options.password_for("d0001") == "pw1"
    with pytest.raises(FleetError, match="no password in the credentials for 2"):
        options_from_args(parse("--devices", "2", "--credentials", str(creds)))
    with pytest.raises(SystemExit):
        parse("--devices", "2")  # a password is required
