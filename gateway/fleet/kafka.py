"""A simulated device fleet producing telemetry records to Kafka, for tests, demos and benchmarks.

The bodies, their ids (`<run>-<device index>-<seq>`), `ts` (the send time in epoch ms) and the
exact share of malformed bodies are the MQTT fleet's (`gateway.fleet.payloads`), so a test can
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
import secrets
import ssl
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)
from aiokafka.partitioner import DefaultPartitioner

from gateway.fleet.common import PACE_TICK, UNLIMITED, KafkaFleetError, Progress
from gateway.fleet.options import MAX_BATCH_BYTES, KafkaFleetOptions
from gateway.fleet.payloads import MALFORMED, Mix, Payloads
from gateway.fleet.report import FleetReport, KindCounts
from gateway.tls import client_context

__all__ = ["KafkaFleet", "device_partitions", "run_kafka_fleet"]

KINDS = ("valid", "malformed")  # the MQTT fleet's kinds but spoofed: Kafka ACLs bind producers
_CHUNK = 1024  # messages built between two looks at the clock and the stop flag
_WINDOW = 2  # outstanding batches per partition before a partial one waits to fill up
_MAX_ERRORS = 10  # distinct delivery errors kept for the report


def device_partitions(options: KafkaFleetOptions, partitions: Sequence[int]) -> list[int]:
    """The partition of each device: the key's murmur2 like Java producers, else round-robin."""
    ordered = sorted(partitions)
    if options.identity_header is not None:
        return [ordered[index % len(ordered)] for index in range(options.devices)]
    choose = DefaultPartitioner()
    return [int(choose(name.encode(), ordered, ordered)) for name in options.names()]


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

    async def run(self) -> FleetReport:
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
        quota = UNLIMITED if options.count is None else options.count
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
        granted = 0 if options.rate else UNLIMITED
        while not self._stopped and made < quota:
            if options.rate:
                await asyncio.sleep(PACE_TICK)
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

    def _report(self, duration: float) -> FleetReport:
        options = self.options
        return FleetReport(
            transport="kafka",
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
    return client_context(options.ca_file)


async def run_kafka_fleet(options: KafkaFleetOptions) -> FleetReport:
    """Run a fleet to the end of its count or duration and report what happened."""
    return await KafkaFleet(options).run()
