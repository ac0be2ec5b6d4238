"""Broker accounts follow the identity lifecycle, through the command line a person uses:
Mosquitto's dynamic-security plugin and Kafka's SCRAM credentials and ACLs, both real."""

from __future__ import annotations

import asyncio
import csv
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from gateway import cli
from gateway.config import KafkaAccountsConfig
from gateway.db import ADMIN_DSN_ENV
from gateway.identities.accounts import device_role, device_role_acls
from gateway.identities.dynsec import Dynsec, NewAccount
from gateway.kafka_admin import AclBinding, KafkaAdmin, ScramCredential
from gateway.services.kafka import Kafka
from gateway.services.mosquitto import Mosquitto

from .stack import EXAMPLE_ROLES, Stack

ROLE = "telemetry_ingest"


@pytest.fixture(scope="module")
async def kafka() -> AsyncIterator[Kafka]:
    async with Kafka() as broker:
        yield broker


@pytest.fixture(scope="module")
async def env(deployment: Stack) -> Stack:
    return deployment


@pytest.fixture
def config_file(env: Stack, kafka: Kafka, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The gateway configuration an operator keeps, with both brokers' admin connections."""
    mosquitto = env.broker.accounts_config()
    path = tmp_path / "gateway.toml"
    path.write_text(
        "[brokers.mosquitto]\n"
        f'host = "{mosquitto.host}"\nport = {mosquitto.port}\n'
        f'username = "{mosquitto.username}"\n'
        f'password = {{ file = "{mosquitto.password.file}" }}\n'  # type: ignore[union-attr]
        f'gateway_role = "{mosquitto.gateway_role}"\n'
        "[brokers.kafka]\n"
        f'bootstrap_servers = "{kafka.bootstrap}"\n'
        'topic_template = "telemetry.{identity}"\n'
        'unmanaged = ["User:admin"]\n'  # the broker's own superuser
    )
    monkeypatch.setenv(ADMIN_DSN_ENV, env.database.dsn)
    monkeypatch.setenv("GATEWAY_ACTOR", "ops")
    return path


def declare_gateway_client(config: Path, client_id: str) -> None:
    text = config.read_text()
    config.write_text(
        text.replace("[brokers.kafka]", f'gateway_clients = ["{client_id}"]\n[brokers.kafka]')
    )


async def gateway(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The command line as a user runs it; it has its own event loop, so in a thread."""
    code = await asyncio.to_thread(cli.main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def add_identities(
    capsys: pytest.CaptureFixture[str], config: Path, out: Path, *names: str
) -> str:
    """`gateway identities add` for each, with brokers configured and passwords to `out`;
    returns all they printed."""
    printed = ""
    for name in names:
        code, text, err = await gateway(
            capsys, "identities", "add", name, "--role", ROLE,
            "--config", str(config), "--credentials-out", str(out),
        )  # fmt: skip
        assert code == 0, err
        printed += text + err
    return printed


def passwords(path: Path) -> dict[str, str]:
    with path.open(newline="") as handle:
        return {row["name"]: row["password"] for row in csv.DictReader(handle)}


def mqtt(
    broker: Mosquitto, name: str, password: str, client_id: str | None = None
) -> aiomqtt.Client:
    return aiomqtt.Client(
        broker.host,
        broker.port,
        username=name,
        password=password,
        identifier=client_id or name,
        protocol=aiomqtt.ProtocolVersion.V5,
    )


async def mqtt_refused(env: Stack, name: str, password: str, client_id: str | None = None) -> bool:
    try:
        async with mqtt(env.broker, name, password, client_id):
            return False
    except aiomqtt.MqttError:
        return True


async def produce(kafka: Kafka, user: str, password: str, topic: str) -> str | None:
    """None when the record was written, else the error's name."""
    producer = AIOKafkaProducer(
        **kafka.client_kwargs(user, password), request_timeout_ms=5000, metadata_max_age_ms=1000
    )
    try:
        await producer.start()
        await asyncio.wait_for(producer.send_and_wait(topic, b"{}"), 10)
    except (KafkaError, TimeoutError) as error:
        return type(error).__name__
    finally:
        await producer.stop()
    return None


async def test_an_identity_s_accounts_follow_add_rotate_and_retire(
    env: Stack, kafka: Kafka, config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name, other = f"dev-{secrets.token_hex(3)}", f"dev-{secrets.token_hex(3)}"
    for topic in (f"telemetry.{name}", f"telemetry.{other}"):
        await kafka.create_topic(topic)
    out = tmp_path / "credentials.csv"
    printed = await add_identities(capsys, config_file, out, name, other)
    assert out.stat().st_mode & 0o777 == 0o600
    issued = passwords(out)
    assert issued.keys() == {name, other}
    assert issued[name] not in printed  # handed over in the file only

    # MQTT: the account is bound to the device's own name as client id.
    async with mqtt(env.broker, name, issued[name]):
        pass
    assert await mqtt_refused(env, name, issued[name], client_id=f"{name}-2")
    # Kafka: it writes its own topic, and not another identity's.
    assert await produce(kafka, name, issued[name], f"telemetry.{name}") is None
    assert await produce(kafka, name, issued[name], f"telemetry.{other}") is not None

    # Rotation: the old password stops working on both brokers, the new one works.
    code, _, err = await gateway(
        capsys, "identities", "rotate", name, "--config", str(config_file),
        "--credentials-out", str(tmp_path / "rotated.csv"),
    )  # fmt: skip
    assert code == 0, err
    rotated = passwords(tmp_path / "rotated.csv")[name]
    assert await mqtt_refused(env, name, issued[name])
    assert await produce(kafka, name, issued[name], f"telemetry.{name}") is not None
    assert await produce(kafka, name, rotated, f"telemetry.{name}") is None

    # Retirement disconnects the connected device and refuses it everywhere afterwards.
    async with mqtt(env.broker, name, rotated) as device:
        started = time.monotonic()
        code, _, err = await gateway(
            capsys, "identities", "retire", name, "--config", str(config_file)
        )
        assert code == 0, err
        with pytest.raises(aiomqtt.MqttError):
            for _ in range(200):
                await device.publish(f"devices/{name}/telemetry", b"{}", qos=1, timeout=1)
                await asyncio.sleep(0.05)
        print(f"retire to disconnect: {time.monotonic() - started:.3f}s")
    assert await mqtt_refused(env, name, rotated)
    assert await produce(kafka, name, rotated, f"telemetry.{name}") is not None
    # The other identity is untouched.
    async with mqtt(env.broker, other, issued[other]):
        pass


async def test_drift_is_audited_and_apply_repairs_it(
    env: Stack, kafka: Kafka, config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    victim, thief = f"dev-{secrets.token_hex(3)}", f"dev-{secrets.token_hex(3)}"
    out = tmp_path / "credentials.csv"
    await add_identities(capsys, config_file, out, victim, thief)
    stray = f"stray-{secrets.token_hex(3)}"
    # By hand, behind the registry's back: an account of no identity, a device unbound and
    # given the gateway's role, another's own role widened, publishing allowed by default; on
    # Kafka a binding that lets one identity write as another, one on the cluster, and a
    # second credential of another mechanism.
    own_acls = device_role_acls(env.broker.accounts_config(), victim)
    async with Dynsec(env.broker.accounts_config(client_id="hand")) as dynsec:
        await dynsec.create([NewAccount(stray, "pw", "")])
        await dynsec.set_client_id(thief, "")
        await dynsec.set_roles(thief, ["gateway"])
        await dynsec.ensure_role(
            device_role(victim), [*own_acls, ("publishClientSend", "devices/#")]
        )
        await dynsec.set_default_access({"publishClientSend": True})
    widened = AclBinding("topic", f"telemetry.{victim}", "literal", f"User:{thief}", "write")
    cluster = AclBinding("cluster", "kafka-cluster", "literal", f"User:{thief}", "alter")
    async with KafkaAdmin(KafkaAccountsConfig(bootstrap_servers=kafka.bootstrap)) as admin:
        await admin.create_acls([widened, cluster])
        await admin.upsert_scram([ScramCredential(thief, "second")], mechanism="SCRAM-SHA-512")

    code, text, _ = await gateway(
        capsys, "audit", "--config", str(config_file), "--roles", str(EXAMPLE_ROLES), "--json"
    )
    assert code == 3
    found = {(f["check"], f["subject"]) for f in orjson.loads(text)["findings"]}
    assert {
        ("broker_account_without_identity", stray),
        ("broker_client_id_unbound", thief),
        ("broker_permissions_wider", thief),
        ("broker_permissions_wider", victim),
        ("broker_permissions_wider", "publishClientSend"),
        ("broker_credential_unwanted", thief),
    } <= found
    messages = " ".join(f["message"] for f in orjson.loads(text)["findings"])
    assert "kafka-cluster" in messages

    code, text, err = await gateway(
        capsys, "brokers", "apply", "--config", str(config_file), "--credentials-out", str(out)
    )
    assert code == 0, err
    code, text, _ = await gateway(capsys, "brokers", "plan", "--config", str(config_file))
    assert code == 0, text
    async with Dynsec(env.broker.accounts_config(client_id="hand")) as dynsec:
        accounts = await dynsec.accounts()
    assert accounts[stray].disabled
    assert accounts[thief].client_id == thief and accounts[thief].roles == (device_role(thief),)
    async with Dynsec(env.broker.accounts_config(client_id="hand")) as dynsec:
        roles = await dynsec.role_acls()
        defaults = await dynsec.default_access()
    assert sorted(roles[device_role(victim)]) == sorted((t, x, True) for t, x in own_acls)
    assert defaults["publishClientSend"] is False
    async with KafkaAdmin(KafkaAccountsConfig(bootstrap_servers=kafka.bootstrap)) as admin:

        async def repaired() -> bool:
            # The broker applies what its controller committed a moment later.
            left = await admin.describe_acls()
            mechanisms = (await admin.scram_users()).get(thief)
            return widened not in left and cluster not in left and mechanisms == ("SCRAM-SHA-256",)

        await env.wait_for(repaired, timeout=10, what="the Kafka repairs to reach the broker")


async def test_audit_names_a_writer_that_kafka_claims_do_not_bind(
    env: Stack, kafka: Kafka, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    topic = f"bridged-{secrets.token_hex(3)}"
    await kafka.create_topic(topic)
    config = tmp_path / "gateway.toml"
    config.write_text(
        "[[sources.kafka]]\n"
        f'bootstrap_servers = "{kafka.bootstrap}"\ntopics = ["{topic}"]\n'
        'identity_from = "key"\ntrusted_producers = ["User:bridge"]\n'
    )
    monkeypatch.setenv(ADMIN_DSN_ENV, env.database.dsn)
    audit = ("audit", "--config", str(config), "--roles", str(EXAMPLE_ROLES), "--json")

    async def kafka_findings() -> list[str]:
        _, text, _ = await gateway(capsys, *audit)
        findings = orjson.loads(text)["findings"]
        return [f["message"] for f in findings if f["check"] == "kafka_claims_unbound"]

    await kafka.allow("bridge", ["Write"], topic=topic)
    assert await kafka_findings() == []
    await kafka.allow("mallory", ["Write"], topic=topic)
    (message,) = await kafka_findings()
    assert "User:mallory" in message and topic in message


async def test_a_fleet_is_loaded_through_the_plugins_file_while_the_broker_is_stopped(
    env: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    fleet = [f"bulk-{secrets.token_hex(3)}-{i}" for i in range(300)]
    listing = tmp_path / "fleet.csv"
    listing.write_text("name,role\n" + "".join(f"{name},{ROLE}\n" for name in fleet))
    monkeypatch.setenv(ADMIN_DSN_ENV, env.database.dsn)
    code, _, err = await gateway(capsys, "identities", "import", str(listing))
    assert code == 0, err
    retired = fleet.pop()
    code, _, err = await gateway(capsys, "identities", "retire", retired)
    assert code == 0, err
    async with Mosquitto() as broker:
        config = tmp_path / "gateway.toml"
        accounts = broker.accounts_config()
        config.write_text(
            "[brokers.mosquitto]\n"
            f'host = "{broker.host}"\nport = {broker.port}\n'
            f'password = {{ file = "{accounts.password.file}" }}\n'  # type: ignore[union-attr]
        )
        async with Dynsec(accounts.model_copy(update={"client_id": "hand"})) as dynsec:
            await dynsec.create([NewAccount(retired, "old", retired)])  # made before retiring
        await broker.stop()
        out = tmp_path / "credentials.csv"
        code, text, err = await gateway(
            capsys, "brokers", "apply", "--config", str(config),
            "--dynsec-file", str(broker.dynsec_file), "--credentials-out", str(out),
        )  # fmt: skip
        assert code == 0, err
        await broker.start()
        issued = passwords(out)
        assert fleet[0] in issued and retired not in issued
        async with mqtt(broker, fleet[0], issued[fleet[0]]):
            pass
        # The live plugin now holds what the registry says: the same plan is empty.
        code, text, _ = await gateway(capsys, "brokers", "plan", "--config", str(config), "--json")
        planned = orjson.loads(text)["changes"]
        assert [c for c in planned if c["name"] in {*fleet, retired}] == []
        async with Dynsec(accounts.model_copy(update={"client_id": "hand"})) as dynsec:
            assert (await dynsec.named([retired]))[retired].disabled


async def test_an_account_made_before_its_identity_keeps_no_password(
    env: Stack, kafka: Kafka, config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"early-{secrets.token_hex(3)}"
    await kafka.create_topic(f"telemetry.{name}")
    # Someone with broker admin access makes the account first, with a password they know.
    async with Dynsec(env.broker.accounts_config(client_id="hand")) as dynsec:
        await dynsec.create([NewAccount(name, "planted", name)])
    await kafka.add_users({name: "planted-kafka"})
    out = tmp_path / "credentials.csv"
    code, _, err = await gateway(
        capsys, "identities", "add", name, "--role", ROLE,
        "--config", str(config_file), "--credentials-out", str(out),
    )  # fmt: skip
    assert code == 0, err
    issued = passwords(out)[name]
    assert await mqtt_refused(env, name, "planted")
    assert await produce(kafka, name, "planted-kafka", f"telemetry.{name}") is not None
    async with mqtt(env.broker, name, issued):
        pass
    assert await produce(kafka, name, issued, f"telemetry.{name}") is None


async def test_identities_commands_never_touch_the_admin_or_a_gateway_account(
    env: Stack, kafka: Kafka, config_file: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    pod = env.broker.add_gateway(f"gw-{secrets.token_hex(3)}")
    declare_gateway_client(config_file, pod.username)
    out = tmp_path / "credentials.csv"
    for name in (env.broker.admin.username, pod.username, "admin"):
        code, _, err = await gateway(
            capsys, "identities", "add", name, "--role", ROLE,
            "--config", str(config_file), "--credentials-out", str(out),
        )  # fmt: skip
        assert code == 1 and "do not change it" in err, err
    # Registered behind the command line's back, such a name is still not rotated ...
    code, _, err = await gateway(capsys, "identities", "add", pod.username, "--role", ROLE)
    assert code == 0, err
    code, _, err = await gateway(
        capsys, "identities", "rotate", pod.username,
        "--config", str(config_file), "--credentials-out", str(out),
    )  # fmt: skip
    assert code == 1 and "do not change it" in err, err
    # ... nor changed by a plan, which only reports it.
    code, text, _ = await gateway(capsys, "brokers", "plan", "--config", str(config_file), "--json")
    reports = orjson.loads(text)["reports"]
    assert any(r["name"] == pod.username and r["broker"] == "mosquitto" for r in reports)
    assert not out.exists()
    async with mqtt(env.broker, pod.username, pod.password):
        pass
    async with Dynsec(env.broker.accounts_config(client_id="hand")):
        pass  # the plugin's admin password still works
    assert await kafka.logs_in("admin", kafka.admin_password)


async def test_retiring_again_still_reaches_the_brokers(
    env: Stack, config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"twice-{secrets.token_hex(3)}"
    out = tmp_path / "credentials.csv"
    code, _, err = await gateway(
        capsys, "identities", "add", name, "--role", ROLE,
        "--config", str(config_file), "--credentials-out", str(out),
    )  # fmt: skip
    assert code == 0, err
    # Retired in the registry only (as when the broker step failed after the commit) ...
    code, _, err = await gateway(capsys, "identities", "retire", name, "--config", "/dev/null")
    assert code == 0, err
    async with mqtt(env.broker, name, passwords(out)[name]):
        pass
    # ... so retiring again reaches the brokers.
    code, text, err = await gateway(
        capsys, "identities", "retire", name, "--config", str(config_file)
    )
    assert code == 0, err
    assert "already retired" in text and "disable" in text
    assert await mqtt_refused(env, name, passwords(out)[name])


async def test_an_inventory_reaches_the_brokers_in_one_plan(
    env: Stack, config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kept, dropped = f"inv-{secrets.token_hex(3)}", f"inv-{secrets.token_hex(3)}"
    scope = f"scope-{secrets.token_hex(3)}"
    # Someone with broker admin access made one account first, with a password they know.
    async with Dynsec(env.broker.accounts_config(client_id="hand")) as dynsec:
        await dynsec.create([NewAccount(kept, "planted", kept)])
    first = tmp_path / "v1.csv"
    first.write_text(f"name,role\n{kept},{ROLE}\n{dropped},{ROLE}\n")
    out = tmp_path / "credentials.csv"
    code, _, err = await gateway(
        capsys, "identities", "apply", "--inventory", str(first), "--scope", scope,
        "--config", str(config_file), "--credentials-out", str(out),
    )  # fmt: skip
    assert code == 0, err
    issued = passwords(out)
    assert issued.keys() == {kept, dropped}
    assert await mqtt_refused(env, kept, "planted")
    async with mqtt(env.broker, kept, issued[kept]), mqtt(env.broker, dropped, issued[dropped]):
        pass

    # Retired by absence from the next inventory: its account is disabled in the same apply.
    second = tmp_path / "v2.csv"
    second.write_text(f"name,role\n{kept},{ROLE}\n")
    code, text, err = await gateway(
        capsys, "identities", "apply", "--inventory", str(second), "--scope", scope,
        "--config", str(config_file), "--credentials-out", str(out),
    )  # fmt: skip
    assert code == 0, err
    assert f"disable {dropped}" in text
    assert await mqtt_refused(env, dropped, issued[dropped])
    async with mqtt(env.broker, kept, issued[kept]):
        pass


async def test_apply_makes_no_account_whose_password_no_one_could_read(
    env: Stack, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"unread-{secrets.token_hex(3)}"
    # Registered without brokers, so its accounts are made by the next apply.
    code, _, err = await gateway(capsys, "identities", "add", name, "--role", ROLE)
    assert code == 0, err
    code, _, err = await gateway(capsys, "brokers", "apply", "--config", str(config_file))
    assert code == 1 and "need a password" in err and "--credentials-out" in err, err
    async with Dynsec(env.broker.accounts_config(client_id="hand")) as dynsec:
        assert name not in await dynsec.named([name])
