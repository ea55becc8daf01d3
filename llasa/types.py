"""Plain data that crosses the seam between the core and the front ends. No torch here."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from llasa.errors import InvalidInput
from llasa.quality.captions import CAPTION_FORMATS
from llasa.quality.transcript import TimedWord
from llasa.text import normalize_text, refuse_control_markup

# The units live in llasa/units.py; they are re-exported here, where the rest of the code has always found them.
from llasa.units import CODES_PER_SECOND, MAX_SEED, SAMPLE_RATE, SAMPLES_PER_CODE  # noqa: F401

MODEL_NAMES = ("llasa", "xcodec2", "whisper")
MANAGEABLE_MODEL_NAMES = (*MODEL_NAMES, "vllm")
"""Every name a GPU control may target: "vllm" is registered only when LLASA_ENGINE=vllm and the manager manages
a vLLM server on this machine (VLLM_MANAGED); asking for it otherwise is answered with the registered names."""
"""The models the service registers with the GPU manager, in the order every status lists them."""

#: What every audio input may be: encoded file bytes, or a path to a file.
AudioSource = bytes | bytearray | str | Path

#: progress(chunks_done, chunks_total, stage) is called as a synthesis advances.
ProgressCallback = Callable[[int, int, str], None]


@dataclass
class GenerationParams:
    """Sampling parameters of one synthesis. `None` means "use the configured default"."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    max_audio_seconds: float | None = None
    seed: int | None = None

    def validate(self) -> None:
        """Raise InvalidInput naming the first parameter out of range."""
        checks: list[tuple[str, Any, Callable[[Any], bool], str]] = [
            ("temperature", self.temperature, lambda v: 0 < v <= 2, "between 0 (exclusive) and 2"),
            ("top_p", self.top_p, lambda v: 0 < v <= 1, "in (0, 1]"),
            ("top_k", self.top_k, lambda v: 0 <= v <= 65536, "between 0 (off) and 65536"),
            ("repetition_penalty", self.repetition_penalty, lambda v: 0.5 <= v <= 2, "between 0.5 and 2"),
            # One code is 20 ms: less than that would ask for zero codes.
            ("max_audio_seconds", self.max_audio_seconds, lambda v: 0.02 <= v <= 300, "between 0.02 and 300"),
            ("seed", self.seed, lambda v: 0 <= v <= MAX_SEED, f"between 0 and {MAX_SEED}"),
        ]
        for name, value, ok, allowed in checks:
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidInput(f"{name} must be a number, got {type(value).__name__}", field=name)
            if name in ("top_k", "seed") and not float(value).is_integer():
                raise InvalidInput(f"{name} must be a whole number, got {value}", field=name)
            if isinstance(value, float) and not math.isfinite(value):
                raise InvalidInput(f"{name} must be a finite number, got {value}", field=name)
            if not ok(value):
                raise InvalidInput(f"{name} is {value}; it must be {allowed}", field=name)


@dataclass
class Segment:
    start_s: float
    end_s: float
    text: str


@dataclass
class TranscriptionResult:
    text: str
    language: str
    duration_s: float
    segments: list[Segment] = field(default_factory=list)
    words: list[tuple[str, float, float]] = field(default_factory=list)
    """(word, start_s, end_s) as the recogniser spelled them, when word timings were asked for (verify, captions)."""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not self.words:
            del out["words"]  # only the service's own checks ask for them
        return out


