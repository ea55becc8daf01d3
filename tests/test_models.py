"""The production loaders on the tiny checkpoints: codec lengths, restricted and seeded generation, Whisper,
missing, incomplete and corrupt weights, offload."""

from __future__ import annotations

import json
import logging
import re
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import tiny_settings
from safetensors.torch import load_file, save_file

from gpu_manager import ModelState, MultiModelGPUManager
from llasa import models
from llasa.config import Settings
from llasa.errors import InvalidInput, ModelUnavailable
from llasa.models import (
    LLASA_CONTEXT_TOKENS,
    LlasaModel,
    SpeechOnlyLogitsProcessor,
    WhisperTranscriber,
    XCodec2Codec,
    load_llasa,
    load_whisper,
    load_xcodec2,
    register_models,
)
from llasa.types import TranscriptionResult

SAMPLING = {"temperature": 0.8, "top_p": 1.0, "top_k": 50, "repetition_penalty": 1.0}


@pytest.fixture(scope="module")
def settings(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    base = tmp_path_factory.mktemp("models")
    return tiny_settings(tiny_models, base)


@pytest.fixture(scope="module")
def llasa(settings: Settings) -> LlasaModel:
    return load_llasa(settings, "cpu")


@pytest.fixture(scope="module")
def codec(settings: Settings) -> XCodec2Codec:
    return load_xcodec2(settings, "cpu")


@pytest.fixture(scope="module")
def whisper(settings: Settings) -> WhisperTranscriber:
    return load_whisper(settings, "cpu")


@pytest.fixture(scope="module")
def noise_3s() -> np.ndarray:
    return (np.random.default_rng(7).standard_normal(48_000) * 0.1).astype(np.float32)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _copy_checkpoint(tiny_models: Path, name: str, tmp_path: Path) -> Path:
    folder = tmp_path / f"{name}-copy"
    shutil.copytree(tiny_models / name, folder)
    return folder


def _rewrite_weights(folder: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    weights = load_file(folder / "model.safetensors")
    edit(weights)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


# --- XCodec2 ------------------------------------------------------------------------------------------------


def test_codec_loads_fp32_on_cpu(codec: XCodec2Codec) -> None:
    assert codec.model.dtype == torch.float32
    assert codec.device == "cpu"
    assert codec.codebook_size == 65536
    assert codec.size_bytes() > 0


def test_codec_dtype_setting_is_honoured(make_settings: Callable[..., Settings], noise_3s: np.ndarray) -> None:
    """XCODEC2_DTYPE: float32 by default (as the codec was trained), bfloat16 on request; same code count and
    decoded length either way."""
    assert Settings(_env_file=None).xcodec2_dtype == "float32"
    for dtype_name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        codec = load_xcodec2(make_settings(xcodec2_dtype=dtype_name), "cpu")
        try:
            assert codec.model.dtype == dtype
            codes = codec.encode(noise_3s)
            assert len(codes) == 151
            assert all(0 <= c <= 65535 for c in codes)
            audio = codec.decode(codes)
            assert audio.dtype == np.float32
            assert audio.shape == (151 * 320,)
            assert np.isfinite(audio).all()
        finally:
            codec.close()


def test_codec_dtype_setting_rejects_other_types(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ValueError, match="xcodec2_dtype"):
        make_settings(xcodec2_dtype="float16")


def test_encode_3s_gives_151_codes_in_range(codec: XCodec2Codec, noise_3s: np.ndarray) -> None:
    codes = codec.encode(noise_3s)
    assert len(codes) == 151
    assert all(isinstance(c, int) and 0 <= c <= 65535 for c in codes)
    assert len(set(codes)) > 1  # the tiny codec is random but not constant


def test_encode_speech_file(codec: XCodec2Codec, audio_dir: Path) -> None:
    samples, rate = sf.read(audio_dir / "en_16k_mono.wav", dtype="float32")
    assert rate == 16_000
    codes = codec.encode(samples)
    assert len(codes) == len(samples) // 320 + 1


def test_encode_rejects_bad_shapes(codec: XCodec2Codec) -> None:
    with pytest.raises(InvalidInput, match="mono"):
        codec.encode(np.zeros(0, dtype=np.float32))
    with pytest.raises(InvalidInput, match="mono"):
        codec.encode(np.zeros((2, 1600), dtype=np.float32))


@pytest.mark.parametrize("num_codes", [1, 2, 151, 400])
def test_decode_length_is_exact(codec: XCodec2Codec, num_codes: int) -> None:
    codes = np.random.default_rng(num_codes).integers(0, 65536, num_codes).tolist()
    audio = codec.decode(codes)
    assert audio.dtype == np.float32
    assert audio.ndim == 1
    assert audio.shape[0] == num_codes * 320
    assert np.isfinite(audio).all()


def test_decode_round_trip_and_edges(codec: XCodec2Codec, noise_3s: np.ndarray) -> None:
    codes = codec.encode(noise_3s)
    assert codec.decode(codes).shape == (len(codes) * 320,)
    assert codec.decode([]).shape == (0,)
    for bad in ([0, 65536], [-1]):
        with pytest.raises(InvalidInput, match=r"0\.\.65535"):
            codec.decode(bad)


# --- Llasa --------------------------------------------------------------------------------------------------


def test_llasa_loads_fp32_with_ids_from_its_tokenizer(llasa: LlasaModel) -> None:
    assert llasa.model.dtype == torch.float32
    assert llasa.device == "cpu"
    tok = llasa.tokenizer
    assert llasa.token_ids.speech_end_id == tok.convert_tokens_to_ids("<|SPEECH_GENERATION_END|>")
    assert llasa.token_ids.first_speech_id == tok.convert_tokens_to_ids("<|s_0|>")
    assert llasa.count_text_tokens("Hello world") == len(tok.encode("Hello world", add_special_tokens=False))
    assert llasa.count_text_tokens("") == 0
    ids = llasa.build_prompt_ids("Hi.", "Ref.", [1, 2, 3])
    assert ids[-3:] == [llasa.token_ids.first_speech_id + c for c in (1, 2, 3)]


def test_speech_only_processor_allows_speech_and_end_only(llasa: LlasaModel) -> None:
    ids = llasa.token_ids
    vocab = llasa.model.get_output_embeddings().weight.shape[0]
    processor = SpeechOnlyLogitsProcessor(llasa._mask(torch.device("cpu"), torch.float32))
    scores = torch.randn(2, vocab)
    scores[:, 5] = 1e4  # a text token the raw model would pick
    out = processor(torch.zeros(2, 3, dtype=torch.long), scores)
    allowed = torch.isfinite(out[0]).nonzero().flatten()
    assert set(allowed.tolist()) == {*range(ids.first_speech_id, ids.last_speech_id + 1), ids.speech_end_id}
    assert int(out.argmax(-1)[0]) != 5
    scores[:, ids.speech_end_id] = 1e5  # the end token stays reachable
    assert int(processor(torch.zeros(2, 3, dtype=torch.long), scores).argmax(-1)[1]) == ids.speech_end_id


def test_generate_gives_only_speech_and_stops_at_max_new_tokens(llasa: LlasaModel) -> None:
    prompt_ids = llasa.build_prompt_ids("Hello world.", None, [])
    codes = llasa.generate_codes(prompt_ids, max_new_tokens=24, seed=11, **SAMPLING)
    # a random model samples text tokens freely; restricted, every one of the 24 steps is a speech code
    assert len(codes) == 24
    assert all(0 <= c <= 65535 for c in codes)


def test_same_seed_same_codes_other_seed_other_codes(llasa: LlasaModel) -> None:
    prompt_ids = llasa.build_prompt_ids("你好，世界。", "参考。", [5, 6, 7])
    rng_before = torch.random.get_rng_state()
    first = llasa.generate_codes(prompt_ids, max_new_tokens=16, seed=1234, **SAMPLING)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the global RNG is left alone
    again = llasa.generate_codes(prompt_ids, max_new_tokens=16, seed=1234, **SAMPLING)
    other = llasa.generate_codes(prompt_ids, max_new_tokens=16, seed=4321, **SAMPLING)
    assert first == again
    assert first != other


def test_sampling_parameters_are_applied(llasa: LlasaModel) -> None:
    prompt_ids = llasa.build_prompt_ids("Hello.", None, [])
    base = llasa.generate_codes(prompt_ids, max_new_tokens=12, seed=5, **SAMPLING)
    greedy_ish = {"temperature": 0.8, "top_p": 1.0, "top_k": 1, "repetition_penalty": 1.0}
    top1 = llasa.generate_codes(prompt_ids, max_new_tokens=12, seed=5, **greedy_ish)
    top1_other_seed = llasa.generate_codes(prompt_ids, max_new_tokens=12, seed=6, **greedy_ish)
    assert top1 == top1_other_seed  # top_k=1 leaves nothing to chance
    assert top1 != base
    penalised = llasa.generate_codes(
        prompt_ids, max_new_tokens=12, seed=5, temperature=0.8, top_p=0.5, top_k=0, repetition_penalty=1.3
    )
    assert len(penalised) == 12


def test_should_stop_cancels_generation(llasa: LlasaModel) -> None:
    prompt_ids = llasa.build_prompt_ids("Hello.", None, [])
    calls = {"n": 0}

    def should_stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    codes = llasa.generate_codes(prompt_ids, max_new_tokens=200, seed=1, should_stop=should_stop, **SAMPLING)
    assert 1 <= len(codes) < 10
    assert llasa.generate_codes(prompt_ids, max_new_tokens=50, seed=1, should_stop=lambda: True, **SAMPLING) == [
        *llasa.generate_codes(prompt_ids, max_new_tokens=1, seed=1, **SAMPLING)
    ]


def test_generation_never_exceeds_the_context(llasa: LlasaModel) -> None:
    overhead = len(llasa.build_prompt_ids("Hi.", "Ref.", []))
    reference = list(range(LLASA_CONTEXT_TOKENS - overhead - 20))
    prompt_ids = llasa.build_prompt_ids("Hi.", "Ref.", reference)
    room = LLASA_CONTEXT_TOKENS - len(prompt_ids)
    assert room == 20
    codes = llasa.generate_codes(prompt_ids, max_new_tokens=500, seed=2, **SAMPLING)
    assert len(codes) <= room
    too_long = llasa.build_prompt_ids("Hi.", "Ref.", list(range(LLASA_CONTEXT_TOKENS)))
    with pytest.raises(InvalidInput, match="context"):
        llasa.generate_codes(too_long, max_new_tokens=10, seed=2, **SAMPLING)


def test_generate_with_status_reports_the_token_limit(llasa: LlasaModel) -> None:
    prompt_ids = llasa.build_prompt_ids("Hello world.", None, [])
    codes, hit_limit = llasa.generate_codes_with_status(prompt_ids, max_new_tokens=8, seed=3, **SAMPLING)
    assert len(codes) == 8
    assert hit_limit is True  # a random model never picks the end token in 8 steps: the chunk was cut
    assert llasa.generate_codes(prompt_ids, max_new_tokens=8, seed=3, **SAMPLING) == codes  # same codes, no status
    result = llasa.generate_codes_with_status(prompt_ids, max_new_tokens=8, seed=3, **SAMPLING)
    assert (result.codes, result.hit_limit) == (codes, True)


def test_generate_with_status_cancelled_is_not_the_limit(llasa: LlasaModel) -> None:
    prompt_ids = llasa.build_prompt_ids("Hello.", None, [])
    calls = {"n": 0}

    def should_stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    codes, hit_limit = llasa.generate_codes_with_status(
        prompt_ids, max_new_tokens=50, seed=1, should_stop=should_stop, **SAMPLING
    )
    assert 1 <= len(codes) < 50
    assert hit_limit is False


def test_generate_with_status_context_clamp_is_the_limit(llasa: LlasaModel) -> None:
    prompt_ids = llasa.build_prompt_ids("Hi.", "Ref.", list(range(LLASA_CONTEXT_TOKENS - 100)))
    room = LLASA_CONTEXT_TOKENS - len(prompt_ids)
    codes, hit_limit = llasa.generate_codes_with_status(prompt_ids, max_new_tokens=500, seed=2, **SAMPLING)
    assert len(codes) == room
    assert hit_limit is True


def test_generate_with_status_end_token_is_not_the_limit(
    make_settings: Callable[..., Settings], llasa: LlasaModel, tiny_models: Path, tmp_path: Path
) -> None:
    """A checkpoint edited so that greedy decoding picks <|SPEECH_GENERATION_END|> stops before the limit.

    With every layer's output projection zeroed the last hidden state is the current token's embedding; all
    embeddings point along one axis and the end token's is twice as long, so (embeddings tied to the LM head)
    the end token always has the largest logit.
    """
    end_id = llasa.token_ids.speech_end_id
    folder = _copy_checkpoint(tiny_models, "llasa", tmp_path)
    weights = load_file(folder / "model.safetensors")
    for key in weights:
        if key.endswith(("o_proj.weight", "down_proj.weight")):
            weights[key] = torch.zeros_like(weights[key])
    embeddings = torch.zeros_like(weights["model.embed_tokens.weight"])
    embeddings[:, 0] = 1.0
    embeddings[end_id, 0] = 2.0
    weights["model.embed_tokens.weight"] = embeddings
    weights["model.norm.weight"] = torch.ones_like(weights["model.norm.weight"])
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    ender = load_llasa(make_settings(llasa_model=str(folder)), "cpu")
    try:
        prompt_ids = ender.build_prompt_ids("Hello.", None, [])
        greedy = {**SAMPLING, "top_k": 1}
        output = ender.generate_codes_with_status(prompt_ids, max_new_tokens=10, seed=1, **greedy)
        assert output == ([], False)
    finally:
        ender.close()


def test_tokenizer_is_loaded_once_per_folder(settings: Settings, llasa: LlasaModel) -> None:
    again = load_llasa(settings, "cpu")
    try:
        assert again.tokenizer is llasa.tokenizer
        assert again.model is not llasa.model
    finally:
        again.close()
    assert again.model is None


# --- Whisper ------------------------------------------------------------------------------------------------


def test_whisper_transcribes_with_vad_and_bounded_decode(whisper: WhisperTranscriber, audio_dir: Path) -> None:
    assert whisper.device == "cpu"
    assert whisper.compute_type == "int8"  # auto on the CPU
    samples, _ = sf.read(audio_dir / "en_16k_mono.wav", dtype="float32")
    result = whisper.transcribe(samples, "en", max_new_tokens=4)
    assert isinstance(result, TranscriptionResult)
    assert result.language == "en"
    assert result.duration_s == pytest.approx(len(samples) / 16_000, abs=0.01)
    assert all(seg.end_s >= seg.start_s for seg in result.segments)
    detected = whisper.transcribe(samples, None, max_new_tokens=4)
    assert detected.language  # auto-detected, whatever the random model thinks


def test_whisper_silence_is_empty(whisper: WhisperTranscriber, audio_dir: Path) -> None:
    samples, _ = sf.read(audio_dir / "silence_3s.wav", dtype="float32")
    result = whisper.transcribe(samples, "en", max_new_tokens=4)
    assert result.text == ""
    assert result.segments == []


def test_whisper_falls_back_to_cpu_when_ctranslate2_has_no_gpu(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """On this machine CTranslate2 cannot start on CUDA: the transcriber must fall back with one log line."""
    import ctranslate2

    if ctranslate2.get_cuda_device_count() > 0:
        pytest.skip("CTranslate2 sees a GPU here")
    with caplog.at_level(logging.WARNING, logger="llasa.models"):
        transcriber = WhisperTranscriber(Path(settings.whisper_model), "cuda:0")
    assert transcriber.device == "cpu"
    assert transcriber.fell_back_to_cpu
    assert transcriber.compute_type == "int8"
    lines = [r for r in caplog.records if "falling back" in r.getMessage() or "on the CPU instead" in r.getMessage()]
    assert len(lines) == 1
    transcriber.move_to("cpu")  # no-op, no error
    assert transcriber.transcribe(np.zeros(16_000, dtype=np.float32), "en", max_new_tokens=2).text == ""


def test_join_segments() -> None:
    assert models._join_segments(["Hello", "world.", "你好", "世界"]) == "Hello world. 你好世界"
    assert models._join_segments(["", "a"]) == "a"


# --- missing weights ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "variable", "loader"),
    [
        ("llasa_model", "LLASA_MODEL", load_llasa),
        ("xcodec2_model", "XCODEC2_MODEL", load_xcodec2),
        ("whisper_model", "WHISPER_MODEL", load_whisper),
    ],
)
def test_missing_folder_names_the_variable(
    make_settings: Callable[..., Settings], tmp_path: Path, field: str, variable: str, loader
) -> None:
    missing = tmp_path / "nowhere" / "model"
    with pytest.raises(ModelUnavailable, match=variable) as info:
        loader(make_settings(**{field: str(missing)}), "cpu")
    assert str(missing) in info.value.message
    assert info.value.status_code == 503
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelUnavailable, match=variable) as info:
        loader(make_settings(**{field: str(empty)}), "cpu")
    assert info.value.__cause__ is not None or "model.bin" in info.value.message


@pytest.mark.parametrize(
    ("field", "variable", "loader", "value"),
    [
        ("llasa_model", "LLASA_MODEL", load_llasa, "nobody-here/no-such-llasa"),
        ("xcodec2_model", "XCODEC2_MODEL", load_xcodec2, "nobody-here/no-such-codec"),
        ("whisper_model", "WHISPER_MODEL", load_whisper, "tiny"),
    ],
)
def test_unreachable_hub_is_model_unavailable(
    make_settings: Callable[..., Settings], tmp_path: Path, field: str, variable: str, loader, value: str
) -> None:
    """HF_ENDPOINT points at a closed local port and HF_HOME at an empty cache: no download, a clear 503."""
    settings = make_settings(
        **{field: value}, hf_endpoint=f"http://127.0.0.1:{_free_port()}", hf_home=str(tmp_path / "hf")
    )
    with pytest.raises(ModelUnavailable, match=variable) as info:
        loader(settings, "cpu")
    assert info.value.__cause__ is not None
    assert "HF_ENDPOINT" in info.value.message


LOADERS = [
    pytest.param("llasa", "llasa_model", "LLASA_MODEL", load_llasa, id="llasa"),
    pytest.param("xcodec2", "xcodec2_model", "XCODEC2_MODEL", load_xcodec2, id="xcodec2"),
]


@pytest.mark.parametrize(
    ("name", "field", "variable", "loader", "dropped"),
    [
        ("llasa", "llasa_model", "LLASA_MODEL", load_llasa, "model.layers.1.mlp.down_proj.weight"),
        ("llasa", "llasa_model", "LLASA_MODEL", load_llasa, "model.embed_tokens.weight"),
        ("xcodec2", "xcodec2_model", "XCODEC2_MODEL", load_xcodec2, "acoustic_decoder.head.linear.weight"),
        ("xcodec2", "xcodec2_model", "XCODEC2_MODEL", load_xcodec2, "quantizer.project_out.weight"),
    ],
)
def test_checkpoint_missing_a_tensor_is_model_unavailable(
    make_settings: Callable[..., Settings],
    tiny_models: Path,
    tmp_path: Path,
    name: str,
    field: str,
    variable: str,
    loader,
    dropped: str,
) -> None:
    """transformers fills a missing tensor with random values and only prints a table: the loader must refuse."""
    folder = _copy_checkpoint(tiny_models, name, tmp_path)
    _rewrite_weights(folder, lambda weights: weights.pop(dropped))
    with pytest.raises(ModelUnavailable, match=variable) as info:
        loader(make_settings(**{field: str(folder)}), "cpu")
    # a tied lm_head goes missing with the embeddings it shares: "2 weights missing, e.g. lm_head.weight, ..."
    assert re.search(r"\b[12] weights missing, e\.g\. ", info.value.message)
    assert dropped in info.value.message
    assert str(folder) in info.value.message
    assert info.value.status_code == 503


def _truncate_weights(folder: Path) -> None:
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])


