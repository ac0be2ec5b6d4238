"""The broker-account plans: what the registry says against what the brokers hold."""

from __future__ import annotations

import pytest

from gateway.config import KafkaAccountsConfig, MosquittoAccountsConfig
from gateway.identities.accounts import (
    DEFAULT_ACCESS,
    AccountChange,
    AccountPlan,
    device_role,
    device_role_acls,
    gateway_role_acls,
    new_credentials,
)
from gateway.identities.dynsec import DynsecAccount
from gateway.identities.kafka_accounts import identity_binding, plan_kafka
from gateway.identities.mosquitto_accounts import plan_mosquitto
from gateway.kafka_admin import AclBinding

MOSQUITTO = MosquittoAccountsConfig(gateway_clients=["gateway-0"])
KAFKA = KafkaAccountsConfig(unmanaged=["User:bridge"])
GATEWAY = DynsecAccount("gateway-0", "gateway-0", False, ("gateway",))


def device(name: str, *, client_id: str | None = None, disabled: bool = False) -> DynsecAccount:
    return DynsecAccount(name, client_id or name, disabled, (device_role(name),))


def own_roles(*names: str) -> dict[str, tuple[tuple[str, str, bool], ...]]:
    """The devices' own roles as the plugin reports them, each with its one ACL."""
    return {
        device_role(n): tuple((t, topic, True) for t, topic in device_role_acls(MOSQUITTO, n))
        for n in names
    }


def actions(changes: list) -> set[tuple[str, str]]:  # type: ignore[type-arg]
    return {(c.action, c.name) for c in changes}


def test_mosquitto_follows_the_registry_both_ways() -> None:
    identities = {
        "new": ("active", "telemetry_ingest"),
        "ok": ("active", "telemetry_ingest"),
        "off": ("active", "telemetry_ingest"),
        "gone": ("retired", "telemetry_ingest"),
        "gone-off": ("retired", "telemetry_ingest"),
        "moved": ("active", "telemetry_ingest"),
        "wide": ("active", "telemetry_ingest"),
    }
    live = {
        "admin": DynsecAccount("admin", None, False, ("admin",)),
        "gateway-0": GATEWAY,
        "ok": device("ok"),
        "off": device("off", disabled=True),
        "gone": device("gone"),
        "gone-off": device("gone-off", disabled=True),
        "moved": device("moved", client_id="gateway-1"),
        "wide": DynsecAccount("wide", "wide", False, (device_role("wide"), "admin"), ("all",)),
        "stray": device("stray"),
    }
    roles = own_roles("ok", "off", "moved", "wide")
    roles["gateway"] = tuple((t, topic, True) for t, topic in gateway_role_acls(MOSQUITTO))
    roles[device_role("moved")] = (("publishClientSend", "devices/#", True),)
    changes = plan_mosquitto(identities, live, MOSQUITTO, role_acls=roles)
    assert actions(changes) == {
        ("device_role", "new"),
        ("create", "new"),
        ("reset", "off"),  # disabled while active: whoever holds its old password is not let in
        ("enable", "off"),
        ("disable", "gone"),
        ("bind", "moved"),
        ("device_acls", "moved"),
        ("roles", "wide"),
        ("disable", "stray"),
    }
    # Narrowing comes before widening: the password and role are right before it is enabled.
    order = [c.action for c in changes if c.name == "off"]
    assert order.index("reset") < order.index("enable")


def test_mosquitto_gateway_accounts_are_bound_and_hold_only_the_gateway_role() -> None:
    live = {"gateway-0": DynsecAccount("gateway-0", None, True, ("gateway", "admin"))}
    assert actions(plan_mosquitto({}, live, MOSQUITTO)) == {
        ("enable", "gateway-0"),
        ("bind", "gateway-0"),
        ("roles", "gateway-0"),
    }
    assert actions(plan_mosquitto({}, {}, MOSQUITTO)) == {("create", "gateway-0")}


