"""`gateway simulate`: a device fleet publishing telemetry to MQTT, or with --kafka producing it
to a Kafka topic, for demos and benchmarks.

Exit status 0 when every message got the answer it should (MQTT QoS 1: accepted, and spoofs
refused; Kafka: acknowledged), 1 otherwise, with the reasons on stderr. Without --count or
--duration it runs until Ctrl-C, which stops sending; what is in flight is still awaited and
reported.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Protocol

import orjson

from gateway.fleet.common import FleetError, Progress, load_credentials
from gateway.fleet.kafka import KafkaFleet
from gateway.fleet.mqtt import Fleet
from gateway.fleet.options import MAX_BATCH_BYTES, Acks, FleetOptions, KafkaFleetOptions

__all__ = ["kafka_options_from_args", "options_from_args", "register", "run_simulate"]

PROGRESS_EVERY = 1.0  # seconds

# Options of one transport with their defaults: given with the other transport, they are an error
# rather than silently ignored.
MQTT_ONLY = {
    "host": "127.0.0.1",
    "port": 1883,
    "topic_template": "devices/{identity}/{stream}",
    "stream": "telemetry",
    "spoofed": 0.0,
    "qos": 1,
    "protocol": "5",
    "processes": 1,
    "window": 1000,
}
KAFKA_ONLY: dict[str, Any] = {
    "bootstrap_servers": "127.0.0.1:9092",
    "topic": "telemetry",
    "identity_header": None,
    "acks": "all",
    "batch_bytes": MAX_BATCH_BYTES,
    "security_protocol": "PLAINTEXT",
    "sasl_mechanism": "SCRAM-SHA-256",
    "username": None,
    "sasl_password": None,
    "sasl_password_env": None,
    "ca_file": None,
}
ACKS: dict[str, Acks] = {"all": "all", "1": 1, "0": 0}


class _Run(Protocol):
    def stop(self) -> None: ...

    def progress(self) -> Progress: ...


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `simulate` to the `gateway` parser."""
    simulate = commands.add_parser(
        "simulate",
        help="a device fleet publishing telemetry to MQTT (or Kafka)",
        description=__doc__,
    )
    simulate.add_argument("--host", default="127.0.0.1", help="broker host (default 127.0.0.1)")
    simulate.add_argument("--port", type=int, default=1883, help="broker port (default 1883)")
    simulate.add_argument("--devices", type=int, default=10, help="fleet size (default 10)")
    simulate.add_argument(
        "--prefix", default="sensor-", help="device names are <prefix><index> (default sensor-)"
    )
    # Kafka devices have no passwords: the producer logs in (--username, --sasl-password...).
    secret = simulate.add_mutually_exclusive_group(required=True)
    secret.add_argument("--password", help="one password shared by every device")
    secret.add_argument("--password-env", metavar="VAR", help="read the shared password from VAR")
    secret.add_argument(
        "--credentials", type=Path, metavar="FILE", help="a file of name:password lines"
    )
    secret.add_argument(
        "--kafka",
        action="store_true",
        help="produce records to a Kafka topic instead (see the Kafka options below)",
    )
    simulate.add_argument(
        "--rate", type=float, default=0.0, help="messages/s for the whole fleet (0: max)"
    )
    end = simulate.add_mutually_exclusive_group()
    end.add_argument("--count", type=int, help="total messages to send")
    end.add_argument("--duration", type=float, metavar="SECONDS", help="send for this long")
    simulate.add_argument(
        "--readings", type=int, default=1, help="readings per message; >1 sends batches"
    )
    simulate.add_argument(
        "--topic-template",
        default="devices/{identity}/{stream}",
        help="topic of each device (default devices/{identity}/{stream})",
    )
    simulate.add_argument("--stream", default="telemetry", help="the {stream} level")
    simulate.add_argument(
        "--malformed", type=float, default=0.0, help="share of malformed JSON payloads"
    )
    simulate.add_argument(
        "--spoofed",
        type=float,
        default=0.0,
        help="share published under another device's topic (the broker must refuse them)",
    )
    simulate.add_argument("--qos", type=int, choices=(0, 1), default=1)
    simulate.add_argument(
        "--protocol",
        choices=("5", "3.1.1"),
        default="5",
        help="MQTT version (default 5; 3.1.1 for brokers without v5, which cannot refuse spoofs)",
    )
    simulate.add_argument(
        "--processes", type=int, default=1, help="spread the fleet over this many processes"
    )
    simulate.add_argument(
        "--window", type=int, default=1000, help="unacked QoS 1 messages per device"
    )
    simulate.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for the last PUBACKs once sending stops (default 30)",
    )
    simulate.add_argument("--json", action="store_true", help="print the summary as JSON")
    _register_kafka(simulate)
    simulate.set_defaults(handler=run_simulate)


