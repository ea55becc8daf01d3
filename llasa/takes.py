"""Takes: each chunk of a synthesis sampled, guarded, checked, and sampled again when the take is broken.

A take is one sampling of one text chunk's speech codes. Every chunk's first take goes to the engine at once (they
share the batch with other requests); then, for each take:

1. While it generates, the loop guard watches its codes (`LoopDetector`: a stuck syllable or a held tone) and the
   engine stops it at the run-on bound (`max_codes_for_text`, whenever that is below max_audio_seconds): a broken
   take is stopped early instead of running to the end.
2. When it ends it is decoded, and the dead-air guard listens to the audio (`silence_problem`).
3. With verify (or captions), faster-whisper transcribes it with word timings; verify fails a take whose error rate
   against the chunk's text is above VERIFY_MAX_CER.

The first failed take of a chunk sends all its remaining QUALITY_RETRIES takes to the engine at once, so they are
sampled together, in the same batch as everything else, not one after another (with VERIFY_ALL_TAKES_AT_ONCE a
verified chunk sends every take at the start, so a failure costs no second round); each take has its own seed
(`take_seed`). The kept take is the first that passes in take order (so a seed repeats its result even when retries
finish out of order); when none passes, the best one is kept (no guard problem before a guard problem, then the
lowest error rate, then the earliest) and a warning says so.

Streams play a chunk while it generates, so audio already sent cannot be taken back: a loop or run-on found after
a chunk's first window is cut where it was found (the rest is not sent) and reported; a chunk whose codes are all in
before its turn to play (later chunks often are) is guarded and retried as above before any of it is sent. Dead
air and verification of a streamed chunk are reported per chunk (with its captions), not retried.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, NoReturn, Protocol

import numpy as np

from llasa.engine.types import CodeStream, FinishReason, GenerationBackend, SamplingParams
from llasa.errors import Cancelled, GenerationFailed, TTSError
from llasa.quality.guards import GuardLimits, LoopDetector, max_codes_for_text, silence_problem
from llasa.quality.transcript import align_words, error_rate
from llasa.text import estimate_speech_seconds
from llasa.types import MAX_SEED, ChunkReport, TimedWord, TranscriptionResult
from llasa.units import CODES_PER_SECOND, SAMPLE_RATE

if TYPE_CHECKING:
    from llasa.config import Settings
    from llasa.types import SynthesisRequest

logger = logging.getLogger(__name__)

#: decode(codes) -> the chunk's audio alone (16 kHz float32).
Decode = Callable[[list[int]], np.ndarray]
#: transcribe(audio, language or None) -> what the recogniser heard, with word timings.
Transcribe = Callable[[np.ndarray, str | None], TranscriptionResult]

_KANA = re.compile("[\u3040-\u30ff]")
_HANGUL = re.compile("[\uac00-\ud7af]")
_HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff]")


@dataclass(frozen=True)
class QualityPolicy:
    """What the guards and the verifier do for one synthesis."""

    retries: int
    limits: GuardLimits
    verify: bool
    max_error_rate: float
    timed_words: bool
    """Transcribe each kept take with word timings (verify, or captions asked for)."""
    all_takes_at_once: bool = False
    """Verify: every take of a chunk is sent at the start, not the retries after a failure
    (VERIFY_ALL_TAKES_AT_ONCE)."""

    @classmethod
    def for_request(cls, settings: Settings, request: SynthesisRequest) -> QualityPolicy:
        verify = settings.verify_default if request.verify is None else request.verify
        return cls(
            retries=settings.quality_retries,
            limits=GuardLimits.from_settings(settings),
            verify=verify,
            max_error_rate=settings.verify_max_cer,
            timed_words=verify or request.captions is not None,
            all_takes_at_once=verify and settings.verify_all_takes_at_once,
        )


def take_seed(seed: int, chunk: int, attempt: int, chunks: int) -> int:
    """The seed of take `attempt` (0-based) of chunk `chunk`: the first take samples with seed + chunk, as every
    chunk always has; take a with seed + chunk + a * chunks, so each (chunk, take) has a seed of its own and the
    request's seed repeats every take."""
    return (seed + chunk + attempt * chunks) % (MAX_SEED + 1)


