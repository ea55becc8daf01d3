"""Llasa: a plain `LlamaForCausalLM` + its tokenizer that turns a prompt into speech codes (`ManagedModel`)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from llasa import prompt
from llasa.config import Settings
from llasa.errors import InvalidInput, ModelUnavailable, TTSError
from llasa.models.hub import (
    LLASA_FILES,
    check_loading_info,
    pinned_weights,
    resolve_model_dir,
    torch_device,
)

logger = logging.getLogger(__name__)

LLASA_CONTEXT_TOKENS = 2048
"""Llasa was trained on 2048-token sequences: prompt + reference codes + new codes must fit."""


# The tokenizer of a Llasa checkpoint takes seconds to load (transformers copies 65,536 added-token records in
# Python), and a read-only tokenizer is safe to share: keep one per folder for the life of the process, so a
# model evicted and loaded again does not pay it twice.
_TOKENIZERS: dict[tuple[str, int], Any] = {}
_TOKENIZERS_LOCK = threading.Lock()


def _load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    marker = folder / "tokenizer.json"
    key = (str(folder.resolve()), marker.stat().st_mtime_ns if marker.exists() else 0)
    with _TOKENIZERS_LOCK:
        cached = _TOKENIZERS.get(key)
        if cached is None:
            cached = AutoTokenizer.from_pretrained(folder)
            _TOKENIZERS[key] = cached
        return cached


class SpeechOnlyLogitsProcessor(LogitsProcessor):
    """Only speech tokens and the end token may be sampled: adds a precomputed 0 / -inf row to the logits.

    The row is built once per device and dtype, so each step costs one vector add (the generation loop stays as
    fast as plain `model.generate`).
    """

    def __init__(self, mask: torch.Tensor) -> None:
        self.mask = mask

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return scores + self.mask[: scores.shape[-1]]


class CancelCriteria(StoppingCriteria):
    """Stops generation as soon as `should_stop()` returns True (a cancelled request)."""

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self.should_stop = should_stop

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        stop = bool(self.should_stop())
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class GeneratedCodes(NamedTuple):
    """What `LlasaModel.generate_codes_with_status` returns (unpacks as `codes, hit_limit`)."""

    codes: list[int]
    """Speech codes 0..65535, without the end token."""
    hit_limit: bool
    """True when generation stopped at the token limit (`max_new_tokens` or the context) without sampling the end
    token: the speech was cut off. False when the end token came, or `should_stop()` stopped it earlier."""


class LlasaModel:
    """Llasa: a Llama-3 causal LM that continues a chat prompt with XCodec2 speech tokens (`ManagedModel`)."""

    def __init__(self, model: Any, tokenizer: Any, *, name: str = "llasa") -> None:
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.token_ids = prompt.lookup_token_ids(tokenizer)
        vocab_size = int(model.get_output_embeddings().weight.shape[0])
        if vocab_size <= self.token_ids.last_speech_id:
            raise ModelUnavailable(
                f"{name}: the model's vocabulary ({vocab_size}) does not cover its tokenizer's speech tokens "
                f"(up to id {self.token_ids.last_speech_id}); the weights and tokenizer do not belong together"
            )
        allowed = torch.full((vocab_size,), float("-inf"), dtype=torch.float32)
        allowed[self.token_ids.first_speech_id : self.token_ids.last_speech_id + 1] = 0.0
        allowed[self.token_ids.speech_end_id] = 0.0
        self._mask_cpu = allowed
        self._masks: dict[tuple[str, torch.dtype], torch.Tensor] = {}
        self._weights = pinned_weights(model)

    @property
    def device(self) -> str:
        return self._weights.device

    # --- ManagedModel ------------------------------------------------------------------------------------------

    def move_to(self, device: str) -> None:
        """Offload to "cpu" or reload onto "cuda:0" (pinned host copy: one host-to-device copy)."""
        self._weights.move_to(torch_device(device))
        self._masks.clear()  # the masks of the old device are not needed there any more

    def size_bytes(self) -> int:
        return int(self._weights.size_bytes())

    def close(self) -> None:
        """Drop the weights; the object is unusable afterwards."""
        self._weights.close()
        self._masks.clear()
        self.model = None

    # --- prompt ------------------------------------------------------------------------------------------------

    def count_text_tokens(self, text: str) -> int:
        """Tokens `text` takes in a prompt (no BOS)."""
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def build_prompt_ids(self, text: str, reference_text: str | None, reference_codes: Sequence[int]) -> list[int]:
        """Token ids of the Llasa prompt for `text`, conditioned on the reference transcript and codes if given."""
        return prompt.build_prompt_ids(self.tokenizer, text, reference_text, reference_codes)

    # --- generation --------------------------------------------------------------------------------------------

    def _mask(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (str(device), dtype)
        mask = self._masks.get(key)
        if mask is None:
            mask = self._mask_cpu.to(device=device, dtype=dtype)
            self._masks[key] = mask
        return mask

    def generate_codes(
        self,
        prompt_ids: list[int],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        top_k: int,
        repetition_penalty: float,
        seed: int | None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[int]:
        """Sample speech codes (0..65535) continuing `prompt_ids`, until <|SPEECH_GENERATION_END|>,
        `max_new_tokens`, the 2048-token context, or `should_stop()`.

        Only speech tokens and the end token can be sampled. The same `seed` gives the same codes (the seed is
        applied to a forked RNG state, so the process's global RNG is left as it was); `seed=None` is random.
        `generate_codes_with_status` also says whether the end token was reached.
        """
        return self.generate_codes_with_status(
            prompt_ids,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            repetition_penalty=repetition_penalty,
            seed=seed,
            should_stop=should_stop,
        ).codes

    def generate_codes_with_status(
        self,
        prompt_ids: list[int],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        top_k: int,
        repetition_penalty: float,
        seed: int | None,
        should_stop: Callable[[], bool] | None = None,
    ) -> GeneratedCodes:
        """`generate_codes`, plus whether it stopped at the token limit without the end token.

        Returns `GeneratedCodes(codes, hit_limit)`; `hit_limit` is True when `max_new_tokens` (or the room left in
        the 2048-token context) ran out before <|SPEECH_GENERATION_END|>, i.e. the speech was cut off.
        """
        if self.model is None:
            raise ModelUnavailable(f"{self.name} was released; load it again")
        if not prompt_ids:
            raise InvalidInput("the prompt is empty")
        room = LLASA_CONTEXT_TOKENS - len(prompt_ids)
        if room < 1:
            raise InvalidInput(
                f"the prompt takes {len(prompt_ids)} tokens, the whole {LLASA_CONTEXT_TOKENS}-token context; "
                "use a shorter reference or text"
            )
        max_new_tokens = min(int(max_new_tokens), room)
        if max_new_tokens < 1:
            return GeneratedCodes([], hit_limit=True)  # a zero budget cuts off whatever was to be said
        device = self.model.device
        input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
        processors = LogitsProcessorList([SpeechOnlyLogitsProcessor(self._mask(device, torch.float32))])
        criteria = StoppingCriteriaList([CancelCriteria(should_stop)] if should_stop is not None else [])
        end_id = self.token_ids.speech_end_id
        kwargs: dict[str, Any] = {
            "attention_mask": torch.ones_like(input_ids),
            "max_new_tokens": max_new_tokens,
            "do_sample": True,
            "temperature": float(temperature),
            "top_p": float(top_p),
            "top_k": int(top_k),
            "repetition_penalty": float(repetition_penalty),
            "eos_token_id": end_id,
            "pad_token_id": end_id,
            "logits_processor": processors,
            "stopping_criteria": criteria,
        }
        fork_devices = [device] if device.type == "cuda" else []
        with torch.inference_mode(), torch.random.fork_rng(devices=fork_devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(int(seed))
            output = self.model.generate(input_ids, **kwargs)
        new_ids = output[0, input_ids.shape[1] :].tolist()
        # A cancelled run stops short of the limit; one that sampled the end token has it in new_ids.
        hit_limit = end_id not in new_ids and len(new_ids) >= max_new_tokens
        return GeneratedCodes(prompt.parse_speech_ids(new_ids, self.token_ids), hit_limit)


LLASA_TOKENIZER_FILES = ["*.json", "*.jinja", "tokenizer*"]


def load_llasa_tokenizer(settings: Settings) -> Any:
    """LLASA_MODEL's tokenizer alone (cached per folder), for building prompts without the weights: the engine may
    run the LM elsewhere (a vLLM server). Raises ModelUnavailable when it is missing or is not a Llasa one."""
    folder = resolve_model_dir(
        settings.llasa_model, settings, variable="LLASA_MODEL", what="Llasa", allow_patterns=LLASA_TOKENIZER_FILES
    )
    try:
        tokenizer = _load_tokenizer(folder)
        prompt.lookup_token_ids(tokenizer)
    except ValueError as e:
        raise ModelUnavailable(f"{settings.llasa_model} is not a Llasa checkpoint ({e}); check LLASA_MODEL") from e
    except Exception as e:
        raise ModelUnavailable(
            f"the tokenizer of Llasa checkpoint {settings.llasa_model} could not be loaded ({type(e).__name__}: "
            f"{e}); set LLASA_MODEL to a folder holding a complete Llasa checkpoint or to its hub id"
        ) from e
    return tokenizer


def load_llasa(settings: Settings, device: str) -> LlasaModel:
    """Load LLASA_MODEL onto `device` ("cuda:0" in bf16, "cpu" in fp32)."""
    from transformers import AutoModelForCausalLM

    device = torch_device(device)
    started = time.perf_counter()
    folder = resolve_model_dir(
        settings.llasa_model, settings, variable="LLASA_MODEL", what="Llasa", allow_patterns=LLASA_FILES
    )
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    # Any failure in here (a corrupt safetensors header, a config of the wrong shape, a state-dict shape error
    # raised as RuntimeError...) is the checkpoint's fault: say which variable points at it.
    try:
        tokenizer = _load_tokenizer(folder)
        # Loaded on the CPU first: PinnedWeights keeps that host copy for fast offload/reload.
        model, info = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, output_loading_info=True)
        model.eval()
        check_loading_info(info, what="Llasa", reference=settings.llasa_model, variable="LLASA_MODEL")
    except TTSError:
        raise
    except Exception as e:
        raise ModelUnavailable(
            f"Llasa checkpoint {settings.llasa_model} could not be loaded ({type(e).__name__}: {e}); set "
            "LLASA_MODEL to a folder holding a complete Llasa checkpoint (config.json, *.safetensors, "
            "tokenizer.json) or to its hub id"
        ) from e
    try:
        llasa = LlasaModel(model, tokenizer)
    except TTSError:
        raise
    except ValueError as e:
        raise ModelUnavailable(f"{settings.llasa_model} is not a Llasa checkpoint ({e}); check LLASA_MODEL") from e
    except Exception as e:
        raise ModelUnavailable(
            f"Llasa checkpoint {settings.llasa_model} could not be prepared ({type(e).__name__}: {e}); check "
            "LLASA_MODEL"
        ) from e
    llasa.move_to(device)
    logger.info("llasa loaded from %s on %s (%s) in %.2f s", folder, device, dtype, time.perf_counter() - started)
    return llasa
