"""Static checks of deploy/: the image, the compose file, the Kubernetes manifests and the rules.

Docker cannot build or run here, nor is there a cluster, so these read the files and hold them
to what the gateway really is: its CLI commands, its HTTP endpoints, its configuration models and
roles declaration. What `promtool` checks (the rules, their unit tests, the compose Prometheus
config) is in tests/integration/test_promtool.py: unit tests run no external binary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shlex
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from gateway.cli.main import parser, run
from gateway.config import GatewayConfig, KafkaSourceConfig, MqttSourceConfig, load_config
from gateway.db import ADMIN_DSN_ENV, ADMIN_DSN_FILE_ENV
from gateway.http import HttpServer
from gateway.roles.declaration import Declaration, load_declaration
from gateway.routes import writer_roles

ROOT = Path(__file__).parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
PROMETHEUS = DEPLOY / "prometheus"
CONFIG_MOUNT = PurePosixPath("/etc/gateway")
SECRETS_ROOT = PurePosixPath("/run/secrets/gateway")

# --- helpers ---------------------------------------------------------------------------------


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object of the gateway's kustomizations, by (kind, name)."""
    found = {}
    for kustomization in [K8S, K8S / "monitoring", DEPLOY / "mosquitto"]:
        spec = yaml.safe_load((kustomization / "kustomization.yaml").read_text())
        for resource in spec["resources"]:
            for doc in yaml_docs(kustomization / resource):
                found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def container(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in pod_spec["containers"] if c["name"] == name]
    return dict(found)


def k8s_expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' expansion of env values, command and args: `$$` escapes, `$(VAR)` of a known
    variable is replaced, anything else stays as written."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", replace, value)


def gateway_commands(script: str) -> Iterator[list[str]]:
    """The `gateway ...` command lines of a shell script."""
    for line in script.splitlines():
        for part in re.split(r"&&|;", line):
            words = shlex.split(part)
            if words and words[0] == "gateway":
                yield words


def assert_cli(argv: list[str]) -> argparse.Namespace:
    """The argv parses as a real `gateway` command line."""
    assert argv[0] == "gateway", argv
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "gateway" in scripts
    try:
        return parser().parse_args(argv[1:])
    except SystemExit as exc:  # argparse exits on an unknown command or option
        raise AssertionError(f"not a gateway command line: {argv}") from exc


def secret_mounts(
    spec: dict[str, Any], container_name: str
) -> dict[PurePosixPath, set[str] | None]:
    """Mount path of each Secret volume of a container -> the keys it projects (None: all)."""
    volumes = {v["name"]: v for v in spec["volumes"]}
    found: dict[PurePosixPath, set[str] | None] = {}
    for mount in container(spec, container_name)["volumeMounts"]:
        secret = volumes[mount["name"]].get("secret")
        if secret is not None:
            assert "subPath" not in mount, "a subPath mount never sees a rotated Secret"
            items = secret.get("items")
            for item in items or []:
                assert item["key"] == item["path"], f"{item}: a file is named after its key"
            found[PurePosixPath(mount["mountPath"])] = (
                None if items is None else {item["path"] for item in items}
            )
    return found


def readable(path: PurePosixPath, mounts: dict[PurePosixPath, set[str] | None]) -> bool:
    keys = mounts.get(path.parent, set())
    return path.parent in mounts and (keys is None or path.name in keys)


def credential_files(config: GatewayConfig) -> list[PurePosixPath]:
    """The password files of the sources; a source with a user must have one."""
    files = []
    sources: list[MqttSourceConfig | KafkaSourceConfig] = [*config.sources.mqtt]
    sources += config.sources.kafka
    for source in sources:
        if source.username is None and source.password is None:
            continue  # e.g. Kafka PLAINTEXT inside the compose network
        assert source.password is not None and source.password.file is not None, (
            f"source {source.name}: its password must come from a mounted file"
        )
        files.append(PurePosixPath(source.password.file))
    return files


def tls_files(config: GatewayConfig) -> set[PurePosixPath]:
    """The CA, certificate and key files of the database and the sources: what a gateway reads
    to verify its servers (and to present a client certificate)."""
    connections: list[Any] = [config.database, *config.sources.mqtt, *config.sources.kafka]
    return {
        PurePosixPath(str(path))
        for connection in connections
        for path in (connection.ca_file, connection.cert_file, connection.key_file)
        if path is not None
    }