@dataclass
class SynthesisResult:
    """One finished synthesis: 16 kHz mono float32 audio in [-1, 1] and the facts about how it was made."""

    audio: np.ndarray
    sample_rate: int
    num_codes: int
    reference_text: str
    """The transcript the model was conditioned on (given, transcribed, or the saved voice's); "" without one."""
    chunks: int
    timings_s: dict[str, float]
    """Wall time per stage: load (models coming from disk or CPU RAM), transcribe, encode, generate, decode, total."""
    reference_seconds: float = 0.0
    reference_trimmed: bool = False
    """True when the reference was longer than MAX_REFERENCE_SECONDS and was cut to it."""
    seed: int | None = None
    voice: str | None = None
    warnings: list[str] = field(default_factory=list)
    """Things the caller should know, e.g. that the reference was trimmed and re-transcribed."""
    chunk_reports: list[ChunkReport] = field(default_factory=list)
    """Per chunk: its text, where it sits in the audio, the takes it needed, and (verified) what was heard."""
    words: list[TimedWord] | None = None
    """Word timings of the audio, in the requested text's spelling (when verified or captions were asked for)."""
    captions: str | None = None
    """The captions in `caption_format` (srt, vtt or json) when they were asked for."""
    caption_format: str | None = None

    @property
    def duration_s(self) -> float:
        return len(self.audio) / self.sample_rate

    @property
    def real_time_factor(self) -> float:
        """Wall time over audio time (below 1 = faster than real time)."""
        total = self.timings_s.get("total", sum(self.timings_s.values()))
        return total / self.duration_s if self.duration_s else 0.0

    def summary(self) -> SynthesisFacts:
        """Everything but the samples, as the one model every face shows (REST JSON, jobs, MCP)."""
        return SynthesisFacts(
            duration_s=round(self.duration_s, 3),
            sample_rate=self.sample_rate,
            num_codes=self.num_codes,
            reference_text=self.reference_text,
            reference_seconds=round(self.reference_seconds, 3),
            reference_trimmed=self.reference_trimmed,
            chunks=self.chunks,
            timings_s={k: round(v, 4) for k, v in self.timings_s.items()},
            real_time_factor=round(self.real_time_factor, 4),
            seed=self.seed,
            voice=self.voice,
            warnings=list(self.warnings),
            chunk_reports=[report.summary() for report in self.chunk_reports],
            captions=self.captions,
            caption_format=self.caption_format,
        )

    def facts(self) -> dict[str, Any]:
        """`summary()`, JSON-ready."""
        return self.summary().model_dump()


class ChunkFacts(BaseModel):
    """One text chunk of a synthesis: the takes it needed and, when verified, what the recogniser heard."""

    index: int = Field(description="0-based position of the chunk.")
    text: str = Field(description="The chunk's text.")
    start_s: float = Field(description="Where the chunk starts in the audio (seconds).")
    end_s: float = Field(description="Where it ends (seconds).")
    attempts: int = Field(description="Takes generated for the chunk (1 = the first was kept).")
    kept_attempt: int = Field(description="Which take was kept (1-based).")
    problems: list[str] = Field(description="Why each rejected take (and the kept one, if flawed) was rejected.")
    transcript: str | None = Field(None, description="What the recogniser heard in the kept take (verified).")
    error_rate: float | None = Field(None, description="Its error rate against the chunk's text (verified).")


class SynthesisFacts(BaseModel):
    """How a synthesis was made: the result schema of every face (REST's JSON and jobs, MCP's SpeechResult)."""

    duration_s: float = Field(description="Seconds of audio produced.")
    sample_rate: int = Field(description="Sample rate of the audio (Hz).")
    num_codes: int = Field(description="Speech codes generated (50 per second of audio).")
    reference_text: str = Field(description="Transcript of the reference the voice was cloned from ('' if none).")
    reference_seconds: float
    reference_trimmed: bool = Field(description="True when the reference was cut to MAX_REFERENCE_SECONDS.")
    chunks: int = Field(description="Number of text chunks synthesised one after another.")
    timings_s: dict[str, float] = Field(description="Wall time per stage (load, transcribe, encode, generate...).")
    real_time_factor: float = Field(description="Wall time over audio time (below 1 = faster than real time).")
    seed: int | None = Field(description="Seed used; pass it again to repeat the result.")
    voice: str | None = Field(description="Saved voice used, if any.")
    warnings: list[str] = Field(description="Things to tell the user, e.g. that the reference was trimmed.")
    chunk_reports: list[ChunkFacts] = Field(
        default_factory=list, description="Per text chunk: takes used, and what verification heard."
    )
    captions: str | None = Field(None, description="Captions of the audio in caption_format, when asked for.")
    caption_format: str | None = Field(None, description="srt, vtt or json (null: no captions were asked for).")


@dataclass
class ChunkReport:
    """How one text chunk was made (see `ChunkFacts`); `words` are its word timings in the whole audio."""

    index: int
    text: str
    start_s: float
    end_s: float
    attempts: int
    kept_attempt: int
    problems: list[str] = field(default_factory=list)
    transcript: str | None = None
    error_rate: float | None = None
    words: list[TimedWord] | None = None

    def summary(self) -> ChunkFacts:
        return ChunkFacts(
            index=self.index,
            text=self.text,
            start_s=round(self.start_s, 3),
            end_s=round(self.end_s, 3),
            attempts=self.attempts,
            kept_attempt=self.kept_attempt,
            problems=list(self.problems),
            transcript=self.transcript,
            error_rate=None if self.error_rate is None else round(self.error_rate, 4),
        )


