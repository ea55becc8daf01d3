"""Prometheus metrics of the service, recorded in the core so every face counts (label `surface`).

One `ServiceMetrics` per `TTSService`, in a `CollectorRegistry` of its own (a process or a test session may build
many services without "duplicated timeseries" errors). The REST face serves it at `GET /metrics`, beside its own
HTTP counters. Model states and the GPU queue are read from the service at scrape time.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from llasa.errors import Cancelled
from llasa.types import EngineStatus, GPUStatus, SynthesisRequest, TranscriptionRequest

logger = logging.getLogger(__name__)

MODEL_STATES = ("unloaded", "loading", "gpu", "cpu")
DURATION_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
_RTF_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 5, 10)
_METRIC_NAME = re.compile(r"[^a-zA-Z0-9_]")


def outcome_of(error: BaseException | None) -> str:
    """ "ok", "cancelled" (the caller gave up: Cancelled, a closed stream) or "error"."""
    if error is None:
        return "ok"
    return "cancelled" if isinstance(error, Cancelled | GeneratorExit) else "error"


class _ModelCollector(Collector):
    """Model states and numeric per-model facts (loads, reloads, durations, bytes) from the GPU status."""

    def __init__(self, status: Callable[[], GPUStatus]) -> None:
        self.status = status

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            models = self.status().models
        except Exception:
            # A scrape must not fail because the manager is mid-shutdown; the gap in the series says enough.
            logger.warning("could not read GPU status for /metrics", exc_info=True)
            return
        state = GaugeMetricFamily("llasa_model_state", "1 for the state each model is in", labels=["model", "state"])
        facts: dict[str, GaugeMetricFamily] = {}
        for name, info in sorted(models.items()):
            for candidate in MODEL_STATES:
                state.add_metric([name, candidate], 1.0 if candidate == info.state else 0.0)
            for key, value in asdict(info).items():
                if isinstance(value, bool) or not isinstance(value, int | float):
                    continue
                metric = "llasa_model_" + _METRIC_NAME.sub("_", key)
                if metric not in facts:
                    facts[metric] = GaugeMetricFamily(metric, f"GPU manager's {key} per model", labels=["model"])
                facts[metric].add_metric([name], float(value))
        yield state
        yield from facts.values()


class _EngineCollector(Collector):
    """The engine's batch (running, waiting, limit) and totals (steps, tokens), read at scrape time."""

    def __init__(self, status: Callable[[], EngineStatus]) -> None:
        self.status = status

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        try:
            engine = self.status()
        except Exception:
            logger.warning("could not read the engine status for /metrics", exc_info=True)
            return
        labels = ["backend"]
        gauges = {
            "llasa_engine_running_sequences": ("Sequences in the engine's batch now", engine.running),
            "llasa_engine_waiting_sequences": ("Sequences waiting for a place in the batch", engine.waiting),
            "llasa_engine_batch_limit": (
                "Most sequences one batch holds now (0 = the server's own)",
                engine.batch_limit,
            ),
            "llasa_engine_ready": ("1 when the engine can take sequences", float(engine.ready)),
        }
        for name, (help_text, value) in gauges.items():
            family = GaugeMetricFamily(name, help_text, labels=labels)
            family.add_metric([engine.backend], float(value))
            yield family
        # Counters: rate(llasa_engine_tokens_total[1m]) is the tokens per second; steps give the batch occupancy
        # (tokens per step).
        for name, help_text, value in (
            ("llasa_engine_tokens", "Tokens the engine sampled", engine.tokens),
            ("llasa_engine_steps", "Decode steps the engine ran", engine.steps),
        ):
            family = CounterMetricFamily(name, help_text, labels=labels)
            family.add_metric([engine.backend], float(value))
            yield family