def pool_roles(doc: Declaration, config: GatewayConfig) -> set[str]:
    """The roles whose pools a gateway opens (as Gateway.start does)."""
    database = config.database
    return {*writer_roles(doc, config), database.control_role, database.rejects_role}


def role_file(doc: Declaration, role: str) -> PurePosixPath:
    password = doc.roles[role].password
    assert password.file is not None, f"role {role}: its password must come from a mounted file"
    return PurePosixPath(password.file)


# --- the image -------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    lines = [
        line
        for line in (DEPLOY / "Dockerfile").read_text().splitlines()
        if not line.lstrip().startswith("#")
    ]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
        for line in text.splitlines()
        if line.strip()
    ]


def instructions(name: str) -> list[str]:
    return [args for instruction, args in dockerfile() if instruction == name]


def image_env() -> dict[str, str]:
    env = {}
    for args in instructions("ENV"):
        for word in shlex.split(args):
            key, _, value = word.partition("=")
            env[key] = value
    return env


def image_user() -> int:
    (user,) = instructions("USER")[-1:]
    uid = user.split(":")[0]
    assert uid.isdigit(), "a numeric USER lets Kubernetes check runAsNonRoot"
    return int(uid)


# A full version tag (a floating one changes under the same build); a digest, where one is taken.
BASE_IMAGE = re.compile(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?")


def test_image_is_slim_python_311_and_runs_as_a_non_root_user() -> None:
    (base,) = instructions("FROM")
    assert BASE_IMAGE.fullmatch(base), f"FROM {base}: pin a full version tag"
    assert image_user() != 0
    assert f"--uid {image_user()}" in " ".join(instructions("RUN"))


def test_image_copies_only_what_the_repository_has() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    kept = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
    for args in instructions("COPY"):
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        for source in words[:-1]:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert any(source == k or source.startswith(f"{k}/") for k in kept), (
                f"COPY {source}: excluded from the build context by Dockerfile.dockerignore"
            )
    assert "pip install --no-deps --no-build-isolation ." in " ".join(instructions("RUN"))


def test_image_runs_gateway_run_with_its_config() -> None:
    (entrypoint,) = instructions("ENTRYPOINT")
    (cmd,) = instructions("CMD")
    argv = json.loads(entrypoint) + json.loads(cmd)
    assert argv == ["gateway", "run", "--config", "/etc/gateway/gateway.toml"]
    assert assert_cli(argv).handler is run
    # Both the gateway and `gateway roles` read the declaration where deployments mount it.
    env = image_env()
    assert env["GATEWAY_ROLES_FILE"] == env["GATEWAY_DATABASE__ROLES_FILE"]
    assert PurePosixPath(env["GATEWAY_ROLES_FILE"]) == CONFIG_MOUNT / "roles.toml"


def test_image_healthcheck_probes_healthz_with_python() -> None:
    (healthcheck,) = instructions("HEALTHCHECK")
    assert "urllib.request" in healthcheck and "/healthz" in healthcheck
    assert "curl" not in healthcheck and "wget" not in healthcheck
    assert "'9108'" in healthcheck and instructions("EXPOSE") == ["9108"]


# --- the HTTP endpoints the probes use -----------------------------------------------------------


def probe_paths() -> set[str]:
    paths = {"/metrics"}
    spec = manifests()[("StatefulSet", "gateway")]["spec"]["template"]["spec"]
    gateway = container(spec, "gateway")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        paths.add(gateway[probe]["httpGet"]["path"])
    paths.update(re.findall(r"/(?:healthz|readyz|metrics)\b", (DEPLOY / "Dockerfile").read_text()))
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    paths.update(
        re.findall(r"/\w+z\b", " ".join(compose["services"]["gateway"]["healthcheck"]["test"]))
    )
    return paths


async def test_every_probed_path_is_served_by_the_gateway() -> None:
    server = HttpServer(
        "127.0.0.1", 0, registry=CollectorRegistry(), readiness=lambda: {"pools": True}
    )
    await server.start()
    try:
        for path in sorted(probe_paths()):
            url = f"http://127.0.0.1:{server.port}{path}"
            status = await asyncio.to_thread(http_status, url)
            assert status == 200, f"{path} answered {status}"
    finally:
        await server.close()


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


# --- compose ---------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / "compose.yaml").read_text()))


def compose_secrets(service: dict[str, Any]) -> dict[PurePosixPath, str]:
    """Where each secret of a service is mounted -> the secret's name."""
    found = {}
    for secret in service.get("secrets", []):
        name = secret if isinstance(secret, str) else secret["source"]
        target = name if isinstance(secret, str) else secret.get("target", name)
        found[PurePosixPath("/run/secrets") / target] = name
    return found


def compose_config() -> GatewayConfig:
    return load_config(DEPLOY / "compose" / "gateway.toml")


def test_compose_services_reference_only_what_exists() -> None:
    spec = compose()
    services = spec["services"]
    assert {"postgres", "mosquitto", "kafka", "migrate", "gateway", "prometheus"} <= set(services)
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency}"
        for secret in compose_secrets(service).values():
            assert secret in spec["secrets"], f"{name} uses undefined secret {secret}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in spec["volumes"], f"{name} mounts undeclared volume {source}"
        image = service.get("image", "")
        assert "build" in service or re.search(r":[\w.-]+$", image), f"{name}: pin {image}"
        assert not image.endswith(":latest")
    generate = (DEPLOY / "secrets" / "generate.sh").read_text()
    for name, secret in spec["secrets"].items():
        assert secret["file"] == f"./secrets/{name}" and re.search(rf"\b{name}\b", generate)


