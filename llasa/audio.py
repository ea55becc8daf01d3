"""Audio in and out: decode, validate, resample and trim input; encode output formats; join and stream chunks.

numpy + PyAV (which bundles FFmpeg) only: no torch here, so the front ends may import this module.

Decisions worth knowing:
- Input is always read into memory by Python and handed to FFmpeg as bytes, never as a file name or URL, and
  only audio demuxers are allowed (`format_whitelist`): an upload cannot make FFmpeg open other files or the
  network (HLS playlists, `concat:` URLs and friends).
- Output sample rates: wav, flac and pcm take any rate from 8 kHz to 192 kHz; mp3, aac and opus take only the
  rates their codec supports (`output_sample_rates`). An unsupported rate is rejected with `InvalidInput`
  naming the allowed ones instead of being silently changed, so the rate a caller asks for is the rate the file
  has. (Opus decoders always play at 48 kHz; the rate stored in the Ogg Opus header is the one asked for.)
- `wav_header(sample_rate)` without a size writes 0xFFFFFFFF in both RIFF and data sizes, the usual
  "length unknown" marker that browsers, FFmpeg, libsndfile and Python's `wave` accept for streamed WAV.
"""

from __future__ import annotations

import io
import logging
import math
import stat
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

from llasa.errors import (
    AudioTooShort,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    SilentAudio,
    UnsupportedAudio,
)
from llasa.types import SAMPLE_RATE, AudioSource

logger = logging.getLogger(__name__)

#: Output formats and their MIME types. opus is Opus in Ogg, aac is raw ADTS, pcm is raw s16le mono.
AUDIO_FORMATS: dict[str, str] = {
    "wav": "audio/wav",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "pcm": "audio/pcm",
}

#: File name extension for each output format.
AUDIO_EXTENSIONS: dict[str, str] = {
    "wav": ".wav",
    "flac": ".flac",
    "mp3": ".mp3",
    "opus": ".opus",
    "aac": ".aac",
    "pcm": ".pcm",
}

#: What a person may upload, for error messages.
INPUT_FORMATS_TEXT = "wav, flac, mp3, ogg (Vorbis or Opus), m4a/aac, webm"

# FFmpeg demuxers an upload may be read with (names as FFmpeg spells them; "mov" covers mp4/m4a,
# "matroska" covers webm, "aac" is raw ADTS). Anything else (images, playlists, subtitles) is refused.
_ALLOWED_DEMUXERS = "wav,w64,flac,mp3,ogg,mov,matroska,aac,aiff,caf,wv,au"

_MIN_RATE_HZ = 8_000
_MAX_RATE_HZ = 192_000
# Rates each lossy encoder accepts (FFmpeg's libmp3lame, libopus and native aac).
_CODEC_RATES_HZ: dict[str, tuple[int, ...]] = {
    "mp3": (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000),
    "opus": (8000, 12000, 16000, 24000, 48000),
    "aac": (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000),
}

#: Longest audio `load_audio` decodes by default (one hour): a tiny, highly compressed upload (FLAC of
#: silence) could otherwise expand to gigabytes of samples.
MAX_DECODE_SECONDS = 3600.0

# Reference preparation. Levels are in dBFS of 20 ms frames.
_FRAME_S = 0.02
_SILENT_PEAK = 10 ** (-60 / 20)  # loudest sample under -60 dBFS: nothing a microphone heard
_SOUND_BELOW_PEAK_DB = 40.0  # a frame counts as sound within 40 dB of the loudest frame...
_SOUND_FLOOR_DBFS = -60.0  # ...and above -60 dBFS
_EDGE_PAD_S = 0.15  # silence kept before the first and after the last sound ("lightly")
_CUT_SEARCH_S = 1.5  # look this far back from max_seconds for a quiet point to cut at
_FADE_S = 0.01  # fade at a cut so it does not click
_TARGET_RMS = 10 ** (-20 / 20)  # speech level after normalisation (RMS of the sounding frames)
_TARGET_PEAK = 10 ** (-1 / 20)  # never above -1 dBFS peak
_MAX_GAIN = 10 ** (30 / 20)  # never more than +30 dB: a quiet noisy recording stays quiet-ish
_EXTRA_DECODE_S = 15.0  # audio decoded past max_seconds, so leading silence can be trimmed first


