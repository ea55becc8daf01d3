"""tools/make_tiny_models.py writes the real on-disk layouts, deterministically, with the Llasa vocabulary."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
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
    ):
        assert (tiny_models / "llasa" / name).is_file(), name
    assert json.loads((tiny_models / "llasa" / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        assert (tiny_models / "xcodec2" / name).is_file(), name
    assert json.loads((tiny_models / "xcodec2" / "config.json").read_text())["model_type"] == "xcodec2"
    for name in ("model.bin", "config.json", "tokenizer.json"):
        assert (tiny_models / "whisper" / name).is_file(), name


def test_control_tokens_are_special_and_speech_tokens_are_not(tokenizer) -> None:
    ids = tokenizer.convert_tokens_to_ids(LLASA_CONTROL_TOKENS)
    assert tokenizer.unk_token_id not in ids
    assert ids == list(range(ids[0], ids[0] + 8))  # consecutive, in the real checkpoint's order
    added = tokenizer.added_tokens_decoder
    assert all(added[i].special for i in ids)
    first = tokenizer.convert_tokens_to_ids("<|s_0|>")
    last = tokenizer.convert_tokens_to_ids("<|s_65535|>")
    assert last - first == 65535
    assert first == ids[-1] + 1  # right after the control tokens, as in the real vocabulary
    assert not added[first].special
    assert not added[last].special
    # ordinary tokens survive skip_special_tokens, control tokens do not
    text = tokenizer.decode([ids[4], first, first + 7, ids[5]], skip_special_tokens=True)
    assert text == "<|s_0|><|s_7|>"
    # a speech token in text is one token
    assert tokenizer.encode("<|s_12345|>", add_special_tokens=False) == [first + 12345]


def test_text_encodes_without_unknowns_and_round_trips(tokenizer) -> None:
    for text in ("Hello, world! 你好，世界。", "Ünïcödé ☃ 𝄞 emoji 😀", "混合 mixed text 123"):
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.unk_token_id is None or tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == text


def test_llama3_specials_and_chat_template(tokenizer) -> None:
    added = tokenizer.added_tokens_decoder
    for token in ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"):
        assert added[tokenizer.convert_tokens_to_ids(token)].special
    assert tokenizer.bos_token == "<|begin_of_text|>"
    chat = [{"role": "user", "content": "hi"}]
    rendered = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True, date_string="1 Jan 2025")
    assert rendered == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 1 Jan 2025\n\n<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    # without date_string the template uses today's date, like the real Llama-3.2 template
    undated = tokenizer.apply_chat_template(chat, tokenize=False)
    assert "Today Date: " in undated
    assert "Today Date: 1 Jan 2025" not in undated


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
