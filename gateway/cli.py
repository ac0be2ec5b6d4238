"""The `gateway` command line: one subcommand per area, each registered by its own module."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence

from gateway.errors import GatewayError
from gateway.services.mosquitto import Mosquitto
from gateway.services.postgres import Postgres

__all__ = ["Handler", "main"]

Handler = Callable[[argparse.Namespace], Awaitable[int]]


async def demo(args: argparse.Namespace) -> int:
    """Start the embedded services and show where they listen."""
    async with Postgres() as postgres, Mosquitto() as broker:
        address = postgres.address
        print("Embedded services are up:")
        print(f"  PostgreSQL {address.host}:{address.port}  (superuser DSN: {postgres.dsn})")
        print(f"  Mosquitto  {broker.host}:{broker.port}  (gateway user: {broker.gateway.username})")
        if args.duration is None:
            print("Press Ctrl-C to stop them.")
        await wait_for_stop(args.duration)
    print("Stopped and cleaned up.")
    return 0


async def wait_for_stop(duration: float | None) -> None:
    """Wait for SIGINT/SIGTERM, or for `duration` seconds when given."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), duration)


def parser() -> argparse.ArgumentParser:
    from gateway import cli_identities, cli_roles

    root = argparse.ArgumentParser(prog="gateway", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run_demo = commands.add_parser("demo", help="run the gateway on embedded services")
    run_demo.add_argument(
        "--for", dest="duration", type=float, default=None, help="stop after SECONDS"
    )
    run_demo.set_defaults(handler=demo)
    cli_roles.register(commands)
    cli_identities.register(commands)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return asyncio.run(handler(args))
    except GatewayError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
