"""TTSService: the one seam every front end calls (UI, REST, MCP).

A synthesis follows DESIGN.md section 1: prepare the reference (decode, mono, 16 kHz, trim, normalise), get its
transcript (given, a saved voice's, or faster-whisper's), encode it with XCodec2, split the text into chunks that
fit Llasa's 2048-token context, generate speech codes per chunk conditioned on the same reference, decode
reference + new codes together and cut the reference's samples off the front, join the chunks with a crossfade.

Every piece of GPU work runs inside the manager's `gpu_slot()` (one job on the card at a time, a bounded queue
shared by all front ends) and touches models only through `manager.use(name)` leases, so the GPU manager can
offload or release them between requests but never under one.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llasa import __version__
from llasa.audio import (
    AUDIO_FORMATS,
    PreparedReference,
    StreamJoiner,
    crossfade_join,
    encode_audio,
    load_audio,
    prepare_reference,
    validate_output,
)
from llasa.config import Settings
from llasa.engine.streaming import StreamingConfig, StreamingDecoder
from llasa.engine.types import GenerationBackend, SamplingParams
from llasa.errors import InvalidInput, VoiceExists
from llasa.metrics import ServiceMetrics
from llasa.outputs import OutputStore, SavedOutput, cleanup_interval_s
from llasa.prompt import build_prompt_ids, lookup_token_ids
from llasa.quality.captions import render_captions
from llasa.takes import ChunkJob, QualityPolicy, TakeRunner, chunk_offsets
from llasa.text import chunk_text, estimate_speech_codes, join_texts, normalize_text, refuse_control_markup
from llasa.types import (
    CODES_PER_SECOND,
    MAX_SEED,
    MODEL_NAMES,
    SAMPLE_RATE,
    SAMPLES_PER_CODE,
    AudioPiece,
    AudioSource,
    ChunkReport,
    EngineStatus,
    GenerationParams,
    GPUStatus,
    ProgressCallback,
    SynthesisRequest,
    SynthesisResult,
    TranscriptionRequest,
    TranscriptionResult,
)
from llasa.voices import VoiceInfo, VoiceLibrary

logger = logging.getLogger(__name__)

LLASA, XCODEC2, WHISPER = MODEL_NAMES
MIN_CHUNK_CODES = 2 * CODES_PER_SECOND
"""A reference that leaves room for less than this much new speech per chunk is refused."""
NOTHING_TO_CHANGE = "give at least one of idle_timeout_s, evict_timeout_s, offload_after_use"
"""set_timeouts() called with nothing to change: one message for every front end."""
CHUNK_MAX_SECONDS = 20.0
"""The longest speech one chunk is planned for. The context allows ~40 s without a reference, but a random-walk
sampler drifts on long stretches; sentences packed into <= 20 s chunks keep every chunk near the lengths the
model saw in training. (The Llasa paper's chunked long-text evaluation is what this follows.)"""


@dataclass
class _ResolvedParams:
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float
    max_audio_seconds: float
    seed: int


@dataclass
class _Reference:
    """The conditioning of every chunk: transcript + codes (both empty without a reference)."""

    text: str = ""
    codes: list[int] = field(default_factory=list)
    seconds: float = 0.0
    trimmed: bool = False
    voice: str | None = None


@dataclass
class _Plan:
    """A synthesis ready to run: what the caller asked, resolved and validated before the GPU queue."""

    text: str
    params: _ResolvedParams
    language: str | None
    prepared: PreparedReference | None = None
    reference_text: str | None = None
    voice: VoiceInfo | None = None
    warnings: list[str] = field(default_factory=list)
    surface: str = "core"
    policy: QualityPolicy | None = None
    captions: str | None = None


class _ManagedCodec:
    """XCodec2 decode through the GPU manager (a lease per call, an out-of-memory retry), timed as "decode"."""

    def __init__(self, manager: Any, timings: dict[str, float]) -> None:
        self._manager = manager
        self._timings = timings

    def decode(self, codes: list[int]) -> np.ndarray:
        started = time.perf_counter()
        try:
            return self._manager.run_with_oom_retry(XCODEC2, lambda codec: codec.decode(codes))
        finally:
            self._timings["decode"] += time.perf_counter() - started


class TTSService:
    """Synthesis, transcription, the voice library, outputs and GPU control for all front ends."""

    def __init__(self, settings: Settings, manager: Any | None = None) -> None:
        from llasa.gpu import MultiModelGPUManager
        from llasa.models import register_models

        self.settings = settings
        self.manager = manager if manager is not None else MultiModelGPUManager(settings)
        # A manager shared with another service (the process-wide one) already has the loaders.
        if LLASA not in self.manager.model_names:
            register_models(self.manager, settings)
        self.voices = VoiceLibrary(settings.voices_dir)
        self.outputs = OutputStore(
            settings.output_dir, ttl_hours=settings.output_ttl_hours, base_url=settings.api_base_url
        )
        for folder in (settings.output_dir, settings.temp_dir, settings.voices_dir):
            Path(folder).mkdir(parents=True, exist_ok=True)
        self._cleanup_stop = threading.Event()
        self._cleanup_thread: threading.Thread | None = None
        self._engine: GenerationBackend | None = None
        self._engine_lock = threading.Lock()
        self.metrics = ServiceMetrics(self.gpu_status, lambda: self.queue_depth, self.engine_status)

    # --- synthesis -----------------------------------------------------------------------------------------

    def synthesize(
        self,
        request: SynthesisRequest,
        *,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> SynthesisResult:
        """Speak `request.text` in the voice of its reference audio (or saved voice, or the model's own voice).

        Without `reference_text` faster-whisper transcribes the reference (in `language`, or detected). Raises an
        `llasa.errors.TTSError` subclass for anything the caller can fix. Counted in the metrics by surface.
        """
        started = time.perf_counter()
        try:
            result = self._synthesize(self._plan(request), progress, cancel)
        except BaseException as exc:
            self.metrics.record_synthesis_failure(request, exc)
            raise
        self.metrics.record_synthesis(request, seconds=time.perf_counter() - started, audio_s=result.duration_s)
        return result

    def _synthesize(
        self, plan: _Plan, progress: ProgressCallback | None, cancel: threading.Event | None
    ) -> SynthesisResult:
        started = time.perf_counter()
        timings = _new_timings()
        with self.manager.gpu_slot(cancel=cancel):
            self.metrics.record_queue_wait(plan.surface, time.perf_counter() - started)
            reference, chunks = self._prepare_run(plan, timings, progress)
            # The codec's lease is held for the whole request, so it is not moved between chunks and takes.
            with self._lease(XCODEC2, timings):
                runner = self._take_runner(plan, reference, chunks, timings, cancel)
                _notify(progress, 0, len(chunks), "generate")
                try:
                    kept = runner.run(lambda done: _notify(progress, done, len(chunks), "chunk_done"))
                finally:
                    runner.close()
                    timings["generate"] += runner.wait_s
        pieces = [take.audio for take in kept if take.audio is not None]
        audio = crossfade_join(pieces, self._crossfade_samples)
        starts = chunk_offsets([len(piece) for piece in pieces], self._crossfade_samples)
        reports = [runner.report(job, start) for job, start in zip(runner.jobs, starts, strict=True)]
        self._note_takes(plan, runner, reports)
        timings["total"] = time.perf_counter() - started
        result = self._result(plan, reference, chunks, timings, audio, reports, _kept_codes(runner))
        logger.info(
            "synthesized %.2f s of audio in %.2f s (%d chunks, %d codes, seed %d)",
            result.duration_s,
            timings["total"],
            result.chunks,
            result.num_codes,
            plan.params.seed,
        )
        return result

    def _result(
        self,
        plan: _Plan,
        reference: _Reference,
        chunks: list[str],
        timings: dict[str, float],
        audio: np.ndarray,
        reports: list[ChunkReport],
        num_codes: int,
    ) -> SynthesisResult:
        words = None
        captions = None
        if plan.policy is not None and plan.policy.timed_words:
            words = [word for report in reports for word in report.words or ()]
            if plan.captions is not None:
                captions = render_captions(plan.captions, functools.reduce(join_texts, chunks), words)
        return SynthesisResult(
            audio=audio,
            sample_rate=SAMPLE_RATE,
            num_codes=num_codes,
            reference_text=reference.text,
            chunks=len(chunks),
            timings_s=timings,
            reference_seconds=reference.seconds,
            reference_trimmed=reference.trimmed,
            seed=plan.params.seed,
            voice=reference.voice,
            warnings=plan.warnings,
            chunk_reports=reports,
            words=words,
            captions=captions,
            caption_format=plan.captions,
        )

    def synthesize_stream(
        self,
        request: SynthesisRequest,
        *,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[AudioPiece]:
        """Like synthesize(), but yields audio as it is generated: the first piece after STREAM_FIRST_CODES codes
        (0.3 s of speech by default), then windows that double up to 2 s, chunk after chunk.

        Every chunk is generated at once in the engine's batch; each is decoded in windows with left context
        (`llasa.engine.streaming`), so the stream is the same length as synthesize()'s audio for the same seed and
        close to it (not bit-identical: a one-shot decode sees every code at once). The request is checked before
        the first piece, so a bad request fails when this is called, not while the response streams. Closing the
        iterator early cancels the generation at the engine's next step (counted as cancelled). The final piece
        carries the whole `SynthesisResult` (`AudioPiece.result`), its audio exactly the pieces joined.
        """
        try:
            plan = self._plan(request)
        except BaseException as exc:
            self.metrics.record_synthesis_failure(request, exc)
            raise
        return self._metered_stream(request, self._stream(plan, progress, cancel))

    def _metered_stream(self, request: SynthesisRequest, pieces: Iterator[AudioPiece]) -> Iterator[AudioPiece]:
        started = time.perf_counter()
        samples = 0
        try:
            with closing(pieces):  # type: ignore[type-var]  # a generator has close()
                for piece in pieces:
                    if piece.report is None:  # a chunk's report carries no audio
                        samples += len(piece.audio)
                        self.metrics.record_stream_piece(request)
                    yield piece
        except BaseException as exc:
            self.metrics.record_synthesis_failure(request, exc)
            raise
        self.metrics.record_synthesis(request, seconds=time.perf_counter() - started, audio_s=samples / SAMPLE_RATE)

    def validate_synthesis(self, request: SynthesisRequest) -> None:
        """Raise what synthesize() would raise for this request before touching a model (for job queues)."""
        self._plan(request)

    def _stream(
        self, plan: _Plan, progress: ProgressCallback | None, cancel: threading.Event | None
    ) -> Iterator[AudioPiece]:
        started = time.perf_counter()
        timings = _new_timings()
        joiner = StreamJoiner(self._crossfade_samples)
        first_audio_s: float | None = None
        sent: list[np.ndarray] = []
        reports: list[ChunkReport] = []
        seed = plan.params.seed
        with self.manager.gpu_slot(cancel=cancel):
            self.metrics.record_queue_wait(plan.surface, time.perf_counter() - started)
            reference, chunks = self._prepare_run(plan, timings, progress)
            total = len(chunks)
            with self._lease(XCODEC2, timings):
                runner = self._take_runner(plan, reference, chunks, timings, cancel)
                codec = _ManagedCodec(self.manager, timings)
                config = StreamingConfig(first_window_codes=self.settings.stream_first_codes)
                _notify(progress, 0, total, "generate")
                try:
                    # Closed inside the slot: an abandoned stream cancels its takes before the slot is given back.
                    for item in runner.play(
                        lambda: StreamingDecoder(codec, reference.codes, config), self._crossfade_samples
                    ):
                        if isinstance(item, ChunkReport):
                            reports.append(item)
                            if plan.policy is None or not plan.policy.timed_words:
                                continue  # sent only to those who asked for the checks (verify, captions)
                            yield AudioPiece(
                                audio=np.zeros(0, np.float32),
                                chunk_index=item.index,
                                chunks_total=total,
                                seed=seed,
                                report=item,
                            )
                            continue
                        index, audio, first, last = item
                        ready = joiner.push(audio) if first else joiner.push_continued(audio)
                        if last:
                            _notify(progress, index + 1, total, "chunk_done")
                        if not len(ready):
                            continue
                        if first_audio_s is None:
                            first_audio_s = time.perf_counter() - started
                            self.metrics.record_first_audio(plan.surface, first_audio_s)
                        sent.append(ready)
                        yield AudioPiece(audio=ready, chunk_index=index, chunks_total=total, seed=seed)
                finally:
                    runner.close()
                    timings["generate"] += runner.wait_s
        tail = joiner.finish()
        sent.append(tail)
        self._note_takes(plan, runner, reports)
        timings["total"] = time.perf_counter() - started
        audio = np.concatenate(sent).astype(np.float32, copy=False)
        result = self._result(plan, reference, chunks, timings, audio, reports, _kept_codes(runner))
        yield AudioPiece(audio=tail, chunk_index=total - 1, chunks_total=total, final=True, seed=seed, result=result)

    @property
    def _crossfade_samples(self) -> int:
        return int(SAMPLE_RATE * self.settings.crossfade_ms / 1000)

    def _plan(self, request: SynthesisRequest) -> _Plan:
        """The checks that need settings or the disk (the request checked its own fields when it was made), so
        bad requests never wait in the queue."""
        if not isinstance(request, SynthesisRequest):
            raise TypeError(f"synthesize() takes a SynthesisRequest, got {type(request).__name__}")
        if len(request.text) > self.settings.max_text_chars:
            raise InvalidInput(
                f"text is {len(request.text)} characters long; the limit is {self.settings.max_text_chars} "
                "(MAX_TEXT_CHARS); split it into several requests",
                field="text",
            )
        plan = _Plan(
            text=request.text,
            params=self._resolve_params(request.params),
            language=self._check_language(request.language),
            surface=request.surface,
            policy=QualityPolicy.for_request(self.settings, request),
            captions=request.captions,
        )
        if request.voice:
            plan.voice = self.voices.get(request.voice)
        elif request.reference_audio is not None:
            plan.prepared = prepare_reference(
                request.reference_audio,
                max_seconds=self.settings.max_reference_seconds,
                min_seconds=self.settings.min_reference_seconds,
                max_bytes=self.settings.max_upload_bytes,
            )
            plan.reference_text = request.reference_text
            if plan.prepared.trimmed:
                notice = (
                    f"the reference audio was {plan.prepared.original_seconds:.1f} s long and was trimmed to "
                    f"{len(plan.prepared.samples) / SAMPLE_RATE:.1f} s (MAX_REFERENCE_SECONDS)"
                )
                if request.reference_text:
                    # The transcript must match the audio the model hears, and a given transcript covers the
                    # whole clip: transcribe the part that is kept instead.
                    notice += "; its transcript was redone for the part that was kept"
                    plan.reference_text = None
                plan.warnings.append(notice)
        return plan

    def _resolve_params(self, params: GenerationParams) -> _ResolvedParams:
        s = self.settings
        seed = params.seed if params.seed is not None else random.randint(0, MAX_SEED)
        return _ResolvedParams(
            temperature=float(params.temperature if params.temperature is not None else s.default_temperature),
            top_p=float(params.top_p if params.top_p is not None else s.default_top_p),
            top_k=int(params.top_k if params.top_k is not None else s.default_top_k),
            repetition_penalty=float(
                params.repetition_penalty if params.repetition_penalty is not None else s.default_repetition_penalty
            ),
            max_audio_seconds=float(
                params.max_audio_seconds if params.max_audio_seconds is not None else s.max_audio_seconds
            ),
            seed=int(seed),
        )

    @staticmethod
    def _check_language(language: str | None) -> str | None:
        if language is None:
            return None
        if not isinstance(language, str):
            raise InvalidInput("language must be a code such as 'en' or 'zh'", field="language")
        code = language.strip().lower()
        if code in ("", "auto"):
            return None
        from faster_whisper.tokenizer import _LANGUAGE_CODES

        if code not in _LANGUAGE_CODES:
            raise InvalidInput(
                f"language {language!r} is not one Whisper knows; use a code such as 'en', 'zh', 'ja' or 'auto'",
                field="language",
            )
        return code

    def _prepare_run(
        self, plan: _Plan, timings: dict[str, float], progress: ProgressCallback | None
    ) -> tuple[_Reference, list[str]]:
        """Transcribe and encode the reference, then split the text by the token budget it leaves."""
        reference = _Reference()
        if plan.voice is not None:
            reference = _Reference(
                text=plan.voice.transcript,
                codes=self._voice_codes(plan.voice, timings),
                seconds=plan.voice.duration_s,
                voice=plan.voice.name,
            )
        elif plan.prepared is not None:
            samples = plan.prepared.samples
            transcript = plan.reference_text
            if not transcript:
                _notify(progress, 0, 1, "transcribe")
                transcript = self._transcribe_samples(samples, plan.language, timings).text
                if not normalize_text(transcript):
                    if plan.prepared.trimmed:
                        raise InvalidInput(
                            "no speech was recognised in the part of the reference that was kept (the first "
                            f"{len(samples) / SAMPLE_RATE:.1f} s); give a shorter clip of clear speech, at most "
                            f"{self.settings.max_reference_seconds:.0f} s, with its transcript",
                            field="reference_audio",
                        )
                    raise InvalidInput(
                        "no speech was recognised in the reference audio; give its transcript in reference_text, "
                        "or use a clearer recording",
                        field="reference_text",
                    )
            _notify(progress, 0, 1, "encode")
            with self._lease(XCODEC2, timings):
                t0 = time.perf_counter()
                codes = self._encode(samples)
                timings["encode"] = time.perf_counter() - t0
            reference = _Reference(
                text=normalize_text(transcript),
                codes=list(codes),
                seconds=len(samples) / SAMPLE_RATE,
                trimmed=plan.prepared.trimmed,
            )
        chunks = self._split_text(plan, reference)
        return reference, chunks

    def _voice_codes(self, voice: VoiceInfo, timings: dict[str, float]) -> list[int]:
        if voice.codes and voice.codec_model == self.settings.xcodec2_model:
            return voice.codes
        # Saved with another codec checkpoint: its codes mean nothing to this one. Re-encode once and keep them.
        samples = self.voices.load_reference(voice.name)
        with self._lease(XCODEC2, timings):
            t0 = time.perf_counter()
            codes = self._encode(samples)
            timings["encode"] = time.perf_counter() - t0
        self.voices.update_codes(voice.name, codes, codec_model=self.settings.xcodec2_model)
        logger.info("voice %r re-encoded for codec %s", voice.name, self.settings.xcodec2_model)
        return codes

    def _split_text(self, plan: _Plan, reference: _Reference) -> list[str]:
        from llasa.models import LLASA_CONTEXT_TOKENS

        tokenizer = self._tokenizer()
        overhead = len(build_prompt_ids(tokenizer, "", reference.text or None, reference.codes))
        # What is left of the context for one chunk's text tokens plus its new speech codes (+ the end token).
        room = LLASA_CONTEXT_TOKENS - overhead - 1
        if room < MIN_CHUNK_CODES:
            raise InvalidInput(
                f"the reference ({reference.seconds:.1f} s of audio and its transcript) fills "
                f"{overhead} of the model's {LLASA_CONTEXT_TOKENS} tokens and leaves no room to speak; "
                "use a shorter reference clip or a shorter transcript",
                field="reference_audio",
            )

        def cost(chunk: str) -> int:
            return len(tokenizer.encode(" " + chunk, add_special_tokens=False)) + estimate_speech_codes(chunk)

        # Chunks depend on the text and the reference only; max_audio_seconds caps each chunk's generation
        # (a bound on run-on sampling), it does not change how the text is split.
        return chunk_text(plan.text, cost=cost, budget=min(room, int(CHUNK_MAX_SECONDS * CODES_PER_SECOND)))

    def _take_runner(
        self,
        plan: _Plan,
        reference: _Reference,
        chunks: list[str],
        timings: dict[str, float],
        cancel: threading.Event | None,
    ) -> TakeRunner:
        """Every chunk as a job for the engine (all generated at once, in the batch with other requests), with the
        guards and verification of `llasa.takes`."""
        from llasa.models import LLASA_CONTEXT_TOKENS

        params = plan.params
        max_codes = int(params.max_audio_seconds * CODES_PER_SECOND)
        tokenizer = self._tokenizer()
        jobs = []
        for index, chunk in enumerate(chunks):
            prompt_ids = build_prompt_ids(tokenizer, chunk, reference.text or None, reference.codes)
            sampling = SamplingParams(
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k,
                repetition_penalty=params.repetition_penalty,
                seed=params.seed,  # each take's own seed comes from it (llasa.takes.take_seed)
                max_new_tokens=min(max_codes, LLASA_CONTEXT_TOKENS - len(prompt_ids) - 1),
            )
            jobs.append(ChunkJob(index, chunk, prompt_ids, sampling))
        codec = _ManagedCodec(self.manager, timings)
        cut = len(reference.codes) * SAMPLES_PER_CODE

        def decode(codes: list[int]) -> np.ndarray:
            # reference + new codes decoded together (the codec's best), the reference's samples cut off exactly
            return np.asarray(codec.decode([*reference.codes, *codes])[cut:], dtype=np.float32)

        def transcribe(audio: np.ndarray, language: str | None) -> TranscriptionResult:
            started = time.perf_counter()
            try:
                return self._transcribe_samples(audio, language, words=True)
            finally:
                timings["verify"] = timings.get("verify", 0.0) + time.perf_counter() - started

        assert plan.policy is not None
        runner = TakeRunner(
            self._engine_backend(), jobs, plan.policy, decode=decode, transcribe=transcribe, cancel=cancel
        )
        self.metrics.record_sequences(plan.surface, len(jobs))
        return runner

    def _note_takes(self, plan: _Plan, runner: TakeRunner, reports: list[ChunkReport]) -> None:
        """Warnings about the kept takes (cut off by max_audio_seconds, or still flawed after every retry), and
        every flawed take counted in the metrics."""
        self.metrics.record_flawed_takes(
            plan.surface, [t.reason for job in runner.jobs for t in job.takes if t.done and t.reason is not None]
        )
        truncated = [job.index + 1 for job in runner.jobs if job.kept is not None and job.kept.truncated]
        if truncated:
            which = "every chunk" if len(truncated) == len(runner.jobs) else f"chunk {', '.join(map(str, truncated))}"
            plan.warnings.append(
                f"{which} reached max_audio_seconds ({plan.params.max_audio_seconds:g} s) before the model finished "
                "speaking, so the end may be cut off; raise max_audio_seconds"
            )
        for report in reports:
            kept = runner.jobs[report.index].kept
            if kept is None or kept.ok:
                continue
            plan.warnings.append(
                f"chunk {report.index + 1} of {len(runner.jobs)}: kept take {report.kept_attempt} of "
                f"{report.attempts}, the best, though it did not pass every check: " + "; ".join(report.problems)
            )

    def _tokenizer(self) -> Any:
        """The Llasa tokenizer (loaded once; prompts are built here, whichever engine samples them)."""
        from llasa.models import load_llasa_tokenizer

        return load_llasa_tokenizer(self.settings)

    def _engine_backend(self) -> GenerationBackend:
        """The engine (LLASA_ENGINE), built at first use: batched generation for every request and chunk."""
        with self._engine_lock:
            if self._engine is None:
                from llasa.engine.factory import build_backend

                self._engine = build_backend(self.settings, self.manager, lookup_token_ids(self._tokenizer()))
            return self._engine

    def _encode(self, samples: np.ndarray) -> list[int]:
        """XCodec2 codes of 16 kHz samples; on CUDA out-of-memory idle models move out and it runs once more."""
        return list(self.manager.run_with_oom_retry(XCODEC2, lambda codec: codec.encode(samples)))

    @contextmanager
    def _lease(self, name: str, timings: dict[str, float] | None = None) -> Iterator[Any]:
        """A manager lease whose wait (a load from disk or a reload from CPU RAM) is counted as timings["load"]."""
        started = time.perf_counter()
        with self.manager.use(name) as model:
            if timings is not None:
                timings["load"] = timings.get("load", 0.0) + time.perf_counter() - started
            yield model

    # --- transcription -------------------------------------------------------------------------------------

    def transcribe(self, request: TranscriptionRequest) -> TranscriptionResult:
        """Transcribe speech with faster-whisper (voice-activity filter on). Silence gives empty text."""
        started = time.perf_counter()
        try:
            code = self._check_language(request.language)
            samples = load_audio(request.audio, sample_rate=SAMPLE_RATE, max_bytes=self.settings.max_upload_bytes)
            with self.manager.gpu_slot():
                result = self._transcribe_samples(samples, code)
        except BaseException as exc:
            self.metrics.record_transcription(request, seconds=None, error=exc)
            raise
        self.metrics.record_transcription(request, seconds=time.perf_counter() - started, error=None)
        return result

    def _transcribe_samples(
        self,
        samples: np.ndarray,
        language: str | None,
        timings: dict[str, float] | None = None,
        *,
        words: bool = False,
    ) -> TranscriptionResult:
        max_new_tokens = self.settings.whisper_max_new_tokens or None
        with self._lease(WHISPER, timings):
            started = time.perf_counter()
            result = self.manager.run_with_oom_retry(
                WHISPER, lambda model: model.transcribe(samples, language, max_new_tokens=max_new_tokens, words=words)
            )
            if timings is not None:
                timings["transcribe"] = time.perf_counter() - started
            return result

    # --- voices --------------------------------------------------------------------------------------------

    def list_voices(self) -> list[VoiceInfo]:
        return self.voices.list()

    def get_voice(self, name: str) -> VoiceInfo:
        return self.voices.get(name)

    def voice_audio_path(self, name: str) -> Path:
        return self.voices.reference_path(name)

    def create_voice(
        self, name: str, audio: AudioSource, transcript: str | None = None, *, overwrite: bool = False
    ) -> VoiceInfo:
        """Save a reference as a named voice: trimmed 16 kHz audio, its transcript (given or transcribed), codes."""
        from llasa.voices import validate_voice_name

        name = validate_voice_name(name)
        if not overwrite and any(v.name == name for v in self.voices.list()):
            # Checked again atomically when saving; this early check only spares the caller the GPU work.
            raise VoiceExists(
                f"a voice named {name!r} already exists; delete it first or choose another name", field="name"
            )
        if transcript is not None and not isinstance(transcript, str):
            raise InvalidInput("transcript must be a string", field="transcript")
        prepared = prepare_reference(
            audio,
            max_seconds=self.settings.max_reference_seconds,
            min_seconds=self.settings.min_reference_seconds,
            max_bytes=self.settings.max_upload_bytes,
        )
        given = normalize_text(transcript) if transcript else ""
        refuse_control_markup(given, "transcript")
        warnings = []
        if given and prepared.trimmed:
            warnings.append(
                f"the audio was {prepared.original_seconds:.1f} s long and was trimmed to "
                f"{len(prepared.samples) / SAMPLE_RATE:.1f} s; the given transcript covered the whole clip, so the "
                "kept part was transcribed again (check it, and edit it if needed)"
            )
        with self.manager.gpu_slot():
            if not given or prepared.trimmed:
                given = normalize_text(self._transcribe_samples(prepared.samples, None).text)
                if not given:
                    raise InvalidInput(
                        "no speech was recognised in the audio; give its transcript, or use a clearer recording",
                        field="transcript",
                    )
            codes = self._encode(prepared.samples)
        info = self.voices.save(
            name, prepared.samples, given, codes, codec_model=self.settings.xcodec2_model, overwrite=overwrite
        )
        info.warnings = warnings
        return info

    def update_voice(self, name: str, transcript: str) -> VoiceInfo:
        """Replace a saved voice's transcript (it must match the voice's audio word for word). No model work."""
        if not isinstance(transcript, str) or not normalize_text(transcript):
            raise InvalidInput("transcript is empty; give the words spoken in the voice's audio", field="transcript")
        cleaned = normalize_text(transcript)
        refuse_control_markup(cleaned, "transcript")
        return self.voices.update_transcript(name, cleaned)

    def delete_voice(self, name: str) -> None:
        self.voices.delete(name)

    # --- outputs -------------------------------------------------------------------------------------------

    def save_output(self, result: SynthesisResult, fmt: str = "wav", *, sample_rate: int | None = None) -> SavedOutput:
        """Encode a result and keep it under OUTPUT_DIR for download."""
        fmt = validate_output(fmt, sample_rate or result.sample_rate)
        data = encode_audio(result.audio, result.sample_rate, fmt, target_sample_rate=sample_rate)
        return self.outputs.save(data, fmt, AUDIO_FORMATS[fmt])

    def output_path(self, output_id: str) -> Path:
        return self.outputs.path_for(output_id)

    def cleanup_outputs(self) -> int:
        return self.outputs.cleanup()

    def start_output_cleanup(self, interval_s: float | None = None) -> None:
        """Delete expired outputs now and then every `interval_s` (default: a tenth of OUTPUT_TTL_HOURS, 1 min to
        1 h) on a daemon thread, until shutdown(). Whoever runs the service (main.py, a front end run alone)
        starts it; nothing starts at construction."""
        if self._cleanup_thread is not None:
            return
        if interval_s is None:
            interval_s = cleanup_interval_s(self.settings.output_ttl_hours)

        def loop() -> None:
            while True:
                try:
                    self.cleanup_outputs()
                except OSError:
                    logger.warning("output cleanup failed", exc_info=True)
                if self._cleanup_stop.wait(interval_s):
                    return

        self._cleanup_thread = threading.Thread(target=loop, name="output-cleanup", daemon=True)
        self._cleanup_thread.start()

    # --- GPU control and status ----------------------------------------------------------------------------

    def gpu_status(self) -> GPUStatus:
        """The device, every model, the residency policy, the queue and the engine, typed (`llasa.types.GPUStatus`)."""
        status = self.manager.snapshot()
        status.engine = self.engine_status()
        return status

    def engine_status(self) -> EngineStatus:
        """What the engine is doing: sequences running and waiting, the batch limit, tokens so far (vLLM: its
        replicas). Not started until the first synthesis."""
        backend = self.settings.llasa_engine
        engine = self._engine
        vllm: dict[str, Any] = {}
        if backend == "vllm":
            from llasa.models.vllm_server import server_is_sleeping, vllm_managed, vllm_urls

            managed, reason = vllm_managed(self.settings)
            vllm = {"managed": managed, "managed_reason": reason}
            if managed and engine is not None:
                vllm["sleeping"] = server_is_sleeping(vllm_urls(self.settings)[0])
        if engine is None:
            return EngineStatus(backend=backend, started=False, ready=True, **vllm)
        stats = engine.stats()
        return EngineStatus(
            **vllm,
            backend=backend,
            started=True,
            ready=stats.ready,
            running=stats.running,
            waiting=stats.waiting,
            batch_limit=stats.batch_limit,
            steps=stats.steps,
            tokens=stats.tokens,
            oom_shrinks=stats.oom_shrinks,
            replicas=list(stats.replicas),
        )

    def engine_readiness(self) -> EngineStatus:
        """The engine's status with its readiness measured now: a vLLM engine asks every replica's /health (and is
        built for that if no synthesis has built it yet), so /ready turns 503 while no replica answers and 200
        again as soon as one does, without a request having to fail first."""
        if self.settings.llasa_engine == "vllm":
            from llasa.engine.vllm_backend import VLLMBackend

            engine = self._engine_backend()
            if isinstance(engine, VLLMBackend):
                engine.check_health()
        return self.engine_status()

    def offload(self, name: str | None = None) -> dict[str, Any]:
        return self.manager.offload(name)

    def release(self, name: str | None = None) -> dict[str, Any]:
        return self.manager.release(name)

    def set_timeouts(
        self,
        *,
        idle_timeout_s: float | None = None,
        evict_timeout_s: float | None = None,
        offload_after_use: bool | None = None,
    ) -> dict[str, Any]:
        """Change the GPU manager's timeouts at run time; ranges are the manager's to check."""
        if idle_timeout_s is None and evict_timeout_s is None and offload_after_use is None:
            raise InvalidInput(NOTHING_TO_CHANGE, field="idle_timeout_s")
        return self.manager.set_timeouts(
            idle_timeout_s=idle_timeout_s,
            evict_timeout_s=evict_timeout_s,
            offload_after_use=offload_after_use,
        )

    @property
    def queue_depth(self) -> int:
        return int(self.manager.queue_depth)

    def health(self) -> dict[str, Any]:
        status = self.manager.snapshot()
        return {
            "status": "ok",
            "version": __version__,
            "device": self.manager.device,
            "models": {name: info.state for name, info in status.models.items()},
        }

    def shutdown(self) -> None:
        """Stop the output cleanup and the engine, and release every model (RAM and VRAM come back)."""
        self._cleanup_stop.set()
        if self._cleanup_thread is not None:
            self._cleanup_thread.join(timeout=5)
        with self._engine_lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.shutdown()
        self.manager.shutdown()


def _notify(progress: ProgressCallback | None, done: int, total: int, stage: str) -> None:
    if progress is None:
        return
    try:
        progress(done, total, stage)
    except Exception:
        # A broken progress listener (a closed browser tab, a gone MCP client) must not kill the synthesis.
        logger.debug("progress callback failed", exc_info=True)


def _new_timings() -> dict[str, float]:
    return {"load": 0.0, "transcribe": 0.0, "encode": 0.0, "generate": 0.0, "decode": 0.0}


def _kept_codes(runner: TakeRunner) -> int:
    """Speech codes behind the audio: those of every chunk's kept take."""
    return sum(len(job.kept.codes) for job in runner.jobs if job.kept is not None)
