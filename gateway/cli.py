"""The `gateway` command line: one subcommand per area, each registered by its own module."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from gateway.errors import GatewayError
from gateway.logs import setup_logging
from gateway.services.mosquitto import Mosquitto
from gateway.services.postgres import Postgres

__all__ = ["Handler", "main"]

Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


async def demo(args: argparse.Namespace) -> int:
    """Start the embedded services and show where they listen."""
    async with Postgres() as postgres, Mosquitto() as broker:
        address = postgres.address
        print("Embedded services are up:")
        print(f"  PostgreSQL {address.host}:{address.port}  (superuser DSN: {postgres.dsn})")
        print(
            f"  Mosquitto  {broker.host}:{broker.port}  (gateway user: {broker.gateway.username})"
        )
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


async def run(args: argparse.Namespace) -> int:
    """Run the gateway until SIGTERM or SIGINT, then drain and exit."""
    from gateway.app import Gateway
    from gateway.config import load_config

    await Gateway(load_config(args.config)).run()
    return 0


def parser() -> argparse.ArgumentParser:
    from gateway import cli_identities, cli_roles

    root = argparse.ArgumentParser(prog="gateway", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run_demo = commands.add_parser("demo", help="run the gateway on embedded services")
    run_demo.add_argument(
        "--for", dest="duration", type=float, default=None, help="stop after SECONDS"
    )
    run_demo.set_defaults(handler=demo)
    run_gateway = commands.add_parser("run", help="run the gateway until SIGTERM")
    run_gateway.add_argument("--config", type=Path, help="TOML configuration file")
    run_gateway.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    run_gateway.set_defaults(handler=run)
    cli_roles.register(commands)
    cli_identities.register(commands)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        if handler is run:
            import uvloop

            setup_logging(args.verbose)
            return uvloop.run(handler(args))
        return asyncio.run(handler(args))
    except GatewayError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
