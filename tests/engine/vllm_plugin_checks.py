"""Checks of vllm_plugins/llasa_logits.py that run inside vLLM's own Python (its virtualenv), started by
tests/test_vllm_backend.py: batch bookkeeping of the V1 processor (adds, removals, moves, swaps) and the row
mapping of the Model Runner V2 processor, which a CPU server never loads. Exits non-zero on the first failure."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "vllm_plugins"))

from llasa_logits import SpeechOnlyLogitsProcessor, SpeechOnlyLogitsProcessorV2, request_layout
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

VOCAB = 40
LAYOUT = {"llasa_first_speech_id": 20, "llasa_num_speech": 16, "llasa_end_id": 10}
ALLOWED = {*range(20, 36), 10}


def speech(extra: dict | None = None) -> SamplingParams:
    return SamplingParams(extra_args=dict(extra if extra is not None else LAYOUT))


def restricted_rows(logits: torch.Tensor) -> list[int]:
    rows = []
    for row in range(logits.shape[0]):
        finite = {int(i) for i in torch.isfinite(logits[row]).nonzero().flatten()}
        if finite == ALLOWED:
            rows.append(row)
        else:
            assert finite == set(range(VOCAB)), f"row {row} partly masked: {sorted(finite)}"
    return rows


def check_v1() -> None:
    config = SimpleNamespace(model_config=SimpleNamespace(get_vocab_size=lambda: VOCAB))
    processor = SpeechOnlyLogitsProcessor(config, torch.device("cpu"), False)
    plain = SamplingParams()
    processor.update_state(
        BatchUpdate(
            batch_size=3,
            removed=[],
            added=[(0, speech(), [1], []), (1, plain, [1], []), (2, speech(), [1], [])],
            moved=[],
        )
    )
    assert restricted_rows(processor.apply(torch.zeros(3, VOCAB))) == [0, 2]
    # row 0 leaves; row 2 moves into its place
    processor.update_state(
        BatchUpdate(batch_size=2, removed=[0], added=[], moved=[(2, 0, MoveDirectionality.UNIDIRECTIONAL)])
    )
    assert restricted_rows(processor.apply(torch.zeros(2, VOCAB))) == [0]
    processor.update_state(BatchUpdate(batch_size=2, removed=[], added=[], moved=[(0, 1, MoveDirectionality.SWAP)]))
    assert restricted_rows(processor.apply(torch.zeros(2, VOCAB))) == [1]
    # a plain request takes over a slot: its row is not restricted any more
    processor.update_state(BatchUpdate(batch_size=2, removed=[], added=[(1, plain, [1], [])], moved=[]))
    assert restricted_rows(processor.apply(torch.zeros(2, VOCAB))) == []
    assert not processor.is_argmax_invariant()


def check_v2() -> None:
    req_states = SimpleNamespace(vocab_size=VOCAB, device=torch.device("cpu"))
    processor = SpeechOnlyLogitsProcessorV2(SimpleNamespace(), req_states)
    assert processor.add_request(5, speech()) is True
    assert processor.add_request(7, SamplingParams()) is False
    # rows in this step: slot 7, slot 5, slot 5 again (speculative decoding gives a request several rows)
    ctx = SimpleNamespace(expanded_idx_mapping=torch.tensor([7, 5, 5]))
    assert restricted_rows(processor.apply(torch.zeros(3, VOCAB), ctx)) == [1, 2]
    # slot 5 recycled for a plain request
    assert processor.add_request(5, SamplingParams()) is False
    assert restricted_rows(processor.apply(torch.zeros(3, VOCAB), ctx)) == []


def check_validation() -> None:
    assert request_layout(SamplingParams()) is None
    assert request_layout(speech()) == (20, 16, 10)
    for bad in ({"llasa_first_speech_id": 20}, {**LAYOUT, "llasa_num_speech": 0}, {**LAYOUT, "llasa_end_id": "x"}):
        try:
            SpeechOnlyLogitsProcessor.validate_params(speech(bad))
        except ValueError:
            continue
        raise AssertionError(f"{bad} was accepted")
    mask_row = SpeechOnlyLogitsProcessorV2(SimpleNamespace(), SimpleNamespace(vocab_size=VOCAB, device="cpu"))
    mask_row.add_request(0, speech())
    out = mask_row.apply(torch.zeros(1, VOCAB), SimpleNamespace(expanded_idx_mapping=torch.tensor([0])))
    assert out[0, 20] == 0
    assert math.isinf(float(out[0, 0]))


if __name__ == "__main__":
    check_v1()
    check_v2()
    check_validation()
    print("llasa_logits checks passed")