class ServiceMetrics:
    """Syntheses and transcriptions by surface (rest, mcp, webui, core), endpoint and outcome; models; the queue."""

    def __init__(
        self,
        status: Callable[[], GPUStatus],
        queue_depth: Callable[[], int],
        engine_status: Callable[[], EngineStatus] | None = None,
    ) -> None:
        self.registry = r = CollectorRegistry()
        labels = ["surface", "endpoint"]
        self.syntheses = Counter(
            "llasa_syntheses",
            "Syntheses by surface, endpoint and outcome (ok, cancelled, error)",
            [*labels, "outcome"],
            registry=r,
        )
        self.synthesis_seconds = Histogram(
            "llasa_synthesis_duration_seconds",
            "Wall time of a finished synthesis",
            labels,
            buckets=DURATION_BUCKETS_S,
            registry=r,
        )
        self.audio_seconds = Counter("llasa_audio_seconds", "Seconds of audio produced", labels, registry=r)
        self.real_time_factor = Histogram(
            "llasa_real_time_factor",
            "Synthesis wall time over audio time",
            ["surface"],
            buckets=_RTF_BUCKETS,
            registry=r,
        )
        self.stream_chunks = Counter(
            "llasa_stream_chunks", "Audio pieces a streamed synthesis produced", labels, registry=r
        )
        self.transcriptions = Counter(
            "llasa_transcriptions", "Transcriptions by surface, endpoint and outcome", [*labels, "outcome"], registry=r
        )
        self.transcription_seconds = Histogram(
            "llasa_transcription_duration_seconds",
            "Wall time of a finished transcription",
            labels,
            buckets=DURATION_BUCKETS_S,
            registry=r,
        )
        self.first_audio_seconds = Histogram(
            "llasa_time_to_first_audio_seconds",
            "From a streamed request's arrival to its first audio",
            ["surface"],
            buckets=DURATION_BUCKETS_S,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "llasa_queue_wait_seconds",
            "From a synthesis's arrival to its place in a GPU slot",
            ["surface"],
            buckets=DURATION_BUCKETS_S,
            registry=r,
        )
        self.sequences = Counter(
            "llasa_engine_sequences_submitted", "Text chunks sent to the engine", ["surface"], registry=r
        )
        self.flawed_takes = Counter(
            "llasa_flawed_takes",
            "Takes of a chunk found broken (reason: loop, run_on, dead_air, no_speech, misread), each made again "
            "while QUALITY_RETRIES allowed",
            ["surface", "reason"],
            registry=r,
        )
        queue = Gauge("llasa_queue_depth", "Requests waiting for the GPU (every face)", registry=r)
        queue.set_function(lambda: float(queue_depth()))
        r.register(_ModelCollector(status))
        if engine_status is not None:
            r.register(_EngineCollector(engine_status))

    def record_synthesis(self, request: SynthesisRequest, *, seconds: float, audio_s: float) -> None:
        labels = (request.surface, request.endpoint)
        self.syntheses.labels(*labels, "ok").inc()
        self.synthesis_seconds.labels(*labels).observe(seconds)
        self.audio_seconds.labels(*labels).inc(audio_s)
        if audio_s > 0:
            self.real_time_factor.labels(request.surface).observe(seconds / audio_s)

    def record_synthesis_failure(self, request: SynthesisRequest, error: BaseException) -> None:
        self.syntheses.labels(request.surface, request.endpoint, outcome_of(error)).inc()

    def record_first_audio(self, surface: str, seconds: float) -> None:
        self.first_audio_seconds.labels(surface).observe(seconds)

    def record_queue_wait(self, surface: str, seconds: float) -> None:
        self.queue_wait_seconds.labels(surface).observe(seconds)

    def record_sequences(self, surface: str, count: int) -> None:
        self.sequences.labels(surface).inc(count)

    def record_flawed_takes(self, surface: str, reasons: list[str]) -> None:
        for reason in reasons:
            self.flawed_takes.labels(surface, reason).inc()

    def record_stream_piece(self, request: SynthesisRequest) -> None:
        self.stream_chunks.labels(request.surface, request.endpoint).inc()

    def record_transcription(
        self, request: TranscriptionRequest, *, seconds: float | None, error: BaseException | None
    ) -> None:
        labels = (request.surface, request.endpoint)
        self.transcriptions.labels(*labels, outcome_of(error)).inc()
        if error is None and seconds is not None:
            self.transcription_seconds.labels(*labels).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