def test_compose_gateway_waits_for_migrations_and_has_a_healthcheck() -> None:
    gateway = compose()["services"]["gateway"]
    depends = gateway["depends_on"]
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert {"postgres", "mosquitto", "kafka"} <= set(depends)
    assert gateway["healthcheck"]["test"][0] == "CMD"
    assert f":{compose_config().http.port}/" in " ".join(gateway["healthcheck"]["test"])
    grace = int(gateway["stop_grace_period"].removesuffix("s"))
    assert grace > compose_config().shutdown_timeout
    assert assert_cli(["gateway", *gateway["command"]]).handler is run
    assert gateway["read_only"] is True


def test_compose_migrate_runs_real_commands_with_every_role_password() -> None:
    spec = compose()
    migrate = spec["services"]["migrate"]
    commands = list(gateway_commands(migrate["command"][-1]))
    assert [c[:3] for c in commands] == [
        ["gateway", "migrate"],
        ["gateway", "roles", "apply"],
        ["gateway", "brokers", "apply"],
    ]
    for argv in commands:
        assert_cli(argv)
    mounted = compose_secrets(migrate)
    doc = load_declaration(DEPLOY / "compose" / "roles.toml")
    for role in doc.roles:
        assert role_file(doc, role) in mounted, f"migrate cannot read {role}'s password"
    # `brokers apply` logs in as the plugin's admin and gives the gateway's account its password.
    brokers = compose_config().brokers.mosquitto
    assert brokers is not None and brokers.password and brokers.gateway_password
    assert {
        PurePosixPath(str(brokers.password.file)),
        PurePosixPath(str(brokers.gateway_password.file)),
    } <= set(mounted)
    assert "mosquitto" in migrate["depends_on"]
    assert "entrypoint" not in migrate, "the image's own: no shell holds the admin DSN"
    assert compose_admin_dsn_file(migrate) in mounted


def compose_admin_dsn_file(service: dict[str, Any]) -> PurePosixPath:
    """Where a service's commands read the admin DSN: a file, never an environment value."""
    environment = service["environment"]
    assert ADMIN_DSN_ENV not in environment
    return PurePosixPath(environment[ADMIN_DSN_FILE_ENV])


def test_compose_admin_commands_read_the_admin_dsn_from_a_secret_file() -> None:
    spec = compose()
    for name in ("migrate", "admin"):
        service = spec["services"][name]
        assert compose_secrets(service)[compose_admin_dsn_file(service)] == "admin_dsn", name
    generate = (DEPLOY / "secrets" / "generate.sh").read_text()
    assert re.search(r"postgres_password.*>admin_dsn", generate)


def test_compose_gateway_reads_every_credential_from_its_secrets_and_no_more() -> None:
    config = compose_config()
    gateway = compose()["services"]["gateway"]
    mounted = compose_secrets(gateway)
    doc = load_declaration(DEPLOY / "compose" / "roles.toml")
    needed = {role_file(doc, role) for role in pool_roles(doc, config)}
    needed |= set(credential_files(config)) | tls_files(config)
    assert needed == set(mounted), "the gateway gets exactly the credentials it uses"
    assert "./compose:/etc/gateway:ro" in gateway["volumes"]
    assert config.database.roles_file == Path(CONFIG_MOUNT / "roles.toml")
    assert "environment" not in gateway, "configuration and secrets come from files"


