"""Prometheus metrics of one collector app (an app-owned registry: no process globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST

BATCH_RESULTS = (
    "stored",
    "redelivery",
    "conflict",
    "invalid",
    "unauthorized",
    "too_large",
    "unavailable",
    "client_gone",
)

LIVE_RESULTS = ("applied", "stale", "invalid", "unauthorized", "too_large", "unavailable")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.cdrs = Counter(
            "cdrstats_ingest_cdrs",
            "CDRs in stored batches, by result (accepted: new rows, duplicate: already stored)",
            ["result"],
            registry=self.registry,
        )
        self.batches = Counter(
            "cdrstats_ingest_batches",
            "Ingest requests by result",
            ["result"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "cdrstats_ingest_batch_seconds",
            "Time to answer an ingest request (read, verify, store, commit)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )
        self.last_seen = Gauge(
            "cdrstats_agent_last_seen_timestamp_seconds",
            "Unix time of the agent's last stored batch",
            ["agent"],
            registry=self.registry,
        )
        self.lag = Gauge(
            "cdrstats_agent_lag_seconds",
            "Seconds between the newest call start in the agent's last batch and its arrival",
            ["agent"],
            registry=self.registry,
        )
        self.live_messages = Counter(
            "cdrstats_live_messages",
            "Live-call messages (POST /api/v1/live) by result",
            ["result"],
            registry=self.registry,
        )
        self.live_events = Counter(
            "cdrstats_live_events",
            "Live-call events in applied messages (a snapshot counts as one)",
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "cdrstats_auth_failures",
            "Failed SIP registrations reported by switches (live messages), by result",
            ["result"],
            registry=self.registry,
        )
        for result in ("stored", "rejected"):
            self.auth_failures.labels(result)
        for result in LIVE_RESULTS:
            self.live_messages.labels(result)
        for result in BATCH_RESULTS:
            self.batches.labels(result)
        for result in ("accepted", "duplicate"):
            self.cdrs.labels(result)

    def render(self) -> bytes:
        return generate_latest(self.registry)