def language_of(text: str) -> str | None:
    """The language to transcribe a chunk in, from its script: kana = ja, hangul = ko, Han = zh; else None (let
    Whisper detect it: Latin script alone does not tell English from French)."""
    if _KANA.search(text):
        return "ja"
    if _HANGUL.search(text):
        return "ko"
    if _HAN.search(text):
        return "zh"
    return None


def chunk_offsets(lengths: Sequence[int], crossfade_samples: int) -> list[int]:
    """Where each chunk starts in audio joined by `crossfade_join` (which overlaps each join by up to the fade)."""
    starts: list[int] = []
    total = 0
    for length in lengths:
        overlap = min(crossfade_samples, total, length)
        starts.append(total - overlap if length else total)
        total += length - overlap
    return starts


@dataclass
class ChunkJob:
    """One text chunk to speak: its prompt, its first take's sampling, and the takes made so far."""

    index: int
    text: str
    prompt_ids: list[int]
    sampling: SamplingParams
    """The first take's parameters; later takes change the seed (and max_new_tokens to the run-on bound)."""
    takes: list[Take] = field(default_factory=list)
    kept: Take | None = None


@dataclass
class Take:
    """One sampling of one chunk."""

    attempt: int
    stream: CodeStream
    detector: LoopDetector
    runon_limited: bool
    """max_new_tokens is the run-on bound (below the caller's max_audio_seconds): ending on length is a run-on."""
    read: int = 0
    cut_at: int | None = None
    """Codes kept of a take stopped in a loop: up to where the loop began."""
    guard_problem: str | None = None
    verify_problem: str | None = None
    audio: np.ndarray | None = None
    heard: TranscriptionResult | None = None
    error_rate: float | None = None
    done: bool = False
    abandoned: bool = False
    """Cancelled by the runner because another take of its chunk was kept."""

    @property
    def codes(self) -> list[int]:
        codes = self.stream.codes
        return codes if self.cut_at is None else codes[: self.cut_at]

    @property
    def ok(self) -> bool:
        return self.guard_problem is None and self.verify_problem is None

    @property
    def truncated(self) -> bool:
        """Ended on the caller's own length limit (max_audio_seconds or the context), not on the end token."""
        return self.stream.finish_reason is FinishReason.LENGTH and not self.runon_limited

    def rank(self) -> tuple[bool, float, int]:
        return (self.guard_problem is not None, self.error_rate or 0.0, self.attempt)

    @property
    def reason(self) -> str | None:
        """The kind of problem, for metrics: loop, run_on, dead_air, no_speech, misread (None: no problem)."""
        problem = self.guard_problem
        if problem is None:
            return None if self.verify_problem is None else "misread"
        for prefix, reason in (("stuck", "loop"), ("ran on", "run_on"), ("dead air", "dead_air")):
            if problem.startswith(prefix):
                return reason
        return "no_speech"

    def problem_text(self) -> str:
        return f"take {self.attempt + 1}: {self.guard_problem or self.verify_problem}"


