"""The gateway's Prometheus metrics, one registry per gateway so tests can run several at once.

The pipeline, not the sources and sinks, updates them, so every source and sink is measured the
same way, and counters move once per batch rather than once per message where they can.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
ROW_BUCKETS = (1, 10, 50, 100, 500, 1000, 2500, 5000, 10000, 20000, 50000)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.messages_received = Counter(
            "gateway_messages_received_total",
            "Messages taken from a source",
            ["source"],
            registry=r,
        )
        self.messages_rejected = Counter(
            "gateway_messages_rejected_total",
            "Messages that can never succeed, by reason",
            ["source", "reason"],
            registry=r,
        )
        self.rows_written = Counter(
            "gateway_rows_written_total", "Rows committed", ["role", "table"], registry=r
        )
        self.batch_rows = Histogram(
            "gateway_batch_rows", "Rows per committed batch", buckets=ROW_BUCKETS, registry=r
        )
        self.flush_duration = Histogram(
            "gateway_flush_duration_seconds",
            "Time to commit a batch, retries included",
            ["role", "table"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.flush_failures = Counter(
            "gateway_flush_failures_total",
            "Failed write attempts, by kind (temporary, data, held)",
            ["role", "table", "kind"],
            registry=r,
        )
        self.buffered_rows = Gauge(
            "gateway_buffered_rows",
            "Rows held in memory, not yet committed",
            ["role", "table"],
            registry=r,
        )
        self.pool_connections = Gauge(
            "gateway_pool_connections",
            "Connections of each role's pool, by state (idle, busy)",
            ["role", "state"],
            registry=r,
        )
        self.buffer_held_rows = Gauge(
            "gateway_buffer_held_rows",
            "Rows held in memory, in open batches and in writes not yet committed",
            registry=r,
        )
        self.buffer_limit_rows = Gauge(
            "gateway_buffer_limit_rows",
            "Configured bound on held rows (batching.max_buffered_rows); intake pauses there",
            registry=r,
        )
        self.buffer_held_bytes = Gauge(
            "gateway_buffer_held_bytes",
            "Payload and reject-record bytes held in memory until their batch commits",
            registry=r,
        )
        self.buffer_limit_bytes = Gauge(
            "gateway_buffer_limit_bytes",
            "Configured bound on held bytes (batching.max_buffered_bytes); intake pauses there",
            registry=r,
        )
        self.route_held = Gauge(
            "gateway_route_held",
            "1 while a table refuses every write (privilege revoked, table dropped): its "
            "messages are rejected as route_unavailable, with their whole payload",
            ["role", "table"],
            registry=r,
        )
        self.rejects_summarised = Counter(
            "gateway_rejects_summarised_total",
            "Rejects beyond limits.rejects_per_minute of one sender: counted in a summary row, "
            "not stored whole",
            ["source", "reason"],
            registry=r,
        )
        self.activity_dropped = Gauge(
            "gateway_activity_dropped",
            "Activity counts given up since start, by reason: name (not a registered name), "
            "database (refused by it), memory (beyond the in-memory bound)",
            ["reason"],
            registry=r,
        )
        self.mqtt_connections_lost = Counter(
            "gateway_mqtt_connections_lost_total",
            "MQTT connections that ended, by the broker's DISCONNECT reason (session_taken_over: "
            "another client connected with our client id) or `connection`; each is reconnected",
            ["source", "reason"],
            registry=r,
        )
        self.source_restarts = Counter(
            "gateway_source_restarts_total",
            "Times a source's intake failed unexpectedly and was restarted",
            ["source"],
            registry=r,
        )
        self.ready = Gauge("gateway_ready", "1 when /readyz would answer 200", registry=r)
        self.readiness_check = Gauge(
            "gateway_readiness_check",
            "Each readiness check: source:<name>, identity_cache, pools, not_draining",
            ["check"],
            registry=r,
        )
        self.identity_cache_entries = Gauge(
            "gateway_identity_cache_entries", "Identities in the in-process cache", registry=r
        )
        self.kafka_consumer_lag = Gauge(
            "gateway_kafka_consumer_lag",
            "Records between the committed offset and the high watermark",
            ["topic", "partition"],
            registry=r,
        )
        self.kafka_rebalances = Counter(
            "gateway_kafka_rebalances_total", "Partitions revoked from us", ["source"], registry=r
        )
        self.kafka_commit_failures = Counter(
            "gateway_kafka_commit_failures_total",
            "Offset commits refused (usually a rebalance; those records are read again)",
            ["source"],
            registry=r,
        )
        self.kafka_unbound_writers = Gauge(
            "gateway_kafka_unbound_writers",
            "ACL bindings found by the last check that let a principal write records claiming "
            "an identity it is not bound to; while above 0 the source takes nothing in",
            ["source"],
            registry=r,
        )
        self.kafka_acl_check_failures = Counter(
            "gateway_kafka_acl_check_failures_total",
            "Checks of the cluster's ACLs that could not be made (broker unreachable, Describe "
            "on the cluster refused); the last verdict stands for a few check intervals at most",
            ["source"],
            registry=r,
        )
        self.kafka_claims_unchecked = Gauge(
            "gateway_kafka_claims_unchecked",
            "1 while intake from the source is stopped because no check of the cluster's ACLs "
            "has succeeded for several check intervals; 0 once one does",
            ["source"],
            registry=r,
        )
        self.ack_latency = Histogram(
            "gateway_ack_latency_seconds",
            "From a message's arrival to its acknowledgement",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.http_connections_refused = Counter(
            "gateway_http_connections_refused_total",
            "Connections to /metrics, /healthz and /readyz closed at accept: "
            "http.max_connections were open",
            registry=r,
        )
        self.end_to_end_latency = Histogram(
            "gateway_end_to_end_latency_seconds",
            "From a reading's timestamp to its commit",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
