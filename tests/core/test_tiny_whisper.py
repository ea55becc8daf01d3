"""The tiny random Whisper of tools/tiny_whisper.py loads and runs in faster-whisper, offline."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
AUDIO_DIR = REPO / "tests" / "data" / "audio"
# A random model never emits <|endoftext|> on purpose: bound every decode so tests stay fast.
MAX_NEW_TOKENS = 8


def _load_tool() -> ModuleType:
    """Import tools/tiny_whisper.py by path (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location("tiny_whisper", REPO / "tools" / "tiny_whisper.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    return _load_tool()


@pytest.fixture(scope="module")
def whisper_dir(tool: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        # Any attempt to reach the hub (a missing tokenizer.json, a size alias) must fail, not download.
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        out = tmp_path_factory.mktemp("tiny") / "whisper"
        tool.write_tiny_whisper(out)
    return out


@pytest.fixture(scope="module")
def model(whisper_dir: Path):
    from faster_whisper import WhisperModel

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        return WhisperModel(str(whisper_dir), device="cpu", compute_type="int8", cpu_threads=2)


def test_folder_has_faster_whisper_layout(whisper_dir: Path) -> None:
    names = {p.name for p in whisper_dir.iterdir()}
    assert {"model.bin", "config.json", "tokenizer.json", "preprocessor_config.json"} <= names
    assert any(n.startswith("vocabulary.") for n in names)
    assert json.loads((whisper_dir / "preprocessor_config.json").read_text())["feature_size"] == 80


def test_vocabulary_order_matches_whisper(tool: ModuleType, whisper_dir: Path) -> None:
    from tokenizers import Tokenizer

    vocab = json.loads((whisper_dir / "vocabulary.json").read_text(encoding="utf-8"))
    tok = Tokenizer.from_file(str(whisper_dir / "tokenizer.json"))
    # CTranslate2's vocabulary and the tokenizer faster-whisper decodes with must agree id for id.
    assert len(vocab) == tok.get_vocab_size(with_added_tokens=True)
    assert all(tok.token_to_id(t) == i for i, t in enumerate(vocab) if t)
    eot = vocab.index("<|endoftext|>")
    # "" directly before <|endoftext|> (OpenAI's layout); CTranslate2 4.8 needs it to be multilingual.
    assert vocab[eot - 1] == ""
    assert vocab[eot + 1] == "<|startoftranscript|>"
    langs = vocab[eot + 2 : eot + 2 + len(tool.WHISPER_LANGUAGES)]
    assert langs[:3] == ["<|en|>", "<|zh|>", "<|de|>"]
    assert langs[-1] == "<|yue|>"
    rest = vocab[eot + 2 + len(langs) :]
    assert rest[:6] == [
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nospeech|>",
        "<|notimestamps|>",
    ]
    assert rest[6] == "<|0.00|>"
    assert rest[-1] == "<|30.00|>"
    assert len(rest) == 6 + 1501


def test_every_faster_whisper_language_has_a_token(whisper_dir: Path) -> None:
    from faster_whisper.tokenizer import _LANGUAGE_CODES
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(whisper_dir / "tokenizer.json"))
    missing = [code for code in _LANGUAGE_CODES if tok.token_to_id(f"<|{code}|>") is None]
    assert missing == []


@pytest.mark.parametrize("text", ["Hello, world. 3.14", "你好，世界！", "中英 mixed 文本"])
def test_tokenizer_round_trips_english_and_chinese(whisper_dir: Path, text: str) -> None:
    from faster_whisper.tokenizer import Tokenizer as FWTokenizer
    from tokenizers import Tokenizer

    fw = FWTokenizer(Tokenizer.from_file(str(whisper_dir / "tokenizer.json")), True, task="transcribe", language="zh")
    ids = fw.encode(text)
    assert ids
    assert all(i < fw.eot for i in ids)
    assert fw.decode(ids) == text
    assert fw.sot_sequence == [fw.sot, fw.language, fw.task]
    assert fw.timestamp_begin == fw.no_timestamps + 1
    assert fw.no_speech is not None


def test_build_is_deterministic(tool: ModuleType, whisper_dir: Path, tmp_path: Path) -> None:
    again = tmp_path / "whisper"
    tool.write_tiny_whisper(again)
    for name in ("model.bin", "config.json", "tokenizer.json", "vocabulary.json"):
        assert (again / name).read_bytes() == (whisper_dir / name).read_bytes(), name


def test_loads_offline_as_multilingual(model) -> None:
    assert model.model.is_multilingual
    assert "zh" in model.supported_languages
    assert "en" in model.supported_languages


def _transcribe(model, name: str, language: str | None, **options) -> tuple[list, object]:
    segments, info = model.transcribe(str(AUDIO_DIR / name), language=language, vad_filter=True, **options)
    return list(segments), info  # the generator is lazy: decoding happens here


@pytest.mark.parametrize("language", [None, "zh", "en"])
def test_transcribes_with_vad(model, language: str | None) -> None:
    segments, info = _transcribe(model, "en_16k_mono.wav", language, max_new_tokens=MAX_NEW_TOKENS)
    assert info.duration == pytest.approx(5.8, abs=0.1)
    assert info.duration_after_vad > 0
    assert info.language in model.supported_languages
    if language is not None:
        assert info.language == language
    assert segments, "VAD found speech, so there is at least one (random) segment"
    for seg in segments:
        assert seg.text.strip()
        assert "\ufffd" not in seg.text  # whole characters, not byte fragments
        assert 0 <= seg.start <= seg.end <= info.duration
        assert 0 < len(seg.tokens) <= MAX_NEW_TOKENS


@pytest.mark.parametrize(("name", "language"), [("en_long_22k.ogg", None), ("zh_16k_mono.flac", "zh")])
def test_decoding_ends_by_itself_and_repeats(tool: ModuleType, model, name: str, language: str | None) -> None:
    # No max_new_tokens: the shaped decoder ends after a timestamp and four text tokens, confidently
    # enough that faster-whisper never falls back to (random) sampling at a higher temperature.
    first, _ = _transcribe(model, name, language)
    again, _ = _transcribe(model, name, language)
    assert [s.text for s in first] == [s.text for s in again]
    assert len(first) == 1
    seg = first[0]
    assert seg.text.strip()
    assert seg.temperature == 0.0
    assert seg.avg_logprob > -1.0
    text_tokens = [t for t in seg.tokens if t < model.hf_tokenizer.token_to_id("<|endoftext|>")]
    assert len(text_tokens) == tool.EOT_FROM_POSITION - 3


def test_max_new_tokens_still_bounds(model) -> None:
    segments, _ = _transcribe(model, "en_16k_mono.wav", "en", max_new_tokens=2)
    assert all(len(s.tokens) <= 2 for s in segments)


def test_silence_gives_no_segments(model) -> None:
    segments, info = model.transcribe(str(AUDIO_DIR / "silence_3s.wav"), vad_filter=True, max_new_tokens=MAX_NEW_TOKENS)
    assert list(segments) == []
    assert info.duration_after_vad == 0


def _unload(whisper, *, to_cpu: bool = False, deadline_s: float = 10.0) -> int:
    """Unload, retrying until it takes; returns the number of tries.

    CTranslate2's unload_model() silently does nothing while a worker thread still holds the replica, which
    it does for a moment after a transcription's results have been handed back: a single call right after
    transcribe() leaves the model loaded about half the time on this machine.
    """
    deadline = time.monotonic() + deadline_s
    tries = 0
    while True:
        tries += 1
        whisper.unload_model(to_cpu=to_cpu)
        if not whisper.model_is_loaded or time.monotonic() > deadline:
            return tries
        time.sleep(0.01)


def test_unload_and_reload(model) -> None:
    whisper = model.model
    # On a CPU model, "unload to the CPU" has nowhere to go: it stays loaded and usable.
    whisper.unload_model(to_cpu=True)
    assert whisper.model_is_loaded
    for _ in range(3):
        segments, _ = model.transcribe(
            str(AUDIO_DIR / "en_16k_mono.wav"), language="en", vad_filter=True, max_new_tokens=MAX_NEW_TOKENS
        )
        assert list(segments)
        _unload(whisper)
        assert not whisper.model_is_loaded
        whisper.load_model()
        assert whisper.model_is_loaded
