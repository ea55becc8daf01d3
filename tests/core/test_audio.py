"""llasa.audio: decoding every input format, bad input, reference preparation, output encoding, joining.

Decoded lengths are checked against libsndfile (soundfile), an independent decoder; encoded files are decoded
back with PyAV. Everything is in memory or under tmp_path and takes a few seconds.
"""

from __future__ import annotations

import io
import os
import struct
import wave
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from llasa import audio
from llasa.audio import (
    AUDIO_FORMATS,
    StreamJoiner,
    crossfade_join,
    encode_audio,
    load_audio,
    pcm16_bytes,
    prepare_reference,
    resample,
    wav_header,
)
from llasa.errors import (
    AudioTooShort,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    SilentAudio,
    UnsupportedAudio,
)

AUDIO_DIR = Path(__file__).parents[1] / "data" / "audio"
SR = 16_000
TEST_FILES = [
    "en_16k_mono.wav",
    "en_44k_stereo.wav",
    "zh_16k_mono.flac",
    "zh_24k.mp3",
    "en_long_22k.ogg",
    "silence_3s.wav",
]


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """The English test recording, 16 kHz mono float32 (read with soundfile, not the code under test)."""
    samples, rate = sf.read(AUDIO_DIR / "en_16k_mono.wav", dtype="float32")
    assert rate == SR
    return samples


def encode_with_pyav(samples: np.ndarray, rate: int, muxer: str, codec: str) -> bytes:
    """Encode test input the way another program would (independently of llasa.audio.encode_audio)."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=muxer) as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples[None, :].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = rate
        frame.pts = 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buf.getvalue()


def best_correlation(delayed: np.ndarray, original: np.ndarray, max_lag: int) -> float:
    """Highest correlation coefficient of `delayed` against `original` over delays 0..max_lag samples."""
    n = min(len(delayed), len(original)) - max_lag
    size = 2 * len(delayed)
    spectrum = np.fft.rfft(delayed[: n + max_lag], size) * np.conj(np.fft.rfft(original[:n], size))
    lag = int(np.argmax(np.fft.irfft(spectrum)[: max_lag + 1]))
    return float(np.corrcoef(delayed[lag : lag + n], original[:n])[0, 1])


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def decoded_info(data: bytes) -> tuple[int, float]:
    """(sample rate the file declares, duration in seconds) as PyAV decodes it."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        decode_rate = stream.rate
    rate = decode_rate
    if b"OpusHead" in data[:200]:
        # Opus always decodes at 48 kHz; the rate the file was made at is in the OpusHead packet.
        head = data.index(b"OpusHead")
        (rate,) = struct.unpack("<I", data[head + 12 : head + 16])
    return rate, samples / decode_rate


# -------------------------------------------------------------------------------------------------------------
# Decoding


@pytest.mark.parametrize("name", TEST_FILES)
def test_every_test_file_decodes_to_mono_16k_of_the_right_length(name: str) -> None:
    path = AUDIO_DIR / name
    expected_s = sf.info(path).duration
    samples = load_audio(path)
    assert samples.dtype == np.float32
    assert samples.ndim == 1
    assert len(samples) / SR == pytest.approx(expected_s, rel=0.01)
    assert float(np.max(np.abs(samples))) <= 1.0
    # bytes and str paths give the same result as a Path
    assert np.array_equal(load_audio(path.read_bytes()), samples)
    assert np.array_equal(load_audio(str(path)), samples)


@pytest.mark.parametrize("rate", [22_050, 24_000, 44_100])
def test_other_output_rates(rate: int) -> None:
    samples = load_audio(AUDIO_DIR / "zh_16k_mono.flac", sample_rate=rate)
    assert len(samples) / rate == pytest.approx(sf.info(AUDIO_DIR / "zh_16k_mono.flac").duration, rel=0.01)


