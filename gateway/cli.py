"""The `gateway` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence

from gateway.errors import GatewayError
from gateway.services.mosquitto import Mosquitto
from gateway.services.postgres import Postgres

__all__ = ["main"]


async def demo(duration: float | None) -> None:
    """Start the embedded services and show where they listen."""
    async with Postgres() as postgres, Mosquitto() as broker:
        print("Embedded services are up:")
        address = postgres.address
        print(f"  PostgreSQL {address.host}:{address.port}  (superuser DSN: {postgres.dsn})")
        print(
            f"  Mosquitto  {broker.host}:{broker.port}  (gateway user: {broker.gateway.username})"
        )
        if duration is None:
            print("Press Ctrl-C to stop them.")
        await wait_for_stop(duration)
    print("Stopped and cleaned up.")


async def wait_for_stop(duration: float | None) -> None:
    """Wait for SIGINT/SIGTERM, or for `duration` seconds when given."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), duration)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="gateway", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    run_demo = commands.add_parser("demo", help="run the gateway on embedded services")
    run_demo.add_argument(
        "--for", dest="duration", type=float, default=None, help="stop after SECONDS"
    )
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "demo":
            asyncio.run(demo(args.duration))
    except GatewayError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
