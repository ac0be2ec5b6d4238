"""A simulated device fleet producing telemetry records to Kafka, for tests, demos and benchmarks.

The bodies, their ids (`<run>-<device index>-<seq>`), `ts` (the send time in epoch ms) and the
exact share of malformed bodies come from the MQTT fleet (`gateway.fleet.mqtt`), so a test can
compare what the gateway recorded with what was sent. Each device's identity travels in the record
key (the default) or in a header. Keyed records go to the partition Kafka's default partitioner
picks for the key (murmur2, like Java producers), header-identified ones to `index % partitions`:
either way a device's records stay in order in one partition.

It has to outrun a gateway that drains 150k+ records/s on two cores, so it skips
`producer.send()` (a future, a metadata check and a partitioner call per record): records are
appended to one batch builder per partition and handed over whole with `send_batch`. A partial
batch leaves at once while fewer than two of its partition's batches are outstanding, otherwise
once full, which is linger 0 with a window of two batches per partition; with a rate, everything
built in a pacing tick leaves at the end of that tick, so `ts` stays close to the send time.

    report = await run_kafka_fleet(KafkaFleetOptions(bootstrap_servers="127.0.0.1:9092",
                                                     topic="telemetry", count=100_000))
"""

from __future__ import annotations

import asyncio
import functools
import re
import secrets
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)
from aiokafka.partitioner import DefaultPartitioner

from gateway.errors import GatewayError
from gateway.fleet.mqtt import MALFORMED, KindCounts, Mix, Payloads, Progress

__all__ = [
    "KafkaFleet",
    "KafkaFleetError",
    "KafkaFleetOptions",
    "KafkaFleetReport",
    "device_partitions",
    "run_kafka_fleet",
]

Acks = Literal[0, 1, "all"]
SecurityProtocol = Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL"]
SaslMechanism = Literal["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"]

KINDS = ("valid", "malformed")  # the MQTT fleet's kinds but spoofed: Kafka ACLs bind producers
MAX_BATCH_BYTES = 1024 * 1024  # the broker's default message.max.bytes, about
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
_CHUNK = 1024  # messages built between two looks at the clock and the stop flag
_WINDOW = 2  # outstanding batches per partition before a partial one waits to fill up
_PACE_TICK = 0.01  # seconds between credit grants when the rate is limited
_UNLIMITED = 1 << 62
_MAX_ERRORS = 10  # distinct delivery errors kept for the report


class KafkaFleetError(GatewayError):
    """The fleet could not run: invalid options, unreachable broker, refused login or topic."""


@dataclass(frozen=True, slots=True)
class KafkaFleetOptions:
    """What to simulate; validated on construction, so a bad option fails before any connect.

    `count` (total messages) or `duration` (seconds) ends the run; with neither, it runs until
    `KafkaFleet.stop()`. `rate` is messages/s for the whole fleet, 0 for as fast as possible.
    `identity_header` puts each device's name in that header instead of the record key.
    """

    bootstrap_servers: str = "127.0.0.1:9092"
    topic: str = "telemetry"
    devices: int = 10
    prefix: str = "sensor-"
    identity_header: str | None = None
    rate: float = 0.0
    count: int | None = None
    duration: float | None = None
    readings: int = 1
    malformed: float = 0.0
    acks: Acks = "all"
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism = "SCRAM-SHA-256"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    batch_bytes: int = MAX_BATCH_BYTES
    client_id: str = "gateway-simulate"
    connect_timeout: float = 30.0
    drain_timeout: float = 30.0

    def __post_init__(self) -> None:
        problems = []
        if not self.bootstrap_servers.strip():
            problems.append("bootstrap_servers must name at least one host:port")
        if not _TOPIC.fullmatch(self.topic):
            problems.append("topic must be 1-249 characters of letters, digits, `.`, `_`, `-`")
        if self.devices < 1:
            problems.append("devices must be at least 1")
        if self.identity_header is not None and not self.identity_header:
            problems.append("identity_header must not be empty")
        if self.rate < 0:
            problems.append("rate must be 0 (unlimited) or positive")
        if self.count is not None and self.count < 0:
            problems.append("count must not be negative")
        if self.duration is not None and self.duration <= 0:
            problems.append("duration must be positive")
        if self.readings < 1:
            problems.append("readings must be at least 1")
        if not 0 <= self.malformed <= 1:
            problems.append("malformed is a share between 0 and 1")
        if self.acks not in (0, 1, "all"):
            problems.append("acks must be 0, 1 or 'all'")
        if self.security_protocol not in ("PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL"):
            problems.append("security_protocol must be PLAINTEXT, SASL_PLAINTEXT, SASL_SSL or SSL")
        elif self.security_protocol.startswith("SASL") and not (self.username and self.password):
            problems.append(f"{self.security_protocol} needs a username and a password")
        if self.sasl_mechanism not in ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"):
            problems.append("sasl_mechanism must be SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN")
        if not 1024 <= self.batch_bytes <= MAX_BATCH_BYTES:
            problems.append(f"batch_bytes must be between 1024 and {MAX_BATCH_BYTES}")
        if self.connect_timeout <= 0 or self.drain_timeout <= 0:
            problems.append("timeouts must be positive")
        if problems:
            raise KafkaFleetError("invalid Kafka fleet options: " + "; ".join(problems))

    @property
    def identity_from(self) -> str:
        """Where the gateway must look for the identity: its `identity_from` setting."""
        return "key" if self.identity_header is None else f"header:{self.identity_header}"

    def name(self, index: int) -> str:
        """`<prefix><index>`, zero-padded like the MQTT fleet's names (4 digits or wider)."""
        width = max(4, len(str(self.devices - 1)))
        return f"{self.prefix}{index:0{width}d}"

    def names(self) -> list[str]:
        return [self.name(i) for i in range(self.devices)]


