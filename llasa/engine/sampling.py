"""Per-sequence sampling over a batch of next-token logits, with each row's own parameters and RNG.

The rows are logits over the engine's *speech window* (the contiguous id range holding every `<|s_N|>` token
and `<|SPEECH_GENERATION_END|>`, see `SpeechWindow`); the window's mask leaves only those tokens finite.
The steps are HF's definitions, in HF's order (`GenerationMixin._get_logits_processor`): repetition penalty (on
the raw logits, over every token of the prompt and of the output), temperature, top-k, top-p (the smallest set
reaching top_p, at least one token kept), softmax, one `torch.multinomial` draw from the row's own
`torch.Generator`. Rows whose parameters switch a step off (penalty 1, temperature 1, top_k 0, top_p 1) skip it
as HF's processor list does; temperature 0 (or below 1e-5, as in vLLM) and top_k 1 are greedy (argmax, no
random draw).

Two shortcuts keep the distribution and change only the cost (and so which token a given seed picks, compared
with HF `generate`): tokens outside the window have probability 0 under the speech-only mask, so they are never
computed; and after top-k only k tokens are finite, so top-p, the softmax and the draw run over those k
candidates instead of 65,539 (measured on the 2-core CPU: 2 ms per row per step over the window, ~0.15 ms over
the candidates). One difference from HF remains: tokens tied with the k-th value are dropped (HF keeps them);
float logits tie there essentially never.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from llasa.engine.types import SamplingParams
from llasa.prompt import NUM_SPEECH_CODES, SpeechTokenIds


@dataclass(frozen=True)
class SpeechWindow:
    """The id range [start, stop) of the vocabulary the engine computes logits for, and its 0 / -inf mask.

    In the real tokenizer the end token (128261) sits two ids before `<|s_0|>` (128264), so the window is 65,539
    ids and the output layer's cost drops from 193,800 rows to 65,539 (a third) with the same distribution.
    """

    start: int
    stop: int
    end_index: int
    """Index of <|SPEECH_GENERATION_END|> in the window."""
    first_code_index: int
    """Index of <|s_0|> in the window: code = index - first_code_index."""
    mask: torch.Tensor
    """float32 [stop - start]: 0 for speech tokens and the end token, -inf for anything else in the range."""

    @classmethod
    def for_ids(cls, ids: SpeechTokenIds, vocab_size: int) -> SpeechWindow:
        if ids.last_speech_id >= vocab_size or ids.speech_end_id >= vocab_size:
            raise ValueError(
                f"the model's vocabulary ({vocab_size}) does not cover the tokenizer's speech tokens (up to id "
                f"{max(ids.last_speech_id, ids.speech_end_id)}); the weights and tokenizer do not belong together"
            )
        start = min(ids.first_speech_id, ids.speech_end_id)
        stop = max(ids.last_speech_id, ids.speech_end_id) + 1
        mask = torch.full((stop - start,), float("-inf"), dtype=torch.float32)
        first = ids.first_speech_id - start
        mask[first : first + NUM_SPEECH_CODES] = 0.0
        mask[ids.speech_end_id - start] = 0.0
        return cls(start, stop, ids.speech_end_id - start, first, mask)

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass
class RowState:
    """What sampling needs to remember about one sequence between steps."""

    params: SamplingParams
    generator: torch.Generator
    seen: torch.Tensor | None = field(default=None)
    """bool [window] of tokens in the prompt or output (only kept when repetition_penalty != 1)."""

    def note(self, index: int) -> None:
        if self.seen is not None:
            self.seen[index] = True


def make_row_state(
    params: SamplingParams, seed: int, prompt_ids: Sequence[int], window: SpeechWindow, device: torch.device
) -> RowState:
    """A fresh sampling state: its own generator seeded with `seed`, the prompt's tokens marked as seen.

    The generator lives on the CPU whatever the model's device: the draws are made from a CPU copy of the
    candidates' probabilities (one device-to-host copy per step for the whole batch instead of a synchronising
    `.item()` per row), and a seed then means the same thing on every device.
    """
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int(seed))
    state = RowState(params=params, generator=generator)
    if params.repetition_penalty != 1.0:
        seen = torch.zeros(window.size, dtype=torch.bool, device=device)
        # Tokens outside the window are -inf whatever the penalty does to them, so they need no tracking.
        indices = [i for i in (t - window.start for t in prompt_ids) if 0 <= i < window.size]
        if indices:
            seen[torch.tensor(indices, dtype=torch.long, device=device)] = True
        state.seen = seen
    return state


def _apply_repetition_penalty(scores: torch.Tensor, rows: list[RowState]) -> None:
    picked = [i for i, r in enumerate(rows) if r.params.repetition_penalty != 1.0]
    if not picked:
        return
    index = torch.tensor(picked, device=scores.device)
    sub = scores[index]
    seen = torch.stack([rows[i].seen for i in picked])  # type: ignore[misc]
    penalty = torch.tensor([rows[i].params.repetition_penalty for i in picked], device=scores.device)[:, None]
    penalised = torch.where(sub < 0, sub * penalty, sub / penalty)
    scores[index] = torch.where(seen, penalised, sub)


def _apply_temperature(scores: torch.Tensor, rows: list[RowState]) -> None:
    # Greedy rows take the argmax, which no temperature changes (and a tiny one would overflow the logits).
    temps = [1.0 if r.params.greedy else r.params.temperature for r in rows]
    if any(t != 1.0 for t in temps):
        scores /= torch.tensor(temps, dtype=scores.dtype, device=scores.device)[:, None]


def _top_p_remove(ascending_logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """HF's TopPLogitsWarper on logits sorted ascending: True where a token is removed (the last is always kept)."""
    cumulative = ascending_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - top_p)
    remove[:, -1] = False  # HF's min_tokens_to_keep=1
    return remove


