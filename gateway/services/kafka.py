"""A real Apache Kafka broker (KRaft, one node) on loopback, with SCRAM users and ACLs.

The broker is the `kafka_2.13` artifact from Maven Central, resolved once into a cache outside
the repository, so it needs only Maven and a Java 17+ runtime: no Docker, no tarball.

It listens three times on 127.0.0.1: SASL_PLAINTEXT with SCRAM-SHA-256 is the port clients and
authorization tests use; PLAINTEXT carries inter-broker traffic and this module's own admin
helpers (its anonymous principal must be a superuser for that); CONTROLLER is the KRaft quorum.

With `tls=True` two more listeners speak TLS with a certificate from a throwaway CA (`ca_file`):
SASL_SSL (SCRAM-SHA-256 inside TLS) and SSL, which requires a client certificate and makes its
CN the principal (`CN=reader` is `User:reader`), so ACLs are granted to a certificate's CN with
`allow` as to a SCRAM user. They are opt-in: certificates and TLS set-up cost each start a little.

Run `python -m gateway.services.kafka fetch` to resolve the jars ahead of the tests.

The broker runs as whoever starts it, root included: its jars sit in that user's cache (root's
home is private to root), so another user could not load them. Its directory is 0700 and the
files the launcher writes there are 0600.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import fcntl
import hashlib
import os
import re
import secrets
import shutil
import ssl
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.errors import SaslAuthenticationFailed, for_code

from gateway.config import KafkaConnection
from gateway.kafka_admin import CLUSTER, AclBinding, KafkaAdmin, ScramCredential
from gateway.services._process import (
    LOOPBACK,
    LocalService,
    ServiceError,
    ServiceProcess,
    free_port,
    hand_over,
    run_tool,
    wait_for_port,
)
from gateway.services.certificates import CertificateAuthority, KeyPair

__all__ = ["KAFKA_VERSION", "Kafka", "cache_dir", "kafka_jars", "main"]

KAFKA_VERSION = "3.9.1"
POM = Path(__file__).with_name("kafka-pom.xml")
SCRAM = "SCRAM-SHA-256"
ADMIN = "admin"

# Sized for tests on a small machine: a bounded heap and the serial collector (no GC threads
# competing for two cores); tools run briefly, so the quick C1 compiler is enough for them.
BROKER_JVM = ("-Xmx512m", "-XX:+UseSerialGC", "-Djava.awt.headless=true")
TOOL_JVM = ("-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")

PROPAGATION_TIMEOUT = 15.0

# Only a subject that is exactly `CN=<name>` becomes `User:<name>`; any other subject stays the
# whole DN, so a certificate with extra attributes cannot pass for a plain name.
PRINCIPAL_MAPPING = "RULE:^CN=([^,]+)$/$1/,DEFAULT"

INSTALL_HINT = "install Maven and a Java 17+ runtime (Debian: apt-get install maven default-jre)"

# Names end up in `User:<name>` principals, and both names and passwords in StorageTool's
# `[name=...,password=...]` syntax, which has no escaping (even quotes do not protect a comma).
_USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_PASSWORD = re.compile(r'[^\s",=\[\]\\]+')


def cache_dir() -> Path:
    """Where the jars of this Kafka version live: `$GATEWAY_CACHE_DIR` or the XDG cache."""
    root = os.environ.get("GATEWAY_CACHE_DIR")
    if root:
        base = Path(root)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "m2m-gateway"
    return base / f"kafka-{KAFKA_VERSION}"


def kafka_jars() -> Path:
    """The folder of broker jars, resolved with Maven on first use and reused afterwards.

    A marker holding the POM's digest is written only after Maven succeeds, so an interrupted
    download, or an edited POM, is resolved again; a file lock keeps concurrent runs apart.
    """
    folder = cache_dir()
    lib = folder / "lib"
    marker = folder / "complete"
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()
    if _marked(marker, digest):
        return lib
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _marked(marker, digest):
            return lib
        for tool in ("mvn", "java"):
            if shutil.which(tool) is None:
                raise ServiceError(f"resolving Kafka jars needs `{tool}`: {INSTALL_HINT}")
        marker.unlink(missing_ok=True)
        shutil.rmtree(lib, ignore_errors=True)
        run_tool(
            [
                "mvn",
                "-B",
                "-q",
                "-f",
                str(POM),
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={lib}",
            ],
            what=f"resolving Kafka {KAFKA_VERSION} jars from Maven Central",
            timeout=900,
        )
        marker.write_text(digest)
    return lib


def _marked(marker: Path, digest: str) -> bool:
    try:
        return marker.read_text() == digest
    except FileNotFoundError:
        return False


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if java is None or not os.access(java, os.X_OK):
        raise ServiceError(f"running Kafka needs `java` (17+): {INSTALL_HINT}")
    return java


def _cluster_id() -> str:
    """A KRaft cluster id without spawning a JVM for `StorageTool random-uuid`."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        # StorageTool would read a leading dash as an option.
        if not cluster_id.startswith("-"):
            return cluster_id


