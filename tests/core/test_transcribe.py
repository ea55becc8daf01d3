"""TTSService.transcribe() on every input format, through the real loader and the tiny random Whisper.

The tiny Whisper is random, so its words are noise (but repeatable, and it always says a few of them when
there is speech): these tests check what the service promises about the result (types, language, duration,
segments), that every container/codec decodes, that silence gives an empty transcript, and that unreadable
input is refused with UnsupportedAudio.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import av
import pytest
from conftest import tiny_settings

from llasa.errors import InvalidInput, PayloadTooLarge, UnsupportedAudio
from llasa.service import TTSService
from llasa.types import Segment, TranscriptionRequest, TranscriptionResult

AUDIO_DIR = Path(__file__).resolve().parents[1] / "data" / "audio"
# Encoders pad (AAC adds ~1024 priming samples plus a partial last frame): allow that much slack.
DURATION_TOLERANCE_S = 0.2

SPEECH_FILES = [
    "en_16k_mono.wav",
    "en_44k_stereo.wav",
    "zh_16k_mono.flac",
    "zh_24k.mp3",
    "en_long_22k.ogg",
]


def _decoded_seconds(data: bytes) -> float:
    """Length of an audio file as PyAV decodes it: the reference the service's duration is checked against."""
    with av.open(io.BytesIO(data)) as container:
        samples = 0
        rate = 0
        for frame in container.decode(audio=0):
            samples += frame.samples
            rate = frame.sample_rate
    return samples / rate


def _encode(source: Path, container_format: str, codec: str, rate: int) -> bytes:
    """Re-encode `source` as mono `codec` in `container_format`, in memory, with PyAV."""
    buf = io.BytesIO()
    with av.open(str(source)) as inp, av.open(buf, "w", format=container_format) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout="mono", rate=rate)
        for frame in inp.decode(audio=0):
            for piece in resampler.resample(frame):
                out.mux(stream.encode(piece))
        for piece in resampler.resample(None):
            out.mux(stream.encode(piece))
        out.mux(stream.encode(None))
    return buf.getvalue()


# name -> (container, codec, sample rate); each is made from en_16k_mono.wav
GENERATED = {
    "en.m4a": ("ipod", "aac", 16000),
    "en.aac": ("adts", "aac", 16000),
    "en.opus": ("ogg", "libopus", 48000),
    "en.webm": ("webm", "libopus", 48000),
}


@pytest.fixture(scope="module")
def generated() -> dict[str, bytes]:
    source = AUDIO_DIR / "en_16k_mono.wav"
    return {name: _encode(source, *spec) for name, spec in GENERATED.items()}


@pytest.fixture(scope="module")
def service(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TTSService]:
    # One service (one loaded Whisper) for the whole module keeps it fast; the settings are make_settings'.
    root = tmp_path_factory.mktemp("transcribe")
    # No bound on Whisper's tokens here: the tiny Whisper ends its transcripts by itself (tested as such).
    settings = tiny_settings(tiny_models, root, whisper_max_new_tokens=0)
    svc = TTSService(settings)
    yield svc
    svc.shutdown()


def _check_result(result: TranscriptionResult, expected_s: float, language: str | None) -> None:
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    assert isinstance(result, TranscriptionResult)
    assert isinstance(result.text, str)
    assert result.text == result.text.strip()
    if language is None:
        assert result.language in _LANGUAGE_CODES
    else:
        assert result.language == language
    assert result.duration_s == pytest.approx(expected_s, abs=DURATION_TOLERANCE_S)
    assert isinstance(result.segments, list)
    # VAD finds speech in every one of these recordings, and the tiny Whisper (shaped to be repeatable)
    # always says a few words about speech, so an empty result means the service lost them.
    assert result.segments, "speech was found, so there is at least one segment"
    assert result.text
    previous_start_s = 0.0
    for seg in result.segments:
        assert isinstance(seg, Segment)
        assert isinstance(seg.text, str)
        assert seg.text == seg.text.strip()
        assert previous_start_s <= seg.start_s <= seg.end_s <= result.duration_s + 0.01
        previous_start_s = seg.start_s
        assert seg.text in result.text
    # The transcript is JSON-ready for every front end.
    assert result.to_dict()["segments"][0].keys() == {"start_s", "end_s", "text"}


@pytest.mark.parametrize("name", SPEECH_FILES)
@pytest.mark.parametrize("language", [None, "zh"])
def test_transcribes_every_test_file_from_bytes(service: TTSService, name: str, language: str | None) -> None:
    data = (AUDIO_DIR / name).read_bytes()
    result = service.transcribe(TranscriptionRequest(data, language=language))
    _check_result(result, _decoded_seconds(data), language)


@pytest.mark.parametrize("name", ["en_44k_stereo.wav", "zh_24k.mp3"])
def test_path_str_and_bytes_give_the_same_result(service: TTSService, name: str) -> None:
    path = AUDIO_DIR / name
    from_path = service.transcribe(TranscriptionRequest(path, language="en"))
    _check_result(from_path, _decoded_seconds(path.read_bytes()), "en")
    assert service.transcribe(TranscriptionRequest(str(path), language="en")) == from_path
    assert service.transcribe(TranscriptionRequest(path.read_bytes(), language="en")) == from_path


@pytest.mark.parametrize("name", sorted(GENERATED))
@pytest.mark.parametrize("language", [None, "en"])
def test_transcribes_generated_formats(
    service: TTSService, generated: dict[str, bytes], name: str, language: str | None
) -> None:
    data = generated[name]
    result = service.transcribe(TranscriptionRequest(data, language=language))
    _check_result(result, _decoded_seconds(data), language)
    # Same words as the 5.8 s source, whatever the container added.
    assert result.duration_s == pytest.approx(5.83, abs=DURATION_TOLERANCE_S)


