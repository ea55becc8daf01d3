"""Llasa's prompt format and speech-token parsing: pure functions over a Hugging Face tokenizer.

Llasa was trained on a Llama-3 chat whose user turn holds the text and whose assistant turn holds speech tokens:

    user:      "Convert the text to speech:<|TEXT_UNDERSTANDING_START|>{transcript} {text}<|TEXT_UNDERSTANDING_END|>"
    assistant: "<|SPEECH_GENERATION_START|><|s_12|><|s_7|>..."   (the reference's codes; left open)

rendered with the checkpoint's own chat template and `continue_final_message=True`, so the model continues the
speech of the reference with the speech of the text. The template's "Today Date" is pinned to `FIXED_DATE` so a
prompt (and the audio for a seed) does not change with the calendar. Every special token is looked up by its text;
no id is hard-coded (the real ones are <|SPEECH_GENERATION_END|> = 128261 and <|s_0|> = 128264).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from llasa.text import join_texts

#: The "Today Date" every prompt is rendered with (Llama-3.1's template default, so Llasa-8B renders unchanged).
FIXED_DATE = "26 Jul 2024"
NUM_SPEECH_CODES = 65_536
INSTRUCTION = "Convert the text to speech:"
TEXT_UNDERSTANDING_START = "<|TEXT_UNDERSTANDING_START|>"
TEXT_UNDERSTANDING_END = "<|TEXT_UNDERSTANDING_END|>"
SPEECH_GENERATION_START = "<|SPEECH_GENERATION_START|>"
SPEECH_GENERATION_END = "<|SPEECH_GENERATION_END|>"


def speech_token(code: int) -> str:
    """The token text of speech code `code` (0..65535): `<|s_{code}|>`."""
    if not 0 <= code < NUM_SPEECH_CODES:
        raise ValueError(f"speech code {code} is outside 0..{NUM_SPEECH_CODES - 1}")
    return f"<|s_{code}|>"


def build_messages(text: str, reference_text: str | None, reference_codes: Sequence[int]) -> list[dict[str, str]]:
    """The two chat messages of one synthesis, in Llasa's training format.

    With a reference, the transcript and the text are joined inside the text markers (by one space, or by none
    where the transcript ends and the text starts with CJK characters, as the model card's Chinese example does)
    and the assistant turn starts with the reference's speech tokens; without one, only the text and an empty
    speech turn.
    """
    spoken = join_texts(reference_text, text) if reference_text else text
    user = f"{INSTRUCTION}{TEXT_UNDERSTANDING_START}{spoken}{TEXT_UNDERSTANDING_END}"
    assistant = SPEECH_GENERATION_START + "".join(speech_token(int(c)) for c in reference_codes)
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def render_prompt(tokenizer: Any, text: str, reference_text: str | None, reference_codes: Sequence[int]) -> str:
    """The prompt as text: the checkpoint's chat template, final (assistant) message left open, fixed date."""
    return tokenizer.apply_chat_template(
        build_messages(text, reference_text, reference_codes),
        tokenize=False,
        continue_final_message=True,
        date_string=FIXED_DATE,
    )


def build_prompt_ids(
    tokenizer: Any, text: str, reference_text: str | None, reference_codes: Sequence[int]
) -> list[int]:
    """The prompt as token ids (what `render_prompt` gives, tokenized without adding a second BOS)."""
    encoded = tokenizer.apply_chat_template(
        build_messages(text, reference_text, reference_codes),
        tokenize=True,
        return_dict=True,
        continue_final_message=True,
        date_string=FIXED_DATE,
    )
    return list(encoded["input_ids"])


@dataclass(frozen=True)
class SpeechTokenIds:
    """Ids of the tokens generation needs, looked up in one tokenizer.

    The 65,536 speech tokens occupy one contiguous id range starting at `first_speech_id` (checked on lookup), so
    id -> code is a subtraction.
    """

    speech_start_id: int
    speech_end_id: int
    first_speech_id: int

    @property
    def last_speech_id(self) -> int:
        return self.first_speech_id + NUM_SPEECH_CODES - 1

    def is_speech(self, token_id: int) -> bool:
        return self.first_speech_id <= token_id <= self.last_speech_id

    def code_to_id(self, code: int) -> int:
        if not 0 <= code < NUM_SPEECH_CODES:
            raise ValueError(f"speech code {code} is outside 0..{NUM_SPEECH_CODES - 1}")
        return self.first_speech_id + code


def lookup_token_ids(tokenizer: Any) -> SpeechTokenIds:
    """Find the speech start/end and speech-token ids by their text; ValueError if the tokenizer lacks them."""

    def token_id(token: str) -> int:
        found = tokenizer.convert_tokens_to_ids(token)
        if found is None or found == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no {token} token: is this a Llasa checkpoint?")
        return int(found)

    first = token_id(speech_token(0))
    last = token_id(speech_token(NUM_SPEECH_CODES - 1))
    middle = token_id(speech_token(NUM_SPEECH_CODES // 2 + 1))
    if last - first != NUM_SPEECH_CODES - 1 or middle - first != NUM_SPEECH_CODES // 2 + 1:
        raise ValueError(
            f"the tokenizer's speech tokens are not one contiguous id range ({speech_token(0)} = {first}, "
            f"{speech_token(NUM_SPEECH_CODES - 1)} = {last}); is this a Llasa checkpoint?"
        )
    return SpeechTokenIds(
        speech_start_id=token_id(SPEECH_GENERATION_START),
        speech_end_id=token_id(SPEECH_GENERATION_END),
        first_speech_id=first,
    )


def parse_speech_ids(token_ids: Iterable[int], ids: SpeechTokenIds) -> list[int]:
    """Speech codes (0..65535) of generated token ids: non-speech ids are skipped, the end token stops parsing."""
    codes: list[int] = []
    for raw_id in token_ids:
        token_id = int(raw_id)  # numpy / torch scalars compare and subtract as plain ints
        if token_id == ids.speech_end_id:
            break
        if ids.is_speech(token_id):
            codes.append(token_id - ids.first_speech_id)
    return codes


def parse_speech_tokens(tokens: Iterable[str]) -> list[int]:
    """Speech codes of token texts (`<|s_N|>`): other tokens are skipped, `<|SPEECH_GENERATION_END|>` stops."""
    codes: list[int] = []
    for token in tokens:
        if token == SPEECH_GENERATION_END:
            break
        if token.startswith("<|s_") and token.endswith("|>"):
            digits = token[4:-2]
            if digits.isdigit() and int(digits) < NUM_SPEECH_CODES:
                codes.append(int(digits))
    return codes
