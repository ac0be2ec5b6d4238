"""Fleets of several device classes run side by side, as real deployments mix sensors with
devices of their own shape: started together, watched as one, each reporting on its own.

    fleets = Fleets({"sensors": Fleet(...), "environment": Fleet(...)})
    reports = await fleets.run()  # {"sensors": FleetReport, "environment": FleetReport}
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from gateway.fleet.common import Progress
from gateway.fleet.mqtt import Fleet
from gateway.fleet.report import FleetReport

__all__ = ["Fleets"]


class Fleets:
    """Named fleets run at once; the first to fail stops the others and its error is raised."""

    def __init__(self, fleets: Mapping[str, Fleet]) -> None:
        self.fleets = dict(fleets)

    def __getitem__(self, name: str) -> Fleet:
        return self.fleets[name]

    def progress(self) -> Progress:
        """The running totals of every fleet, summed."""
        totals = [fleet.progress() for fleet in self.fleets.values()]
        return Progress(*(sum(progress[k] for progress in totals) for k in range(3)))

    def stop(self) -> None:
        for fleet in self.fleets.values():
            fleet.stop()

    async def run(self) -> dict[str, FleetReport]:
        """Each fleet's report, once all have ended."""
        try:
            async with asyncio.TaskGroup() as group:
                tasks = {n: group.create_task(fleet.run()) for n, fleet in self.fleets.items()}
        except ExceptionGroup as failed:
            # The first failure is the story; the others were cancelled because of it.
            raise failed.exceptions[0] from None
        return {name: task.result() for name, task in tasks.items()}