def test_an_identity_named_like_a_gateway_account_gets_no_account() -> None:
    identities = {"gateway-0": ("active", "telemetry_ingest")}
    changes = plan_mosquitto(identities, {"gateway-0": GATEWAY}, MOSQUITTO)
    assert actions(changes) == {("report", "gateway-0")}


def test_mosquitto_plan_for_named_identities_ignores_the_rest() -> None:
    identities = {"gone": ("retired", "r")}
    live = {"gone": device("gone"), "stray": device("stray")}
    changes = plan_mosquitto(identities, live, MOSQUITTO, names=["gone", "unknown"])
    assert actions(changes) == {("disable", "gone")}


def test_an_account_made_before_its_identity_gets_a_new_password() -> None:
    identities = {"early": ("active", "r")}
    live = {"early": device("early")}
    roles = own_roles("early")
    assert plan_mosquitto(identities, live, MOSQUITTO, names=["early"], role_acls=roles) == []
    changes = plan_mosquitto(
        identities, live, MOSQUITTO, names=["early"], role_acls=roles, fresh=["early"]
    )
    assert actions(changes) == {("reset", "early")}


def test_unmanaged_accounts_are_left_alone() -> None:
    config = MosquittoAccountsConfig(gateway_clients=["gateway-0"], unmanaged=["bridge"])
    live = {"gateway-0": GATEWAY, "bridge": DynsecAccount("bridge", None, False, ("x",))}
    assert plan_mosquitto({}, live, config) == []
    identities = {"bridge": ("active", "r")}
    assert actions(plan_mosquitto(identities, live, config)) == {("report", "bridge")}


def test_mosquitto_widened_defaults_and_gateway_role_are_found() -> None:
    wanted = tuple((t, topic, True) for t, topic in gateway_role_acls(MOSQUITTO))
    live = {"gateway-0": GATEWAY}
    clean = plan_mosquitto(
        {},
        live,
        MOSQUITTO,
        role_acls={"gateway": wanted},
        default_access=DEFAULT_ACCESS,
    )
    assert clean == []
    widened = plan_mosquitto(
        {},
        live,
        MOSQUITTO,
        role_acls={"gateway": (*wanted, ("publishClientSend", "#", True))},
        default_access={**DEFAULT_ACCESS, "publishClientSend": True},
    )
    assert actions(widened) == {("role_acls", "gateway"), ("defaults", "publishClientSend")}


def test_gateway_role_reads_every_device_topic_directly_and_shared() -> None:
    assert gateway_role_acls(MOSQUITTO) == (
        ("subscribePattern", "devices/#"),
        ("subscribePattern", "$share/+/devices/#"),
        ("publishClientReceive", "devices/#"),
    )


def write(principal: str, topic: str, pattern: str = "literal") -> AclBinding:
    return AclBinding("topic", topic, pattern, principal, "write")


def test_kafka_identity_binding_follows_the_template() -> None:
    assert identity_binding(KAFKA, "a") == write("User:a", "telemetry.a")
    prefixed = KafkaAccountsConfig(topic_template="telemetry.{identity}.{stream}")
    assert identity_binding(prefixed, "a") == write("User:a", "telemetry.a.", "prefixed")
    assert identity_binding(KafkaAccountsConfig(topic_template=None), "a") is None


