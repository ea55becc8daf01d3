"""Prometheus metrics of the REST front end (`GET /metrics`).

Each app gets its own `CollectorRegistry`, so a process (or a test session) can build many apps without
"duplicated timeseries" errors. Model states and the GPU queue are read from the service at scrape time.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

MODEL_STATES = ("unloaded", "loading", "gpu", "cpu")
_METRIC_NAME = re.compile(r"[^a-zA-Z0-9_]")
_DURATION_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
_RTF_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 5, 10)


class _ServiceCollector(Collector):
    """Model states and numeric per-model facts (loads, reloads, durations, bytes) from `service.gpu_status()`."""

    def __init__(self, service: Any, job_counts: Callable[[], dict[str, int]]) -> None:
        self.service = service
        self.job_counts = job_counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        jobs = GaugeMetricFamily("llasa_jobs", "Asynchronous synthesis jobs known, by state", labels=["state"])
        for state, count in self.job_counts().items():
            jobs.add_metric([state], count)
        yield jobs
        try:
            models = self.service.gpu_status().get("models", {})
        except Exception:
            # A scrape must not fail because the manager is mid-shutdown; the gap in the series says enough.
            logger.warning("could not read GPU status for /metrics", exc_info=True)
            return
        state = GaugeMetricFamily("llasa_model_state", "1 for the state each model is in", labels=["model", "state"])
        facts: dict[str, GaugeMetricFamily] = {}
        for name, info in sorted(models.items()):
            current = str(info.get("state", ""))
            for candidate in MODEL_STATES:
                state.add_metric([name, candidate], 1.0 if candidate == current else 0.0)
            for key, value in info.items():
                # Counters, durations and sizes the manager reports (load_count, last_reload_s, size_bytes...).
                if isinstance(value, bool) or not isinstance(value, int | float):
                    continue
                metric = "llasa_model_" + _METRIC_NAME.sub("_", key)
                if metric not in facts:
                    facts[metric] = GaugeMetricFamily(metric, f"GPU manager's {key} per model", labels=["model"])
                facts[metric].add_metric([name], float(value))
        yield state
        yield from facts.values()


class ApiMetrics:
    """The counters and histograms the REST routes update, in a registry of their own."""

    def __init__(self, service: Any, job_counts: Callable[[], dict[str, int]]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
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
            buckets=_DURATION_BUCKETS_S,
            registry=r,
        )
        self.syntheses = Counter(
            "llasa_syntheses",
            "Syntheses by endpoint and outcome (ok, cancelled, error)",
            ["endpoint", "outcome"],
            registry=r,
        )
        self.synthesis_seconds = Histogram(
            "llasa_synthesis_duration_seconds",
            "Wall time of a finished synthesis, by endpoint",
            ["endpoint"],
            buckets=_DURATION_BUCKETS_S,
            registry=r,
        )
        self.audio_seconds = Counter(
            "llasa_audio_seconds", "Seconds of audio produced, by endpoint", ["endpoint"], registry=r
        )
        self.real_time_factor = Histogram(
            "llasa_real_time_factor", "Synthesis wall time over audio time", buckets=_RTF_BUCKETS, registry=r
        )
        self.stream_chunks = Counter(
            "llasa_stream_chunks", "Audio chunks sent to streaming clients", ["endpoint"], registry=r
        )
        queue = Gauge("llasa_queue_depth", "Requests waiting for the GPU (all front ends)", registry=r)
        queue.set_function(lambda: float(service.queue_depth))
        r.register(_ServiceCollector(service, job_counts))

    def record_synthesis(self, endpoint: str, *, seconds: float, audio_s: float, rtf: float) -> None:
        self.syntheses.labels(endpoint, "ok").inc()
        self.synthesis_seconds.labels(endpoint).observe(seconds)
        self.audio_seconds.labels(endpoint).inc(audio_s)
        if audio_s > 0:
            self.real_time_factor.observe(rtf)

    def record_outcome(self, endpoint: str, outcome: str) -> None:
        self.syntheses.labels(endpoint, outcome).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
