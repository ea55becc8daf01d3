"""Plain data that crosses the seam between the core and the front ends. No torch here."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llasa.errors import InvalidInput

#: What every audio input may be: encoded file bytes, or a path to a file.
AudioSource = bytes | bytearray | str | Path

#: progress(chunks_done, chunks_total, stage) is called as a synthesis advances.
ProgressCallback = Callable[[int, int, str], None]

SAMPLE_RATE = 16_000
"""XCodec2 works at 16 kHz only; every reference is resampled to it and every result is produced at it."""
SAMPLES_PER_CODE = 320
"""One XCodec2 code covers 320 samples (20 ms, 50 codes per second)."""
CODES_PER_SECOND = SAMPLE_RATE // SAMPLES_PER_CODE
MAX_SEED = 2**32 - 1


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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

    @property
    def duration_s(self) -> float:
        return len(self.audio) / self.sample_rate

    @property
    def real_time_factor(self) -> float:
        """Wall time over audio time (below 1 = faster than real time)."""
        total = self.timings_s.get("total", sum(self.timings_s.values()))
        return total / self.duration_s if self.duration_s else 0.0

    def facts(self) -> dict[str, Any]:
        """Everything but the samples, JSON-ready."""
        return {
            "duration_s": round(self.duration_s, 3),
            "sample_rate": self.sample_rate,
            "num_codes": self.num_codes,
            "reference_text": self.reference_text,
            "reference_seconds": round(self.reference_seconds, 3),
            "reference_trimmed": self.reference_trimmed,
            "chunks": self.chunks,
            "timings_s": {k: round(v, 4) for k, v in self.timings_s.items()},
            "real_time_factor": round(self.real_time_factor, 4),
            "seed": self.seed,
            "voice": self.voice,
            "warnings": list(self.warnings),
        }


@dataclass
class AudioPiece:
    """A piece of a streamed synthesis: audio ready to play, 16 kHz mono float32."""

    audio: np.ndarray
    chunk_index: int
    chunks_total: int
    final: bool = False
    seed: int | None = None
    """The seed the whole synthesis uses (repeat it to get the same audio)."""
