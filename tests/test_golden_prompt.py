"""Golden tests on the faithful tiny tokenizer (the real Llasa ids): the prompt is the one Llasa was trained on,
only speech and the end token are sampled, with exactly the requested parameters, and only the end token stops.

The reference construction is `train_tts.py`'s (LLaSA_training): a two-turn chat rendered by the checkpoint's
template, whose `<|TEXT_UNDERSTANDING_START|>` token is replaced by the text sequence and whose
`<|SPEECH_GENERATION_START|>` token is replaced by the speech sequence. Inference leaves the speech turn open after
the reference's codes. These tests fail if the prompt, the special-token layout or the sampling defaults drift.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_settings

from llasa.models import LlasaModel, SpeechOnlyLogitsProcessor, load_llasa
from llasa.prompt import FIXED_DATE, SpeechTokenIds, build_prompt_ids, lookup_token_ids, parse_speech_ids

BOS = 128_000
EOT = 128_009
TEXT_UNDERSTANDING_START = 128_258
TEXT_UNDERSTANDING_END = 128_259
SPEECH_GENERATION_START = 128_260
SPEECH_GENERATION_END = 128_261
FIRST_SPEECH = 128_264
VOCAB = 193_800

#: (text, reference transcript, reference codes, what train_tts.py put between the text markers)
CASES = [
    ("Hello world.", "This is the reference.", [0, 17, 65535], "This is the reference. Hello world."),
    ("你好，世界！", "这是参考音频。", [42, 4242], "这是参考音频。你好，世界！"),
    ("Good morning.", "今天天气很好。", [7], "今天天气很好。 Good morning."),
    ("今天天气很好。", "It rains.", [9, 9], "It rains. 今天天气很好。"),
    ("No reference at all.", None, [], "No reference at all."),
]


def _replace_tagged(ids: list[int], tag: int, sequence: Sequence[int]) -> list[int]:
    index = ids.index(tag)
    return [*ids[:index], *sequence, *ids[index + 1 :]]


def train_tts_prompt_ids(tokenizer: Any, spoken: str, reference_codes: Sequence[int]) -> list[int]:
    """The prompt as LLaSA_training's TTSDataset builds it, cut where inference continues (after the codes)."""
    chat = [
        {"role": "user", "content": "Convert the text to speech:<|TEXT_UNDERSTANDING_START|>"},
        {"role": "assistant", "content": "<|SPEECH_GENERATION_START|>"},
    ]
    rendered = tokenizer.apply_chat_template(chat, tokenize=True, return_dict=True, date_string=FIXED_DATE)
    ids = list(rendered["input_ids"])
    text_ids = tokenizer.encode(spoken, add_special_tokens=False)
    text_sequence = [TEXT_UNDERSTANDING_START, *text_ids, TEXT_UNDERSTANDING_END]
    speech_sequence = [SPEECH_GENERATION_START, *(FIRST_SPEECH + c for c in reference_codes)]
    ids = _replace_tagged(ids, TEXT_UNDERSTANDING_START, text_sequence)
    ids = _replace_tagged(ids, SPEECH_GENERATION_START, speech_sequence)
    # Training closes the speech with <|SPEECH_GENERATION_END|><|eot_id|>; inference generates from here.
    return ids[: ids.index(SPEECH_GENERATION_START) + len(speech_sequence)]