def _distinct_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


async def _until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll until the broker reflects a change the controller has already committed."""
    deadline = time.monotonic() + PROPAGATION_TIMEOUT
    while not await check():
        if time.monotonic() > deadline:
            raise ServiceError(f"kafka: {what} did not happen within {PROPAGATION_TIMEOUT:.0f}s")
        await asyncio.sleep(0.05)


def _raise_for(code: int, message: str | None, what: str) -> None:
    if code != 0:
        raise ServiceError(f"kafka: {what} failed: {for_code(code).__name__} {message or ''}")


class Kafka(LocalService):
    """One KRaft node (broker and controller) with SCRAM users, an ACL authorizer and no ACLs.

    Every SCRAM user but `admin` (a superuser with a generated password) starts with no
    permissions; grant them with `allow`. Storage is formatted once, so `stop`/`kill` followed by
    `start` keeps topics, records, users and ACLs.
    """

    name = "kafka"

    def __init__(
        self,
        *,
        users: Mapping[str, str] | None = None,
        tls: bool = False,
        start_timeout: float = 90,
        keep_dir: bool = False,
    ) -> None:
        super().__init__(keep_dir=keep_dir)
        users = dict(users or {})
        if ADMIN in users:
            raise ValueError(f"{ADMIN!r} is the broker's own superuser; choose another name")
        for user, password in users.items():
            if not _USER_NAME.fullmatch(user):
                raise ValueError(f"Kafka user name {user!r} must match {_USER_NAME.pattern}")
            if not _PASSWORD.fullmatch(password):
                raise ValueError(f"the password of {user!r} must match {_PASSWORD.pattern}")
        self.admin_password = secrets.token_urlsafe(18)
        self.users: dict[str, str] = {ADMIN: self.admin_password, **users}
        self.host = LOOPBACK
        ports = _distinct_ports(5 if tls else 3)
        self.port, self.sasl_port, self.controller_port = ports[:3]
        self.ssl_port: int | None = ports[3] if tls else None
        self.sasl_ssl_port: int | None = ports[4] if tls else None
        # Kafka reads a PEM keystore file only with a key password (and so an encrypted key);
        # it protects nothing here, the file and the password sit side by side.
        self._key_password = secrets.token_urlsafe(18)
        self._start_timeout = start_timeout
        self._lib: Path | None = None

    @property
    def bootstrap(self) -> str:
        """The PLAINTEXT listener, where the anonymous principal is a superuser."""
        return f"{self.host}:{self.port}"

    @property
    def sasl_bootstrap(self) -> str:
        """The SASL_PLAINTEXT (SCRAM-SHA-256) listener, where ACLs apply."""
        return f"{self.host}:{self.sasl_port}"

    @property
    def ssl_bootstrap(self) -> str:
        """The SSL listener: a client certificate is required and its CN is the principal."""
        return f"{self.host}:{self._tls_port(self.ssl_port)}"

    @property
    def sasl_ssl_bootstrap(self) -> str:
        """The SASL_SSL (SCRAM-SHA-256 over TLS) listener, where ACLs apply."""
        return f"{self.host}:{self._tls_port(self.sasl_ssl_port)}"

    @property
    def ca_file(self) -> Path:
        """The CA certificate that signed the TLS listeners' certificate (and client ones)."""
        self._tls_port(self.ssl_port)
        return self._ca.cert

    def client_certificate(self, cn: str) -> KeyPair:
        """A client certificate and key (PEM files) for `cn`, which the SSL listener calls
        `User:<cn>`: grant it ACLs with `allow(cn, ...)`. `CN=admin` would be a superuser."""
        self._tls_port(self.ssl_port)
        return self._ca.client(cn)

    def ssl_context(self, cn: str | None = None) -> ssl.SSLContext:
        """A client context trusting the broker's CA, presenting a certificate for `cn` if given."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if cn is not None:
            pair = self.client_certificate(cn)
            context.load_cert_chain(pair.cert, pair.key)
        return context

    def _tls_port(self, port: int | None) -> int:
        if port is None:
            raise ServiceError("kafka: this broker has no TLS listeners; use Kafka(tls=True)")
        return port

    @property
    def _ca(self) -> CertificateAuthority:
        return CertificateAuthority(self.directory / "tls")

    @property
    def _keystore(self) -> Path:
        return self.directory / "tls" / "broker-keystore.pem"

    def client_kwargs(self, user: str, password: str | None = None) -> dict[str, str]:
        """Keyword arguments for an aiokafka client that logs in as `user` on the SASL port,
        with the password it was made with unless another is given."""
        if password is None:
            try:
                password = self.users[user]
            except KeyError:
                raise ValueError(f"no Kafka user {user!r}; pass it in Kafka(users=...)") from None
        return {
            "bootstrap_servers": self.sasl_bootstrap,
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": SCRAM,
            "sasl_plain_username": user,
            "sasl_plain_password": password,
        }

    async def create_topic(self, name: str, partitions: int = 1) -> None:
        """Create a topic and return once the broker serves its metadata."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            response = await admin.create_topics([NewTopic(name, partitions, 1)])
            for error in response.to_object()["topic_errors"]:
                what = f"creating topic {error['topic']!r}"
                _raise_for(error["error_code"], error.get("error_message"), what)

            async def known() -> bool:
                (topic,) = await admin.describe_topics([name])
                return bool(topic["error_code"] == 0 and len(topic["partitions"]) == partitions)

            await _until(known, f"topic {name!r} appearing in the broker's metadata")
        finally:
            await admin.close()

    async def allow(
        self,
        user: str,
        operations: Iterable[str],
        *,
        topic: str | None = None,
        group: str | None = None,
        cluster: bool = False,
    ) -> None:
        """Grant `user` each operation (e.g. "Read", "Write", "DescribeConfigs") on the named
        topic and/or group, and on the cluster with `cluster=True` (Describe there lets a
        principal read ACLs). Returns once the broker's authorizer, not only the controller,
        holds the ACLs.
        """
        resources = [
            (kind, name)
            for kind, name in (("topic", topic), ("group", group), ("cluster", CLUSTER))
            if name and (kind != "cluster" or cluster)
        ]
        if not resources:
            raise ValueError("allow() needs a topic, a group or the cluster")
        # "DescribeConfigs" as the CLI spells it is Kafka's DESCRIBE_CONFIGS.
        names = [re.sub(r"(?<=[a-z])(?=[A-Z])", "_", operation).lower() for operation in operations]
        wanted = {
            AclBinding(kind, name, "literal", f"User:{user}", operation)
            for kind, name in resources
            for operation in names
        }
        async with self.admin() as admin:
            await admin.create_acls(sorted(wanted, key=str))

            async def visible() -> bool:
                return wanted <= set(await admin.describe_acls(principal=f"User:{user}"))

            await _until(visible, f"ACLs of {user!r} reaching the broker")

    async def add_users(self, users: Mapping[str, str]) -> None:
        """Create SCRAM users (or give existing ones a new password) on the running broker,
        returning once the broker logs them in with it. Names may hold what the registry's do
        (`.`, `_`, `-`, `:`, `@`, `=`); they start with no permissions."""
        if ADMIN in users:
            raise ValueError(f"{ADMIN!r} is the broker's own superuser; choose another name")
        if not users:
            return
        credentials = [ScramCredential(user, password) for user, password in users.items()]
        async with self.admin() as admin:
            await admin.upsert_scram(credentials, mechanism=SCRAM)
        self.users.update(users)
        # The broker applies the controller's records in order, so the last one logging in
        # means every one before it is in its credential cache too.
        last = credentials[-1]
        await _until(lambda: self.logs_in(last.user, last.password), f"the login of {last.user!r}")

    async def logs_in(self, user: str, password: str) -> bool:
        """Whether the SASL listener accepts this user and password now."""
        try:
            connection = await create_conn(
                self.host,
                self.sasl_port,
                security_protocol="SASL_PLAINTEXT",
                sasl_mechanism=SCRAM,
                sasl_plain_username=user,
                sasl_plain_password=password,
            )
        except SaslAuthenticationFailed:
            return False
        connection.close()
        return True

    def admin(self) -> KafkaAdmin:
        """An admin client on the PLAINTEXT listener, where it acts as a superuser."""
        return KafkaAdmin(KafkaConnection(bootstrap_servers=self.bootstrap))

    @property
    def _server_properties(self) -> Path:
        return self.directory / "server.properties"

    def _classpath(self) -> str:
        if self._lib is None:
            raise ServiceError(
                "kafka: jars are not resolved; use Kafka as an async context manager"
            )
        # The JVM expands the wildcard itself; no shell is involved.
        return f"{self._lib}/*"

    async def _prepare(self) -> None:
        self._lib = await asyncio.to_thread(kafka_jars)
        java = _java()
        if self.ssl_port is not None:
            await asyncio.to_thread(self._make_keystore)
        self._write_config()
        argv = [
            java,
            *TOOL_JVM,
            f"-Dlog4j.configuration=file:{self.directory / 'tools-log4j.properties'}",
            "-cp",
            self._classpath(),
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            _cluster_id(),
            "--config",
            str(self._server_properties),
        ]
        for user, password in self.users.items():
            argv += ["--add-scram", f"{SCRAM}=[name={user},password={password}]"]
        await asyncio.to_thread(run_tool, argv, what="formatting Kafka storage")
        # The properties hold the keystore's password: ours alone, as the whole directory is.
        hand_over(self.directory, None)

    def _make_keystore(self) -> None:
        """The CA, and the broker's key and certificate chain in one PEM file, as Kafka reads it.

        Kafka decrypts the key with the JDK's PBE ciphers, which take PBES1/PKCS#12 schemes but
        not OpenSSL's default PBES2, hence the old 3DES scheme for a key that is throwaway anyway.
        """
        ca = self._ca.create()
        server = ca.server(host=self.host)
        encrypted = run_tool(
            [
                *("openssl", "pkcs8", "-topk8", "-v1", "PBE-SHA1-3DES", "-in", str(server.key)),
                *("-passout", f"pass:{self._key_password}"),
            ],
            what="encrypting the broker's key for its PEM keystore",
        )
        self._keystore.write_text(encrypted + server.cert.read_text() + ca.cert.read_text())
        self._keystore.chmod(0o600)

    async def _launch(self) -> ServiceProcess:
        argv = [
            _java(),
            *BROKER_JVM,
            f"-Dlog4j.configuration=file:{self.directory / 'log4j.properties'}",
            "-cp",
            self._classpath(),
            "kafka.Kafka",
            str(self._server_properties),
        ]
        # The client listeners open once the broker has caught up with the metadata log, so the
        # SASL port accepting means the broker serves (the controller port opens earlier and
        # would not). They open one by one, in no fixed order, so every other one is awaited too.
        deadline = time.monotonic() + self._start_timeout
        process = await self._spawn_and_wait(argv, self.sasl_port, timeout=self._start_timeout)
        try:
            for port in (self.port, self.ssl_port, self.sasl_ssl_port):
                if port is not None:
                    await wait_for_port(port, deadline=deadline, alive=process)
        except BaseException:
            await process.kill()
            raise
        return process

    def _write_config(self) -> None:
        host = self.host
        listeners = {
            "PLAINTEXT": self.port,
            "SASL_PLAINTEXT": self.sasl_port,
            "SSL": self.ssl_port,
            "SASL_SSL": self.sasl_ssl_port,
        }
        served = {name: port for name, port in listeners.items() if port is not None}
        advertised = ",".join(f"{name}://{host}:{port}" for name, port in served.items())
        jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{host}:{self.controller_port}",
            "controller.listener.names": "CONTROLLER",
            "listeners": f"{advertised},CONTROLLER://{host}:{self.controller_port}",
            "advertised.listeners": advertised,
            "listener.security.protocol.map": ",".join(
                [*(f"{name}:{name}" for name in served), "CONTROLLER:PLAINTEXT"]
            ),
            "inter.broker.listener.name": "PLAINTEXT",
            "sasl.enabled.mechanisms": SCRAM,
            "listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config": jaas,
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            # The PLAINTEXT and CONTROLLER listeners authenticate nobody, so the broker talks to
            # itself as ANONYMOUS; without superuser rights it would lock itself out.
            "super.users": f"User:{ADMIN};User:ANONYMOUS",
            "allow.everyone.if.no.acl.found": "false",
            "auto.create.topics.enable": "false",
            "log.dirs": str(self.directory / "data"),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "group.initial.rebalance.delay.ms": "0",
            # The 128 MiB default is allocated on the heap, a quarter of what the broker gets.
            "log.cleaner.dedupe.buffer.size": str(2 * 1024 * 1024),
            # After a kill, the restarted controller refuses the broker's new registration until
            # the old one's session expires: 9 s by default, which every kill/start would wait.
            # Six heartbeats per session still keep a busy machine from fencing the broker.
            "broker.heartbeat.interval.ms": "500",
            "broker.session.timeout.ms": "3000",
            "num.network.threads": "2",
            "num.io.threads": "2",
        }
        if self.ssl_port is not None:
            settings |= {
                "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config": jaas,
                # PEM files need no keytool; the truststore is what checks client certificates.
                "ssl.keystore.type": "PEM",
                "ssl.keystore.location": str(self._keystore),
                "ssl.key.password": self._key_password,
                "ssl.truststore.type": "PEM",
                "ssl.truststore.location": str(self._ca.cert),
                # Only the SSL listener asks for a certificate, and there it is the identity:
                # without one there would be no principal but ANONYMOUS, a superuser here.
                "listener.name.ssl.ssl.client.auth": "required",
                "ssl.principal.mapping.rules": PRINCIPAL_MAPPING,
            }
        self._server_properties.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        appender = (
            "log4j.appender.out=org.apache.log4j.ConsoleAppender\n"
            "log4j.appender.out.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.out.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
        )
        # The broker's INFO lines are what the failure tail shows; the tools only need errors.
        (self.directory / "log4j.properties").write_text("log4j.rootLogger=INFO, out\n" + appender)
        (self.directory / "tools-log4j.properties").write_text(
            "log4j.rootLogger=WARN, out\n" + appender
        )


def main(argv: Sequence[str] | None = None) -> int:
    """`fetch`: resolve the broker jars now (e.g. before tests) and print their folder."""
    parser = argparse.ArgumentParser(
        prog="python -m gateway.services.kafka",
        description=f"Manage the local Apache Kafka {KAFKA_VERSION} used by tests and demos.",
    )
    parser.add_argument("command", choices=["fetch"], help="resolve the jars and print where")
    parser.parse_args(argv)
    try:
        print(kafka_jars())
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
