"""`gateway simulate`: a device fleet publishing telemetry to MQTT, for demos and benchmarks.

Exit status 0 when every message got the answer it should (QoS 1: accepted, and spoofs refused),
1 otherwise, with the reasons on stderr. Without --count or --duration it runs until Ctrl-C,
which stops sending; what is in flight is still awaited and reported.
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

import orjson

from gateway.simulate import Fleet, FleetError, FleetOptions, load_credentials

__all__ = ["options_from_args", "register", "run_simulate"]

PROGRESS_EVERY = 1.0  # seconds


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `simulate` to the `gateway` parser."""
    simulate = commands.add_parser(
        "simulate", help="a device fleet publishing telemetry to MQTT", description=__doc__
    )
    simulate.add_argument("--host", default="127.0.0.1", help="broker host (default 127.0.0.1)")
    simulate.add_argument("--port", type=int, default=1883, help="broker port (default 1883)")
    simulate.add_argument("--devices", type=int, default=10, help="fleet size (default 10)")
    simulate.add_argument(
        "--prefix", default="sensor-", help="device names are <prefix><index> (default sensor-)"
    )
    secret = simulate.add_mutually_exclusive_group(required=True)
    secret.add_argument("--password", help="one password shared by every device")
    secret.add_argument("--password-env", metavar="VAR", help="read the shared password from VAR")
    secret.add_argument(
        "--credentials", type=Path, metavar="FILE", help="a file of name:password lines"
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
    simulate.set_defaults(handler=run_simulate)


def options_from_args(args: argparse.Namespace) -> FleetOptions:
    """The fleet options the command line asks for; raises FleetError on a missing secret."""
    password: str | None = args.password
    if args.password_env is not None:
        password = os.environ.get(args.password_env)
        if password is None:
            raise FleetError(f"--password-env: ${args.password_env} is not set")
    return FleetOptions(
        host=args.host,
        port=args.port,
        devices=args.devices,
        prefix=args.prefix,
        password=password,
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
        processes=args.processes,
        window=args.window,
        drain_timeout=args.drain_timeout,
    )


async def run_simulate(args: argparse.Namespace) -> int:
    """Run the fleet, print its summary, and say on stderr what went wrong, if anything."""
    fleet = Fleet(options_from_args(args))
    with _stop_on_signals(fleet):
        async with _progress_line(fleet, enabled=not args.json and sys.stderr.isatty()):
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
def _stop_on_signals(fleet: Fleet) -> Iterator[None]:
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
async def _progress_line(fleet: Fleet, *, enabled: bool) -> AsyncIterator[None]:
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
                f"\rsent {now.sent}  acked {now.acked}  refused {now.refused}  "
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
