"""Prometheus metrics of the REST face (`GET /metrics`): HTTP requests, errors, latency and async jobs.

Syntheses, transcriptions, model states and the GPU queue are the service's (`llasa.metrics`, counted for every
face with a `surface` label); `/metrics` serves both registries. Each app gets its own `CollectorRegistry`, so a
process (or a test session) can build many apps without "duplicated timeseries" errors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from llasa.metrics import DURATION_BUCKETS_S


class _JobCollector(Collector):
    def __init__(self, job_counts: Callable[[], dict[str, int]]) -> None:
        self.job_counts = job_counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        jobs = GaugeMetricFamily("llasa_jobs", "Asynchronous synthesis jobs known, by state", labels=["state"])
        for state, count in self.job_counts().items():
            jobs.add_metric([state], count)
        yield jobs


class ApiMetrics:
    """The counters and histograms the REST routes update, in a registry of their own."""

    def __init__(self, job_counts: Callable[[], dict[str, int]], *, service_registry: CollectorRegistry) -> None:
        self.service_registry = service_registry
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "llasa_http_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.errors = Counter(
            "llasa_http_errors", "HTTP error responses by route and error code", ["route", "code"], registry=r
        )
        self.latency = Histogram(
            "llasa_http_request_duration_seconds",
            "Time to the response headers, by route (a streamed body continues after this)",
            ["route"],
            buckets=DURATION_BUCKETS_S,
            registry=r,
        )
        r.register(_JobCollector(job_counts))

    def render(self) -> bytes:
        return generate_latest(self.service_registry) + generate_latest(self.registry)