@pytest.mark.parametrize("rate", [22_050, 24_000, 44_100, 48_000, 8_000])
def test_odd_input_rates_are_resampled_to_16k(speech: np.ndarray, rate: int) -> None:
    upload = wav_bytes(resample(speech, SR, rate), rate)
    samples = load_audio(upload)
    assert len(samples) == pytest.approx(len(speech), rel=0.01)


def test_stereo_is_downmixed_by_averaging_channels(speech: np.ndarray) -> None:
    stereo = np.stack([speech, np.zeros_like(speech)], axis=1)
    buf = io.BytesIO()
    sf.write(buf, stereo, SR, format="WAV", subtype="FLOAT")
    mono = load_audio(buf.getvalue())
    assert mono.shape == speech.shape
    np.testing.assert_allclose(mono, speech / 2, atol=1e-6)
    both = load_audio(AUDIO_DIR / "en_44k_stereo.wav")
    left_only = load_audio(AUDIO_DIR / "en_16k_mono.wav")
    assert len(both) == pytest.approx(len(left_only), abs=2)


@pytest.mark.parametrize(
    ("muxer", "codec"),
    [("ipod", "aac"), ("adts", "aac"), ("ogg", "libopus"), ("webm", "libopus"), ("mp4", "aac")],
    ids=["m4a", "aac-adts", "ogg-opus", "webm", "mp4"],
)
def test_formats_browsers_and_phones_make_decode(speech: np.ndarray, muxer: str, codec: str) -> None:
    rate = 48_000 if codec == "libopus" else 44_100
    upload = encode_with_pyav(resample(speech, SR, rate), rate, muxer, codec)
    samples = load_audio(upload)
    # Lossy codecs add at most one or two frames of priming/padding (1024 samples for AAC).
    assert abs(len(samples) - len(speech)) <= 2048 * SR // rate + 1
    # It is the same speech, not noise of the same length (allowing for AAC's priming delay).
    assert best_correlation(samples, speech, max_lag=1024) > 0.8


def test_streamed_wav_with_unknown_length_decodes(speech: np.ndarray) -> None:
    upload = wav_header(SR) + pcm16_bytes(speech)
    samples = load_audio(upload)
    assert len(samples) == len(speech)
    np.testing.assert_allclose(samples, speech, atol=1 / 32767)


def _first_bytes(name: str, n: int) -> bytes:
    return (AUDIO_DIR / name).read_bytes()[:n]


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "empty"),
        (_first_bytes("en_16k_mono.wav", 100), "truncated"),
        (_first_bytes("en_16k_mono.wav", 60_000), "truncated"),
        (_first_bytes("zh_24k.mp3", 100), "truncated"),
        (_first_bytes("zh_16k_mono.flac", 100), "truncated"),
        (np.random.default_rng(0).bytes(50_000), "not audio"),
        ("The quick brown fox.\n今天天气很好。\n".encode() * 100, "text file"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(200), "PNG image"),
        (b"#EXTM3U\n#EXTINF:10,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n", "not audio"),
    ],
    ids=["empty", "wav-100-bytes", "wav-cut", "mp3-100-bytes", "flac-100-bytes", "random", "text", "png", "m3u"],
)
def test_bad_uploads_are_unsupported_audio(data: bytes, words: str) -> None:
    with pytest.raises(UnsupportedAudio) as info:
        load_audio(data)
    message = info.value.message
    assert words in message
    assert "Supported audio formats" in message
    assert "mp3" in message
    assert info.value.status_code == 415