def device_partitions(options: KafkaFleetOptions, partitions: Sequence[int]) -> list[int]:
    """The partition of each device: the key's murmur2 like Java producers, else round-robin."""
    ordered = sorted(partitions)
    if options.identity_header is not None:
        return [ordered[index % len(ordered)] for index in range(options.devices)]
    choose = DefaultPartitioner()
    return [int(choose(name.encode(), ordered, ordered)) for name in options.names()]


@dataclass(slots=True)
class KafkaFleetReport:
    """What a run sent and what the broker confirmed, with what the gateway should record.

    Per kind, `acked` counts records the broker confirmed (with acks=0: handed to the socket) and
    `refused` those whose delivery failed; `errors` holds the distinct failure messages.
    """

    topic: str
    partitions: int
    devices: int
    identity_from: str
    acks: str
    readings: int
    planned: int | None
    duration: float
    kinds: dict[str, KindCounts]
    errors: list[str]

    @property
    def sent(self) -> int:
        return sum(k.sent for k in self.kinds.values())

    @property
    def acked(self) -> int:
        return sum(k.acked for k in self.kinds.values())

    @property
    def failed(self) -> int:
        return sum(k.refused for k in self.kinds.values())

    @property
    def unanswered(self) -> int:
        return self.sent - self.acked - self.failed

    @property
    def malformed_sent(self) -> int:
        return self.kinds["malformed"].sent

    @property
    def rate(self) -> float:
        """Messages sent per second over the whole run, the last acknowledgements included."""
        return self.sent / self.duration if self.duration > 0 else 0.0

    def expected(self) -> dict[str, int]:
        """What a consumer (the gateway) should receive, per kind, and the rows it writes."""
        valid = self.kinds["valid"].acked
        return {
            "valid_messages": valid,
            "rows": valid * self.readings,
            "malformed_messages": self.kinds["malformed"].acked,
        }

    def problems(self) -> list[str]:
        """Why the run did not go as it must: empty when the broker took every record."""
        problems = list(self.errors)
        if self.failed:
            problems.append(f"{self.failed} of {self.sent} records were not delivered")
        if self.unanswered:
            problems.append(f"{self.unanswered} of {self.sent} records got no answer in time")
        return problems

    @property
    def ok(self) -> bool:
        return not self.problems()

    def as_json(self) -> dict[str, Any]:
        return {
            "transport": "kafka",
            "topic": self.topic,
            "partitions": self.partitions,
            "devices": self.devices,
            "identity_from": self.identity_from,
            "acks": self.acks,
            "readings": self.readings,
            "planned": self.planned,
            "sent": self.sent,
            "acked": self.acked,
            "failed": self.failed,
            "unanswered": self.unanswered,
            "malformed_sent": self.malformed_sent,
            "duration": round(self.duration, 3),
            "rate": round(self.rate, 1),
            "kinds": {
                name: {"sent": k.sent, "acked": k.acked, "failed": k.refused}
                for name, k in self.kinds.items()
            },
            "expected": self.expected(),
            "errors": self.errors,
            "ok": self.ok,
        }

    def render(self) -> str:
        planned = f" of {self.planned}" if self.planned is not None else ""
        lines = [
            f"{self.devices} devices -> Kafka topic {self.topic} ({self.partitions} partitions), "
            f"identity from {self.identity_from}, acks={self.acks}, "
            f"{self.readings} reading(s) per message",
            f"sent        {self.sent}{planned} in {self.duration:.2f} s ({self.rate:,.0f} msg/s)",
            f"answered    {self.acked} acked, {self.failed} failed, {self.unanswered} unanswered",
        ]
        for name, k in self.kinds.items():
            lines.append(f"  {name:<10}{k.sent} sent: {k.acked} acked, {k.refused} failed")
        expected = self.expected()
        lines.append(
            f"expected    {expected['valid_messages']} valid messages "
            f"({expected['rows']} rows), {expected['malformed_messages']} malformed rejects"
        )
        return "\n".join(lines)