@dataclass
class AudioPiece:
    """A piece of a streamed synthesis: audio ready to play, 16 kHz mono float32."""

    audio: np.ndarray
    chunk_index: int
    chunks_total: int
    final: bool = False
    seed: int | None = None
    """The seed the whole synthesis uses (repeat it to get the same audio)."""
    result: SynthesisResult | None = None
    """On the final piece only: the whole synthesis as synthesize() reports it, its audio exactly the stream's
    pieces joined (so a face can play the stream and offer the same audio as a file at the end)."""
    report: ChunkReport | None = None
    """A chunk's report (its verification and word timings) as soon as it is ready; such a piece has no audio.
    Streams with verify or captions send one per chunk, after the chunk's audio."""


# --------------------------------------------------------------------------------------------------------------
# Requests: what a face builds from its wire format and hands to the service


SURFACES = ("rest", "mcp", "webui", "core")
"""Which face asked (the `surface` label of every metric); "core" = a caller inside the process (tests, tools)."""


@dataclass(frozen=True)
class SynthesisRequest:
    """One synthesis as every face builds it (REST, MCP, the UI, async jobs), checked once when it is made.

    Everything that can be checked without settings or models is checked here (types, empty text, control
    markup, parameter ranges, which reference fields go together) and raises `InvalidInput` naming the field;
    the service checks the rest (MAX_TEXT_CHARS, the language, decoding the reference) before the GPU queue.
    `text` and `reference_text` are stored normalised; `voice` is None when blank.
    """

    text: str
    reference_audio: AudioSource | None = None
    reference_text: str | None = None
    voice: str | None = None
    language: str | None = None
    params: GenerationParams = field(default_factory=GenerationParams)
    surface: str = "core"
    endpoint: str = ""
    """The route, tool or tab inside the face (a metrics label): "tts", "speech_stream", "generate_speech"..."""
    verify: bool | None = None
    """Transcribe every chunk and generate it again when it was not read right (None = VERIFY_DEFAULT)."""
    captions: str | None = None
    """Word-timed captions of the result: "srt", "vtt" or "json" (None or "" = none)."""

    def __post_init__(self) -> None:
        self._check_quality_fields()
        if not isinstance(self.text, str):
            raise InvalidInput(f"text must be a string, got {type(self.text).__name__}", field="text")
        text = normalize_text(self.text)
        if not text:
            raise InvalidInput("text is empty; give the words to speak", field="text")
        refuse_control_markup(text, "text")
        if not isinstance(self.params, GenerationParams):
            raise InvalidInput("params must be generation parameters", field="params")
        self.params.validate()
        reference_text = self.reference_text
        if reference_text is not None and not isinstance(reference_text, str):
            raise InvalidInput("reference_text must be a string", field="reference_text")
        reference_text = normalize_text(reference_text) if reference_text else None
        if reference_text:
            refuse_control_markup(reference_text, "reference_text")
        voice = self.voice
        if voice is not None and not isinstance(voice, str):
            raise InvalidInput("voice must be the name of a saved voice", field="voice")
        voice = voice.strip() if voice and voice.strip() else None
        if voice and self.reference_audio is not None:
            raise InvalidInput("give either a saved voice or reference_audio, not both", field="voice")
        if voice and reference_text:
            raise InvalidInput(
                "reference_text cannot be combined with a saved voice (the voice has its own transcript; "
                "edit it by saving the voice again)",
                field="reference_text",
            )
        if reference_text and not voice and self.reference_audio is None:
            raise InvalidInput(
                "reference_text was given without reference_audio; add the audio it transcribes, or drop it",
                field="reference_text",
            )
        if self.language is not None and not isinstance(self.language, str):
            raise InvalidInput("language must be a code such as 'en' or 'zh'", field="language")
        if self.surface not in SURFACES:
            raise ValueError(f"surface must be one of {SURFACES}, got {self.surface!r}")
        object.__setattr__(self, "text", text)
        object.__setattr__(self, "reference_text", reference_text)
        object.__setattr__(self, "voice", voice)

    def _check_quality_fields(self) -> None:
        if self.verify is not None and not isinstance(self.verify, bool):
            raise InvalidInput("verify must be true or false", field="verify")
        captions = self.captions or None
        if captions is not None and captions not in CAPTION_FORMATS:
            raise InvalidInput(
                f"captions {self.captions!r} is not a caption format; use one of {', '.join(CAPTION_FORMATS)}",
                field="captions",
            )
        object.__setattr__(self, "captions", captions)