def test_kafka_follows_the_registry_both_ways() -> None:
    identities = {
        "new": ("active", "r"),
        "ok": ("active", "r"),
        "gone": ("retired", "r"),
    }
    users = {
        "ok": ("SCRAM-SHA-256",),
        "gone": ("SCRAM-SHA-256", "SCRAM-SHA-512"),
        "stranger": ("SCRAM-SHA-256",),
    }
    bindings = [
        write("User:ok", "telemetry.ok"),
        write("User:ok", "telemetry.new"),  # another identity's topic
        write("User:gone", "telemetry.gone"),
        write("User:stranger", "telemetry.ok"),
        write("User:stranger", "telemetry.", "prefixed"),  # every identity's topic
        write("User:bridge", "telemetry.", "prefixed"),  # declared unmanaged: left alone
        write("User:stranger", "other-topic"),  # not an identity's: not ours
        AclBinding("topic", "telemetry.ok", "literal", "User:ok", "write", "deny"),  # a brake
        AclBinding("cluster", "kafka-cluster", "literal", "User:ok", "alter"),  # wider
    ]
    changes = plan_kafka(identities, users, bindings, KAFKA)
    assert actions(changes) == {
        ("create", "new"),
        ("grant", "new"),
        ("revoke", "ok"),
        ("delete", "gone"),
        ("revoke", "gone"),
        ("revoke", "stranger"),
        ("report", "stranger"),
    }
    revoked = {str(c.binding) for c in changes if c.action == "revoke"}
    assert not any("DENY" in binding for binding in revoked)  # an operator's brake stays
    assert any("kafka-cluster" in binding for binding in revoked)
    deleted = {c.mechanism for c in changes if c.action == "delete"}
    assert deleted == {"SCRAM-SHA-256", "SCRAM-SHA-512"}  # every mechanism of the retired
    assert str(write("User:ok", "telemetry.new")) in revoked
    assert str(write("User:stranger", "telemetry.", "prefixed")) in revoked
    assert str(write("User:bridge", "telemetry.", "prefixed")) not in revoked


def test_a_prefix_is_bound_only_when_it_ends_after_the_name() -> None:
    config = KafkaAccountsConfig(topic_template="telemetry.{identity}.{stream}")
    identities = {"a": ("active", "r"), "a2": ("active", "r")}
    users = {"a": ("SCRAM-SHA-256",), "a2": ("SCRAM-SHA-256",)}
    bindings = [
        write("User:a", "telemetry.a.", "prefixed"),
        write("User:a2", "telemetry.a2.", "prefixed"),
        write("User:a", "telemetry.a", "prefixed"),  # also covers telemetry.a2.*
    ]
    changes = plan_kafka(identities, users, bindings, config)
    assert [(c.action, str(c.binding)) for c in changes] == [
        ("revoke", str(write("User:a", "telemetry.a", "prefixed")))
    ]


def test_new_credentials_are_generated_unless_supplied() -> None:
    plan = AccountPlan(
        (
            AccountChange("mosquitto", "create", "a", ""),
            AccountChange("kafka", "create", "a", ""),
            AccountChange("kafka", "create", "b", ""),
        )
    )
    credentials = new_credentials(plan, {"b": "given"})
    assert credentials["b"].password == "given"
    assert len(credentials["a"].password) >= 32
    assert "given" not in repr(credentials)


@pytest.mark.parametrize("limit", [1, 50])
def test_a_plan_renders_within_its_limit(limit: int) -> None:
    plan = AccountPlan(tuple(AccountChange("kafka", "grant", f"n{i}", "") for i in range(10)))
    text = plan.render(limit)
    assert text.count("\n") == min(limit, 10) + (1 if limit < 10 else 0)


def test_a_name_with_the_topic_separator_gets_no_topic_of_its_own() -> None:
    changes = plan_kafka({"a.b": ("active", "r")}, {}, [], KAFKA)
    assert actions(changes) == {("create", "a.b"), ("report", "a.b")}


def test_a_kafka_template_must_start_with_a_literal_level() -> None:
    with pytest.raises(ValueError, match="literal level"):
        KafkaAccountsConfig(topic_template="{identity}.telemetry")


def test_a_topic_claim_must_be_the_template_identities_are_given_topics_by() -> None:
    from pydantic import ValidationError

    from gateway.config import GatewayConfig

    source = {"topics": ["t"], "identity_from": "topic:telemetry.{identity}.{stream}"}
    with pytest.raises(ValidationError, match=r"brokers\.kafka\.topic_template"):
        GatewayConfig(
            sources={"kafka": [source]},
            brokers={"kafka": {"topic_template": "telemetry.{identity}"}},
        )
    GatewayConfig(
        sources={"kafka": [source]},
        brokers={"kafka": {"topic_template": "telemetry.{identity}.{stream}"}},
    )
