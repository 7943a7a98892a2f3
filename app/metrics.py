"""Prometheus metrics of one app instance (its own registry: no global state shared between apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServiceMetrics:
    """Per-stage latency histograms, request and error counters, and the served generation's size."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.stage_seconds = Histogram("lookalike_stage_seconds", "Time per request stage", ["stage"],
                                       buckets=STAGE_BUCKETS, registry=self.registry)
        self.searches = Counter("lookalike_searches_total", "Searches by endpoint and plan", ["endpoint", "plan"],
                                registry=self.registry)
        self.errors = Counter("lookalike_errors_total", "Error responses by code", ["code"], registry=self.registry)
        self.items = Gauge("lookalike_items", "Live images in the served generation", registry=self.registry)
        self.reload_failures = Counter("lookalike_reload_failures", "Generations the service refused to switch to",
                                       registry=self.registry)
        self.watcher_errors = Counter("lookalike_watcher_errors", "Unexpected errors in the reload watcher's loop",
                                      registry=self.registry)

    def observe(self, timings: dict[str, float]) -> None:
        for stage, seconds in timings.items():
            self.stage_seconds.labels(stage).observe(seconds)
