"""What the admin client sends: bindings checked before they reach the broker, and the SCRAM
request encoded as Kafka's flexible version 0 with no secret in any repr."""

from __future__ import annotations

import hashlib
import logging
from io import BytesIO

import pytest

from gateway.kafka_admin import AclBinding, SaltedCredential, ScramCredential, _salt
from gateway.kafka_protocol import AlterScram, AlterScramStruct


def test_a_binding_reads_as_the_rule_it_is() -> None:
    binding = AclBinding("topic", "telemetry.", "prefixed", "User:mallory", "write")
    assert str(binding) == "ALLOW User:mallory WRITE on topic prefix 'telemetry.' from *"
    denied = AclBinding("group", "g", "literal", "User:x", "read", permission="deny")
    assert str(denied) == "DENY User:x READ on group 'g' from *"


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        (("topic", "t", "match", "User:a", "write"), "literal or prefixed"),
        (("topic", "t", "literal", "User:a", "any"), "'any' is a filter"),
        (("any", "t", "literal", "User:a", "write"), "'any' is a filter"),
        (("topic", "t", "literal", "User:a", "publish"), "unknown operation 'publish'"),
        (("broker", "t", "literal", "User:a", "write"), "unknown resource type"),
        (("topic", "t", "literal", "alice", "write"), "<type>:<name>"),
    ],
)
def test_a_binding_that_kafka_could_not_hold_is_refused_at_once(
    arguments: tuple[str, str, str, str, str], complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        AclBinding(*arguments)


def test_salted_password_is_pbkdf2_of_the_password_with_a_fresh_salt() -> None:
    first, second = _salt([("u", "pw"), ("u", "pw")], "SCRAM-SHA-256", 4096)
    assert len(first.salt) == 32 and first.salt != second.salt
    assert first.salted_password == hashlib.pbkdf2_hmac("sha256", b"pw", first.salt, 4096)
    (sha512,) = _salt([("u", "pw")], "SCRAM-SHA-512", 4096)
    assert len(sha512.salted_password) == 64


def test_the_scram_request_encodes_as_flexible_v0_and_hides_its_secrets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    salted = SaltedCredential("a=b", "SCRAM-SHA-256", 4096, b"s" * 32, b"k" * 32)
    wire = (salted.user, 1, salted.iterations, salted.salt, salted.salted_password)
    struct = AlterScram([("gone", 1)], [wire]).build(AlterScramStruct)

    decoded = AlterScramStruct.SCHEMA.decode(BytesIO(struct.encode()))
    assert decoded[0] == [("gone", 1, {})]
    assert decoded[1] == [("a=b", 1, 4096, b"s" * 32, b"k" * 32, {})]
    assert decoded[2] == {}

    with caplog.at_level(logging.DEBUG):
        logging.getLogger("aiokafka.conn").debug("Request: %s", struct)
    for text in (repr(struct), caplog.text, repr(salted), repr(ScramCredential("a", "pw"))):
        assert "kkkk" not in text and "ssss" not in text and "pw'" not in text
    assert "a=b" in repr(struct)
