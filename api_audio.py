"""Audio post-processing the REST front end needs beyond `llasa.audio`: speed change and streaming encoders.

Both run on PyAV (FFmpeg) filter graphs and encoders, numpy only, no torch:
- `time_stretch()` changes tempo without changing pitch (FFmpeg's `atempo`), for OpenAI's `speed`.
- `StreamEncoder` turns a stream of 16 kHz float pieces into one continuous encoded byte stream (one WAV header,
  one MP3/Ogg/ADTS/FLAC stream), keeping resampler and tempo state across pieces so the joins stay seamless.
"""

from __future__ import annotations

import contextlib
import io
from fractions import Fraction

import av
import numpy as np

from llasa.audio import wav_header

#: OpenAI's speech formats; every one of them comes out at 24 kHz like OpenAI's (pcm = raw s16le 24 kHz mono).
OPENAI_SAMPLE_RATE = 24_000
#: (container, codec) for the compressed stream formats (opus travels in Ogg, aac as ADTS frames).
_CONTAINERS = {
    "mp3": ("mp3", "libmp3lame"),
    "opus": ("ogg", "libopus"),
    "aac": ("adts", "aac"),
    "flac": ("flac", "flac"),
}
STREAM_FORMATS = ("wav", "pcm", *_CONTAINERS)
MIN_SPEED, MAX_SPEED = 0.25, 4.0


def _atempo_factors(speed: float) -> list[float]:
    """Split a tempo factor into steps FFmpeg's atempo accepts (0.5..2.0 each keeps its quality best)."""
    factors = []
    rest = speed
    while rest < 0.5:
        factors.append(0.5)
        rest /= 0.5
    while rest > 2.0:
        factors.append(2.0)
        rest /= 2.0
    factors.append(rest)
    return factors


class _FilterChain:
    """float32 mono at `input_rate` -> [atempo] -> resample -> `sample_fmt` mono at `output_rate`."""

    def __init__(self, input_rate: int, output_rate: int, *, speed: float, sample_fmt: str) -> None:
        self.input_rate = input_rate
        self.graph = av.filter.Graph()
        nodes = [self.graph.add_abuffer(sample_rate=input_rate, format="flt", layout="mono")]
        if abs(speed - 1.0) > 1e-6:
            nodes += [self.graph.add("atempo", f"{factor:.6f}") for factor in _atempo_factors(speed)]
        nodes.append(self.graph.add("aresample", str(output_rate)))
        nodes.append(
            self.graph.add("aformat", f"sample_fmts={sample_fmt}:channel_layouts=mono:sample_rates={output_rate}")
        )
        nodes.append(self.graph.add("abuffersink"))
        self.graph.link_nodes(*nodes).configure()
        self._pts = 0

    def push(self, samples: np.ndarray) -> list[av.AudioFrame]:
        samples = np.ascontiguousarray(samples, dtype=np.float32).reshape(1, -1)
        if samples.shape[1] == 0:
            return []
        frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
        frame.sample_rate = self.input_rate
        frame.time_base = Fraction(1, self.input_rate)
        frame.pts = self._pts
        self._pts += samples.shape[1]
        self.graph.push(frame)
        return self._drain()

    def finish(self) -> list[av.AudioFrame]:
        self.graph.push(None)
        return self._drain()

    def _drain(self) -> list[av.AudioFrame]:
        frames = []
        while True:
            try:
                frames.append(self.graph.pull())
            except (av.BlockingIOError, av.EOFError):
                return frames


