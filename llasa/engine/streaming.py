"""Streaming XCodec2 decoding: audio for speech codes as they arrive, in windows, joined so the seams vanish.

XCodec2's decoder is not causal: a transformer with full attention over the whole code sequence, convolutions
and an overlap-add ISTFT (each 320-sample hop is the sum of four 1280-sample frames). So audio for code t depends
on codes on both sides, and a one-shot decode of every code is the reference a stream is measured against. Each
window therefore decodes

    [ left context | codes whose audio is final now | look-ahead ]
      context_codes                                    lookahead_codes

and keeps only the middle: the left context (previous codes, the reference's at first) conditions the start and
its audio is thrown away; the look-ahead codes' audio is held back because it lacks right context, and is decoded
again by the next window. Consecutive windows overlap by `crossfade_samples`, joined with a raised-cosine crossfade
(the previous window's version fading out, the next one's fading in). `finish()` decodes the rest with no
look-ahead, exactly like the end of a one-shot decode.

Guarantees: the concatenation of every `push()` result and `finish()` is exactly `len(codes) * 320` samples, in
order, the reference's part never included; the same codes pushed in the same pieces give the same audio.
The first window comes after `first_window_codes` codes; the following ones double in size up to
`max_window_codes`, so the codec's per-call overhead and the re-decoded context shrink relative to the audio.

The defaults come from `bench/bench_engine.py --snr-grid` on the tiny codec (bench/RESULTS.md): the streamed
audio's SNR against a one-shot decode of the same codes, over context, look-ahead and crossfade.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from llasa.types import SAMPLES_PER_CODE


class CodeDecoder(Protocol):
    """What the streaming decoder needs of a codec: `XCodec2Codec.decode` (exactly len(codes) * 320 samples)."""

    def decode(self, codes: Sequence[int]) -> np.ndarray: ...


@dataclass(frozen=True)
class StreamingConfig:
    first_window_codes: int = 15
    """Codes that must arrive before the first audio (15 = 0.3 s of speech)."""
    max_window_codes: int = 100
    """Windows double from first_window_codes up to this many codes (100 = 2 s)."""
    context_codes: int = 64
    """Previous codes decoded before each window for context; their audio is discarded."""
    lookahead_codes: int = 4
    """Codes at a window's end whose audio waits for the next window (they lack right context)."""
    crossfade_samples: int = 320
    """Overlap of consecutive windows, crossfaded (320 = one code, 20 ms)."""

    def validate(self) -> None:
        if self.first_window_codes < 1 or self.max_window_codes < self.first_window_codes:
            raise ValueError("need 1 <= first_window_codes <= max_window_codes")
        if self.context_codes < 0 or self.lookahead_codes < 0 or self.crossfade_samples < 0:
            raise ValueError("context_codes, lookahead_codes and crossfade_samples must be 0 or more")
        if self.first_window_codes <= self.lookahead_codes:
            raise ValueError("first_window_codes must be more than lookahead_codes, or the first window is empty")


def _fades(length: int) -> tuple[np.ndarray, np.ndarray]:
    """Raised-cosine fade-out and fade-in summing to 1 at every sample.

    Equal-gain, not the equal-power fade `llasa.audio` joins chunks with: both sides of this overlap are versions
    of the same audio (highly correlated), and an equal-power fade would lift their sum by up to 3 dB mid-seam.
    """
    t = (np.arange(length, dtype=np.float64) + 0.5) / length
    fade_in = np.sin(t * np.pi / 2) ** 2
    return (1.0 - fade_in).astype(np.float32), fade_in.astype(np.float32)


class StreamingDecoder:
    """Turns speech codes, pushed as they are sampled, into 16 kHz audio windows (see the module docstring)."""

    def __init__(
        self, codec: CodeDecoder, reference_codes: Sequence[int], config: StreamingConfig | None = None
    ) -> None:
        self.config = config or StreamingConfig()
        self.config.validate()
        self._codec = codec
        self._reference = [int(c) for c in reference_codes]
        self._codes: list[int] = []
        self._emitted = 0  # samples returned so far
        self._tail = np.zeros(0, dtype=np.float32)  # samples [emitted, emitted + len) awaiting the crossfade
        self._window = self.config.first_window_codes
        self._next_at = self.config.first_window_codes
        self._finished = False
        self.windows = 0
        """Codec calls made so far."""
        self.decoded_codes = 0
        """Codes fed to the codec so far, context and look-ahead included (the cost of streaming)."""

    @property
    def emitted_samples(self) -> int:
        return self._emitted

    def push(self, codes: Sequence[int]) -> np.ndarray:
        """Add newly sampled codes; returns the audio that became final (often empty)."""
        if self._finished:
            raise RuntimeError("StreamingDecoder.push() after finish()")
        self._codes.extend(int(c) for c in codes)
        if len(self._codes) < self._next_at:
            return np.zeros(0, dtype=np.float32)
        # Everything that arrived is decoded in one window, however many codes came at once.
        audio = self._decode_window(final=False)
        self._window = min(self._window * 2, self.config.max_window_codes)
        self._next_at = len(self._codes) + self._window
        return audio

    def finish(self) -> np.ndarray:
        """The rest of the audio, up to exactly len(codes) * 320 samples in all; no pushes after this."""
        if self._finished:
            return np.zeros(0, dtype=np.float32)
        self._finished = True
        if not self._codes:
            return np.zeros(0, dtype=np.float32)
        return self._decode_window(final=True)

    def _decode_window(self, *, final: bool) -> np.ndarray:
        cfg = self.config
        n = len(self._codes)
        cut = n * SAMPLES_PER_CODE if final else (n - cfg.lookahead_codes) * SAMPLES_PER_CODE
        held = len(self._tail)
        if not final and cut - self._emitted <= held + cfg.crossfade_samples:
            return np.zeros(0, dtype=np.float32)  # too little new audio to close a seam: wait for more codes
        # Codes in reference + generated coordinates: the window starts context_codes before the first code
        # whose audio is not final yet.
        first_code = len(self._reference) + self._emitted // SAMPLES_PER_CODE
        start = max(0, first_code - cfg.context_codes)
        window_codes = (self._reference + self._codes)[start:]
        audio = self._codec.decode(window_codes)
        self.windows += 1
        self.decoded_codes += len(window_codes)
        base = (start - len(self._reference)) * SAMPLES_PER_CODE  # generated-audio sample of audio[0]
        segment = np.array(audio[self._emitted - base : cut - base], dtype=np.float32)
        if held:
            fade_out, fade_in = _fades(held)
            segment[:held] = self._tail * fade_out + segment[:held] * fade_in
        keep = 0 if final else min(cfg.crossfade_samples, len(segment))
        out = segment[: len(segment) - keep]
        self._tail = segment[len(segment) - keep :].copy()
        self._emitted += len(out)
        return out
