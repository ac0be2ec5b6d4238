"""Kafka accounts for a whole registry: SCRAM credentials and ACLs for N identities through the
admin protocol (`gateway.kafka_admin`), against the launcher's one-node KRaft broker.

Measured, for `--identities` names (`sensor-000000`, ...):

- *scram*: the salted passwords (PBKDF2, `--iterations`, in worker processes) and, apart, the
  broker's time to store them (AlterUserScramCredentials, 1,000 per request, until the
  controller committed), then how long until the last one logs in (the broker applies the
  controller's records after it answered);
- *acls*: one literal Write ACL on `telemetry.<name>` each (CreateAcls, 1,000 per request),
  then until the last one is in the broker's authorizer; one identity then produces to its
  topic, as the ACL allows;
- *listing*: the reads a reconciler or an audit makes at that size: every SCRAM user, every
  ACL, and the ACLs that apply to one topic (MATCH);
- *retire*: one identity with a producer connected: its ACL and its credential deleted, then
  how long until the connected producer's write is refused and until a new login is; a
  connection open before the credential went keeps its login (Kafka checks credentials only
  at login), so it is the ACL that stops it.

Prints one JSON object on stdout and a summary on stderr.

    .venv/bin/python benchmarks/kafka_accounts.py [--identities 100000] [--iterations 4096]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from _harness import loadavg, phase
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from gateway.kafka_admin import (
    AclBinding,
    ScramCredential,
    salt_credentials,
)
from gateway.services.kafka import Kafka

MECHANISM = "SCRAM-SHA-256"


def identity(index: int) -> str:
    return f"sensor-{index:06d}"


def acl(name: str) -> AclBinding:
    return AclBinding("topic", f"telemetry.{name}", "literal", f"User:{name}", "write")


async def until(check: Callable[[], Awaitable[bool]], limit: float = 120.0) -> float:
    """Seconds until `check` is true, polled every 10 ms."""
    start = time.perf_counter()
    while not await check():
        if time.perf_counter() - start > limit:
            raise TimeoutError(f"not within {limit:.0f}s")
        await asyncio.sleep(0.01)
    return round(time.perf_counter() - start, 3)


def producer(kafka: Kafka, user: str, password: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(**kafka.client_kwargs(user, password), request_timeout_ms=10_000)


async def writes(sender: AIOKafkaProducer, topic: str) -> bool:
    try:
        await sender.send_and_wait(topic, b'{"metric": "t", "value": 1}')
    except KafkaError:
        return False
    return True


def timed() -> Callable[[], float]:
    start = time.perf_counter()
    return lambda: round(time.perf_counter() - start, 3)


async def run(count: int, iterations: int) -> dict[str, Any]:
    names = [identity(i) for i in range(count)]
    passwords = {name: f"pw-{name}" for name in names}
    credentials = [ScramCredential(name, passwords[name]) for name in names]
    figures: dict[str, Any] = {"identities": count, "iterations": iterations}
    async with Kafka() as kafka, kafka.admin() as admin:
        last = names[-1]
        async with phase("kafka-accounts-scram") as meta:
            elapsed = timed()
            salted = await salt_credentials(credentials, mechanism=MECHANISM, iterations=iterations)
            hashing = elapsed()
            elapsed = timed()
            await admin.store_scram(salted)
            broker = elapsed()
            applied = await until(lambda: kafka.logs_in(last, passwords[last]))
            meta.update(
                {
                    "hashing_s": hashing,
                    "broker_s": broker,
                    "total_s": round(hashing + broker, 3),
                    "per_second": round(count / (hashing + broker)),
                    "last_login_after_s": applied,
                }
            )
            figures["scram"] = meta
        async with phase("kafka-accounts-acls") as meta:
            elapsed = timed()
            await admin.create_acls([acl(name) for name in names])
            broker = elapsed()
            wanted = acl(last)

            async def visible() -> bool:
                return wanted in await admin.describe_acls(resource_name=wanted.resource_name)

            applied = await until(visible)
            meta.update(
                {
                    "broker_s": broker,
                    "per_second": round(count / broker),
                    "last_visible_after_s": applied,
                }
            )
            figures["acls"] = meta
        async with phase("kafka-accounts-listing") as meta:
            elapsed = timed()
            users = await admin.scram_users()
            users_s = elapsed()
            elapsed = timed()
            every = await admin.describe_acls()
            every_s = elapsed()
            elapsed = timed()
            applying = await admin.describe_acls(
                resource_type="topic", resource_name=wanted.resource_name, pattern_type="match"
            )
            meta.update(
                {
                    "scram_users": len(users),
                    "scram_users_s": users_s,
                    "acls": len(every),
                    "describe_all_acls_s": every_s,
                    "match_one_topic_s": elapsed(),
                    "match_one_topic_acls": len(applying),
                }
            )
            figures["listing"] = meta
        victim = names[count // 2]
        topic = f"telemetry.{victim}"
        await kafka.create_topic(topic)
        await kafka.allow(victim, ["Describe"], topic=topic)
        sender = producer(kafka, victim, passwords[victim])
        await sender.start()
        try:
            figures["produce_as_identity"] = await writes(sender, topic)
            async with phase("kafka-accounts-retire") as meta:
                elapsed = timed()
                await admin.delete_acls([acl(victim)])
                acl_s = elapsed()
                await admin.delete_scram([victim], mechanism=MECHANISM)
                scram_s = elapsed()

                async def write_refused() -> bool:
                    return not await writes(sender, topic)

                async def login_refused() -> bool:
                    return not await kafka.logs_in(victim, passwords[victim])

                # Both from the first delete on, watched side by side.
                refused = await asyncio.gather(until(write_refused), until(login_refused))
                meta.update(
                    {
                        "delete_acl_s": acl_s,
                        "delete_scram_s": round(scram_s - acl_s, 3),
                        "connected_write_refused_after_s": round(scram_s + refused[0], 3),
                        "new_login_refused_after_s": round(scram_s + refused[1], 3),
                    }
                )
            figures["retire"] = meta
        finally:
            await sender.stop()
    figures["loadavg_end"] = loadavg()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--identities", type=int, default=100_000)
    parser.add_argument("--iterations", type=int, default=4096)
    arguments = parser.parse_args()
    figures = asyncio.run(run(arguments.identities, arguments.iterations))
    print(json.dumps(figures, indent=2))
    scram, acls, retire = figures["scram"], figures["acls"], figures["retire"]
    print(
        f"{figures['identities']} identities: SCRAM {scram['total_s']}s "
        f"(hashing {scram['hashing_s']}s, broker {scram['broker_s']}s), "
        f"ACLs {acls['broker_s']}s; retire: write refused after "
        f"{retire['connected_write_refused_after_s']}s, login after "
        f"{retire['new_login_refused_after_s']}s",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
