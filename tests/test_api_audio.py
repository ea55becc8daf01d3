"""api_audio: OpenAI's `speed` (time-stretch) and the streaming encoders behind stream_format=audio / sse."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from api_audio import STREAM_FORMATS, StreamEncoder, time_stretch

RATE = 16000


def tone(seconds: float, freq_hz: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.4 * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


@pytest.mark.parametrize("speed", [0.25, 0.5, 0.8, 1.0, 1.5, 2.0, 4.0])
def test_time_stretch_changes_length_not_pitch(speed: float) -> None:
    source = tone(2.0)
    stretched = time_stretch(source, RATE, speed)
    assert stretched.dtype == np.float32
    assert len(stretched) / len(source) == pytest.approx(1 / speed, rel=0.03)
    assert dominant_hz(stretched, RATE) == pytest.approx(220.0, abs=5.0)


@pytest.mark.parametrize("speed", [0.25, 0.5, 2.0, 4.0])
def test_time_stretch_of_a_short_clip_keeps_all_of_it(speed: float) -> None:
    """A 0.3 s clip (what a one-chunk request can be): exactly len / speed samples, and its end is still heard
    (atempo alone kept back a window's worth of input when flushed, cutting the tail)."""
    rng = np.random.default_rng(0)
    source = (rng.standard_normal(4800) * 0.3).astype(np.float32)
    stretched = time_stretch(source, RATE, speed)
    assert len(stretched) == round(len(source) / speed)
    tail = stretched[-len(stretched) // 6 :]
    assert float(np.sqrt(np.mean(tail**2))) > 0.05


def test_time_stretch_of_nothing_is_nothing() -> None:
    assert time_stretch(np.zeros(0, dtype=np.float32), RATE, 2.0).size == 0


def stream(fmt: str, pieces: list[np.ndarray], **kw: float) -> tuple[bytes, list[bytes]]:
    encoder = StreamEncoder(fmt, RATE, **kw)
    parts = [encoder.push(piece) for piece in pieces]
    parts.append(encoder.finish())
    return b"".join(parts), parts


def test_wav_stream_has_one_open_ended_header_then_24k_samples() -> None:
    pieces = [tone(0.5), tone(0.3), np.zeros(0, dtype=np.float32), tone(0.2)]
    data, parts = stream("wav", pieces)
    assert parts[0][:4] == b"RIFF"
    assert data.count(b"RIFF") == 1
    assert data[4:8] == b"\xff\xff\xff\xff"
    assert int.from_bytes(data[24:28], "little") == 24000
    samples = (len(data) - 44) // 2
    # 1.0 s at 16 kHz in, 24 kHz out: the stateful resampler loses nothing at the joins.
    assert samples == pytest.approx(24000, abs=2)
    # Bytes flow as the pieces arrive, not only at the end.
    assert all(len(part) > 0 for part in parts[:2])


def test_pcm_stream_joins_match_one_piece() -> None:
    source = tone(1.0)
    whole, _ = stream("pcm", [source])
    split, _ = stream("pcm", [source[:5000], source[5000:11000], source[11000:]])
    a = np.frombuffer(whole, "<i2").astype(np.int32)
    b = np.frombuffer(split, "<i2").astype(np.int32)
    assert len(a) == len(b)
    # Feeding the resampler in pieces gives the same samples (no clicks at the joins).
    assert np.max(np.abs(a - b)) <= 2


@pytest.mark.parametrize("fmt", [f for f in STREAM_FORMATS if f not in ("wav", "pcm")])
def test_compressed_streams_decode_as_one_file(fmt: str) -> None:
    pieces = [tone(0.4), tone(0.4), tone(0.4)]
    data, parts = stream(fmt, pieces, speed=2.0)
    assert sum(1 for p in parts if p) >= 2  # the stream starts before it ends
    with av.open(io.BytesIO(data)) as container:
        audio_stream = container.streams.audio[0]
        decoded = sum(frame.samples for frame in container.decode(audio_stream))
        rate = audio_stream.rate
    assert rate == (48000 if fmt == "opus" else 24000)
    # 1.2 s at double speed = 0.6 s, plus the encoder's priming and last frame.
    assert decoded / rate == pytest.approx(0.6, abs=0.1)


def test_encoder_misuse() -> None:
    with pytest.raises(ValueError, match="cannot stream"):
        StreamEncoder("ogg", RATE)
    encoder = StreamEncoder("mp3", RATE)
    encoder.push(tone(0.1))
    encoder.finish()
    with pytest.raises(RuntimeError):
        encoder.push(tone(0.1))
    abandoned = StreamEncoder("flac", RATE)
    abandoned.push(tone(0.1))
    abandoned.close()  # a client that went away: no error, nothing leaked
    abandoned.close()
