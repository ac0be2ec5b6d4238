"""How fast does each MQTT transport drain a persistent session, acking every message?

The gateway's two MQTT sources, picked by `mqtt_source` from the configured protocol as the
gateway does: MQTT v5 through our client, and 3.1.1 through aiomqtt with ordered manual acks.
For each, a backlog is queued while the source is away (by the publisher of `mqtt_drain.py`,
which waits for every PUBACK), then the clock runs while the source reconnects, receives it in
batches and acks each batch at once in receive order (a "commit" that costs nothing), until
every message arrived and the source closed. A new connection then checks that nothing is
redelivered, i.e. that every ack reached the broker. Both run on asyncio's loop and on uvloop
(what `gateway run` uses), each measurement on a loop and with a client id of its own, against
one broker. Prints one JSON object.

    .venv/bin/python benchmarks/mqtt311_drain.py [--messages 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any, Literal

import aiomqtt
import uvloop
from mqtt_drain import TOPIC, payload, publish_backlog

from gateway.config import MqttSourceConfig, Secret
from gateway.services.mosquitto import Mosquitto, MqttUser
from gateway.sources.mqtt import AnyMqttSource, mqtt_source

PASSWORD_ENV = "BENCH_MQTT_PASSWORD"


async def leftover(source: AnyMqttSource, broker: Mosquitto, marker: MqttUser) -> int:
    """Messages redelivered before a fresh marker: 0 when every ack reached the broker."""
    async with aiomqtt.Client(
        broker.host,
        broker.port,
        username=marker.username,
        password=marker.password,
        identifier=marker.username,
    ) as publisher:
        await publisher.publish(f"devices/{marker.username}/telemetry", b"marker", qos=1)
    count = 0
    async with asyncio.timeout(60):
        while True:
            batch = await source.receive()
            source.ack(batch)
            for message in batch:
                if message.payload == b"marker":
                    return count
                count += 1


async def drain(
    broker: Mosquitto,
    users: tuple[MqttUser, MqttUser],
    protocol: Literal["5", "3.1.1"],
    client_id: str,
    count: int,
) -> dict[str, Any]:
    device, marker = users
    config = MqttSourceConfig(
        host=broker.host,
        port=broker.port,
        protocol=protocol,
        username=broker.gateway.username,
        password=Secret(env=PASSWORD_ENV),
        client_id=client_id,
    )
    session = mqtt_source(config)
    await session.start()  # creates the session and its subscription
    await session.close()
    publish_rate = await publish_backlog(broker, device, count)

    received = batches = 0
    started = time.perf_counter()
    source = mqtt_source(config)
    await source.start()
    try:
        while received < count:
            batch = await source.receive()
            source.ack(batch)
            received += len(batch)
            batches += 1
    finally:
        await source.close()
    elapsed = time.perf_counter() - started
    again = mqtt_source(config)
    await again.start()
    try:
        redelivered = await leftover(again, broker, marker)
    finally:
        await again.close()
    return {
        "messages": count,
        "received": received,
        "mean_batch": round(received / batches, 1),
        "redelivered_after_acks": redelivered,
        "seconds": round(elapsed, 3),
        "msgs_per_s": round(received / elapsed),
        "publish_msgs_per_s": round(publish_rate),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    results: dict[str, Any] = {
        "benchmark": "mqtt311_drain",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "payload_bytes": len(payload(0)),
        "topic": TOPIC,
        "broker_max_inflight_messages": 0,
    }
    loops: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
        "asyncio": asyncio.new_event_loop,
        "uvloop": uvloop.new_event_loop,
    }
    transports: list[tuple[Literal["5", "3.1.1"], str]] = [
        ("3.1.1", "mqtt311_aiomqtt"),
        ("5", "mqtt5_client"),
    ]
    # The broker lives on a plain asyncio loop (uvloop cannot spawn it: the launcher passes
    # `user=` to create_subprocess_exec); each measurement runs on a loop of its own.
    broker = Mosquitto()
    with asyncio.Runner() as control:
        control.run(broker.__aenter__())
        try:
            os.environ[PASSWORD_ENV] = broker.gateway.password
            users = broker.add_user("bench-device"), broker.add_user("bench-marker")
            for loop_name, factory in loops.items():
                for protocol, label in transports:
                    with asyncio.Runner(loop_factory=factory) as runner:
                        results[f"{label}_{loop_name}"] = runner.run(
                            drain(
                                broker, users, protocol, f"bench-{label}-{loop_name}", args.messages
                            )
                        )
        finally:
            control.run(broker.__aexit__(None, None, None))
    for loop_name in loops:
        compat = results[f"mqtt311_aiomqtt_{loop_name}"]["msgs_per_s"]
        default = results[f"mqtt5_client_{loop_name}"]["msgs_per_s"]
        results[f"mqtt5_over_mqtt311_{loop_name}"] = round(default / compat, 1)
    json.dump(results, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
