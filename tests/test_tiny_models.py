"""tools/make_tiny_models.py writes the real on-disk layouts, deterministically, with the Llasa vocabulary."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

LLASA_CONTROL_TOKENS = [
    "<|TEXT_GENERATION_START|>",
    "<|TEXT_GENERATION_END|>",
    "<|TEXT_UNDERSTANDING_START|>",
    "<|TEXT_UNDERSTANDING_END|>",
    "<|SPEECH_GENERATION_START|>",
    "<|SPEECH_GENERATION_END|>",
    "<|SPEECH_UNDERSTANDING_START|>",
    "<|SPEECH_UNDERSTANDING_END|>",
]


@pytest.fixture(scope="module")
def tokenizer(tiny_models: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_models / "llasa")


def test_layout_is_the_hub_layout(tiny_models: Path) -> None:
    for name in (
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    ):
        assert (tiny_models / "llasa" / name).is_file(), name
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json"):
        assert (tiny_models / "llasa-legacy" / name).is_file(), name
    assert json.loads((tiny_models / "llasa" / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        assert (tiny_models / "xcodec2" / name).is_file(), name
    assert json.loads((tiny_models / "xcodec2" / "config.json").read_text())["model_type"] == "xcodec2"
    for name in ("model.bin", "config.json", "tokenizer.json"):
        assert (tiny_models / "whisper" / name).is_file(), name


def test_llasa_token_layout_is_the_real_one(tokenizer) -> None:
    """The ids of the published checkpoints: Llama-3's 128,000 BPE ranks, its 256 specials, then Llasa's 8
    control tokens and 65,536 speech tokens, all added by train_tts.py as ordinary (not special) tokens."""
    assert len(tokenizer) == 193_800
    ids = tokenizer.convert_tokens_to_ids(LLASA_CONTROL_TOKENS)
    assert ids == list(range(128_256, 128_264))
    assert tokenizer.convert_tokens_to_ids("<|SPEECH_GENERATION_START|>") == 128_260
    assert tokenizer.convert_tokens_to_ids("<|SPEECH_GENERATION_END|>") == 128_261
    assert tokenizer.convert_tokens_to_ids("<|s_0|>") == 128_264
    assert tokenizer.convert_tokens_to_ids("<|s_65535|>") == 193_799
    added = tokenizer.added_tokens_decoder
    assert not any(added[i].special for i in ids)
    assert not added[128_264].special
    assert not added[193_799].special
    # ordinary added tokens survive skip_special_tokens
    text = tokenizer.decode([128_260, 128_264, 128_271, 128_261], skip_special_tokens=True)
    assert text == "<|SPEECH_GENERATION_START|><|s_0|><|s_7|><|SPEECH_GENERATION_END|>"
    # a speech or control token written in text is one token
    assert tokenizer.encode("<|s_12345|>", add_special_tokens=False) == [128_264 + 12345]
    assert tokenizer.encode("<|TEXT_UNDERSTANDING_START|>", add_special_tokens=False) == [128_258]


def test_llama3_specials_are_special_at_their_ids(tokenizer) -> None:
    added = tokenizer.added_tokens_decoder
    expected = {
        "<|begin_of_text|>": 128_000,
        "<|end_of_text|>": 128_001,
        "<|finetune_right_pad_id|>": 128_004,
        "<|start_header_id|>": 128_006,
        "<|end_header_id|>": 128_007,
        "<|eom_id|>": 128_008,
        "<|eot_id|>": 128_009,
        "<|python_tag|>": 128_010,
        "<|reserved_special_token_247|>": 128_255,
    }
    for token, token_id in expected.items():
        assert tokenizer.convert_tokens_to_ids(token) == token_id, token
    assert all(added[i].special for i in range(128_000, 128_256))
    assert tokenizer.bos_token == "<|begin_of_text|>"
    assert tokenizer.eos_token == "<|eot_id|>"


def test_text_tokenizes_as_llama3_does(tokenizer) -> None:
    """Meta's BPE, not a stand-in: well-known Llama-3 ids, one BOS added in front."""
    assert tokenizer.encode("Hello world") == [128_000, 9906, 1917]
    assert tokenizer.encode("\n\n", add_special_tokens=False) == [271]
    assert tokenizer.encode("system", add_special_tokens=False) == [9125]


