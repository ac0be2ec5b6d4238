"""A source in a process of its own, for the contract suite's crash case.

`python -m tests.integration.source_child {mqtt|kafka} <config JSON> <count>` starts the source,
receives `count` messages without acknowledging any, prints their numbers as one JSON line, and
waits to be killed: what a broker sees when a gateway dies mid-batch.
"""

from __future__ import annotations

import asyncio
import sys

import orjson

from gateway.config import KafkaSourceConfig, MqttSourceConfig
from gateway.metrics import Metrics
from gateway.sources.kafka import KafkaSource
from gateway.sources.mqtt import mqtt_source


async def nothing() -> None:
    pass


async def main(kind: str, config_json: str, count: int) -> None:
    if kind == "mqtt":
        source = mqtt_source(MqttSourceConfig.model_validate_json(config_json))
    else:
        config = KafkaSourceConfig.model_validate_json(config_json)
        source = KafkaSource(config, metrics=Metrics(), flush=nothing)
    await source.start()
    received: list[int] = []
    while len(received) < count:
        received += [orjson.loads(m.payload)["n"] for m in await source.receive()]
    sys.stdout.buffer.write(orjson.dumps(received) + b"\n")
    sys.stdout.flush()
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
