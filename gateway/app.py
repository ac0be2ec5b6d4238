"""A running gateway: start everything in order, serve, and on SIGTERM drain and stop.

Start: pools (one per role), identity cache, pipeline, HTTP, then sources last, so nothing is
taken in before it can be written. Stop: readiness goes false, intake stops, open batches are
flushed and committed, their messages acknowledged, sources disconnect (their sessions keep
whatever was not acknowledged), pools close, all within the shutdown timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from functools import partial
from typing import Any, cast

import asyncpg

from gateway.activity import Activity
from gateway.batching import BatchPolicy
from gateway.config import GatewayConfig
from gateway.contracts import Sink, Source, Table
from gateway.decoder import DecodeLimits
from gateway.errors import GatewayError, MqttError
from gateway.http import HttpServer
from gateway.identities.cache import IdentityCache
from gateway.identities.provisioning import ProvisionRule
from gateway.identities.registry import Registry
from gateway.logs import RateLimitedLog
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.pools import RolePools
from gateway.roles.declaration import load_declaration
from gateway.route_checks import check_routes
from gateway.routes import build_routes, writer_roles
from gateway.sinks.postgres import PostgresSink
from gateway.sources.kafka import KafkaSource
from gateway.sources.mqtt import disconnect_reason, mqtt_source
from gateway.validation import ConfigError

__all__ = ["Gateway"]

log = logging.getLogger(__name__)


class Gateway:
    def __init__(self, config: GatewayConfig, *, actor: str = "gateway") -> None:
        self.config = config
        self.actor = actor
        self.metrics = Metrics()
        self.activity = Activity()
        self.sources: list[Source[Any]] = []
        self.pipeline: Pipeline | None = None
        self.http: HttpServer | None = None
        self._pools: RolePools | None = None
        self._cache: IdentityCache | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._activity_flush: asyncio.Future[None] | None = None
        self._pumps: list[asyncio.Task[None]] = []
        self._draining = False
        self.failure: BaseException | None = None
        self._stopped = asyncio.Event()
        self._restart_log = RateLimitedLog(log)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start everything, or, when any part fails, stop what started and raise why."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        config = self.config
        doc = load_declaration(config.database.roles_file)
        writers = writer_roles(doc, config)
        control, rejects = config.database.control_role, config.database.rejects_role
        if control in writers or control == rejects:
            raise ConfigError(
                "gateway configuration",
                [("database.control_role", "must be a role of its own, not one that writes rows")],
            )
        self._pools = pools = RolePools(
            config.database, doc, [control], row_writers=[*writers, rejects]
        )
        await pools.open()
        if any(route.kind != "telemetry" for route in config.routes):
            # Shapes are checked against the live tables before any message is taken.
            async with pools[control].acquire() as conn:
                problems = await check_routes(conn, config, doc)
            if problems:
                raise ConfigError("gateway configuration", problems)

        self._cache = IdentityCache(
            lambda: pools.connect(control), on_entries=self.metrics.identity_cache_entries.set
        )
        await self._cache.start()
        self.pipeline = Pipeline(
            lookup=self._cache.get,
            routes=build_routes(config, doc, self._open_sink),
            metrics=self.metrics,
            activity=self.activity,
            policy=BatchPolicy.from_config(config.batching),
            limits=DecodeLimits.from_config(config.limits),
            max_buffered_rows=config.batching.max_buffered_rows,
            max_buffered_bytes=config.batching.max_buffered_bytes,
            rejects_per_minute=config.limits.rejects_per_minute,
            max_topic_length=config.limits.max_topic_length,
            unknown=config.identities.unknown,
            provision_rules=config.identities.provision,
            provision=self._provision,
        )

        self.http = HttpServer(
            config.http.host,
            config.http.port,
            registry=self.metrics.registry,
            readiness=self.readiness,
            before_scrape=self._before_scrape,
            max_connections=config.http.max_connections,
            on_refused=self.metrics.http_connections_refused.inc,
        )
        await self.http.start()
        self._tasks.append(asyncio.create_task(self._record_activity(), name="activity"))
        pipeline = self.pipeline
        payload_limit = config.limits.max_payload_bytes
        sources: list[Source[Any]] = [
            mqtt_source(
                c, max_payload_bytes=payload_limit, on_lost=partial(self._mqtt_lost, c.name)
            )
            for c in config.sources.mqtt
        ]
        sources += [
            KafkaSource(
                c,
                metrics=self.metrics,
                flush=pipeline.flush,
                max_payload_bytes=payload_limit,
                batch_bytes=config.batching.max_bytes,
            )
            for c in config.sources.kafka
        ]
        for source in sources:
            await source.start()
            self.sources.append(source)
            pump = asyncio.create_task(self._pump(source), name=f"pump-{source.name}")
            pump.add_done_callback(self._pump_ended)
            self._pumps.append(pump)
        log.info(
            "gateway started on %s: %d source(s), roles %s, http port %d",
            type(asyncio.get_running_loop()).__module__.partition(".")[0],  # uvloop, or asyncio
            len(self.sources),
            ", ".join(sorted(writers)),
            self.http.port,
        )

    def _open_sink(self, role: str, table: Table) -> Sink:
        """PostgreSQL over the role's own pool; its failures counted per role and table."""
        assert self._pools is not None
        counter, name = self.metrics.flush_failures, table.qualified
        return PostgresSink(
            role,
            table,
            self._pools[role],
            on_failure=lambda kind: counter.labels(role, name, kind.value).inc(),
        )

    def _mqtt_lost(self, source: str, error: MqttError) -> None:
        """Count why an MQTT connection ended; a session taken over is said loudly, since only
        a client with our client id can do that (it is reconnected, taking the session back)."""
        code = getattr(error, "reason_code", None)
        reason = "connection" if code is None else disconnect_reason(code)
        self.metrics.mqtt_connections_lost.labels(source, reason).inc()
        if reason == "session_taken_over":
            log.error(
                "MQTT session of %s taken over by another client with its client id; "
                "reconnecting to take it back",
                source,
                extra={"source": source},
            )

    async def _provision(self, name: str, rule: ProvisionRule) -> None:
        assert self._pools is not None and self._cache is not None
        async with self._pools[self.config.database.control_role].acquire() as conn:
            await Registry(cast(asyncpg.Connection, conn), self.actor).provision(name, rule)
        # The cache learns of it from the change feed; wait for that, briefly.
        for _ in range(200):
            if self._cache.get(name) is not None:
                return
            await asyncio.sleep(0.01)

    async def _record_activity(self) -> None:
        assert self._pools is not None
        pool = self._pools[self.config.database.control_role]
        while True:
            await asyncio.sleep(self.config.activity_interval)
            # Shielded: cancelled while its COMMIT is on the wire, a flush could not tell
            # whether the counts landed, and putting them back would count them twice. `stop`
            # waits for it instead.
            self._activity_flush = asyncio.ensure_future(self._flush_activity(pool))
            await asyncio.shield(self._activity_flush)

    async def _flush_activity(self, pool: asyncpg.Pool) -> None:
        try:
            async with pool.acquire() as conn:
                await self.activity.flush(conn)
        except Exception as exc:
            # Data failures never get here (the refused entries are dropped inside); whatever
            # does, asyncpg's client-state errors included, must not end the recording loop.
            log.warning("activity not recorded yet (kept for the next round): %s", exc)

    async def _pump(self, source: Source[Any]) -> None:
        """Feed the pipeline from `source`; an error nobody foresaw restarts it, with backoff.

        The gateway's own errors (a broker refusing our credentials or subscription, a bad
        configuration) are final and end the process; anything else is a fault of ours that
        must not stop intake for every device, so it is logged, counted and survived."""
        assert self.pipeline is not None
        failures = 0
        while True:
            started = time.monotonic()
            try:
                await self.pipeline.pump(source)
            except GatewayError:
                raise
            except Exception:
                if time.monotonic() - started > 60:
                    failures = 0  # it ran well for a while: start the backoff over
                failures += 1
                delay = min(30.0, 0.1 * 2 ** min(failures, 10))
                self.metrics.source_restarts.labels(source.name).inc()
                self._restart_log.log(
                    logging.ERROR,
                    "intake from %s failed unexpectedly; restarting it in %.1fs",
                    source.name,
                    delay,
                    exc_info=True,
                    extra={"source": source.name},
                )
                await asyncio.sleep(delay)

    def _pump_ended(self, pump: asyncio.Task[None]) -> None:
        """A source failed for good (its credentials were refused): stop, loudly."""
        if pump.cancelled() or self._draining:
            return
        error = pump.exception()
        log.error("%s stopped: %s; shutting down", pump.get_name(), error, exc_info=error)
        self.failure = error
        self._stopped.set()

    def readiness(self) -> dict[str, bool]:
        checks = {f"source:{s.name}": s.connected for s in self.sources}
        checks["identity_cache"] = self._cache is not None and self._cache.connected
        checks["pools"] = self._pools is not None and bool(self._pools.roles)
        checks["not_draining"] = not self._draining
        return checks

    def _before_scrape(self) -> None:
        checks = self.readiness()
        for check, ok in checks.items():
            self.metrics.readiness_check.labels(check).set(ok)
        self.metrics.ready.set(all(checks.values()))
        if self.pipeline is not None:
            self.pipeline.report_buffers()
            self.metrics.buffer_held_rows.set(self.pipeline.buffered_rows)
            self.metrics.buffer_limit_rows.set(self.config.batching.max_buffered_rows)
            self.metrics.buffer_held_bytes.set(self.pipeline.buffered_bytes)
            self.metrics.buffer_limit_bytes.set(self.config.batching.max_buffered_bytes)
        for reason, count in self.activity.dropped.items():
            self.metrics.activity_dropped.labels(reason).set(count)
        if self._pools is not None:
            for role, (busy, idle) in self._pools.usage().items():
                self.metrics.pool_connections.labels(role, "busy").set(busy)
                self.metrics.pool_connections.labels(role, "idle").set(idle)

    async def run(self) -> None:
        """Start, serve until SIGTERM or SIGINT, then stop gracefully."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopped.set)
        await self.start()
        # Everything made at start-up lives as long as the process: keep it out of every
        # collection, and collect the young generation less often, since buffered rows are
        # short-lived tuples by the hundred thousand (measured: about 20% less CPU per message).
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
        try:
            await self._stopped.wait()
        finally:
            await self.stop()
        if self.failure is not None:
            raise self.failure

    def request_stop(self) -> None:
        self._stopped.set()

    async def stop(self) -> None:
        """Drain: stop intake, commit and acknowledge what is buffered, then close everything."""
        self._draining = True
        for pump in self._pumps:
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        if self.pipeline is not None:
            try:
                await asyncio.wait_for(self.pipeline.flush(), self.config.shutdown_timeout)
            except TimeoutError:
                log.error(
                    "shutdown timeout: %d rows not committed; their messages will be redelivered",
                    self.pipeline.buffered_rows,
                )
                await self.pipeline.abandon()
            await self.pipeline.close()
        for source in self.sources:
            await source.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._activity_flush is not None:
            await self._activity_flush  # never raises: failures are kept for the next round
        if self._pools is not None:
            with contextlib.suppress(KeyError):
                await self._flush_activity(self._pools[self.config.database.control_role])
        if self.http is not None:
            await self.http.close()
        if self._cache is not None:
            await self._cache.close()
        if self._pools is not None:
            await self._pools.close()
        log.info("gateway stopped")