@dataclass(frozen=True)
class TranscriptionRequest:
    """One transcription: encoded audio (or a path the face has already checked) and an optional language."""

    audio: AudioSource
    language: str | None = None
    surface: str = "core"
    endpoint: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.audio, bytes | bytearray | str | Path):
            raise InvalidInput("audio must be an audio file's bytes", field="audio")
        if self.language is not None and not isinstance(self.language, str):
            raise InvalidInput("language must be a code such as 'en' or 'zh'", field="language")
        if self.surface not in SURFACES:
            raise ValueError(f"surface must be one of {SURFACES}, got {self.surface!r}")


# --------------------------------------------------------------------------------------------------------------
# GPU and model status: what every status surface shows (REST /api/gpu/status, MCP get_gpu_status, the UI)


@dataclass
class DeviceStatus:
    """The compute device: its name ("cuda:0", "cpu"), kind, and memory (NVML, torch, or psutil for the RAM)."""

    name: str
    kind: str
    total_bytes: int | None = None
    used_bytes: int | None = None
    free_bytes: int | None = None
    process_bytes: int | None = None
    source: str | None = None
    error: str | None = None
    """Why the memory numbers are missing (the device did not answer); None when they are there."""


@dataclass
class ModelStatus:
    """One model's row: where it is, how big, how busy, and what happened to it so far."""

    state: str
    """unloaded, loading, gpu (resident on the compute device) or cpu (offloaded to RAM)."""
    device: str | None
    size_bytes: int | None
    leases: int
    waiting: int
    moving: str | None
    pending: str | None
    last_used: str | None
    """ISO time of the end of the last lease (its start while leased)."""
    idle_s: float | None
    loads: int
    reloads: int
    offloads: int
    releases: int
    load_failures: int
    oom_errors: int
    last_load_s: float | None
    last_reload_s: float | None
    last_offload_s: float | None
    last_release_s: float | None
    last_error: str | None


@dataclass
class ResidencyPolicy:
    """The GPU manager's settings in force (timeouts change at run time; seconds, 0 = at once, -1 = never)."""

    offload_after_use: bool
    idle_timeout_s: float
    evict_timeout_s: float
    memory_headroom_mb: int
    wait_timeout_s: float
    monitor_interval_s: float
    max_queue: int


@dataclass
class QueueStatus:
    """The GPU job slots: any job running, how many wait, how many may wait, how many run of how many slots."""

    busy: bool
    depth: int
    max_queue: int
    running: int = 0
    slots: int = 1


@dataclass
class EngineStatus:
    """The engine that samples speech codes (LLASA_ENGINE): its batch now and its totals."""

    backend: str
    """"transformers" (embedded) or "vllm"."""
    started: bool
    """False until the first synthesis builds it."""
    ready: bool
    """Can take sequences (vLLM: at least one replica answers)."""
    running: int = 0
    """Sequences in the batch now (vLLM: in flight on its servers)."""
    waiting: int = 0
    """Sequences queued for a place in the batch."""
    batch_limit: int = 0
    """Most sequences one batch holds (MAX_BATCH_SEQUENCES, halved after an out-of-memory until idle)."""
    steps: int = 0
    """Decode steps run (each advances every running sequence by one token)."""
    tokens: int = 0
    """Tokens sampled since the start."""
    oom_shrinks: int = 0
    replicas: list[dict[str, Any]] = field(default_factory=list)
    """vLLM replicas: url, healthy, outstanding, completed, failures, last_error."""
    managed: bool = False
    """vLLM: whether the GPU manager manages the server (model "vllm": offload = sleep, reload = wake up)."""
    managed_reason: str = ""
    """vLLM: why it is managed or not (VLLM_MANAGED, a URL not on this host, several replicas)."""
    sleeping: bool | None = None
    """vLLM, managed: the server's own `/is_sleeping` (null when it does not answer)."""


@dataclass
class GPUStatus:
    """Everything a status surface shows."""

    device: DeviceStatus
    models: dict[str, ModelStatus]
    settings: ResidencyPolicy
    queue: QueueStatus
    monitor_running: bool
    engine: EngineStatus | None = None

    @property
    def busy(self) -> bool:
        """A job runs or waits, or a model is leased: what a graceful shutdown waits for."""
        return self.queue.busy or self.queue.depth > 0 or any(m.leases for m in self.models.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; the device's missing numbers are left out rather than sent as null."""
        out = asdict(self)
        out["device"] = {key: value for key, value in out["device"].items() if value is not None}
        if out["engine"] is None:  # the GPU manager's own status: the service adds the engine's
            del out["engine"]
        return out