def test_compose_mosquitto_gets_the_shipped_config_and_no_acl_file() -> None:
    spec = compose()
    setup = spec["services"]["mosquitto-setup"]
    script = setup["command"][-1]
    conf = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    dynsec_file = re.search(r"^plugin_opt_config_file (\S+)", conf, re.M)
    assert dynsec_file
    assert not re.search(r"^password_file", conf, re.M), "accounts live in the plugin"
    # Beside the plugin, an ACL file grants any SUBSCRIBE (Mosquitto 2.0): the plugin alone.
    assert not re.search(r"^acl_file", conf, re.M)
    assert not (DEPLOY / "mosquitto" / "aclfile").exists()
    # The image reads /mosquitto/config/mosquitto.conf.
    assert "cp /shipped/mosquitto.conf /mosquitto/config/\n" in script
    assert f"mosquitto_ctrl dynsec init {dynsec_file[1]} admin" in script
    assert "mosquitto_passwd" not in script
    # The plugin rewrites its file: it must be on the data volume, which both services mount.
    data = f"mosquitto-data:{Path(dynsec_file[1]).parent}"
    assert data in setup["volumes"] and data in spec["services"]["mosquitto"]["volumes"]
    assert "./mosquitto:/shipped:ro" in setup["volumes"]
    (source,) = compose_config().sources.mqtt
    assert source.host == "mosquitto"
    # The gateway's account is its own, bound to its client id by `brokers apply`.
    brokers = compose_config().brokers.mosquitto
    assert brokers is not None and source.username == source.client_id
    assert source.client_id in brokers.gateway_clients
    assert source.password == brokers.gateway_password


def test_compose_prometheus_scrapes_the_gateway_and_loads_the_rules() -> None:
    prometheus = compose()["services"]["prometheus"]
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "gateway"
    assert job["static_configs"][0]["targets"] == [f"gateway:{compose_config().http.port}"]
    mounts = dict(v.split(":")[:2] for v in prometheus["volumes"])
    assert mounts["./prometheus/rules.yml"] == "/etc/prometheus/rules/gateway.yml"
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]


# --- Kubernetes ------------------------------------------------------------------------------


