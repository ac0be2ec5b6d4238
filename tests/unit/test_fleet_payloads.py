"""The fleets' message bodies and their mix: decoder shapes (telemetry, and the environment
sensors' wide rows in JSON and MessagePack), unique ids, exact kind shares."""

from __future__ import annotations

import itertools

import msgspec
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import pgtime
from gateway.cli.demo import PACKED_STREAM, demo_routes
from gateway.contracts import Decode
from gateway.decoder import DecodeLimits, Reject, decode
from gateway.fleet.payloads import KINDS, Mix, Payloads
from gateway.shapes import shape_decoder

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


def environment_decoders() -> dict[bool, Decode]:
    """The demo's environment routes' decoders: JSON (False) and MessagePack (True)."""
    routes = {r.stream: r for r in demo_routes() if r.table == "ingest.environment"}
    return {
        False: shape_decoder(routes["env"], DecodeLimits()),
        True: shape_decoder(routes[PACKED_STREAM], DecodeLimits()),
    }


DECODERS = environment_decoders()


@given(
    index=st.integers(0, 999),
    seq=st.integers(0, 10**6),
    packed=st.booleans(),
    malformed=st.booleans(),
)
def test_environment_bodies_fill_the_wide_row_or_are_rejected_whole(
    index: int, seq: int, packed: bool, malformed: bool
) -> None:
    body = Payloads("r", 1, "environment").build(index, seq, NOW_MS, malformed, packed)
    decode_env = DECODERS[packed]
    received = pgtime.from_epoch_ms(NOW_MS)
    if malformed:
        with pytest.raises(Reject) as rejected:
            decode_env(body, "env-0001", "env", received)
        assert rejected.value.reason == ("malformed_msgpack" if packed else "malformed_json")
        return
    ((ts, identity, _, temperature, humidity, battery, uptime, firmware, door),) = decode_env(
        body, "env-0001", "env", received
    )
    assert (ts, identity, uptime) == (received, "env-0001", seq)
    assert 18 <= temperature <= 26 and 2700 < battery <= 3300 and firmware
    assert humidity is None if seq % 10 == 0 else 35 <= humidity <= 65
    assert door is (seq % 2 == 0 if index % 3 == 0 else False)  # absent: the route's default


def test_environment_bodies_are_json_or_messagepack_of_one_shape() -> None:
    payloads = Payloads("run1", 1, "environment")
    as_json = orjson.loads(payloads.build(4, 7, NOW_MS, malformed=False))
    as_msgpack = msgspec.msgpack.decode(payloads.build(4, 7, NOW_MS, False, packed=True))
    assert set(as_json) == set(as_msgpack) == {"id", "ts", "env", "battery", "uptime", "fw"}
    assert as_msgpack["id"] == "run1-4-7" and set(as_msgpack["env"]) == {"temp", "hum"}


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


@pytest.mark.parametrize("senders", [1, 2, 10, 11, 50])
@pytest.mark.parametrize("share", [0.01, 0.02, 0.05, 0.333])
@pytest.mark.parametrize("each", [1, 49, 50, 400])
def test_senders_with_spread_phases_each_send_their_share_and_the_rounded_total(
    senders: int, share: float, each: int
) -> None:
    counts = []
    for i in range(senders):
        mix = Mix(malformed=share, spoofed=0.0, phase=(i + 0.5) / senders)
        counts.append(sum(mix.next() == KINDS.index("malformed") for _ in range(each)))
    assert sum(counts) == int(senders * each * share + 0.5)  # half up, as one mix rounds
    assert max(counts) - min(counts) <= 1  # no sender takes another's share
