"""Asynchronous synthesis jobs for `POST /api/tts?async=true`.

One worker thread runs jobs in order; each calls `TTSService.synthesize` with a progress callback and its own
cancel Event, so the GPU queue stays the core's (`manager.gpu_slot()`): this runner adds no second queue for the
card, only the order of the jobs. A job that finds that queue full waits and retries (it was accepted with
202). A job lives as long as its output: finished jobs older than OUTPUT_TTL_HOURS,
or whose output file is gone, are forgotten by `expire()`.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from llasa.errors import Cancelled, NotFound, QueueFull, TTSError
from llasa.types import SynthesisRequest, SynthesisResult

logger = logging.getLogger(__name__)


#: Bounds on the wait before a job whose synthesis met a full GPU queue tries again (the queue's Retry-After
#: in between): never a busy loop, never so long that a job sits idle behind an empty queue.
MIN_QUEUE_RETRY_S = 0.5
MAX_QUEUE_RETRY_S = 30.0


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED_STATES = (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


class JobFinished(TTSError):
    """Cancelling a job that has already finished (HTTP 409)."""

    status_code = 409
    code = "job_finished"


@dataclass
class Job:
    """One queued synthesis and everything known about it so far."""

    id: str
    request: SynthesisRequest | None
    """What to synthesise; dropped (with its reference audio bytes) once the job ran."""
    fmt: str
    sample_rate: int | None
    state: JobState = JobState.QUEUED
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    chunks_done: int = 0
    chunks_total: int = 0
    stage: str = "queued"
    facts: dict[str, Any] | None = None
    output_id: str | None = None
    output_format: str | None = None
    output_mime_type: str | None = None
    output_size_bytes: int | None = None
    error: dict[str, Any] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    future: Future | None = None

    def on_progress(self, done: int, total: int, stage: str) -> None:
        self.chunks_done, self.chunks_total, self.stage = done, total, stage

    def to_dict(self, output_url: Callable[[str], str]) -> dict[str, Any]:
        """The job as the API shows it; `output_url(id)` turns an output id into a download URL."""
        data: dict[str, Any] = {
            "id": self.id,
            "state": str(self.state),
            "progress": {
                "chunks_done": self.chunks_done,
                "chunks_total": self.chunks_total,
                "stage": self.stage,
                "fraction": round(self.chunks_done / self.chunks_total, 3) if self.chunks_total else 0.0,
            },
            "cancel_requested": self.cancel.is_set(),
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "result": self.facts,
            "output": None,
            "error": self.error,
        }
        if self.output_id:
            data["output"] = {
                "id": self.output_id,
                "url": output_url(self.output_id),
                "format": self.output_format,
                "mime_type": self.output_mime_type,
                "size_bytes": self.output_size_bytes,
            }
        return data


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


class JobRunner:
    """Runs synthesis jobs one at a time on a worker thread (started by the first submit, not at creation)."""

    def __init__(
        self,
        service: Any,
        *,
        ttl_s: float,
        max_unfinished: int,
    ) -> None:
        self.service = service
        self.ttl_s = ttl_s
        self.max_unfinished = max_unfinished
        self._jobs: dict[str, Job] = {}
        # Guards _jobs and every job's state transition (queued -> running / cancelled must not race).
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="api-job")

    def submit(self, request: SynthesisRequest, *, fmt: str, sample_rate: int | None) -> Job:
        """Queue a synthesis; QueueFull (429) when MAX_QUEUE + 1 jobs are already queued or running."""
        self.expire()
        with self._lock:
            unfinished = sum(1 for job in self._jobs.values() if job.state not in FINISHED_STATES)
            if unfinished >= self.max_unfinished:
                raise QueueFull(
                    f"{unfinished} jobs are already queued or running (MAX_QUEUE allows {self.max_unfinished}); "
                    "retry later",
                    retry_after_s=10.0,
                )
            job = Job(id=uuid.uuid4().hex, request=request, fmt=fmt, sample_rate=sample_rate)
            self._jobs[job.id] = job
            job.future = self._executor.submit(self._run, job)
        logger.info("job %s queued (%d unfinished)", job.id, unfinished + 1)
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job with id {job_id[:80]!r}; it never existed or has expired with its output")
        return job

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job at once, or ask a running one to stop (it ends in state 'cancelled')."""
        job = self.get(job_id)
        with self._lock:
            if job.state in FINISHED_STATES:
                raise JobFinished(f"job {job.id} has already finished ({job.state}); there is nothing to cancel")
            job.cancel.set()
            if job.state is JobState.QUEUED:
                self._finish(job, JobState.CANCELLED, stage="cancelled")
        logger.info("job %s cancel requested (%s)", job.id, job.state)
        return job

    def counts(self) -> dict[str, int]:
        with self._lock:
            counts = {str(state): 0 for state in JobState}
            for job in self._jobs.values():
                counts[str(job.state)] += 1
        return counts

    def expire(self, now: float | None = None) -> int:
        """Forget finished jobs older than the TTL or whose output file was deleted; return how many."""
        cutoff = (time.time() if now is None else now) - self.ttl_s
        with self._lock:
            finished = [job for job in self._jobs.values() if job.state in FINISHED_STATES]
        gone = []
        for job in finished:
            if job.finished_at is not None and job.finished_at < cutoff:
                gone.append(job.id)
            elif job.output_id is not None:
                try:
                    self.service.output_path(job.output_id)
                except NotFound:
                    gone.append(job.id)
        with self._lock:
            for job_id in gone:
                self._jobs.pop(job_id, None)
        return len(gone)

    def shutdown(self, *, wait: bool = False) -> None:
        """Cancel every unfinished job and stop the worker."""
        with self._lock:
            for job in self._jobs.values():
                if job.state not in FINISHED_STATES:
                    job.cancel.set()
                    if job.state is JobState.QUEUED:
                        self._finish(job, JobState.CANCELLED, stage="cancelled")
        self._executor.shutdown(wait=wait, cancel_futures=True)

    def _finish(self, job: Job, state: JobState, *, stage: str, error: TTSError | None = None) -> None:
        job.state = state
        job.stage = stage
        job.finished_at = time.time()
        job.request = None  # drop the reference audio bytes
        if error is not None:
            job.error = {"code": error.code, "message": error.message, "status": error.status_code}

    def _synthesize(self, job: Job) -> SynthesisResult:
        """Synthesise the job's audio. A full GPU queue (QueueFull) is not the job's failure: the client was
        already told 202, so the job waits its turn, retrying after the queue's Retry-After until it gets in
        or is cancelled."""
        assert job.request is not None  # a job is finished (and its request dropped) only after this returns
        while True:
            try:
                return self.service.synthesize(job.request, progress=job.on_progress, cancel=job.cancel)
            except QueueFull as e:
                wait_s = min(max(e.retry_after_s, MIN_QUEUE_RETRY_S), MAX_QUEUE_RETRY_S)
                job.stage = "waiting_for_gpu_queue"
                logger.info("job %s: the GPU queue is full; retrying in %.1f s", job.id, wait_s)
                if job.cancel.wait(wait_s):
                    raise Cancelled("the job was cancelled while it waited for room in the GPU queue") from e

    def _run(self, job: Job) -> None:
        with self._lock:
            if job.state is not JobState.QUEUED:
                return  # cancelled while it waited
            job.state = JobState.RUNNING
            job.stage = "starting"
            job.started_at = time.time()
        result: SynthesisResult | None = None
        try:
            result = self._synthesize(job)
            if job.cancel.is_set():
                raise Cancelled("the job was cancelled")
            saved = self.service.save_output(result, job.fmt, sample_rate=job.sample_rate)
        except TTSError as e:
            state = JobState.CANCELLED if isinstance(e, Cancelled) else JobState.FAILED
            with self._lock:
                self._finish(job, state, stage=str(state), error=None if state is JobState.CANCELLED else e)
            logger.info("job %s %s: %s", job.id, state, e.message)
        except Exception as e:
            # A bug, not a caller's mistake: log the trace here, show the client no internals.
            logger.exception("job %s failed unexpectedly", job.id)
            with self._lock:
                self._finish(
                    job,
                    JobState.FAILED,
                    stage="failed",
                    error=TTSError(f"the synthesis failed with an internal error ({type(e).__name__}); see server log"),
                )
        else:
            with self._lock:
                job.facts = result.facts()
                job.output_id = saved.id
                job.output_format = saved.format
                job.output_mime_type = saved.mime_type
                job.output_size_bytes = saved.size_bytes
                job.chunks_done = job.chunks_total = result.chunks
                self._finish(job, JobState.DONE, stage="done")
            logger.info("job %s done: %.2f s of audio -> %s", job.id, result.duration_s, saved.id)