def _shrink_a_tensor(folder: Path) -> None:
    def edit(weights: dict[str, torch.Tensor]) -> None:
        key = next(k for k, v in weights.items() if v.ndim == 2)
        weights[key] = weights[key][:-1].clone()

    _rewrite_weights(folder, edit)


def _config_not_a_mapping(folder: Path) -> None:
    (folder / "config.json").write_text("[1, 2]")


def _config_wrong_type(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["hidden_size"] = None
    (folder / "config.json").write_text(json.dumps(config))


def _config_not_json(folder: Path) -> None:
    (folder / "config.json").write_text("{garbage")


@pytest.mark.parametrize(
    "corrupt", [_truncate_weights, _shrink_a_tensor, _config_not_a_mapping, _config_wrong_type, _config_not_json]
)
@pytest.mark.parametrize(("name", "field", "variable", "loader"), LOADERS)
def test_corrupt_checkpoint_is_model_unavailable(
    make_settings: Callable[..., Settings],
    tiny_models: Path,
    tmp_path: Path,
    name: str,
    field: str,
    variable: str,
    loader,
    corrupt: Callable[[Path], None],
) -> None:
    """Any loader failure (safetensors header, shape mismatch, config) names the model and the variable to set."""
    folder = _copy_checkpoint(tiny_models, name, tmp_path)
    corrupt(folder)
    with pytest.raises(ModelUnavailable, match=variable) as info:
        loader(make_settings(**{field: str(folder)}), "cpu")
    assert str(folder) in info.value.message
    assert info.value.__cause__ is not None


def test_corrupt_whisper_tokenizer_is_model_unavailable(
    make_settings: Callable[..., Settings], tiny_models: Path, tmp_path: Path
) -> None:
    """The tokenizers library raises a bare Exception for a broken tokenizer.json."""
    folder = _copy_checkpoint(tiny_models, "whisper", tmp_path)
    (folder / "tokenizer.json").write_text("{garbage")
    with pytest.raises(ModelUnavailable, match="WHISPER_MODEL") as info:
        load_whisper(make_settings(whisper_model=str(folder)), "cpu")
    assert info.value.__cause__ is not None


def test_hub_id_already_in_cache_loads_offline(
    make_settings: Callable[..., Settings], tiny_models: Path, tmp_path: Path
) -> None:
    """A hub id found in HF_HOME's cache loads with the hub unreachable."""
    repo = tmp_path / "hf" / "hub" / "models--tiny--xcodec2"
    commit = "0" * 40
    shutil.copytree(tiny_models / "xcodec2", repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    settings = make_settings(
        xcodec2_model="tiny/xcodec2", hf_endpoint=f"http://127.0.0.1:{_free_port()}", hf_home=str(tmp_path / "hf")
    )
    codec = load_xcodec2(settings, "cpu")
    assert codec.decode([1, 2]).shape == (640,)


def test_unknown_whisper_size_is_model_unavailable(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ModelUnavailable, match="WHISPER_MODEL"):
        load_whisper(make_settings(whisper_model="gigantic-v9"), "cpu")


# --- ManagedModel and the manager ---------------------------------------------------------------------------


def test_move_to_cpu_keeps_models_working(
    llasa: LlasaModel, codec: XCodec2Codec, whisper: WhisperTranscriber, noise_3s: np.ndarray
) -> None:
    for model in (llasa, codec, whisper):
        model.move_to("cpu")
        assert model.size_bytes() > 0
    assert len(codec.encode(noise_3s)) == 151
    prompt_ids = llasa.build_prompt_ids("Hi.", None, [])
    assert len(llasa.generate_codes(prompt_ids, max_new_tokens=3, seed=1, **SAMPLING)) == 3
    assert whisper.transcribe(noise_3s, "en", max_new_tokens=2).language == "en"


def test_register_models_with_the_real_manager(settings: Settings, noise_3s: np.ndarray) -> None:
    manager = MultiModelGPUManager(settings)
    register_models(manager, settings)
    try:
        assert set(manager.model_names) >= {"llasa", "xcodec2", "whisper"}
        assert manager.state_of("xcodec2") is ModelState.UNLOADED  # nothing loads at registration
        with manager.use("xcodec2") as codec:
            assert isinstance(codec, XCodec2Codec)
            assert len(codec.encode(noise_3s)) == 151
        with manager.use("whisper") as whisper:
            assert isinstance(whisper, WhisperTranscriber)
        manager.release()
        assert manager.state_of("xcodec2") is ModelState.UNLOADED
        register_models(manager, settings)  # a second service on the same manager keeps the registrations
        assert sorted(manager.model_names).count("llasa") == 1
    finally:
        manager.shutdown()