def k8s_config(pod_name: str = "gateway-0") -> GatewayConfig:
    """The ConfigMap's gateway.toml with the pod's environment, as the pod loads it."""
    spec = manifests()[("StatefulSet", "gateway")]["spec"]["template"]["spec"]
    env: dict[str, str] = {}
    for variable in container(spec, "gateway")["env"]:
        if "value" in variable:
            env[variable["name"]] = k8s_expand(variable["value"], env)
        elif variable["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name":
            env[variable["name"]] = pod_name
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        return load_config(K8S / "config" / "gateway.toml")


def pod_spec() -> dict[str, Any]:
    return dict(manifests()[("StatefulSet", "gateway")]["spec"]["template"]["spec"])


def test_kubernetes_has_every_kind_and_kustomize_lists_every_file() -> None:
    kinds = {kind for kind, _ in manifests()}
    assert {
        "StatefulSet",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Job",
        "ServiceAccount",
        "ServiceMonitor",
        "PrometheusRule",
    } <= kinds
    for directory in [K8S, K8S / "monitoring", DEPLOY / "mosquitto"]:
        spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
        on_disk = {p.name for p in directory.glob("*.yaml")} - {"kustomization.yaml"}
        assert set(spec["resources"]) == on_disk, f"{directory}: resources and files differ"
        for generator in spec.get("configMapGenerator", []):
            for file in generator["files"]:
                assert (directory / file).is_file(), f"{directory}: missing {file}"
    assert all(kind != "Secret" for kind, _ in manifests()), "no Secret values in manifests"


def test_kubernetes_pods_get_config_from_the_configmap_generator() -> None:
    generators = yaml.safe_load((K8S / "kustomization.yaml").read_text())["configMapGenerator"]
    (generator,) = [g for g in generators if g["name"] == "gateway-config"]
    assert sorted(Path(f).name for f in generator["files"]) == ["gateway.toml", "roles.toml"]
    for kind, name in [("StatefulSet", "gateway"), ("Job", "gateway-migrate")]:
        spec = manifests()[(kind, name)]["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        (main,) = spec["containers"]
        mounts = {m["mountPath"]: volumes[m["name"]] for m in main["volumeMounts"]}
        assert mounts[str(CONFIG_MOUNT)]["configMap"]["name"] == generator["name"]
    assert k8s_config().database.roles_file == Path(CONFIG_MOUNT / "roles.toml")


def test_kubernetes_probes_and_ports_match_the_configuration() -> None:
    spec = pod_spec()
    gateway = container(spec, "gateway")
    port = k8s_config().http.port
    (http,) = gateway["ports"]
    assert (http["name"], http["containerPort"]) == ("http", port)
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert gateway["startupProbe"]["httpGet"]["path"] == "/healthz"
    annotations = manifests()[("StatefulSet", "gateway")]["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"
    (service_port,) = manifests()[("Service", "gateway")]["spec"]["ports"]
    assert (service_port["name"], service_port["port"]) == ("http", port)
    argv = ["gateway", *gateway["args"]]
    assert assert_cli(argv).handler is run
    assert argv[-1] == str(CONFIG_MOUNT / "gateway.toml")


def test_kubernetes_pods_are_bounded_and_locked_down() -> None:
    for kind, name in [("StatefulSet", "gateway"), ("Job", "gateway-migrate")]:
        spec = manifests()[(kind, name)]["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == image_user()
        assert spec["automountServiceAccountToken"] is False
        for main in spec["containers"]:
            context = main["securityContext"]
            assert context["runAsNonRoot"] is True
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(main["resources"][bound]), f"{name} {bound}"


def test_kubernetes_drains_before_the_kill() -> None:
    grace = pod_spec()["terminationGracePeriodSeconds"]
    assert grace > k8s_config().shutdown_timeout


def test_kubernetes_credentials_are_secret_files_never_values() -> None:
    for (kind, name), doc in manifests().items():
        text = json.dumps(doc)
        assert "secretKeyRef" not in text and "secretRef" not in text, f"{kind} {name}"
        for spec in [doc.get("spec", {}).get("template", {}).get("spec", {})]:
            for main in spec.get("containers", []):
                for variable in main.get("env", []):
                    # A `_FILE` variable names where a credential is, not what it is.
                    key = variable["name"]
                    if re.search(r"PASSWORD|SECRET|TOKEN|DSN", key) and not key.endswith("_FILE"):
                        raise AssertionError(f"{kind} {name}: credential in env {variable}")


def test_kubernetes_gateway_mounts_exactly_the_credentials_it_reads() -> None:
    config = k8s_config()
    doc = load_declaration(K8S / "config" / "roles.toml")
    mounts = secret_mounts(pod_spec(), "gateway")
    needed = [role_file(doc, role) for role in sorted(pool_roles(doc, config))]
    needed += credential_files(config) + sorted(tls_files(config))
    for path in needed:
        assert readable(path, mounts), f"{path} is not in a mounted Secret"
    db = mounts[SECRETS_ROOT / "db"]
    assert db == {role_file(doc, role).name for role in pool_roles(doc, config)}, (
        "the gateway pods get the passwords of their pools' roles and no others"
    )


def test_kubernetes_migrate_job_runs_real_commands_with_every_role_password() -> None:
    job = manifests()[("Job", "gateway-migrate")]
    spec = job["spec"]["template"]["spec"]
    (main,) = spec["containers"]
    assert main["command"][:2] == ["sh", "-euc"]
    script = k8s_expand(main["command"][2], {})
    commands = list(gateway_commands(script))
    assert [c[:3] for c in commands] == [
        ["gateway", "migrate"],
        ["gateway", "roles", "plan"],
        ["gateway", "roles", "apply"],
    ]
    for argv in commands:
        assert_cli([word.replace(f"${DIGEST_ENV}", "0123456789abcdef") for word in argv])
    assert ADMIN_DSN_ENV not in script, "no shell holds the admin DSN"
    (dsn,) = [e["value"] for e in main["env"] if e["name"] == ADMIN_DSN_FILE_ENV]
    mounts = secret_mounts(spec, "migrate")
    assert readable(PurePosixPath(dsn), mounts), "the admin DSN comes from a mounted Secret"
    doc = load_declaration(K8S / "config" / "roles.toml")
    for role in doc.roles:
        assert readable(role_file(doc, role), mounts), f"roles apply cannot read {role}'s"
    assert spec["restartPolicy"] in {"Never", "OnFailure"}


DIGEST_ENV = "GATEWAY_ROLES_PLAN_DIGEST"


def test_kubernetes_migrate_job_applies_only_the_reviewed_plan() -> None:
    spec = manifests()[("Job", "gateway-migrate")]["spec"]["template"]["spec"]
    (main,) = spec["containers"]
    script = k8s_expand(main["command"][2], {})
    *_, plan, apply = gateway_commands(script)
    # An empty plan ends the Job; any other exit of plan but "changes pending" fails it.
    assert "gateway roles plan && exit 0 || test $? -eq 2" in script.splitlines()
    assert plan == ["gateway", "roles", "plan"]
    assert apply == ["gateway", "roles", "apply", "--expect", f"${DIGEST_ENV}"]
    (source,) = [e["valueFrom"] for e in main["env"] if e["name"] == DIGEST_ENV]
    key = source["configMapKeyRef"]
    generators = yaml.safe_load((K8S / "kustomization.yaml").read_text())["configMapGenerator"]
    (review,) = [g for g in generators if g["name"] == key["name"]]
    assert [Path(f).name for f in review["files"]] == [key["key"]]
    assert "optional" not in key, "no digest, no apply"
    shipped = (K8S / review["files"][0]).read_text()
    with pytest.raises(AssertionError):  # nothing is reviewed before someone does
        assert_cli(["gateway", "roles", "apply", "--expect", shipped])
    parsed = assert_cli(["gateway", "roles", "apply", "--expect", "0123456789abcdef\n"])
    assert parsed.expect == "0123456789abcdef" and not parsed.allow_drop_with_identities


def test_each_pod_has_its_own_stable_mqtt_session() -> None:
    first, second = k8s_config("gateway-0"), k8s_config("gateway-1")
    assert first.sources.mqtt[0].client_id == "gateway-0"
    assert second.sources.mqtt[0].client_id == "gateway-1"
    assert first.sources.mqtt[0].share_group == second.sources.mqtt[0].share_group
    assert first.sources.mqtt[0].subscription.startswith("$share/")
    # The ConfigMap holds no MQTT source of its own: the environment is the one definition.
    raw = tomllib.loads((K8S / "config" / "gateway.toml").read_text())
    assert "mqtt" not in raw.get("sources", {})
    statefulset = manifests()[("StatefulSet", "gateway")]["spec"]
    service = manifests()[("Service", "gateway")]["spec"]
    assert statefulset["serviceName"] == "gateway" and service["clusterIP"] == "None"
    assert first.sources.mqtt[0].host in {name for kind, name in manifests() if kind == "Service"}


def test_kubernetes_selectors_match_the_pods() -> None:
    objects = manifests()
    statefulset = objects[("StatefulSet", "gateway")]
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert statefulset["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert objects[("Service", "gateway")]["spec"]["selector"].items() <= labels.items()
    pdb = objects[("PodDisruptionBudget", "gateway")]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    target = objects[("HorizontalPodAutoscaler", "gateway")]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("StatefulSet", "gateway")
    monitor = objects[("ServiceMonitor", "gateway")]["spec"]
    service = objects[("Service", "gateway")]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["endpoints"]] == ["http"]
    # The Operator names the job after the Service: the job the rules select.
    assert service["metadata"]["name"] == "gateway"


def test_kubernetes_mosquitto_reads_the_shipped_files_and_inits_its_plugin_file() -> None:
    objects = manifests()
    spec = objects[("StatefulSet", "mosquitto")]["spec"]["template"]["spec"]
    conf = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    dynsec = Path(re.search(r"^plugin_opt_config_file (\S+)", conf, re.M)[1])  # type: ignore[index]
    volumes = {v["name"]: v for v in spec["volumes"]}
    (broker,) = spec["containers"]
    config_dir = Path(broker["args"][broker["args"].index("-c") + 1]).parent
    mount = next(m for m in broker["volumeMounts"] if m["mountPath"] == str(config_dir))
    assert volumes[mount["name"]]["configMap"]["name"] == "mosquitto-config"
    kustomization = yaml.safe_load((DEPLOY / "mosquitto" / "kustomization.yaml").read_text())
    (generated,) = kustomization["configMapGenerator"]
    assert generated["files"] == ["mosquitto.conf"], "the plugin alone: no ACL file"
    data = next(m for m in broker["volumeMounts"] if m["mountPath"] == str(dynsec.parent))
    assert data["name"] in {
        t["metadata"]["name"]
        for t in objects[("StatefulSet", "mosquitto")]["spec"]["volumeClaimTemplates"]
    }
    (init,) = spec["initContainers"]
    assert f"mosquitto_ctrl dynsec init {dynsec} admin" in init["command"][-1]
    assert spec["securityContext"]["runAsNonRoot"] is True


# --- roles declarations ----------------------------------------------------------------------


@pytest.mark.parametrize("path", [DEPLOY / "compose" / "roles.toml", K8S / "config" / "roles.toml"])
def test_deployed_roles_are_the_example_roles_with_passwords_from_files(path: Path) -> None:
    example = load_declaration(ROOT / "config" / "roles.toml")
    deployed = load_declaration(path)
    assert example.roles.keys() == deployed.roles.keys()
    # Connection limits are the deployment's to size (see the next test); nothing else differs.
    sized = {"password", "connection_limit"}
    for role, spec in deployed.roles.items():
        assert spec.model_dump(exclude=sized) == example.roles[role].model_dump(exclude=sized), (
            f"{path}: role {role} differs from config/roles.toml"
        )
        assert role_file(deployed, role) == SECRETS_ROOT / "db" / role


@pytest.mark.parametrize("where", ["compose", "kubernetes"])
def test_every_pod_at_once_stays_within_each_roles_connection_limit(where: str) -> None:
    if where == "compose":
        config, doc, pods = compose_config(), load_declaration(DEPLOY / "compose" / "roles.toml"), 1
    else:
        config, doc = k8s_config(), load_declaration(K8S / "config" / "roles.toml")
        pods = manifests()[("HorizontalPodAutoscaler", "gateway")]["spec"]["maxReplicas"]
    for role in pool_roles(doc, config):
        # The identity cache LISTENs on a connection of the control role outside its pool.
        per_pod = doc.roles[role].pool_size.max + (role == config.database.control_role)
        assert per_pod * pods <= doc.roles[role].connection_limit, (
            f"{where}: {pods} pod(s) may open {per_pod * pods} connections as {role}, "
            f"its connection_limit is {doc.roles[role].connection_limit}"
        )


# --- Prometheus rules ------------------------------------------------------------------------


def test_every_alert_is_unit_tested() -> None:
    rules = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tested = {
        case["alertname"]
        for path in (PROMETHEUS / "tests").glob("*.yml")
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    assert alerts == tested, f"alerts without a firing test: {sorted(alerts - tested)}"


def test_prometheus_rule_object_carries_the_same_rules() -> None:
    rules = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())
    rule_object = manifests()[("PrometheusRule", "gateway")]
    assert rule_object["spec"]["groups"] == rules["groups"], (
        "deploy/kubernetes/monitoring/prometheusrule.yaml differs from deploy/prometheus/rules.yml"
    )


@pytest.mark.parametrize(
    ("alert", "share"), [("GatewayBuffersFillingUp", 0.25), ("GatewayBuffersNearlyFull", 0.8)]
)
def test_buffer_alerts_are_shares_of_each_gateways_own_limit(alert: str, share: float) -> None:
    # No row count from a deployed configuration: the gateway exports its limit, whatever it is.
    rules = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())
    by_name = {r.get("alert") or r["record"]: r for g in rules["groups"] for r in g["rules"]}
    compared = re.fullmatch(r"\s*([\w:]+) > ([\d.]+)\s*", by_name[alert]["expr"])
    assert compared, f"{alert}: expected `<recorded ratio> > <share>`"
    series, threshold = compared.groups()
    assert float(threshold) == share
    assert re.fullmatch(
        r"\s*gateway_buffer_held_rows / \(gateway_buffer_limit_rows > 0\)\s*",
        by_name[series]["expr"],
    ), f"{alert} must compare held rows with the exported limit"


def test_pods_that_are_not_ready_are_still_scraped() -> None:
    # GatewayNotReady reads gateway_ready from pods the readiness probe failed: the Service must
    # keep publishing them, or the ServiceMonitor's target vanishes with the answer.
    rules = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"] if "alert" in r]
    assert any(re.search(r"\bgateway_ready\b", expr) for expr in exprs)
    assert manifests()[("Service", "gateway")]["spec"]["publishNotReadyAddresses"] is True