@pytest.fixture(scope="module", params=["llasa", "llasa-legacy"])
def tokenizer(request: pytest.FixtureRequest, tiny_models: Path) -> Any:
    """Both layouts: today's (Llama-3.1 template) and the published checkpoints' older one (Llama-3.2 template)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_models / request.param)


@pytest.mark.parametrize(("text", "reference_text", "codes", "spoken"), CASES)
def test_prompt_ids_equal_the_training_construction(
    tokenizer: Any, text: str, reference_text: str | None, codes: list[int], spoken: str
) -> None:
    prompt_ids = build_prompt_ids(tokenizer, text, reference_text, codes)
    assert prompt_ids == train_tts_prompt_ids(tokenizer, spoken, codes)
    assert prompt_ids.count(BOS) == 1
    assert prompt_ids[0] == BOS
    assert SPEECH_GENERATION_END not in prompt_ids
    assert prompt_ids[-len(codes) - 1 :] == [SPEECH_GENERATION_START, *(FIRST_SPEECH + c for c in codes)]


def test_both_templates_give_the_same_prompt(tiny_models: Path) -> None:
    from transformers import AutoTokenizer

    modern = AutoTokenizer.from_pretrained(tiny_models / "llasa")
    legacy = AutoTokenizer.from_pretrained(tiny_models / "llasa-legacy")
    for text, reference_text, codes, _spoken in CASES:
        assert build_prompt_ids(modern, text, reference_text, codes) == build_prompt_ids(
            legacy, text, reference_text, codes
        )


def test_prompt_starts_with_the_llama3_system_block(tokenizer: Any) -> None:
    """Known Llama-3 ids of "<|start_header_id|>system<|end_header_id|>\\n\\nCutting Knowledge Date: ...": a
    changed template, date or BPE shows here first."""
    prompt_ids = build_prompt_ids(tokenizer, "Hi.", None, [])
    assert prompt_ids[:5] == [BOS, 128_006, 9125, 128_007, 271]
    assert tokenizer.decode(prompt_ids[5:25]) == "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
    assert prompt_ids[25] == EOT


def test_codes_parse_at_the_real_ids(tokenizer: Any) -> None:
    ids = lookup_token_ids(tokenizer)
    assert ids == SpeechTokenIds(
        speech_start_id=SPEECH_GENERATION_START, speech_end_id=SPEECH_GENERATION_END, first_speech_id=FIRST_SPEECH
    )
    assert ids.last_speech_id == VOCAB - 1
    generated = [FIRST_SPEECH + 5, VOCAB - 1, SPEECH_GENERATION_START, EOT, FIRST_SPEECH, SPEECH_GENERATION_END, 1]
    assert parse_speech_ids(generated, ids) == [5, 65535, 0]


# --- sampling on the faithful checkpoint ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llasa(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> LlasaModel:
    return load_llasa(tiny_settings(tiny_models, tmp_path_factory.mktemp("golden")), "cpu")


def test_only_speech_tokens_and_the_end_token_can_be_sampled(llasa: LlasaModel) -> None:
    processor = SpeechOnlyLogitsProcessor(llasa._mask(torch.device("cpu"), torch.float32))
    out = processor(torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, VOCAB))
    allowed = set(torch.isfinite(out[0]).nonzero().flatten().tolist())
    assert allowed == {*range(FIRST_SPEECH, VOCAB), SPEECH_GENERATION_END}


def _expected_probs(
    llasa: LlasaModel, prompt_ids: list[int], temperature: float, top_p: float, top_k: int
) -> torch.Tensor:
    """The first step's sampling distribution, computed here from the raw logits: speech-only mask, then
    temperature, top-k and top-p (nucleus: keep the most likely tokens whose mass reaches top_p)."""
    with torch.inference_mode():
        logits = llasa.model(torch.tensor([prompt_ids])).logits[0, -1].float()
    allowed = torch.zeros(VOCAB, dtype=torch.bool)
    allowed[FIRST_SPEECH:] = True
    allowed[SPEECH_GENERATION_END] = True
    logits = logits.masked_fill(~allowed, float("-inf")) / temperature
    if top_k:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        order = torch.argsort(logits, descending=True)
        sorted_probs = torch.softmax(logits[order], dim=-1)
        mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        drop = order[mass_before >= top_p]
        logits[drop] = float("-inf")
    return torch.softmax(logits, dim=-1)


@pytest.fixture
def sampled_distributions(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """The probability rows generation draws from (recorded, then drawn as usual)."""
    seen: list[torch.Tensor] = []
    real_multinomial = torch.multinomial

    def recording_multinomial(probs: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        seen.append(probs.detach().clone())
        return real_multinomial(probs, *args, **kwargs)

    monkeypatch.setattr(torch, "multinomial", recording_multinomial)
    return seen


@pytest.mark.parametrize(
    ("temperature", "top_p", "top_k"),
    [(1.0, 1.0, 0), (0.8, 1.0, 50), (1.2, 0.95, 0), (0.7, 0.5, 1000)],
)
def test_sampling_uses_exactly_the_requested_parameters(
    llasa: LlasaModel, sampled_distributions: list[torch.Tensor], temperature: float, top_p: float, top_k: int
) -> None:
    """Not the checkpoint's generation_config (temperature 0.6, top_p 0.9): what the request asked for."""
    prompt_ids = llasa.build_prompt_ids("Hello world.", "A reference.", [3, 1, 4])
    llasa.generate_codes(
        prompt_ids,
        max_new_tokens=1,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        repetition_penalty=1.0,
        seed=3,
    )
    assert len(sampled_distributions) == 1
    expected = _expected_probs(llasa, prompt_ids, temperature, top_p, top_k)
    torch.testing.assert_close(sampled_distributions[0][0], expected, rtol=1e-4, atol=1e-7)
    # the checkpoint's own defaults would have given another distribution
    defaults = _expected_probs(llasa, prompt_ids, 0.6, 0.9, top_k)
    assert not torch.allclose(sampled_distributions[0][0], defaults, rtol=1e-3, atol=1e-6)


def _bias_logits(llasa: LlasaModel, token_ids: list[int]) -> Any:
    """Make the raw model all but certain to pick `token_ids` at every step (a forward hook on the output layer)."""
    bias = torch.zeros(VOCAB)
    bias[token_ids] = 1e4

    def hook(_module: Any, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        return output + bias.to(output.dtype)

    return llasa.model.get_output_embeddings().register_forward_hook(hook)


def test_llama_end_tokens_never_stop_generation(llasa: LlasaModel) -> None:
    """<|eot_id|>, <|eom_id|>, <|end_of_text|> are the checkpoint's eos ids; Llasa stops only at its own."""
    prompt_ids = llasa.build_prompt_ids("Hello.", None, [])
    handle = _bias_logits(llasa, [128_001, 128_008, EOT])
    try:
        generated = llasa.generate_codes_with_status(
            prompt_ids, max_new_tokens=10, temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.0, seed=1
        )
    finally:
        handle.remove()
    assert len(generated.codes) == 10
    assert generated.hit_limit


def test_the_speech_end_token_stops_generation(llasa: LlasaModel) -> None:
    prompt_ids = llasa.build_prompt_ids("Hello.", None, [])
    handle = _bias_logits(llasa, [SPEECH_GENERATION_END])
    try:
        generated = llasa.generate_codes_with_status(
            prompt_ids, max_new_tokens=10, temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.0, seed=1
        )
    finally:
        handle.remove()
    assert generated.codes == []
    assert not generated.hit_limit
