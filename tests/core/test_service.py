"""TTSService end to end on the tiny checkpoints: the real loaders, the real pipeline, noise for audio."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import busy_gpu, tiny_settings

from llasa.errors import (
    AudioTooShort,
    Cancelled,
    InvalidInput,
    SilentAudio,
    UnsupportedAudio,
    VoiceExists,
    VoiceNotFound,
)
from llasa.service import TTSService
from llasa.types import SAMPLE_RATE, SAMPLES_PER_CODE, GenerationParams, SynthesisRequest, TranscriptionRequest

SHORT = GenerationParams(max_audio_seconds=0.6, seed=1234)
EN_TRANSCRIPT = "The quick brown fox jumps over the lazy dog. This is a short reference recording."


@pytest.fixture(scope="module")
def service(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("service")
    settings = tiny_settings(tiny_models, root, crossfade_ms=40)
    svc = TTSService(settings)
    yield svc
    svc.shutdown()


def test_synthesis_without_reference(service: TTSService) -> None:
    result = service.synthesize(SynthesisRequest("Hello world.", params=SHORT))
    assert result.sample_rate == SAMPLE_RATE
    assert result.audio.dtype == np.float32
    assert result.audio.ndim == 1
    assert result.chunks == 1
    assert 0 < result.num_codes <= 30
    # One chunk and no reference: exactly one code's worth of samples per code, nothing cut.
    assert len(result.audio) == result.num_codes * SAMPLES_PER_CODE
    assert result.reference_text == ""
    assert set(result.timings_s) == {"load", "transcribe", "encode", "generate", "decode", "total"}
    assert result.timings_s["encode"] == 0.0
    assert result.seed == 1234
    # A random model never says it is done: the 0.6 s cap ended the chunk, and the result says so.
    assert result.num_codes == 30
    assert any("max_audio_seconds" in w for w in result.warnings)


def test_reference_with_transcript_cuts_exactly_the_reference(service: TTSService, audio_dir: Path) -> None:
    result = service.synthesize(
        SynthesisRequest(
            "Nice to meet you.",
            reference_audio=audio_dir / "en_16k_mono.wav",
            reference_text=EN_TRANSCRIPT,
            params=SHORT,
        )
    )
    assert result.reference_text == EN_TRANSCRIPT
    assert result.reference_seconds == pytest.approx(5.8, abs=0.3)
    assert result.timings_s["transcribe"] == 0.0
    assert result.timings_s["encode"] > 0
    # The decoder ran on reference + new codes; only the new codes' samples may remain.
    assert result.chunks == 1
    assert len(result.audio) == result.num_codes * SAMPLES_PER_CODE
    assert not result.reference_trimmed


def test_reference_without_transcript_is_transcribed(service: TTSService, audio_dir: Path) -> None:
    data = (audio_dir / "zh_16k_mono.flac").read_bytes()
    result = service.synthesize(SynthesisRequest("今天天气很好。", reference_audio=data, language="zh", params=SHORT))
    assert result.timings_s["transcribe"] > 0
    assert result.reference_text.strip()
    assert len(result.audio) == result.num_codes * SAMPLES_PER_CODE


def test_same_seed_same_audio_other_seed_other_audio(service: TTSService) -> None:
    first = service.synthesize(
        SynthesisRequest("Repeat after me.", params=GenerationParams(max_audio_seconds=0.6, seed=7))
    )
    second = service.synthesize(
        SynthesisRequest("Repeat after me.", params=GenerationParams(max_audio_seconds=0.6, seed=7))
    )
    other = service.synthesize(
        SynthesisRequest("Repeat after me.", params=GenerationParams(max_audio_seconds=0.6, seed=8))
    )
    np.testing.assert_array_equal(first.audio, second.audio)
    assert first.num_codes != other.num_codes or not np.array_equal(first.audio, other.audio)


def test_unset_seed_is_reported_and_reproduces(service: TTSService) -> None:
    first = service.synthesize(SynthesisRequest("Pick a seed.", params=GenerationParams(max_audio_seconds=0.4)))
    assert first.seed is not None
    again = service.synthesize(
        SynthesisRequest("Pick a seed.", params=GenerationParams(max_audio_seconds=0.4, seed=first.seed))
    )
    np.testing.assert_array_equal(first.audio, again.audio)


def test_long_text_is_chunked_and_joined(service: TTSService) -> None:
    text = " ".join(f"This is sentence number {i}, spoken slowly and clearly." for i in range(40))
    text += "这是中文的句子。还有一句！"
    progress: list[tuple[int, int, str]] = []
    result = service.synthesize(
        SynthesisRequest(text, params=GenerationParams(max_audio_seconds=0.2, seed=3)),
        progress=lambda done, total, stage: progress.append((done, total, stage)),
    )
    assert result.chunks > 1
    crossfade = SAMPLE_RATE * 40 // 1000
    # Every chunk is longer than the crossfade, so each join overlaps exactly one crossfade.
    assert len(result.audio) == result.num_codes * SAMPLES_PER_CODE - (result.chunks - 1) * crossfade
    done_events = [p for p in progress if p[2] == "chunk_done"]
    assert [d for d, _, _ in done_events] == list(range(1, result.chunks + 1))
    assert all(total == result.chunks for _, total, _ in done_events)


def test_stream_equals_synthesize(service: TTSService) -> None:
    text = " ".join(f"Streamed sentence number {i}, spoken slowly and clearly." for i in range(40))
    params = GenerationParams(max_audio_seconds=0.2, seed=11)
    whole = service.synthesize(SynthesisRequest(text, params=params))
    pieces = list(service.synthesize_stream(SynthesisRequest(text, params=params)))
    assert pieces[-1].final
    assert pieces[-1].chunks_total == whole.chunks > 1
    assert all(piece.seed == 11 for piece in pieces)
    streamed = np.concatenate([p.audio for p in pieces])
    np.testing.assert_allclose(streamed, whole.audio, atol=1e-6)
    # The final piece reports the whole stream as synthesize() would, its audio exactly the pieces joined.
    assert all(p.result is None for p in pieces[:-1])
    summary = pieces[-1].result
    assert summary is not None
    np.testing.assert_array_equal(summary.audio, streamed)
    assert (summary.seed, summary.chunks, summary.num_codes) == (11, whole.chunks, whole.num_codes)
    assert summary.timings_s["total"] > 0


def test_every_chunk_is_conditioned_on_the_reference_and_cut_exactly(
    service: TTSService, audio_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llasa import service as service_module
    from llasa.models import XCodec2Codec

    prompts: list[tuple[str, str | None, list[int]]] = []
    decodes: list[tuple[list[int], np.ndarray]] = []
    real_prompt, real_decode = service_module.build_prompt_ids, XCodec2Codec.decode

    # Spies around the real functions: the pipeline runs unchanged, the test sees what went in and came out.
    def spy_prompt(tokenizer, text, reference_text, reference_codes):
        prompts.append((text, reference_text, list(reference_codes)))
        return real_prompt(tokenizer, text, reference_text, reference_codes)

    def spy_decode(self, codes):
        audio = real_decode(self, codes)
        decodes.append((list(codes), audio))
        return audio

    monkeypatch.setattr(service_module, "build_prompt_ids", spy_prompt)
    monkeypatch.setattr(XCodec2Codec, "decode", spy_decode)
    text = " ".join(f"Conditioned sentence number {i} goes on a while." for i in range(40))
    result = service.synthesize(
        SynthesisRequest(
            text,
            reference_audio=audio_dir / "en_16k_mono.wav",
            reference_text=EN_TRANSCRIPT,
            params=GenerationParams(max_audio_seconds=0.2, seed=21),
        )
    )
    assert result.chunks > 1
    reference_codes = prompts[0][2]
    assert len(reference_codes) == pytest.approx(result.reference_seconds * 50, abs=1)
    chunk_prompts = [p for p in prompts if p[0]]  # the empty-text prompt only measures the reference's cost
    assert len(chunk_prompts) == result.chunks
    assert all(p[1] == EN_TRANSCRIPT and p[2] == reference_codes for p in chunk_prompts)
    assert len(decodes) == result.chunks
    cut = len(reference_codes) * SAMPLES_PER_CODE
    pieces = []
    for codes, audio in decodes:
        assert codes[: len(reference_codes)] == reference_codes
        assert len(audio) == len(codes) * SAMPLES_PER_CODE
        pieces.append(audio[cut:])
    from llasa.audio import crossfade_join

    np.testing.assert_array_equal(result.audio, crossfade_join(pieces, SAMPLE_RATE * 40 // 1000))


def test_control_markup_in_text_is_refused(service: TTSService, audio_dir: Path) -> None:
    with pytest.raises(InvalidInput, match="control markup") as excinfo:
        service.synthesize(SynthesisRequest("Hello <|s_5|><|SPEECH_GENERATION_END|> world"))
    assert excinfo.value.field == "text"
    with pytest.raises(InvalidInput) as excinfo:
        service.synthesize(
            SynthesisRequest(
                "Hi.", reference_audio=audio_dir / "en_16k_mono.wav", reference_text="words <|eot_id|> more"
            )
        )
    assert excinfo.value.field == "reference_text"
    # Ordinary angle brackets and pipes are text, not markup.
    service.validate_synthesis(SynthesisRequest("a <b> | c || d <| e"))


def test_long_reference_is_trimmed_and_said_so(service: TTSService, audio_dir: Path) -> None:
    result = service.synthesize(
        SynthesisRequest(
            "Short text.",
            reference_audio=audio_dir / "en_long_22k.ogg",
            reference_text="This sentence is repeated to make a recording that is longer than fifteen seconds.",
            params=SHORT,
        )
    )
    assert result.reference_trimmed
    assert result.reference_seconds <= service.settings.max_reference_seconds + 1e-6
    assert any("trimmed" in w for w in result.warnings)
    # The given transcript covered 24 s of audio; the kept part was transcribed again.
    assert result.timings_s["transcribe"] > 0


def test_stereo_44k_reference_is_accepted(service: TTSService, audio_dir: Path) -> None:
    result = service.synthesize(
        SynthesisRequest(
            "Okay.", reference_audio=audio_dir / "en_44k_stereo.wav", reference_text=EN_TRANSCRIPT, params=SHORT
        )
    )
    assert result.reference_seconds == pytest.approx(5.8, abs=0.3)


def test_cancel_before_start(service: TTSService) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        service.synthesize(SynthesisRequest("Never spoken.", params=SHORT), cancel=cancel)


def test_cancel_while_queued_leaves_the_queue_without_model_work(service: TTSService) -> None:
    cancel = threading.Event()
    errors: list[Exception] = []

    def client() -> None:
        try:
            service.synthesize(SynthesisRequest("Never spoken either.", params=SHORT), cancel=cancel)
        except Exception as e:
            errors.append(e)

    with busy_gpu(service.manager):
        waiting = threading.Thread(target=client)
        waiting.start()
        deadline = time.monotonic() + 60
        while service.queue_depth != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert service.queue_depth == 1
        cancel.set()
        waiting.join(60)
        assert len(errors) == 1
        assert isinstance(errors[0], Cancelled)
        assert service.queue_depth == 0


def test_voice_library_through_the_service(service: TTSService, audio_dir: Path) -> None:
    info = service.create_voice("narrator", audio_dir / "en_16k_mono.wav", EN_TRANSCRIPT)
    assert info.num_codes == pytest.approx(info.duration_s * 50, abs=2)
    assert [v.name for v in service.list_voices()] == ["narrator"]
    with pytest.raises(VoiceExists):
        service.create_voice("narrator", audio_dir / "en_16k_mono.wav", EN_TRANSCRIPT)
    result = service.synthesize(SynthesisRequest("Using a saved voice.", voice="narrator", params=SHORT))
    assert result.voice == "narrator"
    assert result.reference_text == EN_TRANSCRIPT
    # Saved codes are reused: no transcription and no encoding.
    assert result.timings_s["transcribe"] == 0.0
    assert result.timings_s["encode"] == 0.0
    assert len(result.audio) == result.num_codes * SAMPLES_PER_CODE
    assert service.voice_audio_path("narrator").is_file()
    service.delete_voice("narrator")
    with pytest.raises(VoiceNotFound):
        service.synthesize(SynthesisRequest("Gone.", voice="narrator", params=SHORT))


def test_update_voice_transcript_and_trimmed_voice_warning(service: TTSService, audio_dir: Path) -> None:
    info = service.create_voice(
        "long one", audio_dir / "en_long_22k.ogg", "a transcript of the whole twenty-four seconds"
    )
    # The clip was trimmed, so the given transcript no longer matched the audio: it was redone, and said so.
    assert info.warnings
    assert "trimmed" in info.warnings[0]
    assert info.duration_s <= service.settings.max_reference_seconds + 1e-6
    updated = service.update_voice("long one", "  corrected   words  ")
    assert updated.transcript == "corrected words"
    assert service.get_voice("long one").transcript == "corrected words"
    with pytest.raises(InvalidInput):
        service.update_voice("long one", "   ")
    with pytest.raises(InvalidInput, match="control markup"):
        service.update_voice("long one", "a <|eot_id|> b")
    with pytest.raises(VoiceNotFound):
        service.update_voice("missing voice", "words")
    service.delete_voice("long one")


def test_output_cleanup_thread_deletes_expired_files(service: TTSService) -> None:
    import os
    import time

    result = service.synthesize(SynthesisRequest("Expire me.", params=SHORT))
    saved = service.save_output(result, "wav")
    old = time.time() - service.settings.output_ttl_hours * 3600 - 60
    os.utime(saved.path, (old, old))
    service.start_output_cleanup(interval_s=0.05)
    deadline = time.monotonic() + 30
    while saved.path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not saved.path.exists()


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "opus", "aac", "pcm"])
def test_saved_output_decodes_back(service: TTSService, fmt: str) -> None:
    result = service.synthesize(
        SynthesisRequest("Format check.", params=GenerationParams(max_audio_seconds=0.6, seed=5))
    )
    rate = 24_000 if fmt in ("pcm", "opus") else None
    saved = service.save_output(result, fmt, sample_rate=rate)
    data = service.output_path(saved.id).read_bytes()
    assert len(data) == saved.size_bytes
    expected_rate = rate or SAMPLE_RATE
    if fmt == "pcm":
        assert len(data) == 2 * round(result.duration_s * expected_rate)
        return
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        decoded = np.concatenate([frame.to_ndarray().reshape(-1) for frame in container.decode(stream)])
        # Ogg/Opus always decodes at 48 kHz; the others at the rate they were written with.
        assert stream.codec_context.sample_rate == (48_000 if fmt == "opus" else expected_rate)
        seconds = len(decoded) / stream.codec_context.sample_rate
    # mp3 and ADTS aac add encoder priming/padding they cannot signal (up to ~2 frames of 1024-1152 samples).
    tolerance_s = 0.16 if fmt in ("mp3", "aac") else 0.03
    assert seconds == pytest.approx(result.duration_s, abs=tolerance_s)


# --- bad input -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   \n\t  ", None, 42])
def test_empty_or_wrong_type_text(service: TTSService, text: object) -> None:
    with pytest.raises(InvalidInput) as excinfo:
        service.synthesize(SynthesisRequest(text))  # type: ignore[arg-type]
    assert excinfo.value.field == "text"


def test_text_over_the_limit(service: TTSService) -> None:
    with pytest.raises(InvalidInput, match="MAX_TEXT_CHARS") as excinfo:
        service.synthesize(SynthesisRequest("a" * (service.settings.max_text_chars + 1)))
    assert excinfo.value.field == "text"


def test_conflicting_reference_arguments(service: TTSService, audio_dir: Path) -> None:
    with pytest.raises(InvalidInput, match="reference_text"):
        service.synthesize(SynthesisRequest("Hi.", reference_text="orphan transcript"))
    with pytest.raises(InvalidInput, match="either"):
        service.synthesize(SynthesisRequest("Hi.", voice="someone", reference_audio=audio_dir / "en_16k_mono.wav"))
    with pytest.raises(VoiceNotFound):
        service.synthesize(SynthesisRequest("Hi.", voice="nobody-by-this-name"))


def test_bad_reference_audio(service: TTSService, audio_dir: Path) -> None:
    with pytest.raises(SilentAudio):
        service.synthesize(SynthesisRequest("Hi.", reference_audio=audio_dir / "silence_3s.wav", reference_text="x"))
    wav = (audio_dir / "en_16k_mono.wav").read_bytes()
    with pytest.raises(UnsupportedAudio):
        service.synthesize(SynthesisRequest("Hi.", reference_audio=wav[:100], reference_text="x"))
    with pytest.raises(UnsupportedAudio):
        service.synthesize(
            SynthesisRequest("Hi.", reference_audio=b"this is not audio at all" * 10, reference_text="x")
        )
    buffer = io.BytesIO()
    import soundfile

    tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(3200) / SAMPLE_RATE)
    soundfile.write(buffer, tone.astype(np.float32), SAMPLE_RATE, format="WAV")
    with pytest.raises(AudioTooShort, match=r"0\.5"):
        service.synthesize(SynthesisRequest("Hi.", reference_audio=buffer.getvalue(), reference_text="x"))


@pytest.mark.parametrize("language", ["klingon", "english!", 5])
def test_bad_language(service: TTSService, audio_dir: Path, language: object) -> None:
    with pytest.raises(InvalidInput) as excinfo:
        service.transcribe(TranscriptionRequest(audio_dir / "en_16k_mono.wav", language=language))  # type: ignore[arg-type]
    assert excinfo.value.field == "language"


def test_bad_parameters_fail_before_any_model_work(service: TTSService) -> None:
    with pytest.raises(InvalidInput) as excinfo:
        service.synthesize(SynthesisRequest("Hi.", params=GenerationParams(temperature=0)))
    assert excinfo.value.field == "temperature"


def test_health_and_status(service: TTSService) -> None:
    service.synthesize(SynthesisRequest("Warm up.", params=SHORT))
    health = service.health()
    assert health["status"] == "ok"
    assert set(health["models"]) == {"llasa", "xcodec2", "whisper"}
    # GPU_OFFLOAD_AFTER_USE (the default): every model goes to CPU RAM when its work ends. Llasa's last lease is
    # the engine's, which it gives back when its batch empties, a moment after the request's last code.
    deadline = time.monotonic() + 30
    while True:
        status = service.gpu_status()
        states = {name: info.state for name, info in status.models.items() if name != "whisper"}
        if states == {"llasa": "cpu", "xcodec2": "cpu"} or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert states == {"llasa": "cpu", "xcodec2": "cpu"}
    assert status.engine is not None
    assert status.engine.started
    assert status.engine.running == 0
    assert status.engine.tokens > 0
    service.release()
    assert all(state == "unloaded" for state in service.health()["models"].values())


def test_metrics_count_every_surface_in_the_core(service: TTSService, audio_dir: Path) -> None:
    def value(name: str, **labels: str) -> float:
        return service.metrics.registry.get_sample_value(name, labels) or 0.0

    mcp = {"surface": "mcp", "endpoint": "generate_speech"}
    before = value("llasa_syntheses_total", **mcp, outcome="ok")
    service.synthesize(SynthesisRequest("Counted for MCP.", params=SHORT, surface="mcp", endpoint="generate_speech"))
    assert value("llasa_syntheses_total", **mcp, outcome="ok") == before + 1
    assert value("llasa_audio_seconds_total", **mcp) > 0

    ui = {"surface": "webui", "endpoint": "synthesize"}
    pieces = service.synthesize_stream(
        SynthesisRequest("Streamed.", params=SHORT, surface="webui", endpoint="synthesize")
    )
    next(pieces)
    pieces.close()  # the listener left: a cancellation, counted as such
    assert value("llasa_syntheses_total", **ui, outcome="cancelled") == 1
    assert value("llasa_stream_chunks_total", **ui) >= 1

    with pytest.raises(InvalidInput):
        service.synthesize(SynthesisRequest("x" * 100_000, surface="webui", endpoint="synthesize"))
    assert value("llasa_syntheses_total", **ui, outcome="error") == 1

    request = TranscriptionRequest(audio_dir / "en_16k_mono.wav", "en", surface="mcp", endpoint="transcribe_audio")
    service.transcribe(request)
    assert value("llasa_transcriptions_total", surface="mcp", endpoint="transcribe_audio", outcome="ok") == 1
    assert b'llasa_model_state{model="llasa"' in service.metrics.render()