@dataclass(frozen=True)
class PreparedReference:
    """A reference clip ready for the codec: float32 mono 16 kHz, silence-trimmed, at most max_seconds, normalised."""

    samples: np.ndarray
    original_seconds: float
    """Length of the decoded upload before any trimming."""
    trimmed: bool
    """True when the clip was longer than max_seconds and was cut to it."""

    @property
    def seconds(self) -> float:
        return len(self.samples) / SAMPLE_RATE


# ----------------------------------------------------------------------------------------------------------------
# Reading input


def _read_source(source: AudioSource, max_bytes: int | None) -> bytes:
    """Bytes of an upload or a file, size-checked before anything is decoded."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        _check_size(len(data), max_bytes)
        return data
    if not isinstance(source, str | Path):
        raise InvalidInput(f"audio must be file bytes or a file path, got {type(source).__name__}", field="audio")
    text = str(source)
    if not text.strip():
        raise InvalidInput("no audio given: the audio path is empty", field="audio")
    if "\x00" in text:
        raise InvalidInput("the audio path contains a NUL byte; give a plain file path", field="audio")
    path = Path(text).expanduser()
    try:
        info = path.stat()
    except FileNotFoundError as e:
        raise NotFound(f"audio file not found: {text}") from e
    except OSError as e:  # name too long, permission denied on a parent, a loop of links...
        raise InvalidInput(f"cannot open audio file {text}: {e.strerror or e}", field="audio") from e
    if stat.S_ISDIR(info.st_mode):
        raise InvalidInput(f"{text} is a folder, not an audio file", field="audio")
    if not stat.S_ISREG(info.st_mode):
        # A device or FIFO could block or never end (/dev/zero); only regular files are read.
        raise InvalidInput(f"{text} is not a regular file; give an audio file", field="audio")
    _check_size(info.st_size, max_bytes)
    try:
        with path.open("rb") as f:
            # Read at most one byte past the limit: the file may have grown since stat().
            data = f.read() if max_bytes is None else f.read(max_bytes + 1)
    except OSError as e:
        raise InvalidInput(f"cannot read audio file {text}: {e.strerror or e}", field="audio") from e
    _check_size(len(data), max_bytes)
    return data


def _check_size(size_bytes: int, max_bytes: int | None) -> None:
    if max_bytes is not None and size_bytes > max_bytes:
        raise PayloadTooLarge(
            f"the audio file is {size_bytes / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.1f} MB. "
            "Send a shorter or more compressed recording."
        )


def _describe_non_audio(data: bytes) -> str | None:
    """A guess at what a non-audio upload is, for the error message."""
    signatures = [
        (b"\x89PNG", "a PNG image"),
        (b"\xff\xd8\xff", "a JPEG image"),
        (b"GIF8", "a GIF image"),
        (b"%PDF", "a PDF document"),
        (b"PK\x03\x04", "a ZIP archive (or an Office document)"),
        (b"\x1f\x8b", "a gzip archive"),
        (b"\x7fELF", "a program"),
    ]
    for magic, what in signatures:
        if data.startswith(magic):
            return what
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "a WebP image"
    head = data[:4096]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # A multi-byte character cut at the 4096-byte boundary is still text.
        try:
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return None
    if text and all(ch.isprintable() or ch in "\r\n\t" for ch in text):
        return "a text file"
    return None


def _unsupported(reason: str) -> UnsupportedAudio:
    return UnsupportedAudio(f"{reason}. Supported audio formats: {INPUT_FORMATS_TEXT}.")


def _wav_truncation(data: bytes) -> tuple[int, int] | None:
    """(declared, present) data bytes of a RIFF/WAVE file whose data chunk is cut short, else None.

    FFmpeg quietly decodes whatever is there, so a half-uploaded WAV would pass as a short clip. Sizes of 0 or
    >= 2 GiB are the "unknown length" markers of streamed WAV and are not checked.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        (size,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        if chunk_id == b"data":
            present = len(data) - (pos + 8)
            if 0 < size < 0x7FFF_FFFF and present < size:
                return size, present
            return None
        pos += 8 + size + (size & 1)
    return None


def _check_wav_complete(data: bytes) -> None:
    truncated = _wav_truncation(data)
    if truncated is None:
        return
    declared, present = truncated
    # Tolerate a few missing bytes (sloppy writers); a real truncation loses far more.
    if present < declared - max(1024, declared // 100):
        raise _unsupported(
            f"the WAV file is truncated: its header announces {declared} bytes of audio but only {present} "
            "arrived; upload the complete file"
        )


def _declares_exact_duration(format_name: str) -> bool:
    """Whether a container states its true length up front (mp3 and ADTS only estimate it from the bit rate)."""
    return format_name.split(",", maxsplit=1)[0] in {
        "flac",
        "ogg",
        "mov",
        "matroska",
        "wav",
        "w64",
        "aiff",
        "caf",
        "wv",
    }


class _MonoConverter:
    """Turns decoded frames (any format, layout, rate) into float32 mono at one rate.

    Channels are averaged in numpy (a plain mean, predictable for any layout); FFmpeg's resampler only changes
    the sample format and rate. A change of layout or rate mid-stream (chained Ogg) gets a fresh resampler.
    """

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self._resampler: av.AudioResampler | None = None
        self._key: tuple[str, int] | None = None

    def push(self, frame: av.AudioFrame | None) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        if frame is not None:
            key = (frame.layout.name, frame.sample_rate)
            if self._key is not None and key != self._key:
                out += self._flush()
            if self._resampler is None:
                self._resampler = av.AudioResampler(format="fltp", rate=self.sample_rate)
                self._key = key
            out += [self._to_mono(f) for f in self._resampler.resample(frame)]
        else:
            out += self._flush()
        return out

    def _flush(self) -> list[np.ndarray]:
        if self._resampler is None:
            return []
        frames = self._resampler.resample(None)
        self._resampler = None
        self._key = None
        return [self._to_mono(f) for f in frames]

    @staticmethod
    def _to_mono(frame: av.AudioFrame) -> np.ndarray:
        planes = frame.to_ndarray()  # fltp: (channels, samples)
        mono = planes[0] if planes.shape[0] == 1 else planes.mean(axis=0)
        return np.asarray(mono, dtype=np.float32)


def _open_container(data: bytes) -> Any:
    """An open PyAV container for `data`, after the checks that need no decoder (empty, not audio, cut WAV)."""
    if not data:
        raise _unsupported("the audio file is empty (0 bytes)")
    what = _describe_non_audio(data)
    if what is not None:
        raise _unsupported(f"this is {what}, not audio")
    _check_wav_complete(data)
    try:
        return av.open(io.BytesIO(data), mode="r", container_options={"format_whitelist": _ALLOWED_DEMUXERS})
    except (av.FFmpegError, ValueError, OSError) as e:
        raise _unsupported("could not read the audio: the file is corrupt, truncated or not audio") from e


def _checked_seconds(container: Any, decoded_s: float, *, stopped_early: bool) -> float:
    """The recording's length: the container's own when decoding stopped early; a file that decodes to much
    less than it declares is refused as corrupt."""
    declared_s = container.duration / av.time_base if container.duration else 0.0
    if stopped_early:
        return max(decoded_s, declared_s)
    if _declares_exact_duration(container.format.name) and decoded_s < declared_s * 0.9 - 0.1:
        # Demuxers skip damaged pages or frames and carry on, so a corrupt file would pass as a shorter one.
        raise _unsupported(
            f"the audio file is corrupt or truncated: it should last {declared_s:.1f} s but only "
            f"{decoded_s:.1f} s could be decoded"
        )
    return decoded_s


def _decode(
    data: bytes, sample_rate: int, *, keep_seconds: float | None, limit_seconds: float | None
) -> tuple[np.ndarray, float]:
    """Decode bytes to float32 mono at `sample_rate`.

    Returns (samples, seconds): at most `keep_seconds` of samples, and the length of the whole recording (read
    from the container when decoding stopped early). Raises PayloadTooLarge past `limit_seconds`.
    """
    container = _open_container(data)
    with container:
        if not container.streams.audio:
            raise _unsupported(f"the file ({container.format.name}) holds no audio track")
        stream = container.streams.best("audio") or container.streams.audio[0]
        converter = _MonoConverter(sample_rate)
        pieces: list[np.ndarray] = []
        kept = 0
        total = 0
        keep_limit = math.inf if keep_seconds is None else keep_seconds * sample_rate
        hard_limit = math.inf if limit_seconds is None else limit_seconds * sample_rate
        packets = bad_packets = 0
        stopped_early = False

        def take(arrays: list[np.ndarray]) -> None:
            nonlocal kept, total
            for arr in arrays:
                total += len(arr)
                room = int(keep_limit - kept) if math.isfinite(keep_limit) else len(arr)
                if room > 0:
                    piece = arr[:room]
                    pieces.append(piece)
                    kept += len(piece)

        try:
            for packet in container.demux(stream):
                packets += 1
                try:
                    frames = stream.decode(packet)
                except av.FFmpegError as e:
                    # Decoders conceal a damaged packet or two, as the ffmpeg tool does; many means corrupt.
                    bad_packets += 1
                    logger.debug("skipping undecodable audio packet: %s", e)
                    continue
                for frame in frames:
                    take(converter.push(frame))
                if total > hard_limit:
                    raise PayloadTooLarge(f"the audio is longer than {limit_seconds:g} s; send a shorter recording")
                if kept >= keep_limit:
                    stopped_early = True
                    break
            if not stopped_early:
                take(converter.push(None))
        except av.FFmpegError as e:
            raise _unsupported(
                f"the audio file is corrupt or truncated (unreadable after {total / sample_rate:.1f} s)"
            ) from e
        if packets and bad_packets > max(2, packets // 10):
            raise _unsupported(f"the audio file is corrupt: {bad_packets} of {packets} packets are damaged")
        seconds = _checked_seconds(container, total / sample_rate, stopped_early=stopped_early)
    # Anything under one 20 ms frame is a header with nothing behind it (a cut-off upload).
    if kept < sample_rate * _FRAME_S:
        raise _unsupported(
            f"the audio file holds no audio ({kept / sample_rate * 1000:.0f} ms decoded); it is empty or truncated"
        )
    samples = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
    np.clip(samples, -1.0, 1.0, out=samples)
    return samples, seconds


def load_audio(
    source: AudioSource,
    *,
    sample_rate: int = SAMPLE_RATE,
    max_bytes: int | None = None,
    max_seconds: float | None = MAX_DECODE_SECONDS,
) -> np.ndarray:
    """Decode an upload (bytes) or a file (path) to float32 mono in [-1, 1] at `sample_rate`.

    Any common container works (wav, flac, mp3, ogg Vorbis/Opus, m4a/aac, webm); channels are averaged.
    Raises PayloadTooLarge over `max_bytes` (checked before decoding) or past `max_seconds` of audio,
    UnsupportedAudio for empty, truncated, corrupt or non-audio input, NotFound for a missing file and
    InvalidInput for a path that is not a readable regular file.
    """
    _check_rate(sample_rate, "sample_rate")
    data = _read_source(source, max_bytes)
    samples, _ = _decode(data, sample_rate, keep_seconds=None, limit_seconds=max_seconds)
    return samples


# ----------------------------------------------------------------------------------------------------------------
# Reference preparation


def _frame_levels_db(samples: np.ndarray, frame: int) -> np.ndarray:
    """RMS level in dBFS of consecutive frames (the last partial frame included)."""
    n_frames = max(1, math.ceil(len(samples) / frame))
    padded = np.zeros(n_frames * frame, dtype=np.float64)
    padded[: len(samples)] = samples
    power = np.mean(padded.reshape(n_frames, frame) ** 2, axis=1)
    return 10 * np.log10(power + 1e-20)


def _quiet_cut_point(samples: np.ndarray, limit: int, sample_rate: int) -> int:
    """Where to cut so the clip ends by `limit`: the centre of the quietest 20 ms window in the last 1.5 s."""
    frame = int(sample_rate * _FRAME_S)
    hop = frame // 2
    start = max(0, limit - int(sample_rate * _CUT_SEARCH_S))
    region = samples[start:limit].astype(np.float64)
    if len(region) < frame:
        return limit
    energy = np.convolve(region**2, np.ones(frame), mode="valid")[::hop]
    # Of the windows within 1 dB of the quietest, take the last: it keeps the most audio.
    best = int(np.flatnonzero(energy <= energy.min() * 1.26 + 1e-9)[-1])
    return start + best * hop + frame // 2


def _fade_edges(samples: np.ndarray, fade: int) -> None:
    fade = min(fade, len(samples) // 2)
    if fade <= 0:
        return
    ramp = np.linspace(0.0, 1.0, fade, endpoint=False, dtype=np.float32)
    samples[:fade] *= ramp
    samples[-fade:] *= ramp[::-1]


def prepare_reference(
    source: AudioSource,
    *,
    max_seconds: float,
    min_seconds: float,
    max_bytes: int | None = None,
) -> PreparedReference:
    """Load a reference clip at 16 kHz and make it fit for voice cloning.

    Steps: decode and downmix; reject clips under `min_seconds` (AudioTooShort) and digital silence
    (SilentAudio); trim leading and trailing silence, keeping 0.15 s around the sound; cut to `max_seconds` at
    the quietest 20 ms in the last 1.5 s before the limit, so a word is not cut in half (`trimmed=True`);
    normalise the sounding part to -20 dBFS RMS, peak at most -1 dBFS, gain at most +30 dB.
    """
    if max_seconds <= 0 or min_seconds < 0 or min_seconds > max_seconds:
        raise InvalidInput(
            f"reference limits must satisfy 0 <= min_seconds <= max_seconds, got {min_seconds} and {max_seconds}"
        )
    data = _read_source(source, max_bytes)
    sr = SAMPLE_RATE
    samples, original_seconds = _decode(data, sr, keep_seconds=max_seconds + _EXTRA_DECODE_S, limit_seconds=None)
    if original_seconds < min_seconds:
        raise AudioTooShort(
            f"reference audio is {original_seconds:.1f} s long; give at least {min_seconds:g} s of speech",
            field="reference_audio",
        )
    x = samples.astype(np.float32, copy=True)
    x -= np.float32(x.mean())  # a DC offset is not signal, and would skew the levels below
    peak = float(np.max(np.abs(x)))
    if peak < _SILENT_PEAK:
        raise SilentAudio(
            "the reference audio is silent; record a few seconds of clear speech", field="reference_audio"
        )

    frame = int(sr * _FRAME_S)
    levels = _frame_levels_db(x, frame)
    threshold_db = max(float(levels.max()) - _SOUND_BELOW_PEAK_DB, _SOUND_FLOOR_DBFS)
    sounding = np.flatnonzero(levels > threshold_db)
    pad = int(sr * _EDGE_PAD_S)
    start = max(0, int(sounding[0]) * frame - pad)
    end = min(len(x), (int(sounding[-1]) + 1) * frame + pad)
    x = x[start:end]
    if len(x) < min_seconds * sr:
        raise AudioTooShort(
            f"reference audio holds only {len(x) / sr:.1f} s of sound ({original_seconds:.1f} s with silence); "
            f"give at least {min_seconds:g} s of speech",
            field="reference_audio",
        )

    trimmed = False
    limit = int(max_seconds * sr)
    if len(x) > limit:
        x = x[: _quiet_cut_point(x, limit, sr)]
        trimmed = True

    levels = _frame_levels_db(x, frame)
    loud = levels[levels > threshold_db]
    speech_rms = math.sqrt(float(np.mean(10 ** (loud / 10)))) if len(loud) else _TARGET_RMS
    peak = float(np.max(np.abs(x)))
    gain = min(_TARGET_RMS / speech_rms, _TARGET_PEAK / peak, _MAX_GAIN)
    x *= np.float32(gain)
    _fade_edges(x, int(sr * _FADE_S))
    np.clip(x, -1.0, 1.0, out=x)
    logger.debug(
        "reference prepared: %.2f s -> %.2f s (trimmed=%s, gain %.1f dB)",
        original_seconds,
        len(x) / sr,
        trimmed,
        20 * math.log10(gain),
    )
    return PreparedReference(samples=x, original_seconds=original_seconds, trimmed=trimmed)


# ----------------------------------------------------------------------------------------------------------------
# Resampling and output


def _check_rate(rate: int, field: str) -> None:
    if isinstance(rate, bool) or not isinstance(rate, int | np.integer) or not (_MIN_RATE_HZ <= rate <= _MAX_RATE_HZ):
        raise InvalidInput(
            f"{field} is {rate!r}; it must be a whole number of Hz from {_MIN_RATE_HZ} to {_MAX_RATE_HZ}",
            field=field,
        )


def _as_mono_float32(samples: np.ndarray | Sequence[float]) -> np.ndarray:
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise InvalidInput(f"audio must be one mono channel (a 1-D array), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
    return x


def resample(samples: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample float32 mono audio with FFmpeg's band-limited resampler.

    The result has exactly round(len * target_sr / orig_sr) samples.
    """
    _check_rate(orig_sr, "sample_rate")
    _check_rate(target_sr, "sample_rate")
    x = _as_mono_float32(samples)
    if orig_sr == target_sr:
        return x.copy()
    expected = round(len(x) * target_sr / orig_sr)
    if len(x) == 0:
        return np.zeros(0, dtype=np.float32)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=target_sr)
    block = 1 << 16
    out: list[np.ndarray] = []
    for i in range(0, len(x), block):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[None, i : i + block]), format="flt", layout="mono")
        frame.sample_rate = orig_sr
        out += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    out += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    y = np.concatenate(out).astype(np.float32, copy=False) if out else np.zeros(0, np.float32)
    # The resampler's flush lands within a sample or two of the exact length; make it exact.
    if len(y) >= expected:
        return y[:expected]
    return np.concatenate([y, np.zeros(expected - len(y), dtype=np.float32)])


def output_sample_rates(fmt: str) -> tuple[int, ...] | None:
    """Sample rates an output format accepts: a tuple for mp3/aac/opus, None for any rate (8-192 kHz)."""
    return _CODEC_RATES_HZ.get(_check_format(fmt))


def _check_format(fmt: str) -> str:
    name = fmt.strip().lower() if isinstance(fmt, str) else ""
    if name not in AUDIO_FORMATS:
        raise InvalidInput(f"unknown audio format {fmt!r}; choose one of {', '.join(AUDIO_FORMATS)}", field="format")
    return name


def validate_output(fmt: str, sample_rate: int) -> str:
    """Check a format and output rate before any work is done; returns the canonical format name.

    Raises InvalidInput(field="format") for an unknown format and InvalidInput(field="sample_rate") for a
    rate the format's encoder does not take, naming the rates it does.
    """
    name = _check_format(fmt)
    _check_rate(sample_rate, "sample_rate")
    allowed = _CODEC_RATES_HZ.get(name)
    if allowed is not None and sample_rate not in allowed:
        raise InvalidInput(
            f"{name} cannot be encoded at {sample_rate} Hz; choose one of "
            f"{', '.join(str(r) for r in allowed)} Hz, or use wav, flac or pcm for any rate",
            field="sample_rate",
        )
    return name


def pcm16_bytes(samples: np.ndarray | Sequence[float]) -> bytes:
    """Float samples in [-1, 1] as signed 16-bit little-endian PCM (clipped; NaN becomes 0)."""
    x = _as_mono_float32(samples)
    scaled = np.clip(x, -1.0, 1.0) * 32767.0
    return np.rint(scaled).astype("<i2").tobytes()


def wav_header(sample_rate: int, *, data_bytes: int | None = None) -> bytes:
    """The 44-byte header of a 16-bit mono PCM WAV file.

    With `data_bytes=None` (streaming, length unknown) both sizes are 0xFFFFFFFF, which players read as
    "until the end of the stream".
    """
    _check_rate(sample_rate, "sample_rate")
    if data_bytes is None:
        riff_size = data_size = 0xFFFF_FFFF
    else:
        if data_bytes < 0 or data_bytes > 0xFFFF_FFFF - 36:
            raise InvalidInput(f"WAV data size {data_bytes} bytes is out of range (0 to 4 GiB)")
        data_size = data_bytes
        riff_size = 36 + data_bytes
    channels, bits = 1, 16
    block_align = channels * bits // 8
    return (
        b"RIFF"
        + struct.pack("<I", riff_size)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * block_align, block_align, bits)
        + b"data"
        + struct.pack("<I", data_size)
    )


def _encode_with_ffmpeg(x: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    # (codec, muxer, bit rate in bit/s or None for lossless, sample format fed in)
    speech_rate = sample_rate <= 24_000
    settings: dict[str, tuple[str, str, int | None, str]] = {
        "flac": ("flac", "flac", None, "s16"),
        "mp3": ("libmp3lame", "mp3", 64_000 if speech_rate else 128_000, "flt"),
        "opus": ("libopus", "ogg", 24_000, "flt"),
        "aac": ("aac", "adts", 64_000 if speech_rate else 96_000, "flt"),
    }
    codec, muxer, bit_rate, sample_fmt = settings[fmt]
    if sample_fmt == "s16":
        array = np.frombuffer(pcm16_bytes(x), dtype="<i2").astype(np.int16)[None, :]
    else:
        array = np.clip(x, -1.0, 1.0)[None, :]
    buf = io.BytesIO()
    try:
        with av.open(buf, mode="w", format=muxer) as container:
            stream = container.add_stream(codec, rate=sample_rate, layout="mono")
            if bit_rate is not None:
                stream.bit_rate = bit_rate
            container.start_encoding()  # headers even for empty audio, so the file is still valid
            if len(x):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(array), format=sample_fmt, layout="mono")
                frame.sample_rate = sample_rate
                frame.pts = 0
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
    except av.FFmpegError as e:
        raise InvalidInput(f"could not encode {fmt} at {sample_rate} Hz: {e}", field="format") from e
    return buf.getvalue()


def encode_audio(samples: np.ndarray, sample_rate: int, fmt: str, *, target_sample_rate: int | None = None) -> bytes:
    """Encode float32 mono samples as a complete file in `fmt` (see AUDIO_FORMATS).

    With `target_sample_rate` the audio is resampled first; mp3, aac and opus accept only their codec's rates
    (see `output_sample_rates`), others raise InvalidInput(field="sample_rate"). Unknown formats raise
    InvalidInput(field="format").
    """
    name = _check_format(fmt)
    _check_rate(sample_rate, "sample_rate")
    out_rate = sample_rate if target_sample_rate is None else target_sample_rate
    validate_output(name, out_rate)
    x = _as_mono_float32(samples)
    if out_rate != sample_rate:
        x = resample(x, sample_rate, out_rate)
    if name == "pcm":
        return pcm16_bytes(x)
    if name == "wav":
        pcm = pcm16_bytes(x)
        return wav_header(out_rate, data_bytes=len(pcm)) + pcm
    return _encode_with_ffmpeg(x, out_rate, name)


# ----------------------------------------------------------------------------------------------------------------
# Joining chunks


def _fade_curves(length: int) -> tuple[np.ndarray, np.ndarray]:
    """Equal-power (sine/cosine) fade-out and fade-in of `length` samples: right for uncorrelated audio."""
    t = (np.arange(length, dtype=np.float64) + 0.5) / length
    return np.cos(t * np.pi / 2).astype(np.float32), np.sin(t * np.pi / 2).astype(np.float32)


def _check_crossfade(crossfade_samples: int) -> None:
    if isinstance(crossfade_samples, bool) or not isinstance(crossfade_samples, int | np.integer):
        raise InvalidInput(f"crossfade_samples must be a whole number, got {crossfade_samples!r}")
    if crossfade_samples < 0:
        raise InvalidInput(f"crossfade_samples is {crossfade_samples}; it must be 0 or more")


def _mix(tail: np.ndarray, head: np.ndarray) -> np.ndarray:
    fade_out, fade_in = _fade_curves(len(tail))
    return tail * fade_out + head * fade_in


def crossfade_join(chunks: Sequence[np.ndarray], crossfade_samples: int) -> np.ndarray:
    """Concatenate chunks, overlapping each join by an equal-power crossfade.

    A join overlaps min(crossfade_samples, audio so far, next chunk) samples, so a chunk shorter than the fade
    is faded over its whole length; empty chunks are skipped. The result has sum(len) - sum(overlaps) samples.
    """
    _check_crossfade(crossfade_samples)
    out = np.zeros(0, dtype=np.float32)
    for chunk in chunks:
        c = _as_mono_float32(chunk)
        if len(c) == 0:
            continue
        overlap = min(crossfade_samples, len(out), len(c))
        if overlap == 0:
            out = np.concatenate([out, c])
            continue
        mixed = _mix(out[len(out) - overlap :], c[:overlap])
        out = np.concatenate([out[: len(out) - overlap], mixed, c[overlap:]])
    return out


class StreamJoiner:
    """Streaming `crossfade_join`: push chunks as they are made, get audio that is final.

    Only the last `crossfade_samples` samples are held back (the next join may fade them); the concatenation
    of every push() result and finish() equals crossfade_join(all chunks).
    """

    def __init__(self, crossfade_samples: int) -> None:
        _check_crossfade(crossfade_samples)
        self.crossfade_samples = int(crossfade_samples)
        self._tail = np.zeros(0, dtype=np.float32)
        self._finished = False

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """Add a chunk; returns the samples that no later chunk can change (possibly none)."""
        if self._finished:
            raise RuntimeError("StreamJoiner.push() after finish()")
        c = _as_mono_float32(chunk)
        if len(c) == 0:
            return np.zeros(0, dtype=np.float32)
        overlap = min(self.crossfade_samples, len(self._tail), len(c))
        if overlap:
            mixed = _mix(self._tail[len(self._tail) - overlap :], c[:overlap])
            pending = np.concatenate([self._tail[: len(self._tail) - overlap], mixed, c[overlap:]])
        else:
            pending = np.concatenate([self._tail, c])
        keep = min(self.crossfade_samples, len(pending))
        self._tail = pending[len(pending) - keep :].copy()
        return pending[: len(pending) - keep]

    def push_continued(self, audio: np.ndarray) -> np.ndarray:
        """Add more audio of the chunk pushed last (a streamed window): appended without a crossfade; returns the
        samples that no later chunk can change. The chunk's last `crossfade_samples` stay held for the next join."""
        if self._finished:
            raise RuntimeError("StreamJoiner.push_continued() after finish()")
        c = _as_mono_float32(audio)
        if len(c) == 0:
            return np.zeros(0, dtype=np.float32)
        pending = np.concatenate([self._tail, c])
        keep = min(self.crossfade_samples, len(pending))
        self._tail = pending[len(pending) - keep :].copy()
        return pending[: len(pending) - keep]

    def finish(self) -> np.ndarray:
        """The held-back tail; the joiner takes no more chunks after this."""
        self._finished = True
        tail, self._tail = self._tail, np.zeros(0, dtype=np.float32)
        return tail


__all__ = [
    "AUDIO_EXTENSIONS",
    "AUDIO_FORMATS",
    "INPUT_FORMATS_TEXT",
    "MAX_DECODE_SECONDS",
    "PreparedReference",
    "StreamJoiner",
    "crossfade_join",
    "encode_audio",
    "load_audio",
    "output_sample_rates",
    "pcm16_bytes",
    "prepare_reference",
    "resample",
    "validate_output",
    "wav_header",
]
