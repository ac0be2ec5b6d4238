"""The `gateway` command line: one subcommand per area, each registered by its own module."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from gateway.errors import GatewayError
from gateway.logs import setup_logging

__all__ = ["Handler", "main"]

Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


async def demo(args: argparse.Namespace) -> int:
    """Run the whole product on embedded services and report what happened."""
    from gateway.cli.demo import DemoOptions, run_demo

    return await run_demo(
        DemoOptions(
            devices=args.devices,
            rate=args.rate,
            duration=args.duration,
            readings=args.readings,
            hold=args.hold,
            broker=args.broker,
        )
    )


async def run(args: argparse.Namespace) -> int:
    """Run the gateway until SIGTERM or SIGINT, then drain and exit."""
    from gateway.app import Gateway
    from gateway.config import load_config

    await Gateway(load_config(args.config)).run()
    return 0


async def config_reference(args: argparse.Namespace) -> int:
    """Print the configuration reference generated from the configuration models."""
    from gateway.config_reference import reference

    sys.stdout.write(reference())
    return 0


def parser() -> argparse.ArgumentParser:
    from gateway.cli import brokers, identities, roles, simulate

    root = argparse.ArgumentParser(prog="gateway", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run_demo = commands.add_parser(
        "demo",
        help="run the gateway on embedded services",
        description=demo.__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    # DemoOptions' defaults (a unit test keeps them equal); importing the demo here would slow
    # down every command.
    run_demo.add_argument("--devices", type=int, default=50, help="simulated devices")
    run_demo.add_argument("--rate", type=float, default=2000, help="messages per second")
    run_demo.add_argument("--duration", type=float, default=10, help="seconds of traffic")
    run_demo.add_argument("--readings", type=int, default=1, help="readings per message")
    run_demo.add_argument(
        "--hold",
        action="store_true",
        help="keep the services up until Ctrl-C or SIGTERM, and print how to query them",
    )
    run_demo.add_argument(
        "--broker",
        choices=("auto", "mosquitto", "amqtt"),
        default="auto",
        help="MQTT broker: auto is Mosquitto when installed, else the pure-Python amqtt "
        "(MQTT 3.1.1, through the gateway's 3.1.1 transport)",
    )
    run_demo.set_defaults(handler=demo)
    run_gateway = commands.add_parser("run", help="run the gateway until SIGTERM")
    run_gateway.add_argument("--config", type=Path, help="TOML configuration file")
    run_gateway.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    run_gateway.set_defaults(handler=run)
    reference = commands.add_parser(
        "config-reference", help="print every setting with its default and meaning (Markdown)"
    )
    reference.set_defaults(handler=config_reference)
    roles.register(commands)
    identities.register(commands)
    brokers.register(commands)
    simulate.register(commands)
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