def _damaged(name: str, flips: int, seed: int = 0) -> bytes:
    data = bytearray((AUDIO_DIR / name).read_bytes())
    rng = np.random.default_rng(seed)
    for i in rng.integers(len(data) // 4, len(data), flips):
        data[i] ^= 0xFF
    return bytes(data)


@pytest.mark.parametrize(
    "data",
    [_damaged("zh_16k_mono.flac", 20), _damaged("en_long_22k.ogg", 20), _first_bytes("zh_16k_mono.flac", 60_000)],
    ids=["flac-damaged", "ogg-damaged", "flac-cut"],
)
def test_damaged_files_that_would_decode_shorter_are_refused(data: bytes) -> None:
    # Demuxers skip what fails its checksum and carry on; the file must not pass as a shorter recording.
    with pytest.raises(UnsupportedAudio, match="corrupt or truncated"):
        load_audio(data)


def test_a_few_damaged_mp3_frames_are_concealed() -> None:
    samples = load_audio(_damaged("zh_24k.mp3", 5))
    assert len(samples) / SR == pytest.approx(8.04, rel=0.02)


def test_ffmpeg_failures_are_chained() -> None:
    with pytest.raises(UnsupportedAudio) as info:
        load_audio(np.random.default_rng(1).bytes(10_000) + b"\x00" * 10)
    assert isinstance(info.value.__cause__, av.FFmpegError)


def test_upload_over_max_bytes_is_refused_before_decoding(tmp_path: Path) -> None:
    huge = b"\x00" * 2_000_001  # not audio at all: the size check must come first
    with pytest.raises(PayloadTooLarge) as info:
        load_audio(huge, max_bytes=2_000_000)
    assert "2.0 MB" in info.value.message
    path = tmp_path / "huge.wav"
    path.write_bytes(huge)
    with pytest.raises(PayloadTooLarge):
        load_audio(path, max_bytes=1_000)
    with pytest.raises(PayloadTooLarge):
        prepare_reference(path, max_seconds=15, min_seconds=0.5, max_bytes=1_000)


def test_audio_longer_than_the_decode_limit_is_refused(speech: np.ndarray) -> None:
    with pytest.raises(PayloadTooLarge) as info:
        load_audio(wav_bytes(speech, SR), max_seconds=2.0)
    assert "longer than 2 s" in info.value.message


def test_missing_and_hostile_paths(tmp_path: Path) -> None:
    with pytest.raises(NotFound) as info:
        load_audio(tmp_path / "nope.wav")
    assert "not found" in info.value.message
    assert "nope.wav" in info.value.message
    with pytest.raises(InvalidInput, match="folder"):
        load_audio(tmp_path)
    with pytest.raises(InvalidInput, match="NUL"):
        load_audio("voice\x00.wav")
    with pytest.raises(InvalidInput, match="empty"):
        load_audio("")
    with pytest.raises(InvalidInput, match="file bytes or a file path"):
        load_audio(12345)  # type: ignore[arg-type]
    if os.path.exists("/dev/zero"):
        with pytest.raises(InvalidInput, match="not a regular file"):
            load_audio("/dev/zero")  # would never end if read
    text = tmp_path / "notes.wav"
    text.write_text("not audio, despite the name\n" * 20)
    with pytest.raises(UnsupportedAudio, match="text file"):
        load_audio(text)


# -------------------------------------------------------------------------------------------------------------
# Reference preparation


def test_silence_is_silent_audio() -> None:
    with pytest.raises(SilentAudio) as info:
        prepare_reference(AUDIO_DIR / "silence_3s.wav", max_seconds=15, min_seconds=0.5)
    assert info.value.message == "the reference audio is silent; record a few seconds of clear speech"
    # a constant DC offset is no signal either
    with pytest.raises(SilentAudio):
        prepare_reference(wav_bytes(np.full(SR * 2, 0.3), SR), max_seconds=15, min_seconds=0.5)


def test_short_clip_is_audio_too_short(speech: np.ndarray) -> None:
    clip = speech[SR : SR + SR // 5]  # 0.2 s from the middle of a word
    with pytest.raises(AudioTooShort) as info:
        prepare_reference(wav_bytes(clip, SR), max_seconds=15, min_seconds=0.5)
    assert info.value.message == "reference audio is 0.2 s long; give at least 0.5 s of speech"


def test_a_blip_in_silence_is_too_short(speech: np.ndarray) -> None:
    clip = np.concatenate([np.zeros(SR * 2), speech[SR : SR + SR // 10], np.zeros(SR * 2)])
    with pytest.raises(AudioTooShort, match=r"only 0\.4 s of sound"):
        prepare_reference(wav_bytes(clip, SR), max_seconds=15, min_seconds=0.5)


def test_long_reference_is_trimmed_to_max_seconds() -> None:
    ref = prepare_reference(AUDIO_DIR / "en_long_22k.ogg", max_seconds=15, min_seconds=0.5)
    assert ref.trimmed is True
    assert ref.original_seconds == pytest.approx(24.12, abs=0.05)
    assert 13.5 <= len(ref.samples) / SR <= 15.0
    assert ref.samples.dtype == np.float32


def test_long_reference_reports_its_full_length_without_decoding_all_of_it() -> None:
    ref = prepare_reference(AUDIO_DIR / "en_long_22k.ogg", max_seconds=3, min_seconds=0.5)
    assert ref.trimmed is True
    assert ref.original_seconds == pytest.approx(24.12, abs=0.05)
    assert 1.5 <= len(ref.samples) / SR <= 3.0


def test_reference_within_limit_is_not_trimmed_and_is_normalised(speech: np.ndarray) -> None:
    quiet = speech * 0.05  # about -26 dB
    ref = prepare_reference(wav_bytes(quiet, SR), max_seconds=15, min_seconds=0.5)
    assert ref.trimmed is False
    assert ref.original_seconds == pytest.approx(len(speech) / SR, abs=0.001)
    peak = float(np.max(np.abs(ref.samples)))
    assert 0.3 < peak <= 10 ** (-1 / 20) + 1e-6
    # brought to the same level as the same speech recorded at a normal level
    plain = prepare_reference(wav_bytes(speech, SR), max_seconds=15, min_seconds=0.5)
    assert len(ref.samples) == pytest.approx(len(plain.samples), abs=0.05 * SR)
    level_db = 20 * np.log10(np.max(np.abs(ref.samples)) / np.max(np.abs(plain.samples)))
    assert abs(level_db) < 1.0


def test_faint_noise_is_not_blown_up() -> None:
    noise = np.random.default_rng(2).standard_normal(SR * 3) * 10 ** (-55 / 20)
    ref = prepare_reference(wav_bytes(noise, SR), max_seconds=15, min_seconds=0.5)
    gain = np.sqrt(np.mean(ref.samples**2)) / np.sqrt(np.mean(noise**2))
    assert gain <= 10 ** (30 / 20) * 1.05


def test_leading_and_trailing_silence_is_trimmed(speech: np.ndarray) -> None:
    padded = np.concatenate([np.zeros(SR * 3), speech, np.zeros(SR * 4)])
    ref = prepare_reference(wav_bytes(padded, SR), max_seconds=15, min_seconds=0.5)
    assert ref.original_seconds == pytest.approx(len(padded) / SR, abs=0.001)
    assert len(ref.samples) <= len(speech) + 0.4 * SR
    assert len(ref.samples) >= len(speech) - 0.6 * SR


def test_cut_lands_in_a_pause_not_a_word() -> None:
    # 1 s "words" (tones) separated by 0.2 s pauses; the 5.5 s limit falls inside a word.
    t = np.arange(SR) / SR
    word = 0.5 * np.sin(2 * np.pi * 220 * t)
    pause = np.zeros(SR // 5)
    clip = np.concatenate([word, pause] * 6)
    ref = prepare_reference(wav_bytes(clip, SR), max_seconds=5.5, min_seconds=0.5)
    assert ref.trimmed is True
    length_s = len(ref.samples) / SR
    assert length_s <= 5.5
    # word k spans [1.2k, 1.2k + 1.0); the last pause before the limit is [4.6, 4.8): cut late in it
    assert 4.7 <= length_s <= 4.8


# -------------------------------------------------------------------------------------------------------------
# Encoding


@pytest.mark.parametrize("fmt", sorted(set(AUDIO_FORMATS) - {"pcm"}))
@pytest.mark.parametrize("rate", [None, 24_000, 44_100, 48_000])
def test_every_format_round_trips(speech: np.ndarray, fmt: str, rate: int | None) -> None:
    out_rate = rate or SR
    allowed = audio.output_sample_rates(fmt)
    if allowed is not None and out_rate not in allowed:
        with pytest.raises(InvalidInput) as info:
            encode_audio(speech, SR, fmt, target_sample_rate=rate)
        assert info.value.field == "sample_rate"
        assert "48000" in info.value.message
        return
    data = encode_audio(speech, SR, fmt, target_sample_rate=rate)
    file_rate, seconds = decoded_info(data)
    assert file_rate == out_rate
    # one codec frame of padding at most: mp3 1152, opus 20 ms, aac 1024 (+ its 1024 priming in ADTS)
    frame_s = {"wav": 0, "flac": 0, "mp3": 1152 / out_rate, "opus": 0.02, "aac": 2048 / out_rate}[fmt]
    assert abs(seconds - len(speech) / SR) <= frame_s + 1 / out_rate
    if fmt in ("wav", "flac"):  # lossless at 16 bits
        back = load_audio(data, sample_rate=out_rate)
        expected = speech if rate is None else resample(speech, SR, out_rate)
        np.testing.assert_allclose(back, expected, atol=2 / 32767)


def test_pcm_is_exact_s16le(speech: np.ndarray) -> None:
    data = encode_audio(speech, SR, "pcm")
    assert len(data) == 2 * len(speech)
    data_48k = encode_audio(speech, SR, "pcm", target_sample_rate=48_000)
    assert len(data_48k) == 2 * len(speech) * 3
    values = np.frombuffer(pcm16_bytes(np.array([2.0, -2.0, 0.5, np.nan, 0.0, -1.0])), dtype="<i2")
    assert values.tolist() == [32767, -32767, 16384, 0, 0, -32767]


def test_unknown_format_and_bad_rates(speech: np.ndarray) -> None:
    with pytest.raises(InvalidInput) as info:
        encode_audio(speech, SR, "ogg-vorbis")
    assert info.value.field == "format"
    assert "wav, flac, mp3, opus, aac, pcm" in info.value.message
    assert encode_audio(speech[:1600], SR, " MP3 ")[:3] in (b"ID3", b"\xff\xfb", b"\xff\xf3")
    with pytest.raises(InvalidInput, match="opus cannot be encoded at 44100 Hz") as info:
        encode_audio(speech, SR, "opus", target_sample_rate=44_100)
    assert info.value.field == "sample_rate"
    with pytest.raises(InvalidInput, match="sample_rate"):
        encode_audio(speech, SR, "wav", target_sample_rate=1_000_000)
    with pytest.raises(InvalidInput, match="1-D"):
        encode_audio(np.zeros((2, 100)), SR, "wav")
    assert audio.validate_output("FLAC", 22_050) == "flac"


def test_wav_header_sizes_and_streaming_placeholder() -> None:
    pcm = pcm16_bytes(np.zeros(1000))
    header = wav_header(24_000, data_bytes=len(pcm))
    assert len(header) == 44
    with wave.open(io.BytesIO(header + pcm)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()) == (24_000, 1, 2, 1000)
    streaming = wav_header(16_000)
    assert len(streaming) == 44
    assert struct.unpack("<I", streaming[4:8])[0] == 0xFFFFFFFF
    assert struct.unpack("<I", streaming[40:44])[0] == 0xFFFFFFFF
    with pytest.raises(InvalidInput):
        wav_header(16_000, data_bytes=-1)
    # empty audio is a valid, empty file
    assert encode_audio(np.zeros(0, np.float32), SR, "wav") == wav_header(SR, data_bytes=0)
    assert encode_audio(np.zeros(0, np.float32), SR, "pcm") == b""


def test_resample_is_exact_length_and_keeps_the_pitch() -> None:
    tone = np.sin(2 * np.pi * 1000 * np.arange(SR) / SR).astype(np.float32)
    for rate in (8_000, 22_050, 44_100, 48_000):
        out = resample(tone, SR, rate)
        assert len(out) == rate
        spectrum = np.abs(np.fft.rfft(out[rate // 10 : -rate // 10] * np.hanning(len(out) - 2 * (rate // 10))))
        peak_hz = np.argmax(spectrum) * rate / (len(out) - 2 * (rate // 10))
        assert peak_hz == pytest.approx(1000, abs=3)
        assert float(np.max(np.abs(out[rate // 10 : -rate // 10]))) == pytest.approx(1.0, abs=0.02)
    assert len(resample(np.zeros(0, np.float32), SR, 24_000)) == 0
    assert np.array_equal(resample(tone, SR, SR), tone)


# -------------------------------------------------------------------------------------------------------------
# Joining


def _chunks(sizes: list[int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-0.5, 0.5, size).astype(np.float32) for size in sizes]


CHUNK_SETS = [
    [16_000, 16_000, 16_000],
    [5_000, 100, 7_000, 50, 50, 3_000],  # chunks shorter than the fade
    [10, 20, 30],  # everything shorter than the fade
    [0, 4_000, 0, 4_000],  # empty chunks
    [12_345],
    [],
]


@pytest.mark.parametrize("sizes", CHUNK_SETS)
@pytest.mark.parametrize("fade", [0, 1, 800])
def test_stream_joiner_equals_crossfade_join(sizes: list[int], fade: int) -> None:
    chunks = _chunks(sizes)
    joined = crossfade_join(chunks, fade)
    joiner = StreamJoiner(fade)
    pieces = []
    for i, chunk in enumerate(chunks):
        pieces.append(joiner.push(chunk))
        # everything but the fade tail of the audio so far has been handed out
        so_far = len(crossfade_join(chunks[: i + 1], fade))
        assert sum(len(p) for p in pieces) == so_far - min(fade, so_far)
    pieces.append(joiner.finish())
    streamed = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    assert streamed.dtype == np.float32
    assert np.array_equal(streamed, joined)


def test_crossfade_lengths_are_exact() -> None:
    chunks = _chunks([16_000, 16_000, 16_000])
    assert len(crossfade_join(chunks, 800)) == 48_000 - 2 * 800
    assert len(crossfade_join(chunks, 0)) == 48_000
    # a 100-sample chunk overlaps by its own length; the next join fades over the full 800 again
    assert len(crossfade_join(_chunks([5_000, 100, 5_000]), 800)) == 10_100 - 100 - 800
    assert len(crossfade_join(_chunks([50, 5_000]), 800)) == 5_000
    joined = crossfade_join(chunks, 800)
    # samples outside the fades are untouched
    np.testing.assert_array_equal(joined[:15_200], chunks[0][:15_200])
    np.testing.assert_array_equal(joined[-15_200:], chunks[2][-15_200:])
    with pytest.raises(InvalidInput):
        crossfade_join(chunks, -1)


def test_stream_joiner_holds_back_only_the_fade() -> None:
    joiner = StreamJoiner(800)
    first = joiner.push(np.ones(16_000, np.float32))
    assert len(first) == 16_000 - 800
    second = joiner.push(np.ones(16_000, np.float32))
    assert len(second) == 16_000 - 800
    assert len(joiner.finish()) == 800
    with pytest.raises(RuntimeError):
        joiner.push(np.ones(10, np.float32))


def test_equal_power_fade_keeps_uncorrelated_loudness() -> None:
    a, b = _chunks([48_000, 48_000], seed=3)
    joined = crossfade_join([a, b], 16_000)
    middle = joined[32_000:48_000]
    assert np.sqrt(np.mean(middle**2)) == pytest.approx(np.sqrt(np.mean(a**2)), rel=0.05)