def _sample_top_k_rows(scores: torch.Tensor, rows: list[RowState], picked: list[int], out: list[int]) -> None:
    """Rows with top_k > 0: after top-k only k tokens are finite, so top-p, softmax and the draw run over those k
    candidates (sorted) instead of the whole window: the same distribution at a fraction of the cost."""
    ks = [min(rows[i].params.top_k, scores.shape[-1]) for i in picked]
    index = torch.tensor(picked, device=scores.device)
    values, indices = torch.topk(scores[index], max(ks), dim=-1)  # descending
    rank = torch.arange(values.shape[1], device=scores.device)[None]
    values = values.masked_fill(rank >= torch.tensor(ks, device=scores.device)[:, None], float("-inf"))
    top_p = torch.tensor([rows[i].params.top_p for i in picked], dtype=values.dtype, device=values.device)[:, None]
    if bool((top_p < 1).any()):
        remove = _top_p_remove(values.flip(-1), top_p).flip(-1)
        remove &= top_p < 1  # rows with top_p 1.0 skip the warper, as in HF
        values = values.masked_fill(remove, float("-inf"))
    probs = values.softmax(dim=-1).cpu()
    indices = indices.cpu()
    for slot, i in enumerate(picked):
        choice = int(torch.multinomial(probs[slot], 1, generator=rows[i].generator))
        out[i] = int(indices[slot, choice])


def _sample_full_rows(scores: torch.Tensor, rows: list[RowState], picked: list[int], out: list[int]) -> None:
    """Rows without top-k: top-p (if on) over the whole window, then one draw from the window."""
    index = torch.tensor(picked, device=scores.device)
    sub = scores[index]
    top_p = torch.tensor([rows[i].params.top_p for i in picked], dtype=sub.dtype, device=sub.device)[:, None]
    if bool((top_p < 1).any()):
        sorted_logits, sorted_indices = torch.sort(sub, descending=False)
        remove_sorted = _top_p_remove(sorted_logits, top_p) & (top_p < 1)
        sub = sub.masked_fill(remove_sorted.scatter(1, sorted_indices, remove_sorted), float("-inf"))
    probs = sub.softmax(dim=-1).cpu()
    for slot, i in enumerate(picked):
        out[i] = int(torch.multinomial(probs[slot], 1, generator=rows[i].generator))


def sample_next(logits: torch.Tensor, rows: list[RowState], mask: torch.Tensor) -> list[int]:
    """Window indices sampled for each row of `logits` ([rows, window] float32), after adding `mask` (the
    window's 0 / -inf speech mask, on the logits' device).

    Modifies `logits` in place. Each row uses only its own parameters and generator, so a row's draw does not
    depend on which other rows share the batch (its logits may, through the batched forward's numerics).
    """
    scores = logits
    scores += mask
    _apply_repetition_penalty(scores, rows)
    _apply_temperature(scores, rows)
    out = [0] * len(rows)
    greedy = [i for i, r in enumerate(rows) if r.params.greedy]
    if greedy:
        index = torch.tensor(greedy, device=scores.device)
        for i, choice in zip(greedy, scores[index].argmax(dim=-1).tolist(), strict=True):
            out[i] = int(choice)
    top_k = [i for i, r in enumerate(rows) if not r.params.greedy and r.params.top_k > 0]
    if top_k:
        _sample_top_k_rows(scores, rows, top_k, out)
    full = [i for i, r in enumerate(rows) if not r.params.greedy and r.params.top_k == 0]
    if full:
        _sample_full_rows(scores, rows, full, out)
    for index, row in zip(out, rows, strict=True):
        row.note(index)
    return out
