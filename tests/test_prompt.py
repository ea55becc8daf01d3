"""Llasa prompt rendering equals the training format character for character; speech-token parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from llasa import prompt
from llasa.prompt import (
    FIXED_DATE,
    SpeechTokenIds,
    build_messages,
    build_prompt_ids,
    lookup_token_ids,
    parse_speech_ids,
    parse_speech_tokens,
    render_prompt,
    speech_token,
)

HEADER = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    "Cutting Knowledge Date: December 2023\n"
    "Today Date: 26 Jul 2024\n\n"
    "<|eot_id|>"
)


@pytest.fixture(scope="module")
def tokenizer(tiny_models: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_models / "llasa")


@pytest.fixture(scope="module")
def ids(tokenizer) -> SpeechTokenIds:
    return lookup_token_ids(tokenizer)


def test_english_with_reference(tokenizer) -> None:
    rendered = render_prompt(tokenizer, "Hello world.", "This is the reference.", [0, 17, 65535])
    assert rendered == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\n"
        "Today Date: 26 Jul 2024\n\n"
        "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
        "Convert the text to speech:<|TEXT_UNDERSTANDING_START|>This is the reference. Hello world."
        "<|TEXT_UNDERSTANDING_END|><|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        "<|SPEECH_GENERATION_START|><|s_0|><|s_17|><|s_65535|>"
    )


def test_english_without_reference(tokenizer) -> None:
    rendered = render_prompt(tokenizer, "Hello world.", None, [])
    assert rendered == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\n"
        "Today Date: 26 Jul 2024\n\n"
        "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
        "Convert the text to speech:<|TEXT_UNDERSTANDING_START|>Hello world.<|TEXT_UNDERSTANDING_END|>"
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        "<|SPEECH_GENERATION_START|>"
    )


def test_chinese_with_reference(tokenizer) -> None:
    rendered = render_prompt(tokenizer, "你好，世界！", "这是参考音频。", [42, 4242])
    assert rendered == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\n"
        "Today Date: 26 Jul 2024\n\n"
        "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
        "Convert the text to speech:<|TEXT_UNDERSTANDING_START|>这是参考音频。你好，世界！"
        "<|TEXT_UNDERSTANDING_END|><|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        "<|SPEECH_GENERATION_START|><|s_42|><|s_4242|>"
    )


def test_chinese_without_reference(tokenizer) -> None:
    rendered = render_prompt(tokenizer, "今天天气很好。", None, ())
    assert rendered == (
        HEADER + "<|start_header_id|>user<|end_header_id|>\n\n"
        "Convert the text to speech:<|TEXT_UNDERSTANDING_START|>今天天气很好。<|TEXT_UNDERSTANDING_END|>"
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        "<|SPEECH_GENERATION_START|>"
    )


@pytest.mark.parametrize(
    ("reference_text", "text", "spoken"),
    [
        ("这是参考音频。", "你好，世界！", "这是参考音频。你好，世界！"),  # the model card's Chinese example: no space
        ("参考音频", "你好", "参考音频你好"),
        ("今天天气很好。", "Good morning.", "今天天气很好。 Good morning."),  # Latin on one side: a space
        ("It rains.", "今天天气很好。", "It rains. 今天天气很好。"),
        ("Reference text.", "Hello.", "Reference text. Hello."),
        ("「参考」", "こんにちは", "「参考」こんにちは"),  # CJK punctuation and kana count as CJK
    ],
)
def test_transcript_and_text_join(reference_text: str, text: str, spoken: str) -> None:
    assert build_messages(text, reference_text, [])[0]["content"] == (
        f"Convert the text to speech:<|TEXT_UNDERSTANDING_START|>{spoken}<|TEXT_UNDERSTANDING_END|>"
    )


def test_empty_transcript_counts_as_no_reference_text() -> None:
    assert build_messages("Hi.", "", [1])[0]["content"] == (
        "Convert the text to speech:<|TEXT_UNDERSTANDING_START|>Hi.<|TEXT_UNDERSTANDING_END|>"
    )
    assert build_messages("Hi.", "", [1])[1]["content"] == "<|SPEECH_GENERATION_START|><|s_1|>"


def test_date_is_fixed_not_today(tiny_models: Path) -> None:
    """Llama-3.2's template (the legacy tiny checkpoint, like Llasa-1B / 3B) would date the prompt today."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models / "llasa-legacy")
    assert FIXED_DATE == "26 Jul 2024"
    rendered = render_prompt(tokenizer, "x", None, [])
    today = tokenizer.apply_chat_template(build_messages("x", None, []), tokenize=False, continue_final_message=True)
    assert f"Today Date: {FIXED_DATE}\n" in rendered
    # the template alone would use today's date; the prompt never does (unless today is the fixed date)
    assert today.replace(today.split("Today Date: ")[1].split("\n")[0], FIXED_DATE) == rendered