def time_stretch(samples: np.ndarray, sample_rate: int, speed: float) -> np.ndarray:
    """Play `samples` `speed` times faster (0.25..4.0) at the same pitch; returns float32 at `sample_rate`."""
    if abs(speed - 1.0) <= 1e-6 or len(samples) == 0:
        return np.asarray(samples, dtype=np.float32)
    # atempo keeps back up to a window of input when flushed, which on a short clip is a large share of it (a
    # 0.3 s clip at speed 0.25 came out 3.4x long, not 4x). Stretch the clip with a tail of silence, then cut
    # the result to exactly len / speed samples: the whole clip is heard and the length is what was asked for.
    wanted = round(len(samples) / speed)
    padded = np.concatenate([np.asarray(samples, dtype=np.float32), np.zeros(_STRETCH_FLUSH_PAD, np.float32)])
    chain = _FilterChain(sample_rate, sample_rate, speed=speed, sample_fmt="flt")
    frames = chain.push(padded) + chain.finish()
    stretched = (
        np.concatenate([frame.to_ndarray().reshape(-1) for frame in frames]).astype(np.float32)
        if frames
        else np.zeros(0, dtype=np.float32)
    )
    return np.pad(stretched[:wanted], (0, max(0, wanted - len(stretched))))


#: Silence appended before a time stretch (samples): more than atempo's largest window (about 0.1 s at 48 kHz).
_STRETCH_FLUSH_PAD = 8192


class _ByteSink(io.RawIOBase):
    """A write-only file that PyAV's muxer fills and the stream drains after every piece."""

    def __init__(self) -> None:
        super().__init__()
        self._buffer = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._buffer += bytes(data)
        return len(data)

    def drain(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


class StreamEncoder:
    """Encode audio pieces into one continuous stream of `fmt` ("wav", "pcm", "mp3", "opus", "aac", "flac").

    `push(samples)` returns the bytes ready so far (possibly b"" while an encoder fills a frame); `finish()`
    returns the rest. wav = one header with an open-ended length (streaming players read until the end), then
    16-bit PCM; pcm = the same samples without a header.
    """

    def __init__(self, fmt: str, input_rate: int, *, output_rate: int = OPENAI_SAMPLE_RATE, speed: float = 1.0) -> None:
        if fmt not in STREAM_FORMATS:
            raise ValueError(f"cannot stream {fmt!r}; use one of {', '.join(STREAM_FORMATS)}")
        self.fmt = fmt
        self.output_rate = output_rate
        self.samples_out = 0
        self._finished = False
        self._header_sent = fmt != "wav"
        self._raw = fmt in ("wav", "pcm")
        self._chain = _FilterChain(input_rate, output_rate, speed=speed, sample_fmt="s16" if self._raw else "flt")
        self._container: av.container.OutputContainer | None = None
        if not self._raw:
            container_format, codec = _CONTAINERS[fmt]
            self._sink = _ByteSink()
            self._container = av.open(self._sink, "w", format=container_format)
            self._stream = self._container.add_stream(codec, rate=output_rate, layout="mono")

    def push(self, samples: np.ndarray) -> bytes:
        self._check_open()
        return self._encode(self._chain.push(samples))

    def finish(self) -> bytes:
        self._check_open()
        self._finished = True
        data = self._encode(self._chain.finish())
        if self._container is not None:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()
            self._container = None
            data += self._sink.drain()
        return data

    def close(self) -> None:
        """Free the encoder without finishing the stream (the client went away)."""
        self._finished = True
        if self._container is not None:
            with contextlib.suppress(av.FFmpegError, ValueError):
                self._container.close()
            self._container = None

    def _check_open(self) -> None:
        if self._finished:
            raise RuntimeError("this stream is already finished or closed; start a new StreamEncoder")

    def _encode(self, frames: list[av.AudioFrame]) -> bytes:
        prefix = b""
        if not self._header_sent:
            prefix = wav_header(self.output_rate, data_bytes=None)
            self._header_sent = True
        self.samples_out += sum(frame.samples for frame in frames)
        if self._raw:
            return prefix + b"".join(frame.to_ndarray().astype("<i2").tobytes() for frame in frames)
        assert self._container is not None  # opened in __init__ for every compressed format
        for frame in frames:
            frame.pts = None  # the encoder numbers its own frames
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        return prefix + self._sink.drain()
