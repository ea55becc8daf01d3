"""Guards that catch a broken take of one chunk: codes stuck in a loop, speech far longer than its text can need,
and audio that is (nearly) silent or holds a long dead gap. Pure functions over codes and samples; the service
decides what to do (retry with the next seed, up to QUALITY_RETRIES).

Where the thresholds come from (no real takes exist on the machines this was built on, so they are derived from
what the model and the codec can produce, and each is a setting):

- XCodec2 makes 50 codes per second, one per 20 ms frame, from a 65,536-entry codebook. Speech changes phoneme
  every 60-120 ms, and even a steady vowel varies in pitch and amplitude frame to frame, so two seconds of ordinary
  speech (100 codes) use nearly as many distinct codes as frames; pauses add a handful of repeated near-silence
  codes. A stuck syllable or a held tone is a stationary signal: the codec maps it to the same few codes again and
  again. `LOOP_WINDOW_CODES` = 100 (2 s) with fewer than `LOOP_MIN_DISTINCT_CODES` = 20 distinct codes in any
  window is a loop: ordinary speech is far above 20 even with a 1 s pause in the window (50 speech frames), and a
  stationary sound is far below.
- The text bounds how long its speech can be. `llasa.text.estimate_speech_seconds` already assumes an ordinary
  rate (about 2.9 English words or 4.4 Mandarin syllables per second) plus 15 % and 0.2 s. Deliberately slow
  narration runs at about 1.6 words / 2.5 syllables per second, 1.8x the estimate's rate; `RUNON_LENGTH_FACTOR` =
  2.5 leaves room for long pauses on top, and `RUNON_SLACK_S` = 2 s keeps very short texts ("Hi.", estimated at
  half a second) from tripping on a breath. Past that bound the model is not reading the text any more.
- Dead air: a chunk whose RMS is below `SILENCE_MAX_DBFS` = -45 dBFS is silence (normalised speech sits near
  -20 dBFS, a quiet room at -60). Inside a chunk, sentence pauses last up to about a second; a run of 20 ms frames
  below -50 dBFS longer than `DEAD_AIR_MAX_GAP_S` = 1.5 s, away from the chunk's edges, is a gap no reading has.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from llasa.text import estimate_speech_seconds
from llasa.units import CODES_PER_SECOND, SAMPLE_RATE

if TYPE_CHECKING:
    from llasa.config import Settings


@dataclass(frozen=True)
class GuardLimits:
    """The thresholds (the module docstring says why each is what it is; each is a setting)."""

    loop_window_codes: int = 100
    loop_min_distinct_codes: int = 20
    runon_length_factor: float = 2.5
    runon_slack_s: float = 2.0
    silence_max_dbfs: float = -45.0
    dead_air_max_gap_s: float = 1.5
    dead_air_floor_dbfs: float = -50.0
    edge_s: float = 0.3
    """Leading and trailing audio the dead-air check ignores (a chunk may start and end in a breath)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> GuardLimits:
        """The limits the service runs with (each threshold above is a setting of the same name)."""
        return cls(
            loop_window_codes=settings.loop_window_codes,
            loop_min_distinct_codes=settings.loop_min_distinct_codes,
            runon_length_factor=settings.runon_length_factor,
            runon_slack_s=settings.runon_slack_s,
            silence_max_dbfs=settings.silence_max_dbfs,
            dead_air_max_gap_s=settings.dead_air_max_gap_s,
        )


class LoopDetector:
    """Watches codes as they are sampled; `push()` returns True once some window of `loop_window_codes` codes has
    fewer than `loop_min_distinct_codes` distinct ones. Linear time: a sliding count of the window's codes."""

    def __init__(self, limits: GuardLimits | None = None) -> None:
        self.limits = limits or GuardLimits()
        self._codes: list[int] = []
        self._counts: Counter[int] = Counter()
        self.looped_at: int | None = None
        """Codes seen when the loop was detected (None: no loop so far)."""

    def push(self, codes: Sequence[int]) -> bool:
        window = self.limits.loop_window_codes
        for code in codes:
            self._codes.append(int(code))
            self._counts[int(code)] += 1
            if len(self._codes) > window:
                old = self._codes[-window - 1]
                self._counts[old] -= 1
                if not self._counts[old]:
                    del self._counts[old]
            if (
                self.looped_at is None
                and len(self._codes) >= window
                and len(self._counts) < self.limits.loop_min_distinct_codes
            ):
                self.looped_at = len(self._codes)
        return self.looped_at is not None


def has_loop(codes: Sequence[int], limits: GuardLimits | None = None) -> bool:
    """True when some window of the codes is stuck (see `LoopDetector`)."""
    return LoopDetector(limits).push(codes)


def max_codes_for_text(text: str, limits: GuardLimits | None = None) -> int:
    """The most codes a reading of `text` can need before it counts as a run-on."""
    limits = limits or GuardLimits()
    seconds = estimate_speech_seconds(text) * limits.runon_length_factor + limits.runon_slack_s
    return int(seconds * CODES_PER_SECOND)


def _frame_dbfs(samples: np.ndarray, frame: int) -> np.ndarray:
    usable = len(samples) // frame * frame
    if usable == 0:
        return np.zeros(0)
    frames = samples[:usable].astype(np.float64).reshape(-1, frame)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    return 20 * np.log10(np.maximum(rms, 1e-10))


def silence_problem(samples: np.ndarray, limits: GuardLimits | None = None) -> str | None:
    """Why the decoded chunk is dead air ("silent" or "gap of N.N s"), or None when it sounds like speech."""
    limits = limits or GuardLimits()
    audio = np.asarray(samples, dtype=np.float32)
    if audio.size == 0:
        return "silent"
    overall = 20 * np.log10(max(float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))), 1e-10))
    if overall < limits.silence_max_dbfs:
        return "silent"
    frame = SAMPLE_RATE // CODES_PER_SECOND
    levels = _frame_dbfs(audio, frame)
    edge = int(limits.edge_s * CODES_PER_SECOND)
    inner = levels[edge : len(levels) - edge] if len(levels) > 2 * edge else levels[:0]
    longest = run = 0
    for quiet in inner < limits.dead_air_floor_dbfs:
        run = run + 1 if quiet else 0
        longest = max(longest, run)
    gap_s = longest / CODES_PER_SECOND
    if gap_s > limits.dead_air_max_gap_s:
        return f"gap of {gap_s:.1f} s"
    return None
