"""Kafka as a gateway source: a consumer group whose offsets move only past committed rows.

Offsets are never committed automatically. Each assigned partition has an ordered window of the
offsets handed to the pipeline; the pipeline acknowledges records as their batches commit, in any
order, and the committed offset of a partition is one past the longest acknowledged prefix. On
a rebalance the pipeline is flushed and those offsets committed before the partitions go, so
the next owner starts exactly where this one stopped. Everything else (a crash, a commit lost
to a rebalance) means records are read again: at least once, or exactly once with dedup.

Memory is bounded in bytes by the fetch sizes (`fetch_sizes`), which follow the payload limit
and the batch size unless configured.

Identity claims are only as good as the cluster's ACLs (`kafka_claims`): the source refuses to
start while a principal could write records claiming an identity it is not bound to, and stops
taking records in (partitions paused, itself not ready) while a check finds one at run time, or
while the ACLs could not be read for a few check intervals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import (
    CommitFailedError,
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaError,
    TopicAuthorizationFailedError,
)

from gateway.config import BatchingConfig, KafkaSourceConfig, LimitsConfig
from gateway.contracts import Source
from gateway.errors import GatewayError
from gateway.kafka_admin import KafkaAdminError
from gateway.metrics import Metrics
from gateway.sources.acks import AckWindow
from gateway.sources.kafka_claims import ClaimsWatch, topic_writes
from gateway.topics import TopicTemplate

__all__ = [
    "RECORD_HEADROOM",
    "KafkaError",
    "KafkaRecord",
    "KafkaSource",
    "KafkaSourceError",
    "fetch_sizes",
]

log = logging.getLogger(__name__)

DEFAULT_PAYLOAD_LIMIT: int = LimitsConfig.model_fields["max_payload_bytes"].default
DEFAULT_BATCH_BYTES: int = BatchingConfig.model_fields["max_bytes"].default
RECORD_HEADROOM = 4096
"""Bytes a fetched record may need beside its value: key, headers, record and batch headers."""
_PARTITION_SHARE = 1024 * 1024  # Kafka's own default per partition: enough to keep up
_CLUSTER_AUTHORIZATION_FAILED = 31
_SECURITY_DISABLED = 54  # DescribeAcls on a cluster without an authorizer


def fetch_sizes(
    config: KafkaSourceConfig, *, max_payload_bytes: int, batch_bytes: int
) -> tuple[int, int]:
    """`(fetch_max_bytes, max_partition_fetch_bytes)`: what one fetch may bring, in bytes.

    Unless configured, a partition's share is 1 MiB, or one largest acceptable record when that
    is more (`max_payload_bytes` + 4 KiB), and a whole fetch is one batch's worth of payload
    (`batching.max_bytes`), or one partition's share when that is more. With the defaults:
    partition 1 MiB (256 KiB + 4 KiB < 1 MiB), fetch 4 MiB. aiokafka keeps at most one fetch
    answer per broker it reads from, so one source holds at most `fetch_max_bytes` per broker
    plus the records it has handed on (the pipeline's own bound, `max_buffered_rows`). Both
    limits are soft in Kafka: a first record batch larger than them still comes whole, so the
    topic's `max.message.bytes` (1 MiB by default) should not exceed `fetch_max_bytes` either.
    """
    partition = config.max_partition_fetch_bytes or max(
        _PARTITION_SHARE, max_payload_bytes + RECORD_HEADROOM
    )
    fetch = config.fetch_max_bytes or max(batch_bytes, partition)
    return fetch, partition


class KafkaSourceError(GatewayError):
    """Kafka refused us for a reason retrying cannot fix: authentication or authorization."""


class Partition:
    """One assignment of a partition: the offsets the pipeline has not acknowledged yet.

    A partition revoked and assigned again gets a new `Partition`; acknowledgements of records
    read under the old one are ignored (`assigned` is False), their next owner reads them again.
    """

    __slots__ = ("assigned", "committed", "next_commit", "tp", "window")

    def __init__(self, tp: TopicPartition) -> None:
        self.tp = tp
        self.window = AckWindow()
        self.assigned = True
        self.next_commit: int | None = None  # one past the acknowledged prefix
        self.committed: int | None = None  # what the group coordinator has


class KafkaRecord(msgspec.Struct, gc=False):
    """One record as the pipeline sees it, tied to the assignment it was read under.

    A msgspec struct: made once per record, its constructor runs in C.
    """

    topic: str
    offset: int
    key: bytes | None
    payload: bytes
    headers: Sequence[tuple[str, bytes]]
    seq: int
    part: Partition


def identity_claim(config: KafkaSourceConfig) -> Callable[[KafkaRecord], tuple[str, str] | None]:
    """How to read (identity, stream) from a record: key, a header, or the topic name."""
    stream = config.stream
    source = config.identity_from
    if source == "key":

        def from_key(record: KafkaRecord) -> tuple[str, str] | None:
            key = record.key
            if not key:
                return None
            try:
                return key.decode(), stream
            except UnicodeDecodeError:
                return None

        return from_key
    if source.startswith("header:"):
        name = source.removeprefix("header:")

        def from_header(record: KafkaRecord) -> tuple[str, str] | None:
            for header, value in record.headers:
                if header == name and value:
                    try:
                        return value.decode(), stream
                    except UnicodeDecodeError:
                        return None
            return None

        return from_header
    parse = TopicTemplate(source.removeprefix("topic:"), default_stream=stream, separator=".").parse

    def from_topic(record: KafkaRecord) -> tuple[str, str] | None:
        return parse(record.topic)

    return from_topic


def ssl_context(config: KafkaSourceConfig) -> ssl.SSLContext | None:
    """The client context for SSL and SASL_SSL; unreadable or mismatched files are a clear error."""
    if config.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    try:
        return config.tls_context()
    except OSError as exc:  # ssl.SSLError is one too
        raise KafkaSourceError(
            f"kafka source {config.name}: cannot load its TLS files (ca_file {config.ca_file}, "
            f"cert_file {config.cert_file}, key_file {config.key_file}): {exc}"
        ) from exc


async def tls_failure(
    servers: str, context: ssl.SSLContext, timeout: float = 5, alert_wait: float = 1
) -> str | None:
    """Why TLS with the bootstrap servers fails, if it does: aiokafka only logs the SSL error
    behind a failed bootstrap, so a start failure is probed again to say which it was.

    A server refusing the client's certificate (or its absence) tells only after the handshake
    under TLS 1.3, so the probe also waits briefly for that alert.
    """
    for server in servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    host.strip("[]"), int(port), ssl=context
                )
                try:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(alert_wait):
                            await reader.read(1)
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except ssl.SSLError as exc:
            return f"TLS with {server.strip()} failed: {exc}"
        except (OSError, TimeoutError, ValueError):
            continue
    return None


class KafkaSource(Source[KafkaRecord]):
    """A member of a consumer group feeding the pipeline; see the module docstring."""

    unclaimed_reason = "missing_identity"

    def __init__(
        self,
        config: KafkaSourceConfig,
        *,
        metrics: Metrics,
        flush: Callable[[], Awaitable[None]],
        flush_timeout: float = 30,
        max_payload_bytes: int = DEFAULT_PAYLOAD_LIMIT,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
    ) -> None:
        self.name = config.name
        self.config = config
        self.fetch_max_bytes, self.max_partition_fetch_bytes = fetch_sizes(
            config, max_payload_bytes=max_payload_bytes, batch_bytes=batch_bytes
        )
        self._claim = identity_claim(config)
        self._metrics = metrics
        self._flush = flush
        self._flush_timeout = flush_timeout
        self._partitions: dict[TopicPartition, Partition] = {}
        self._dirty: set[TopicPartition] = set()
        self._backlog: list[KafkaRecord] = []
        self._paused = False
        self._refused = False  # claims unbound, or their ACLs unread: nothing is taken in
        self._keepalive: asyncio.Task[None] | None = None
        self._committer: asyncio.Task[None] | None = None
        self._watch = ClaimsWatch(
            config,
            describe=lambda: topic_writes(config),
            metrics=metrics,
            stop_intake=self._stop_intake,
        )
        self._watcher: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._member = False
        self.rebalances = 0
        self.commit_failures = 0

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """In the group with an assignment received (possibly empty: more pods than partitions),
        its coordinator reachable (a lost broker makes the pod not ready until it is back), and
        its claims bound by the cluster's ACLs, checked lately."""
        consumer = self._consumer
        return (
            consumer is not None
            and self._member
            and not self._refused
            and _coordinator_known(consumer)
        )

    def consumer_arguments(self) -> dict[str, Any]:
        """What the consumer is built with: offsets committed by hand, fetches sized in bytes."""
        config = self.config
        return {
            "bootstrap_servers": config.bootstrap_servers,
            "client_id": config.client_id,
            "group_id": config.group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": config.auto_offset_reset,
            "max_poll_records": config.max_poll_records,
            "fetch_max_bytes": self.fetch_max_bytes,
            "max_partition_fetch_bytes": self.max_partition_fetch_bytes,
            "session_timeout_ms": config.session_timeout_ms,
            "security_protocol": config.security_protocol,
            "sasl_mechanism": config.sasl_mechanism,
            "sasl_plain_username": config.username,
            "sasl_plain_password": config.password.require() if config.password else None,
            "ssl_context": ssl_context(config),
        }

    async def start(self) -> None:
        config = self.config
        arguments = self.consumer_arguments()
        context = arguments["ssl_context"]
        await self._check_claims(context)
        consumer = AIOKafkaConsumer(**arguments)
        listener = _Listener(self)
        if config.topic_pattern is not None:
            consumer.subscribe(pattern=config.topic_pattern, listener=listener)
        else:
            consumer.subscribe(topics=config.topics, listener=listener)
        try:
            await consumer.start()
        except BaseException as exc:
            await consumer.stop()
            if isinstance(exc, KafkaConnectionError):
                raise await self._cannot_join(exc, context) from exc
            if isinstance(exc, TopicAuthorizationFailedError | GroupAuthorizationFailedError):
                raise self._unauthorized(exc) from exc
            raise
        self._consumer = consumer
        self._committer = asyncio.create_task(self._commit_loop(), name=f"commit-{self.name}")
        self._watcher = asyncio.create_task(self._watch.run(), name=f"acls-{self.name}")

    async def _check_claims(self, context: ssl.SSLContext | None) -> None:
        """Before joining the group: refuse to start unless the ACLs bind every claim."""
        try:
            violations = await self._watch.check()
        except KafkaAdminError as exc:
            if isinstance(exc.__cause__, KafkaConnectionError):
                raise await self._cannot_join(exc.__cause__, context) from exc
            self._metrics.kafka_acl_check_failures.labels(self.name).inc()
            if exc.code == _SECURITY_DISABLED:
                raise KafkaSourceError(
                    f"kafka source {self.name}: the cluster has no ACL authorizer, so any client "
                    "may write records as any identity; configure `authorizer.class.name` and "
                    "ACLs on the brokers"
                ) from exc
            refused = "not authorized to" if exc.code == _CLUSTER_AUTHORIZATION_FAILED else "cannot"
            raise KafkaSourceError(
                f"kafka source {self.name}: {refused} describe the cluster's ACLs ({exc}), so "
                f"cannot check who may write its topics; {self._principal()} needs Describe on "
                "the cluster (Kafka ACLs)"
            ) from exc
        if violations:
            raise KafkaSourceError(
                f"kafka source {self.name}: identity claims from {self.config.identity_from} are "
                "not bound to who writes them: "
                + "; ".join(map(str, violations))
                + ". The check sees only ALLOW bindings of Write or All on topics, which is what "
                "writing needs (a DENY does not excuse one): remove these ACLs, or name the "
                "principal in `trusted_producers` if it may write as any identity"
            )

    async def _cannot_join(
        self, exc: Exception, context: ssl.SSLContext | None
    ) -> KafkaSourceError:
        servers = self.config.bootstrap_servers
        tls = await tls_failure(servers, context) if context else None
        return KafkaSourceError(
            f"kafka source {self.name}: cannot join {servers} "
            + (
                f"({tls}); check `ca_file` and the client certificate"
                if tls
                else f"({exc}); check the address, for SASL the user name and password, "
                "for TLS `ca_file` and the client certificate"
            )
        )

    def _stop_intake(self, stop: bool) -> None:
        """Stop taking records in while claims are unbound or unchecked (what is in flight is
        still written and committed); take them in again once a check finds them bound."""
        self._refused = stop
        consumer = self._consumer
        if consumer is None:
            return
        if self._refused:
            consumer.pause(*consumer.assignment())
        elif not self._paused:
            consumer.resume(*consumer.assignment())

    async def close(self) -> None:
        """Commit what is acknowledged and leave the group (its partitions move on at once)."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        await self._stop_keepalive()
        if self._committer is not None:
            self._committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._committer
        if self._consumer is not None:
            await self._commit(list(self._partitions))
            await self._consumer.stop()
            self._consumer = None

    # -- records -----------------------------------------------------------------------------

    @property
    def claim(self) -> Callable[[KafkaRecord], tuple[str, str] | None]:
        """Chosen once from `identity_from`: the record's key, a header or the topic name."""
        return self._claim

    async def receive(self) -> list[KafkaRecord]:
        consumer = self._require()
        while True:
            if self._backlog and not self._refused:
                records, self._backlog = self._backlog, []
                return records
            try:
                # While refused the partitions are paused: polling keeps the group membership.
                batches = await consumer.getmany(
                    timeout_ms=1000, max_records=self.config.max_poll_records
                )
            except (TopicAuthorizationFailedError, GroupAuthorizationFailedError) as exc:
                raise self._unauthorized(exc) from exc
            records = self._register(batches)
            if self._refused:
                self._backlog.extend(records)  # fetched before the pause took effect
            elif records:
                return records

    def _register(
        self, batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> list[KafkaRecord]:
        records: list[KafkaRecord] = []
        for tp, batch in batches.items():
            partition = self._partitions.get(tp)
            if partition is None:
                continue  # revoked while fetched: its next owner reads these again
            first = partition.window.register_many([r.offset for r in batch])
            records.extend(
                KafkaRecord(r.topic, r.offset, r.key, r.value or b"", r.headers, seq, partition)
                for seq, r in enumerate(batch, first)
            )
        return records

    def _principal(self) -> str:
        config = self.config
        if config.security_protocol.startswith("SASL"):
            return f"user {config.username!r}"
        if config.cert_file is not None:
            return f"the principal of certificate {config.cert_file} (often its CN)"
        return "the anonymous principal"

    def _unauthorized(self, error: Exception) -> KafkaSourceError:
        return KafkaSourceError(
            f"kafka source {self.name}: not authorized ({error}); {self._principal()} "
            f"needs Read on the topics and on group {self.config.group_id!r} (Kafka ACLs)"
        )

    def position(self, record: KafkaRecord) -> list[Any]:
        return [record.topic, record.part.tp.partition, record.offset]

    def ack(self, records: Sequence[KafkaRecord]) -> None:
        dirty = self._dirty
        last = None
        for record in records:
            part = record.part
            if part.assigned:
                part.window.complete(record.seq)
                if part is not last:
                    dirty.add(part.tp)
                    last = part

    # -- backpressure ------------------------------------------------------------------------

    def pause(self) -> None:
        """Stop fetching, but keep polling so the group does not think we are gone."""
        consumer = self._require()
        if self._paused:
            return
        self._paused = True
        consumer.pause(*consumer.assignment())
        self._keepalive = asyncio.create_task(self._poll_while_paused())

    async def resume(self) -> None:
        await self._stop_keepalive()
        if self._consumer is not None and not self._refused:
            self._consumer.resume(*self._consumer.assignment())

    async def _poll_while_paused(self) -> None:
        consumer = self._require()
        while True:
            # Paused partitions return nothing; a record fetched just before the pause is kept.
            self._backlog.extend(self._register(await consumer.getmany(timeout_ms=500)))

    async def _stop_keepalive(self) -> None:
        self._paused = False
        task, self._keepalive = self._keepalive, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- offsets -----------------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.commit_interval_ms / 1000)
            if self._dirty:
                dirty, self._dirty = list(self._dirty), set()
                await self._commit(dirty)
            self._report_lag()

    async def _commit(self, tps: Sequence[TopicPartition]) -> None:
        offsets = {}
        for tp in tps:
            partition = self._partitions.get(tp)
            if partition is None:
                continue
            released = partition.window.release()
            if released:
                partition.next_commit = released[-1] + 1
            if partition.next_commit is not None and partition.next_commit != partition.committed:
                offsets[tp] = partition.next_commit
        if not offsets or self._consumer is None:
            return
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # A rebalance took the partitions: their next owner re-reads from the last commit.
            self.commit_failures += 1
            self._metrics.kafka_commit_failures.labels(self.name).inc()
            log.warning(
                "kafka source %s: commit failed (%s); records will be re-read", self.name, exc
            )
            return
        for tp, offset in offsets.items():
            partition = self._partitions.get(tp)
            if partition is not None:
                partition.committed = offset

    def _report_lag(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        for tp, partition in self._partitions.items():
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            done = partition.committed if partition.committed is not None else 0
            self._metrics.kafka_consumer_lag.labels(tp.topic, str(tp.partition)).set(
                max(0, highwater - done)
            )

    # -- rebalancing -------------------------------------------------------------------------

    async def partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        """Write and acknowledge what we hold, commit it, and only then let the partitions go."""
        self.rebalances += 1
        self._metrics.kafka_rebalances.labels(self.name).inc()
        if revoked:
            try:
                await asyncio.wait_for(self._flush(), self._flush_timeout)
            except TimeoutError:
                log.warning("kafka source %s: flush before revoke timed out", self.name)
            await self._commit(list(revoked))
        for tp in revoked:
            partition = self._partitions.pop(tp, None)
            if partition is not None:
                partition.assigned = False
            self._dirty.discard(tp)
            # The next owner reports this partition's lag; a stale value here would mislead.
            with contextlib.suppress(KeyError):
                self._metrics.kafka_consumer_lag.remove(tp.topic, str(tp.partition))
        self._backlog = [record for record in self._backlog if record.part.assigned]

    async def partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self._member = True
        for tp in assigned:
            if tp not in self._partitions:
                partition = self._partitions[tp] = Partition(tp)
                if self._consumer is not None:
                    # Lag counts from the group's committed offset, not from zero.
                    partition.committed = await self._consumer.committed(tp)
        if (self._paused or self._refused) and self._consumer is not None:
            self._consumer.pause(*assigned)

    def _require(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise GatewayError(f"kafka source {self.name} is not started")
        return self._consumer


def _coordinator_known(consumer: AIOKafkaConsumer) -> bool:
    # aiokafka has no public call for it: its group coordinator forgets the coordinator's node
    # id when heartbeats or commits cannot reach it, and learns it again once the broker is back.
    coordinator = getattr(consumer, "_coordinator", None)
    return getattr(coordinator, "coordinator_id", None) is not None


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka ships no types
    def __init__(self, source: KafkaSource) -> None:
        self._source = source

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        await self._source.partitions_revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        await self._source.partitions_assigned(list(assigned))