class _Open:
    """A batch being filled for one partition, and how many records of each kind it holds."""

    __slots__ = ("builder", "counts")

    def __init__(self, builder: Any) -> None:
        self.builder = builder
        self.counts = [0, 0]  # per kind: valid, malformed

    def __bool__(self) -> bool:
        return bool(self.counts[0] or self.counts[1])


class KafkaFleet:
    """One run of the fleet, which another task may stop early or watch while it runs."""

    def __init__(self, options: KafkaFleetOptions) -> None:
        self.options = options
        self.run_id = secrets.token_hex(4)
        """Part of every message id, so runs never repeat one another's ids."""
        self.partitions = 0
        self._stopped = False
        self._broken = False  # a delivery failed: the rest is counted as failed, not sent
        self._sent = [0, 0]  # per kind
        self._acked = [0, 0]
        self._failed = [0, 0]
        self._errors: dict[str, None] = {}  # distinct, in order of appearance
        self._outstanding: list[int] = []  # per partition, batches handed over and unanswered
        self._pending: set[asyncio.Future[Any]] = set()

    def stop(self) -> None:
        """Stop sending; records in flight still get their answers, then `run` returns."""
        self._stopped = True

    def progress(self) -> Progress:
        """Running totals (`refused` counts failed deliveries), for a live progress line."""
        return Progress(sum(self._sent), sum(self._acked), sum(self._failed))

    async def run(self) -> KafkaFleetReport:
        """Connect, produce until the count, duration or a stop, then wait for the answers."""
        options = self.options
        producer = AIOKafkaProducer(
            bootstrap_servers=options.bootstrap_servers,
            client_id=options.client_id,
            acks=-1 if options.acks == "all" else options.acks,
            max_batch_size=options.batch_bytes,
            max_request_size=MAX_BATCH_BYTES,
            linger_ms=0,
            request_timeout_ms=int(options.drain_timeout * 1000),
            security_protocol=options.security_protocol,
            sasl_mechanism=options.sasl_mechanism,
            sasl_plain_username=options.username,
            sasl_plain_password=options.password,
            ssl_context=_ssl_context(options),
        )
        try:
            partitions = await self._connect(producer)
            duration = await self._produce(producer, partitions)
        finally:
            await producer.stop()
        return self._report(duration)

    async def _connect(self, producer: AIOKafkaProducer) -> list[int]:
        """Start the producer and learn the topic's partitions; raise KafkaFleetError if not."""
        options = self.options
        where = options.bootstrap_servers
        try:
            async with asyncio.timeout(options.connect_timeout):
                await producer.start()
                partitions = sorted(await producer.partitions_for(options.topic))
        except TimeoutError:
            raise KafkaFleetError(
                f"Kafka at {where} did not answer within {options.connect_timeout:g}s"
            ) from None
        except KafkaConnectionError as exc:
            raise KafkaFleetError(
                f"cannot connect to Kafka at {where} ({exc}); check the address and, "
                "for SASL, the user name and password"
            ) from None
        except TopicAuthorizationFailedError:
            raise KafkaFleetError(
                f"not authorized for topic {options.topic!r}: the producer "
                f"{options.username or '(anonymous)'} needs Write and Describe on it (Kafka ACLs)"
            ) from None
        except UnknownTopicOrPartitionError:
            raise KafkaFleetError(f"topic {options.topic!r} does not exist") from None
        except KafkaError as exc:
            raise KafkaFleetError(f"Kafka at {where} refused the producer: {exc!r}") from None
        if not partitions:
            raise KafkaFleetError(f"topic {options.topic!r} has no partitions")
        self.partitions = len(partitions)
        self._outstanding = [0] * (max(partitions) + 1)
        return partitions

    async def _produce(self, producer: AIOKafkaProducer, partitions: list[int]) -> float:
        """Build and hand over batches as the rate and the window allow; returns the seconds
        from the first record to the last answer."""
        options = self.options
        loop = asyncio.get_running_loop()
        devices = options.devices
        names = [name.encode() for name in options.names()]
        if options.identity_header is None:
            keys: list[bytes | None] = list(names)
            headers: list[list[tuple[str, bytes]]] = [[]] * devices
        else:
            keys = [None] * devices
            headers = [[(options.identity_header, name)] for name in names]
        partition_of = device_partitions(options, partitions)
        batches = {p: _Open(producer.create_batch()) for p in partitions}
        mix = Mix(options.malformed, 0.0).next
        build = Payloads(self.run_id, options.readings).build
        sent = self._sent
        quota = _UNLIMITED if options.count is None else options.count
        deadline = None if options.duration is None else loop.time() + options.duration
        topic = options.topic
        made = 0  # messages built so far; message k is device k % devices's message k // devices

        async def send(partition: int, batch: _Open) -> None:
            batches[partition] = _Open(producer.create_batch())
            await self._send(producer, topic, partition, batch)

        def fill(n: int) -> list[tuple[int, _Open]]:
            """Build the next n messages into the batches; returns the batches that filled up."""
            full = []
            ts = time.time_ns() // 1_000_000
            for k in range(made, made + n):
                seq, index = divmod(k, devices)
                kind = mix()
                payload = build(index, seq, ts, kind == MALFORMED)
                partition = partition_of[index]
                batch = batches[partition]
                key, header = keys[index], headers[index]
                record = batch.builder.append(timestamp=ts, key=key, value=payload, headers=header)
                if record is None:  # full: it leaves, and a new one takes the record
                    full.append((partition, batch))
                    batch = batches[partition] = _Open(producer.create_batch())
                    record = batch.builder.append(
                        timestamp=ts, key=key, value=payload, headers=header
                    )
                    if record is None:
                        raise KafkaFleetError(
                            f"a {len(payload)}-byte record does not fit in a batch of "
                            f"{options.batch_bytes} bytes"
                        )
                batch.counts[kind] += 1
                sent[kind] += 1
            return full

        started = loop.time()
        granted = 0 if options.rate else _UNLIMITED
        while not self._stopped and made < quota:
            if options.rate:
                await asyncio.sleep(_PACE_TICK)
                if deadline is not None and loop.time() >= deadline:
                    break
                granted = int(options.rate * (loop.time() - started))
            while made < min(granted, quota) and not self._stopped:
                n = min(_CHUNK, granted - made, quota - made)
                full = fill(n)
                made += n
                for partition, batch in full:
                    await self._send(producer, topic, partition, batch)
                if not options.rate:
                    for partition, batch in list(batches.items()):
                        if batch and self._outstanding[partition] < _WINDOW:
                            await send(partition, batch)
                    await asyncio.sleep(0)  # let the producer's sender run
                if deadline is not None and loop.time() >= deadline:
                    self._stopped = True
            for partition, batch in list(batches.items()):
                if batch:
                    await send(partition, batch)
            if deadline is not None and loop.time() >= deadline:
                break
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=options.drain_timeout)
        return loop.time() - started

    async def _send(
        self, producer: AIOKafkaProducer, topic: str, partition: int, batch: _Open
    ) -> None:
        """Hand a batch over (waiting while the partition's queue is full) and count its fate."""
        if self._broken:
            self._fail(batch.counts, None)  # after a failure every later batch fails alike
            return
        self._outstanding[partition] += 1
        try:
            future = await producer.send_batch(batch.builder, topic, partition=partition)
        except KafkaError as exc:
            self._outstanding[partition] -= 1
            self._fail(batch.counts, exc)
            return
        self._pending.add(future)
        future.add_done_callback(functools.partial(self._answered, partition, batch.counts))

    def _answered(self, partition: int, counts: list[int], future: asyncio.Future[Any]) -> None:
        self._pending.discard(future)
        self._outstanding[partition] -= 1
        if future.cancelled():
            self._fail(counts, None)
            return
        error = future.exception()
        if error is not None:
            self._fail(counts, error)
            return
        self._acked[0] += counts[0]
        self._acked[1] += counts[1]

    def _fail(self, counts: list[int], error: BaseException | None) -> None:
        """Count a batch as failed; stop the run, since the records after it would fail too."""
        self._failed[0] += counts[0]
        self._failed[1] += counts[1]
        if error is not None and len(self._errors) < _MAX_ERRORS:
            self._errors[f"delivery failed: {error!r}"] = None
        self._broken = self._stopped = True

    def _report(self, duration: float) -> KafkaFleetReport:
        options = self.options
        return KafkaFleetReport(
            topic=options.topic,
            partitions=self.partitions,
            devices=options.devices,
            identity_from=options.identity_from,
            acks=str(options.acks),
            readings=options.readings,
            planned=options.count,
            duration=duration,
            kinds={
                name: KindCounts(self._sent[k], self._acked[k], self._failed[k])
                for k, name in enumerate(KINDS)
            },
            errors=list(self._errors),
        )


def _ssl_context(options: KafkaFleetOptions) -> ssl.SSLContext | None:
    if options.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    return ssl.create_default_context(cafile=str(options.ca_file) if options.ca_file else None)


async def run_kafka_fleet(options: KafkaFleetOptions) -> KafkaFleetReport:
    """Run a fleet to the end of its count or duration and report what happened."""
    return await KafkaFleet(options).run()