def test_text_encodes_without_unknowns_and_round_trips(tokenizer) -> None:
    for text in ("Hello, world! 你好，世界。", "Ünïcödé ☃ 𝄞 emoji 😀", "混合 mixed text 123"):
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.unk_token_id is None or tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == text


def test_llama31_chat_template(tokenizer) -> None:
    chat = [{"role": "user", "content": "hi"}]
    rendered = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True, date_string="1 Jan 2025")
    assert rendered == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 1 Jan 2025\n\n<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    # Llama-3.1's template (the 8B's) falls back to a fixed date, not today's
    assert "Today Date: 26 Jul 2024\n" in tokenizer.apply_chat_template(chat, tokenize=False)


def test_legacy_tokenizer_format_and_llama32_template(tiny_models: Path, tokenizer) -> None:
    """The older layout of the published Llasa checkpoints loads, with its own pad, length and template."""
    from transformers import AutoTokenizer

    legacy_dir = tiny_models / "llasa-legacy"
    config = json.loads((legacy_dir / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert "{%- if strftime_now is defined %}" in config["chat_template"]
    assert not (legacy_dir / "chat_template.jinja").exists()
    legacy = AutoTokenizer.from_pretrained(legacy_dir)
    assert legacy.pad_token == "<|eot_id|>"
    assert legacy.model_max_length == 2048
    assert len(legacy) == len(tokenizer) == 193_800
    assert legacy.added_tokens_decoder[128_260].special is False
    chat = [{"role": "user", "content": "hi"}]
    # Llama-3.2's template (the 1B's and 3B's) dates the prompt today unless told otherwise
    undated = legacy.apply_chat_template(chat, tokenize=False)
    assert "Today Date: " in undated
    assert "Today Date: 26 Jul 2024" not in undated or time.strftime("%d %b %Y") == "26 Jul 2024"
    dated = legacy.apply_chat_template(chat, tokenize=False, add_generation_prompt=True, date_string="1 Jan 2025")
    assert dated == tokenizer.apply_chat_template(
        chat, tokenize=False, add_generation_prompt=True, date_string="1 Jan 2025"
    )


def test_generation_config_has_instruct_defaults(tiny_models: Path) -> None:
    """A Llama-3.x-Instruct's defaults, which sampling must never pick up (tests/test_golden_prompt.py checks)."""
    generation = json.loads((tiny_models / "llasa" / "generation_config.json").read_text())
    assert generation["temperature"] == 0.6
    assert generation["top_p"] == 0.9
    assert generation["eos_token_id"] == [128_001, 128_008, 128_009]
    config = json.loads((tiny_models / "llasa" / "config.json").read_text())
    assert config["eos_token_id"] == [128_001, 128_008, 128_009]
    assert config["bos_token_id"] == 128_000
    assert config["vocab_size"] == 193_800
    # serving engines' CPU attention kernels refuse head sizes below 32
    assert config["head_dim"] >= 32
    assert config["num_key_value_heads"] < config["num_attention_heads"]  # grouped-query, as the real models


def test_model_vocab_covers_tokenizer(tiny_models: Path, tokenizer) -> None:
    config = json.loads((tiny_models / "llasa" / "config.json").read_text())
    assert config["vocab_size"] >= len(tokenizer)
    codec = json.loads((tiny_models / "xcodec2" / "config.json").read_text())
    levels = codec["quantization_levels"]
    size = 1
    for level in levels:
        size *= level
    assert size == 65536


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_cli_rebuild_is_byte_identical(tiny_models: Path, tmp_path: Path) -> None:
    """Fixed seeds: a fresh build through the CLI equals the cached one file for file."""
    out = tmp_path / "again"
    subprocess.run(
        [sys.executable, str(REPO / "tools" / "make_tiny_models.py"), str(out)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert _digest(out) == _digest(tiny_models)
