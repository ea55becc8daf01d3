"""Llasa's speech-only restriction as a vLLM logits processor, so a request stays a few hundred bytes.

The service could send the 65,537 allowed ids with every request (`allowed_token_ids`: ~450 KB of JSON each);
instead the vLLM server loads this module (`--logits-processors llasa_logits:SpeechOnlyLogitsProcessor`, with this
folder on its PYTHONPATH) and a request opts in with three numbers in `vllm_xargs`:

    {"llasa_first_speech_id": 128264, "llasa_num_speech": 65536, "llasa_end_id": 128261}

Rows of requests that opt in get -inf on every logit but the speech tokens and the end token; other requests are
untouched, so the server can still answer plain completions. The ids come from the client, which looks them up in
the checkpoint's tokenizer by their text (this module loads no tokenizer).

vLLM 0.32 has two interfaces: the V1 model runner's (`vllm.v1.sample.logits_processor.LogitsProcessor`, used on
the CPU and wherever Model Runner V2 is off) and Model Runner V2's (the GPU default). `SpeechOnlyLogitsProcessor`
is the V1 one and `SpeechOnlyLogitsProcessorV2` the V2 one; name the one the server's runner uses.

This file runs inside the vLLM server's own Python (vLLM's virtualenv or image), not the service's: it imports
only vLLM and torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality
from vllm.v1.sample.logits_processor import LogitsProcessor as V1LogitsProcessor
from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcessor as V2LogitsProcessor

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.sampling_params import SamplingParams
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsContext, LogitsProcRequestState

FIRST_SPEECH_ARG = "llasa_first_speech_id"
NUM_SPEECH_ARG = "llasa_num_speech"
END_ARG = "llasa_end_id"
#: (first speech id, number of speech tokens, end id): one request's allowed ids.
Layout = tuple[int, int, int]


def request_layout(params: SamplingParams | None) -> Layout | None:
    """The allowed-id layout a request asked for, None when it did not opt in; ValueError when malformed."""
    extra = (params.extra_args or {}) if params is not None else {}
    if FIRST_SPEECH_ARG not in extra:
        return None
    try:
        layout = (int(extra[FIRST_SPEECH_ARG]), int(extra[NUM_SPEECH_ARG]), int(extra[END_ARG]))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(
            f"{FIRST_SPEECH_ARG} needs {NUM_SPEECH_ARG} and {END_ARG} beside it, all whole numbers ({e})"
        ) from e
    first, count, end = layout
    if first < 0 or count < 1 or end < 0:
        raise ValueError(f"Llasa speech layout {layout} is not valid: ids must be >= 0 and the count >= 1")
    return layout


class _Masks:
    """Additive masks (0 where allowed, -inf elsewhere), one per layout, built on first use."""

    def __init__(self, vocab_size: int, device: torch.device) -> None:
        self.vocab_size = vocab_size
        self.device = device
        self._masks: dict[Layout, torch.Tensor] = {}

    def get(self, layout: Layout) -> torch.Tensor:
        mask = self._masks.get(layout)
        if mask is None:
            first, count, end = layout
            if first + count > self.vocab_size or end >= self.vocab_size:
                raise ValueError(f"Llasa speech layout {layout} does not fit the vocabulary ({self.vocab_size})")
            mask = torch.full((self.vocab_size,), float("-inf"), dtype=torch.float32, device=self.device)
            mask[first : first + count] = 0.0
            mask[end] = 0.0
            self._masks[layout] = mask
        return mask

    def apply(self, logits: torch.Tensor, rows: dict[int, Layout]) -> torch.Tensor:
        """Add each row's mask; rows are grouped by layout so a batch of one voice costs one indexed add."""
        by_layout: dict[Layout, list[int]] = {}
        for row, layout in rows.items():
            if row < logits.shape[0]:
                by_layout.setdefault(layout, []).append(row)
        for layout, row_list in by_layout.items():
            index = torch.tensor(row_list, dtype=torch.long, device=logits.device)
            mask = self.get(layout)[: logits.shape[-1]].to(logits.dtype)
            logits[index] += mask
        return logits


class SpeechOnlyLogitsProcessor(V1LogitsProcessor):
    """V1 model runner: only speech tokens and the end token for requests that opt in (see the module docstring)."""

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        self._masks = _Masks(vllm_config.model_config.get_vocab_size(), device)
        self._rows: dict[int, Layout] = {}  # batch index -> layout, for the requests that opted in

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        request_layout(sampling_params)

    def is_argmax_invariant(self) -> bool:
        return False  # it changes which token is most likely: greedy requests need it too

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        # vLLM's order: removed, then added, then moved.
        for index in batch_update.removed:
            self._rows.pop(index, None)
        for index, params, _prompt_ids, _output_ids in batch_update.added:
            layout = request_layout(params)
            if layout is None:
                self._rows.pop(index, None)
            else:
                self._rows[index] = layout
        for source, target, direction in batch_update.moved:
            moving = self._rows.pop(source, None)
            if direction == MoveDirectionality.SWAP:
                swapped = self._rows.pop(target, None)
                if swapped is not None:
                    self._rows[source] = swapped
            if moving is not None:
                self._rows[target] = moving
            elif direction != MoveDirectionality.SWAP:
                self._rows.pop(target, None)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self._rows:
            return logits
        return self._masks.apply(logits, self._rows)


class SpeechOnlyLogitsProcessorV2(V2LogitsProcessor):
    """Model Runner V2: the same restriction, keyed by request slot (rows are mapped to slots every step)."""

    def __init__(self, vllm_config: VllmConfig, req_states: LogitsProcRequestState) -> None:
        self._masks = _Masks(req_states.vocab_size, req_states.device)
        self._slots: dict[int, Layout] = {}

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        request_layout(sampling_params)

    def add_request(self, req_idx: int, sampling_params: SamplingParams) -> bool:
        layout = request_layout(sampling_params)
        if layout is None:
            self._slots.pop(req_idx, None)  # a recycled slot must not keep its last occupant's mask
            return False
        self._slots[req_idx] = layout
        return True

    def apply(self, logits: torch.Tensor, ctx: LogitsContext) -> torch.Tensor:
        if not self._slots:
            return logits
        slots = ctx.expanded_idx_mapping.tolist()
        rows = {row: self._slots[slot] for row, slot in enumerate(slots) if slot in self._slots}
        return self._masks.apply(logits, rows) if rows else logits


__all__: list[Any] = ["SpeechOnlyLogitsProcessor", "SpeechOnlyLogitsProcessorV2", "request_layout"]