def _register_kafka(simulate: argparse.ArgumentParser) -> None:
    kafka = simulate.add_argument_group("Kafka options (with --kafka)")
    kafka.add_argument(
        "--bootstrap-servers",
        default=KAFKA_ONLY["bootstrap_servers"],
        metavar="HOST:PORT[,...]",
        help="the brokers (default 127.0.0.1:9092)",
    )
    kafka.add_argument("--topic", default=KAFKA_ONLY["topic"], help="(default telemetry)")
    kafka.add_argument(
        "--identity-header",
        metavar="NAME",
        help="put each device's name in this header (the gateway's identity_from = "
        "header:NAME) instead of the record key",
    )
    kafka.add_argument("--acks", choices=tuple(ACKS), default="all", help="(default all)")
    kafka.add_argument(
        "--batch-bytes",
        type=int,
        default=MAX_BATCH_BYTES,
        help=f"bytes of records per partition batch (default {MAX_BATCH_BYTES})",
    )
    kafka.add_argument(
        "--security-protocol",
        choices=("PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL"),
        default="PLAINTEXT",
    )
    kafka.add_argument(
        "--sasl-mechanism",
        choices=("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"),
        default="SCRAM-SHA-256",
    )
    kafka.add_argument("--username", help="the producer's SASL user")
    sasl_secret = kafka.add_mutually_exclusive_group()
    sasl_secret.add_argument("--sasl-password", help="the producer's SASL password")
    sasl_secret.add_argument(
        "--sasl-password-env", metavar="VAR", help="read the SASL password from VAR"
    )
    kafka.add_argument("--ca-file", type=Path, help="CA bundle for SSL and SASL_SSL")


def options_from_args(args: argparse.Namespace) -> FleetOptions:
    """The fleet options the command line asks for; raises FleetError on a missing secret."""
    _only_defaults(args, KAFKA_ONLY, "a Kafka option: add --kafka")
    return FleetOptions(
        host=args.host,
        port=args.port,
        devices=args.devices,
        prefix=args.prefix,
        password=_secret(args, "password"),
        credentials=load_credentials(args.credentials) if args.credentials else None,
        rate=args.rate,
        count=args.count,
        duration=args.duration,
        readings=args.readings,
        topic_template=args.topic_template,
        stream=args.stream,
        malformed=args.malformed,
        spoofed=args.spoofed,
        qos=args.qos,
        protocol=args.protocol,
        processes=args.processes,
        window=args.window,
        drain_timeout=args.drain_timeout,
    )


def kafka_options_from_args(args: argparse.Namespace) -> KafkaFleetOptions:
    """The Kafka fleet options the command line asks for; raises FleetError on a bad mix."""
    _only_defaults(args, MQTT_ONLY, "an MQTT option, not for --kafka")
    return KafkaFleetOptions(
        bootstrap_servers=args.bootstrap_servers,
        topic=args.topic,
        devices=args.devices,
        prefix=args.prefix,
        identity_header=args.identity_header,
        rate=args.rate,
        count=args.count,
        duration=args.duration,
        readings=args.readings,
        malformed=args.malformed,
        acks=ACKS[args.acks],
        security_protocol=args.security_protocol,
        sasl_mechanism=args.sasl_mechanism,
        username=args.username,
        password=_secret(args, "sasl_password"),
        ca_file=args.ca_file,
        batch_bytes=args.batch_bytes,
        drain_timeout=args.drain_timeout,
    )


def _secret(args: argparse.Namespace, dest: str) -> str | None:
    """The secret given as `--<dest>`, or read from the variable that `--<dest>-env` names."""
    secret: str | None = getattr(args, dest)
    variable: str | None = getattr(args, f"{dest}_env")
    if variable is not None:
        secret = os.environ.get(variable)
        if secret is None:
            flag = "--" + dest.replace("_", "-") + "-env"
            raise FleetError(f"{flag}: ${variable} is not set")
    return secret


def _only_defaults(args: argparse.Namespace, defaults: dict[str, Any], what: str) -> None:
    for dest, default in defaults.items():
        if getattr(args, dest) != default:
            raise FleetError(f"--{dest.replace('_', '-')} is {what}")


async def run_simulate(args: argparse.Namespace) -> int:
    """Run the fleet, print its summary, and say on stderr what went wrong, if anything."""
    fleet: Fleet | KafkaFleet
    if args.kafka:
        fleet = KafkaFleet(kafka_options_from_args(args))
    else:
        fleet = Fleet(options_from_args(args))
    with _stop_on_signals(fleet):
        progress = not args.json and sys.stderr.isatty()
        failed = "failed" if args.kafka else "refused"
        async with _progress_line(fleet, enabled=progress, failed=failed):
            report = await fleet.run()
    if args.json:
        sys.stdout.write(orjson.dumps(report.as_json(), option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
    else:
        print(report.render())
    problems = report.problems()
    for problem in problems:
        print(f"gateway simulate: {problem}", file=sys.stderr)
    return 1 if problems else 0


@contextlib.contextmanager
def _stop_on_signals(fleet: _Run) -> Iterator[None]:
    """SIGINT/SIGTERM stop sending gracefully, so the summary still counts every answer."""
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, fleet.stop)
    try:
        yield
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


@contextlib.asynccontextmanager
async def _progress_line(fleet: _Run, *, enabled: bool, failed: str) -> AsyncIterator[None]:
    """A redrawn line of running totals on a terminal, so a long run shows that it moves."""
    if not enabled:
        yield
        return

    drawn = asyncio.Event()

    async def draw() -> None:
        last = 0
        while True:
            await asyncio.sleep(PROGRESS_EVERY)
            now = fleet.progress()
            rate = (now.sent - last) / PROGRESS_EVERY
            last = now.sent
            sys.stderr.write(
                f"\rsent {now.sent}  acked {now.acked}  {failed} {now.refused}  "
                f"({rate:,.0f} msg/s)   "
            )
            sys.stderr.flush()
            drawn.set()

    task = asyncio.create_task(draw())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if drawn.is_set():
            sys.stderr.write("\n")