@pytest.mark.parametrize("language", [None, "zh"])
def test_silence_gives_an_empty_transcript(service: TTSService, language: str | None) -> None:
    result = service.transcribe(TranscriptionRequest(AUDIO_DIR / "silence_3s.wav", language=language))
    assert result.text == ""
    assert result.segments == []
    assert result.duration_s == pytest.approx(3.0, abs=0.05)
    assert isinstance(result.language, str)
    if language is not None:
        assert result.language == language


def test_language_spellings(service: TTSService) -> None:
    path = AUDIO_DIR / "en_16k_mono.wav"
    # "auto" and "" mean detect, like None; codes are case- and space-insensitive.
    assert service.transcribe(TranscriptionRequest(path, language="AUTO")) == service.transcribe(
        TranscriptionRequest(path, language=None)
    )
    assert service.transcribe(TranscriptionRequest(path, language="")) == service.transcribe(
        TranscriptionRequest(path, language=None)
    )
    assert service.transcribe(TranscriptionRequest(path, language=" ZH ")) == service.transcribe(
        TranscriptionRequest(path, language="zh")
    )


@pytest.mark.parametrize("language", ["xx", "english", "en-US", 7])
def test_unknown_language_is_invalid_input(service: TTSService, language: object) -> None:
    with pytest.raises(InvalidInput) as exc:
        service.transcribe(TranscriptionRequest(AUDIO_DIR / "en_16k_mono.wav", language=language))  # type: ignore[arg-type]
    assert exc.value.field == "language"
    assert "'en'" in exc.value.message


def _bad_inputs() -> dict[str, bytes]:
    wav = (AUDIO_DIR / "en_16k_mono.wav").read_bytes()
    flac = (AUDIO_DIR / "zh_16k_mono.flac").read_bytes()
    return {
        "empty": b"",
        "wav_header_only": wav[:44],
        "truncated_flac": flac[:64],
        "random_bytes": bytes((i * 7919 + 13) % 256 for i in range(8192)),
        "text_file": "这不是音频。This is not audio, just text.\n".encode() * 50,
        "json": b'{"audio": "nope"}',
    }


@pytest.mark.parametrize("case", sorted(_bad_inputs()))
def test_unreadable_input_is_unsupported_audio(service: TTSService, case: str) -> None:
    data = _bad_inputs()[case]
    with pytest.raises(UnsupportedAudio) as exc:
        service.transcribe(TranscriptionRequest(data))
    assert exc.value.status_code == 415
    assert exc.value.message  # says what was wrong


def test_text_file_on_disk_is_unsupported_audio(service: TTSService, tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"  # the name lies; the content decides
    path.write_text("just some text, not a recording\n" * 20, encoding="utf-8")
    with pytest.raises(UnsupportedAudio):
        service.transcribe(TranscriptionRequest(path))


@pytest.mark.parametrize("name", ["en_16k_mono.wav", "en_44k_stereo.wav", "zh_16k_mono.flac"])
@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_truncated_file_is_unsupported_audio(service: TTSService, name: str, fraction: float) -> None:
    # WAV and FLAC state their length up front, so a cut-off upload is caught rather than half-transcribed.
    data = (AUDIO_DIR / name).read_bytes()
    with pytest.raises(UnsupportedAudio, match="truncated"):
        service.transcribe(TranscriptionRequest(data[: int(len(data) * fraction)]))


def test_truncated_m4a_is_unsupported_audio(service: TTSService, generated: dict[str, bytes]) -> None:
    data = generated["en.m4a"]  # the index (moov) is written last, so half a file has none
    with pytest.raises(UnsupportedAudio):
        service.transcribe(TranscriptionRequest(data[: len(data) // 2]))


@pytest.mark.parametrize("name", ["zh_24k.mp3", "en_long_22k.ogg"])
def test_half_a_stream_is_transcribed_as_far_as_it_goes(service: TTSService, name: str) -> None:
    # MP3 and Ogg are streams with no stated length: half a file is a valid shorter recording.
    data = (AUDIO_DIR / name).read_bytes()
    whole_s = _decoded_seconds(data)
    result = service.transcribe(TranscriptionRequest(data[: len(data) // 2]))
    assert whole_s * 0.3 < result.duration_s < whole_s * 0.7


def test_whisper_max_new_tokens_bounds_the_transcript(service: TTSService, make_settings) -> None:
    path = AUDIO_DIR / "en_16k_mono.wav"
    unbounded = service.transcribe(TranscriptionRequest(path, language="en"))
    # Two tokens per window: the leading timestamp and one text token.
    svc = TTSService(make_settings(whisper_max_new_tokens=2))
    try:
        bounded = svc.transcribe(TranscriptionRequest(path, language="en"))
    finally:
        svc.shutdown()
    assert bounded.text
    # (Not necessarily a prefix: beam search ranks the cut-off hypotheses differently.)
    assert len(bounded.text) < len(unbounded.text)


def test_upload_over_the_limit_is_payload_too_large(make_settings) -> None:
    svc = TTSService(make_settings(max_upload_mb=0.05))
    try:
        with pytest.raises(PayloadTooLarge):
            svc.transcribe(TranscriptionRequest((AUDIO_DIR / "en_44k_stereo.wav").read_bytes()))
    finally:
        svc.shutdown()
