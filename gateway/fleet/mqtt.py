"""A simulated device fleet publishing telemetry over MQTT v5, or 3.1.1 for brokers without v5,
for demos, tests and benchmarks.

One process may not be enough to load the gateway: the fleet can be spread over processes, each
running its share of the devices (`gateway.fleet.devices`) and reporting back.

    report = await run_fleet(FleetOptions(port=1883, devices=100, password="...", count=10_000))
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import multiprocessing.connection
import multiprocessing.synchronize
import secrets
import signal
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, cast

import uvloop

from gateway.errors import GatewayError
from gateway.fleet.common import FleetError, Progress
from gateway.fleet.devices import Part
from gateway.fleet.options import FleetOptions
from gateway.fleet.report import FleetReport

__all__ = ["Fleet", "run_fleet"]


def _slices(devices: int, processes: int) -> list[tuple[int, int]]:
    """Contiguous device ranges, as equal as can be."""
    bounds = [devices * n // processes for n in range(processes + 1)]
    return list(itertools.pairwise(bounds))


class Fleet:
    """One run of the fleet, which another task may stop early or watch while it runs.

    With `processes` > 1 the devices are split over child processes started with `spawn`
    (forking a running event loop is unsafe), which import the caller's main module again: a
    script must keep its entry point under `if __name__ == "__main__":`.
    """

    def __init__(self, options: FleetOptions) -> None:
        self.options = options
        self.run_id = secrets.token_hex(4)
        """Part of every message id, so runs never repeat one another's ids."""
        self._stopped = False
        self._part: Part | None = None
        self._shared: _Shared | None = None

    def stop(self) -> None:
        """Stop sending; messages in flight still get their answers, then `run` returns."""
        self._stopped = True
        if self._shared is not None:
            self._shared.stop.set()

    def progress(self) -> Progress:
        if self._part is not None:
            return self._part.progress()
        if self._shared is not None:
            totals = self._shared.counters
            return Progress(*(sum(totals[k::3]) for k in range(3)))
        return Progress(0, 0, 0)

    async def run(self) -> FleetReport:
        """Connect every device, publish, collect the answers; raises FleetError on a refusal."""
        if self.options.processes == 1:
            return await self._run_here()
        return await self._run_processes()

    async def _run_here(self) -> FleetReport:
        part = self._part = Part(self.options, 0, self.options.devices, self.run_id)
        await part.connect()
        try:
            duration = await part.publish(lambda: self._stopped, lambda: None)
        finally:
            await part.close()
        return part.report(duration)

    async def _run_processes(self) -> FleetReport:
        processes = self.options.processes
        context = multiprocessing.get_context("spawn")
        shared = self._shared = _Shared(
            barrier=context.Barrier(processes),
            stop=context.Event(),
            counters=cast(Any, context.Array("q", 3 * processes, lock=False)),
        )
        if self._stopped:
            shared.stop.set()
        children: list[tuple[multiprocessing.process.BaseProcess, Connection[Any, Any]]] = []
        try:
            for slot, (first, stop) in enumerate(_slices(self.options.devices, processes)):
                receiver, sender = context.Pipe(duplex=False)
                child = context.Process(
                    target=_child_main,
                    args=(self.options, first, stop, self.run_id, slot, shared, sender),
                    name=f"gateway-simulate-{slot}",
                    daemon=True,
                )
                child.start()
                sender.close()  # so that a child that dies shows as EOF on our end
                children.append((child, receiver))
            outcomes = await asyncio.to_thread(_collect, [r for _, r in children], shared)
        finally:
            shared.stop.set()
            shared.barrier.abort()
            for process, receiver in children:
                await asyncio.to_thread(process.join, 10)
                if process.is_alive():
                    process.kill()
                receiver.close()
        # A child's own error says more than the "aborted" of the others it stopped.
        failures = [v for s, v in outcomes if s == "error"] or [v for s, v in outcomes if s != "ok"]
        if failures:
            more = f" (and {len(failures) - 1} more processes)" if len(failures) > 1 else ""
            raise FleetError(f"{failures[0]}{more}")
        return FleetReport.merge(
            [cast(FleetReport, value) for _, value in outcomes], processes=processes
        )


async def run_fleet(options: FleetOptions) -> FleetReport:
    """Run a fleet to the end of its count or duration and report what happened."""
    return await Fleet(options).run()


@dataclass(frozen=True, slots=True)
class _Shared:
    """What the fleet's processes share: a start line, a stop flag and progress counters."""

    barrier: multiprocessing.synchronize.Barrier
    stop: multiprocessing.synchronize.Event
    counters: Any  # a shared array of (sent, acked, refused) per process


def _collect(receivers: list[Connection[Any, Any]], shared: _Shared) -> list[tuple[str, object]]:
    """Each child's outcome, in order; the first failure stops the others at once."""
    outcomes: list[tuple[str, object] | None] = [None] * len(receivers)
    pending = dict(enumerate(receivers))
    while pending:
        ready = multiprocessing.connection.wait(list(pending.values()))
        for slot in [s for s, r in pending.items() if r in ready]:
            receiver = pending.pop(slot)
            try:
                outcome = cast(tuple[str, object], receiver.recv())
            except EOFError:
                outcome = (
                    "error",
                    f"simulator process {slot} ended without a report (see its stderr)",
                )
            outcomes[slot] = outcome
            if outcome[0] != "ok":
                shared.barrier.abort()
                shared.stop.set()
    return [o for o in outcomes if o is not None]


def _child_main(
    options: FleetOptions,
    first: int,
    stop: int,
    run_id: str,
    slot: int,
    shared: _Shared,
    sender: Connection[Any, Any],
) -> None:
    """A child process: runs its slice of the fleet and sends back its report or its error."""
    # Ctrl-C reaches the whole process group; the parent decides, through `shared.stop`.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    outcome: tuple[str, object]
    try:
        outcome = ("ok", uvloop.run(_child_run(options, first, stop, run_id, slot, shared)))
    except threading.BrokenBarrierError:
        outcome = ("aborted", "another process of the fleet failed")
    except Exception as exc:
        outcome = ("error", str(exc) if isinstance(exc, GatewayError) else repr(exc))
    with contextlib.suppress(OSError):
        sender.send(outcome)
    sender.close()


async def _child_run(
    options: FleetOptions, first: int, stop: int, run_id: str, slot: int, shared: _Shared
) -> FleetReport:
    part = Part(options, first, stop, run_id)
    try:
        await part.connect()
    except BaseException:
        shared.barrier.abort()
        raise
    counters = shared.counters

    def publish_progress() -> None:
        counters[3 * slot : 3 * slot + 3] = part.progress()

    try:
        # Every process connects first, then all start publishing together.
        await asyncio.to_thread(shared.barrier.wait, 60 + options.connect_timeout)
        duration = await part.publish(shared.stop.is_set, publish_progress)
    finally:
        await part.close()
    return part.report(duration)