def test_prompt_ids_are_the_rendered_text_tokenized_once(tokenizer, ids: SpeechTokenIds) -> None:
    codes = [5, 0, 65535, 300]
    prompt_ids = build_prompt_ids(tokenizer, "Hello 你好", "Ref text.", codes)
    rendered = render_prompt(tokenizer, "Hello 你好", "Ref text.", codes)
    assert prompt_ids == tokenizer.encode(rendered, add_special_tokens=False)
    assert prompt_ids.count(tokenizer.bos_token_id) == 1
    assert prompt_ids[0] == tokenizer.bos_token_id
    # the prompt ends with the open speech turn: start token, then exactly the reference codes
    assert prompt_ids[-5:] == [ids.speech_start_id, *(ids.first_speech_id + c for c in codes)]
    assert ids.speech_end_id not in prompt_ids


def test_ids_are_looked_up_from_the_tokenizer(tokenizer, ids: SpeechTokenIds) -> None:
    assert ids.speech_start_id == tokenizer.convert_tokens_to_ids("<|SPEECH_GENERATION_START|>")
    assert ids.speech_end_id == tokenizer.convert_tokens_to_ids("<|SPEECH_GENERATION_END|>")
    assert ids.first_speech_id == tokenizer.convert_tokens_to_ids("<|s_0|>")
    assert ids.last_speech_id == tokenizer.convert_tokens_to_ids("<|s_65535|>")
    # the tiny tokenizer has the real checkpoints' layout (tests/test_golden_prompt.py checks it in depth)
    assert (ids.speech_start_id, ids.speech_end_id, ids.first_speech_id) == (128260, 128261, 128264)
    assert ids.code_to_id(123) == tokenizer.convert_tokens_to_ids("<|s_123|>")


def test_lookup_rejects_a_tokenizer_without_llasa_tokens(tiny_models: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    whisper_tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(tiny_models / "whisper" / "tokenizer.json"))
    with pytest.raises(ValueError, match="Llasa checkpoint"):
        lookup_token_ids(whisper_tokenizer)


def test_parse_ignores_non_speech_and_stops_at_end() -> None:
    ids = SpeechTokenIds(speech_start_id=10, speech_end_id=11, first_speech_id=100)
    generated = [10, 100, 7, 105, 100 + 65535, 3, 11, 101, 102]
    assert parse_speech_ids(generated, ids) == [0, 5, 65535]
    assert parse_speech_ids([], ids) == []
    assert parse_speech_ids([11, 100], ids) == []
    assert parse_speech_ids([100 + 65536, 99], ids) == []  # just outside the speech range


def test_parse_real_tokenizer_output(tokenizer, ids: SpeechTokenIds) -> None:
    text = "<|SPEECH_GENERATION_START|><|s_3|>hello<|s_65535|><|SPEECH_GENERATION_END|><|s_9|>"
    token_ids = tokenizer.encode(text, add_special_tokens=False)
    assert parse_speech_ids(token_ids, ids) == [3, 65535]
    assert parse_speech_tokens(tokenizer.convert_ids_to_tokens(token_ids)) == [3, 65535]


def test_parse_tokens_skips_malformed() -> None:
    tokens = ["<|s_1|>", "<|s_x|>", "<|s_65536|>", "<|s_|>", "s_2", "<|s_2|>", "<|SPEECH_GENERATION_END|>", "<|s_4|>"]
    assert parse_speech_tokens(tokens) == [1, 2]


def test_speech_token_range() -> None:
    assert speech_token(0) == "<|s_0|>"
    assert speech_token(65535) == "<|s_65535|>"
    for bad in (-1, 65536):
        with pytest.raises(ValueError, match="outside"):
            speech_token(bad)
    with pytest.raises(ValueError, match="outside"):
        build_messages("x", None, [70000])
    assert prompt.NUM_SPEECH_CODES == 65536