class TakeRunner:
    """Runs the takes of every chunk of one synthesis (see the module docstring).

    `run()` returns each chunk's kept take once all are decided (whole-file synthesis); `play()` yields a streamed
    synthesis' audio windows in order, then each chunk's `ChunkReport` when it is ready.
    """

    def __init__(
        self,
        engine: GenerationBackend,
        jobs: list[ChunkJob],
        policy: QualityPolicy,
        *,
        decode: Decode,
        transcribe: Transcribe,
        cancel: threading.Event | None,
    ) -> None:
        self.engine = engine
        self.jobs = jobs
        self.policy = policy
        self._decode = decode
        self._transcribe = transcribe
        self._cancel = cancel
        self._changed = threading.Event()
        self._started = False
        self.wait_s = 0.0
        """Time spent waiting for the engine's codes (the service counts it as "generate")."""

    # --- submitting -----------------------------------------------------------------------------------------

    def start(self, *, streaming: bool = False) -> None:
        """Send every chunk's first take to the engine (every take, with `all_takes_at_once`, unless streaming:
        a stream plays one take at a time)."""
        self._started = True
        takes = 1 + self.policy.retries if self.policy.all_takes_at_once and not streaming else 1
        for job in self.jobs:
            for _ in range(takes):
                self._submit(job)

    def close(self) -> None:
        """Cancel every take still generating (the request ended, failed or was abandoned)."""
        for job in self.jobs:
            for take in job.takes:
                take.stream.cancel()

    def _submit(self, job: ChunkJob) -> Take:
        attempt = len(job.takes)
        cap = job.sampling.max_new_tokens
        runon = max_codes_for_text(job.text, self.policy.limits)
        seed = take_seed(job.sampling.seed or 0, job.index, attempt, len(self.jobs))
        params = replace(job.sampling, seed=seed, max_new_tokens=min(cap, runon))
        stream = self.engine.submit(job.prompt_ids, params)
        # Woken when a take ends (to judge it); the loop guard reads new codes on the wait's 50 ms tick, so the
        # engine's thread does not hand this one the GIL for every code of every take.
        stream.add_update_callback(lambda: self._changed.set() if stream.finished else None)
        take = Take(attempt, stream, LoopDetector(self.policy.limits), runon_limited=runon < cap)
        job.takes.append(take)
        return take

    def _attempts_left(self, job: ChunkJob) -> int:
        return 1 + self.policy.retries - len(job.takes)

    # --- watching and checking takes ------------------------------------------------------------------------

    def _watch(self, take: Take, new: list[int]) -> None:
        """Feed new codes to the loop guard; a loop stops the take where it began."""
        take.read += len(new)
        if take.cut_at is None and take.detector.push(new):
            looped_at = take.detector.looped_at or take.read
            take.cut_at = max(looped_at - self.policy.limits.loop_window_codes, 0)
            take.guard_problem = f"stuck in a loop from {take.cut_at / CODES_PER_SECOND:.1f} s"
            take.stream.cancel()

    def _check_end(self, job: ChunkJob, take: Take) -> None:
        """The end of a take's generation: errors raise; a run-on or no speech is a guard problem."""
        reason = take.stream.finish_reason
        if reason is FinishReason.ERROR:
            error = take.stream.error
            if isinstance(error, TTSError):
                raise error
            raise GenerationFailed(
                f"generating chunk {job.index + 1} of {len(self.jobs)} failed ({type(error).__name__}: {error})"
            ) from error
        if reason is FinishReason.CANCELLED and take.cut_at is None and not take.abandoned:
            raise Cancelled("the synthesis was cancelled")
        if take.guard_problem is not None:
            return
        if reason is FinishReason.LENGTH and take.runon_limited:
            take.guard_problem = (
                f"ran on past {take.read / CODES_PER_SECOND:.1f} s (its text needs about "
                f"{estimate_speech_seconds(job.text):.1f} s)"
            )
        elif not take.codes:
            take.guard_problem = "no speech"

    def _listen(self, job: ChunkJob, take: Take, audio: np.ndarray) -> None:
        """Dead-air guard and (verify / captions) transcription of a take's audio."""
        take.audio = audio
        if take.guard_problem is None:
            silent = silence_problem(audio, self.policy.limits)
            if silent:
                take.guard_problem = f"dead air ({silent})"
        if self.policy.timed_words and take.guard_problem is None:
            self._hear(job, take)

    def _hear(self, job: ChunkJob, take: Take) -> None:
        assert take.audio is not None
        take.heard = self._transcribe(take.audio, language_of(job.text))
        take.error_rate = error_rate(job.text, take.heard.text)
        if self.policy.verify and take.error_rate > self.policy.max_error_rate:
            take.verify_problem = f"heard {take.heard.text!r} (error rate {take.error_rate:.0%})"

    def _raise_if_cancelled(self) -> None:
        if self._cancel is not None and self._cancel.is_set():
            raise Cancelled("the synthesis was cancelled")

    # --- whole-file synthesis -------------------------------------------------------------------------------

    def run(self, on_chunk_done: Callable[[int], None] | None = None) -> list[Take]:
        """Every chunk's kept take, decided as its takes finish (decoding and transcribing here while the engine
        generates the others). Calls `on_chunk_done(chunks_decided)` as chunks are decided."""
        if not self._started:
            self.start()
        decided = 0
        while decided < len(self.jobs):
            self._raise_if_cancelled()
            self._changed.clear()  # before looking: an update from now on wakes the wait below
            progressed = False
            for job in self.jobs:
                if job.kept is not None:
                    continue
                for take in [t for t in job.takes if not t.done]:
                    finished = take.stream.finished  # looked at first: once it is true, every code is in
                    new = take.stream.read_from(take.read, timeout_s=0)
                    if new:
                        self._watch(take, new)
                    if finished:
                        self._finish_whole(job, take)
                        progressed = True
                if self._decide(job):
                    decided += 1
                    if on_chunk_done is not None:
                        on_chunk_done(decided)
            if not progressed:
                waited = time.perf_counter()
                self._changed.wait(0.05)  # woken by any stream; the timeout only bounds how late a cancel is seen
                self.wait_s += time.perf_counter() - waited
        return [job.kept for job in self.jobs if job.kept is not None]

    def _finish_whole(self, job: ChunkJob, take: Take) -> None:
        take.done = True
        if take.abandoned:
            return
        self._check_end(job, take)
        codes = take.codes
        if codes:
            self._listen(job, take, np.asarray(self._decode(codes), dtype=np.float32))
        if not take.ok and self._attempts_left(job) > 0:
            # The first failure sends every remaining take at once: they generate together, in one batch.
            for _ in range(self._attempts_left(job)):
                self._submit(job)

    def _decide(self, job: ChunkJob) -> bool:
        """Keep the first passing take in take order once every earlier one has failed; or the best of all when
        none passes and none is left to make. True when the chunk is decided now."""
        kept = None
        for take in job.takes:
            if not take.done:
                return False
            if take.ok:
                kept = take
                break
        if kept is None:
            if self._attempts_left(job) > 0 or not all(t.done for t in job.takes):
                return False
            kept = min(job.takes, key=lambda t: (not t.codes, *t.rank()))
            if not kept.codes:
                self._fail_without_speech(job)
            if self.policy.timed_words and kept.heard is None and kept.audio is not None:
                self._hear(job, kept)  # for its captions: takes with a guard problem were not transcribed
        job.kept = kept
        for take in job.takes:
            if take is not kept and not take.done:
                take.abandoned = True
                take.stream.cancel()
        return True

    def _fail_without_speech(self, job: ChunkJob) -> NoReturn:
        why = "; ".join(t.problem_text() for t in job.takes if t.guard_problem)
        raise GenerationFailed(
            f"the model produced no usable speech for chunk {job.index + 1} of {len(self.jobs)} in "
            f"{len(job.takes)} takes ({why}); try again with another seed or a lower temperature"
        )

    # --- streamed synthesis ---------------------------------------------------------------------------------

    def play(
        self, make_decoder: Callable[[], StreamDecoder], crossfade_samples: int
    ) -> Iterator[tuple[int, np.ndarray, bool, bool] | ChunkReport]:
        """A streamed synthesis: (chunk, audio, first, last) windows in chunk order as codes arrive, and each
        chunk's report once it is checked (transcription runs beside the stream, so it does not delay audio)."""
        if not self._started:
            self.start(streaming=True)
        lengths: list[int] = []
        pending: list[Future[ChunkReport]] = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="verify") as listener:
            try:
                for job in self.jobs:
                    pieces: list[np.ndarray] = []
                    for index, audio, first, last in self._play_chunk(job, make_decoder):
                        pieces.append(audio)
                        yield index, audio, first, last
                        yield from _ready_reports(pending)
                    audio = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
                    start = chunk_offsets([*lengths, len(audio)], crossfade_samples)[-1]
                    lengths.append(len(audio))
                    pending.append(listener.submit(self._streamed_report, job, audio, start))
                for future in pending:
                    yield future.result()
            finally:
                for future in pending:
                    future.cancel()

    def _play_chunk(
        self, job: ChunkJob, make_decoder: Callable[[], StreamDecoder]
    ) -> Iterator[tuple[int, np.ndarray, bool, bool]]:
        take = job.takes[-1]
        decoder = make_decoder()
        fed = 0
        sent = False
        while True:
            self._raise_if_cancelled()
            finished = take.stream.finished  # looked at first: once it is true, every code is in
            waited = time.perf_counter()
            new = take.stream.read_from(take.read, timeout_s=0 if finished else 0.05)  # a cancel is seen in 50 ms
            self.wait_s += time.perf_counter() - waited
            if new:
                self._watch(take, new)
            elif not finished:
                continue
            if finished:
                self._check_end(job, take)
            if take.guard_problem is not None and not sent and self._attempts_left(job) > 0:
                take.done = take.abandoned = True
                take.stream.cancel()
                take = self._submit(job)
                decoder, fed = make_decoder(), 0
                continue
            codes = take.codes
            audio = decoder.push(codes[fed:])
            fed = len(codes)
            if len(audio):
                yield job.index, audio, not sent, False
                sent = True
            if take.guard_problem is not None or finished:
                break
        if not take.codes:
            self._fail_without_speech(job)
        take.done = True
        take.stream.cancel()  # a take cut in a loop: stop generating what will not be sent
        job.kept = take
        yield job.index, decoder.finish(), not sent, True

    def _streamed_report(self, job: ChunkJob, audio: np.ndarray, start: int) -> ChunkReport:
        """Check a streamed chunk's kept take (its audio already sent: what is found is reported, not retried)."""
        take = job.kept
        assert take is not None
        problems = [t.problem_text() for t in job.takes if t is not take and t.guard_problem]
        if take.guard_problem is not None:
            problems.append(f"{take.problem_text()}; cut there (its start was already streamed)")
            take.audio = audio
            if self.policy.timed_words:
                self._hear(job, take)  # its captions
        else:
            self._listen(job, take, audio)
            if take.guard_problem is not None:
                problems.append(f"{take.problem_text()} (already streamed, not retried)")
        if take.verify_problem is not None:
            problems.append(f"{take.problem_text()} (already streamed, not retried)")
        return self.report(job, start, problems)

    # --- reports --------------------------------------------------------------------------------------------

    def report(self, job: ChunkJob, start_sample: int, problems: list[str] | None = None) -> ChunkReport:
        """The kept take of `job` as a report, its words placed at `start_sample` of the whole audio."""
        take = job.kept
        assert take is not None
        assert take.audio is not None
        if problems is None:
            problems = [t.problem_text() for t in job.takes if t.done and not t.abandoned and not t.ok]
        start_s = start_sample / SAMPLE_RATE
        words: list[TimedWord] | None = None
        if take.heard is not None:
            duration = len(take.audio) / SAMPLE_RATE
            words = [
                TimedWord(w.word, round(w.start_s + start_s, 3), round(w.end_s + start_s, 3))
                for w in align_words(job.text, take.heard.words, duration)
            ]
        return ChunkReport(
            index=job.index,
            text=job.text,
            start_s=start_s,
            end_s=start_s + len(take.audio) / SAMPLE_RATE,
            attempts=len(job.takes),
            kept_attempt=take.attempt + 1,
            problems=problems,
            transcript=take.heard.text if take.heard is not None else None,
            error_rate=take.error_rate,
            words=words,
        )


class StreamDecoder(Protocol):
    """What `play()` needs of a streaming decoder (`llasa.engine.streaming.StreamingDecoder`)."""

    def push(self, codes: list[int]) -> np.ndarray: ...

    def finish(self) -> np.ndarray: ...


def _ready_reports(pending: list[Future[ChunkReport]]) -> Iterator[ChunkReport]:
    """Reports whose transcription is done, in chunk order, taken off `pending`."""
    while pending and pending[0].done():
        yield pending.pop(0).result()
