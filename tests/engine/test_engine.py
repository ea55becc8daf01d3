"""The embedded continuous-batching engine (`llasa.engine.transformers_backend`) on the tiny Llasa checkpoint.

Every assertion is about codes, counts, finish reasons, states and threads; none about time. Reference results
come from code paths independent of the engine: HF `generate` for greedy decoding, a teacher-forced forward pass
of the whole sequence for top-k membership.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, LogitsProcessorList

from llasa import prompt
from llasa.engine.batch import SPARE_COLUMNS
from llasa.engine.sampling import SpeechWindow
from llasa.engine.transformers_backend import TransformersEngine
from llasa.engine.types import CodeStream, FinishReason, SamplingParams
from llasa.errors import Busy, InvalidInput, ModelUnavailable
from llasa.prompt import NUM_SPEECH_CODES


@pytest.fixture(scope="module")
def llasa_parts(tiny_models: Path) -> tuple[Any, Any, prompt.SpeechTokenIds]:
    tokenizer = AutoTokenizer.from_pretrained(tiny_models / "llasa")
    model = AutoModelForCausalLM.from_pretrained(tiny_models / "llasa").eval()
    return model, tokenizer, prompt.lookup_token_ids(tokenizer)


@pytest.fixture(scope="module")
def prompts(llasa_parts: tuple[Any, Any, prompt.SpeechTokenIds]) -> list[list[int]]:
    _, tokenizer, _ = llasa_parts
    texts = ["Hello there.", "A second, longer sentence to speak.", "短句。", "Three."]
    return [
        prompt.build_prompt_ids(tokenizer, text, "reference words", [7 * i + 1 for i in range(5 + 9 * n)])
        for n, text in enumerate(texts)
    ]


class CountingLease:
    """A model lease that counts how often it is entered and left (what a GPU manager would see)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.entered = 0
        self.exited = 0

    @contextlib.contextmanager
    def __call__(self) -> Iterator[Any]:
        self.entered += 1
        try:
            yield self.model
        finally:
            self.exited += 1


@pytest.fixture
def make_engine(
    llasa_parts: tuple[Any, Any, prompt.SpeechTokenIds],
) -> Iterator[Callable[..., TransformersEngine]]:
    engines: list[TransformersEngine] = []

    def factory(model: Any = None, **kwargs: Any) -> TransformersEngine:
        lease = kwargs.pop("lease", None) or CountingLease(model if model is not None else llasa_parts[0])
        engine = TransformersEngine(lease, llasa_parts[2], **kwargs)
        engines.append(engine)
        return engine

    yield factory
    for engine in engines:
        engine.shutdown()


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def run_alone(engine: TransformersEngine, prompt_ids: list[int], params: SamplingParams) -> tuple[list[int], Any]:
    stream = engine.submit(prompt_ids, params)
    return list(stream), stream.finish_reason


# --- one sequence ---------------------------------------------------------------------------------------------


def test_a_seeded_sequence_run_alone_is_reproducible(make_engine, prompts) -> None:
    engine = make_engine()
    params = SamplingParams(temperature=0.8, top_k=50, seed=1234, max_new_tokens=40)
    first, reason = run_alone(engine, prompts[1], params)
    again, _ = run_alone(engine, prompts[1], params)
    other, _ = run_alone(engine, prompts[1], SamplingParams(temperature=0.8, top_k=50, seed=99, max_new_tokens=40))
    assert reason is FinishReason.LENGTH
    assert len(first) == 40
    assert all(0 <= c < NUM_SPEECH_CODES for c in first)
    assert again == first
    assert other != first


def test_a_fresh_engine_reproduces_the_same_seed(make_engine, prompts) -> None:
    params = SamplingParams(seed=5, max_new_tokens=25)
    assert run_alone(make_engine(), prompts[0], params) == run_alone(make_engine(), prompts[0], params)


class _AllowSpeech(LogitsProcessor):
    def __init__(self, ids: prompt.SpeechTokenIds) -> None:
        self.ids = ids

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        mask = torch.full_like(scores, float("-inf"))
        mask[:, self.ids.first_speech_id : self.ids.last_speech_id + 1] = 0
        mask[:, self.ids.speech_end_id] = 0
        return scores + mask


def hf_greedy_codes(model: Any, ids: prompt.SpeechTokenIds, prompt_ids: list[int], n: int) -> list[int]:
    """Greedy speech codes from HF generate (full output layer, its own cache handling): the reference."""
    input_ids = torch.tensor([prompt_ids])
    with torch.inference_mode():
        out = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            max_new_tokens=n,
            eos_token_id=ids.speech_end_id,
            pad_token_id=ids.speech_end_id,
            logits_processor=LogitsProcessorList([_AllowSpeech(ids)]),
        )
    return prompt.parse_speech_ids(out[0, len(prompt_ids) :].tolist(), ids)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.8, top_k=1, seed=3, max_new_tokens=30),
        SamplingParams(temperature=0.0, top_k=0, seed=4, max_new_tokens=30),
        # a temperature too small to divide by (the logits would overflow to inf, the softmax to nan): greedy
        SamplingParams(temperature=5e-324, top_k=0, seed=7, max_new_tokens=30),
        SamplingParams(temperature=1e-6, top_k=50, seed=8, max_new_tokens=30),
        # top_p so small that only the most likely token is left: greedy through the top-p path, with a draw
        SamplingParams(temperature=1.0, top_k=0, top_p=1e-9, seed=5, max_new_tokens=30),
        SamplingParams(temperature=1.0, top_k=40, top_p=1e-9, seed=6, max_new_tokens=30),
    ],
)
def test_greedy_settings_equal_hf_greedy_decoding(make_engine, llasa_parts, prompts, params) -> None:
    model, _, ids = llasa_parts
    codes, _ = run_alone(make_engine(), prompts[2], params)
    assert codes == hf_greedy_codes(model, ids, prompts[2], 30)


def _teacher_forced_window_logits(model: Any, window: SpeechWindow, prompt_ids: list[int], codes: list[int]):
    token_ids = [window.start + window.first_code_index + c for c in codes]
    with torch.inference_mode():
        logits = model(torch.tensor([prompt_ids + token_ids])).logits[0].float()
    # logits at position p predict token p + 1: the ones predicting each sampled code
    steps = logits[len(prompt_ids) - 1 : len(prompt_ids) - 1 + len(codes), window.start : window.stop]
    return steps + window.mask


def token_ranks(logits: torch.Tensor, codes: list[int], window: SpeechWindow) -> list[int]:
    """Rank of each sampled code among its step's logits (0 = the most likely)."""
    return [int((row > row[window.first_code_index + c]).sum()) for row, c in zip(logits, codes, strict=True)]


def test_top_k_samples_only_among_the_k_most_likely(make_engine, llasa_parts, prompts) -> None:
    model, _, ids = llasa_parts
    window = SpeechWindow.for_ids(ids, model.config.vocab_size)
    codes, _ = run_alone(make_engine(), prompts[0], SamplingParams(temperature=1.5, top_k=3, seed=8, max_new_tokens=40))
    logits = _teacher_forced_window_logits(model, window, prompts[0], codes)
    ranks = token_ranks(logits, codes, window)
    assert max(ranks) < 3
    assert any(r > 0 for r in ranks), "top_k=3 at temperature 1.5 should not always pick the most likely token"


def test_each_row_of_a_batch_keeps_its_own_top_k(make_engine, llasa_parts, prompts) -> None:
    model, _, ids = llasa_parts
    window = SpeechWindow.for_ids(ids, model.config.vocab_size)
    engine = make_engine()
    narrow = engine.submit(prompts[0], SamplingParams(temperature=2.0, top_k=2, seed=8, max_new_tokens=40))
    others = [
        engine.submit(prompts[1], SamplingParams(temperature=2.0, top_k=50, seed=9, max_new_tokens=40)),
        engine.submit(prompts[2], SamplingParams(temperature=2.0, top_k=0, seed=10, max_new_tokens=40)),
    ]
    codes = list(narrow)
    logits = _teacher_forced_window_logits(model, window, prompts[0], codes)
    ranks = token_ranks(logits, codes, window)
    assert max(ranks) < 2
    for stream in others:
        stream.wait()
        later = _teacher_forced_window_logits(model, window, stream_prompt(stream, prompts), stream.codes)
        assert max(token_ranks(later, stream.codes, window)) >= 2  # the wider rows did not inherit top_k=2


def stream_prompt(stream: CodeStream, prompts: list[list[int]]) -> list[int]:
    return next(p for p in prompts if len(p) == stream.prompt_len)


def test_repetition_penalty_follows_hf(make_engine, prompts) -> None:
    engine = make_engine()
    reference_codes = [7 * i + 1 for i in range(5 + 9 * 1)]  # what prompts[1] was built with
    plain, _ = run_alone(engine, prompts[1], SamplingParams(top_k=1, max_new_tokens=60))
    penalised, _ = run_alone(engine, prompts[1], SamplingParams(top_k=1, repetition_penalty=1e6, max_new_tokens=60))
    # Greedy decoding of a random model loops; an enormous penalty forbids every token already in the prompt or
    # the output (HF's definition covers both).
    assert len(set(plain)) < len(plain)
    assert len(set(penalised)) == len(penalised)
    assert not set(penalised) & set(reference_codes)


def test_the_checkpoint_generation_config_does_not_leak_into_sampling(make_engine, llasa_parts, prompts) -> None:
    model, _, _ = llasa_parts
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, seed=11, max_new_tokens=30)
    before, _ = run_alone(make_engine(), prompts[0], params)
    altered = copy.deepcopy(model)
    altered.generation_config.temperature = 0.6
    altered.generation_config.top_p = 0.9
    altered.generation_config.top_k = 1
    after, _ = run_alone(make_engine(altered), prompts[0], params)
    assert after == before
    assert len(set(after)) > 20  # temperature 1 over 65,537 tokens: not the greedy loop top_k=1 would give


def test_length_cap_and_context_cap(make_engine, prompts) -> None:
    engine = make_engine()
    codes, reason = run_alone(engine, prompts[0], SamplingParams(seed=1, max_new_tokens=7))
    assert (len(codes), reason) == (7, FinishReason.LENGTH)
    tight = make_engine(context_tokens=len(prompts[0]) + 4)
    codes, reason = run_alone(tight, prompts[0], SamplingParams(seed=1, max_new_tokens=100))
    assert (len(codes), reason) == (4, FinishReason.LENGTH)
    with pytest.raises(InvalidInput, match="context"):
        make_engine(context_tokens=len(prompts[0])).submit(prompts[0], SamplingParams())
    with pytest.raises(InvalidInput, match="top_p"):
        engine.submit(prompts[0], SamplingParams(top_p=0.0))


def _biased_copy(model: Any, biases: dict[int, float]) -> Any:
    """A copy of the model whose output layer adds `biases` to some token ids (untied, with a bias vector)."""
    biased = copy.deepcopy(model)
    old = biased.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        for token_id, value in biases.items():
            head.bias[token_id] = value
    biased.lm_head = head
    return biased


def test_stops_at_the_end_token(make_engine, llasa_parts, prompts) -> None:
    model, _, ids = llasa_parts
    # exp(9.7) ~ 16,000: the end token gets ~20 % of the mass at temperature 1, so every sequence ends early.
    engine = make_engine(_biased_copy(model, {ids.speech_end_id: 9.7}))
    streams = [
        engine.submit(prompts[0], SamplingParams(temperature=1.0, top_k=0, seed=s, max_new_tokens=300))
        for s in range(6)
    ]
    for stream in streams:
        assert stream.wait() is FinishReason.END_TOKEN
        assert len(stream.codes) < 300
        assert all(0 <= c < NUM_SPEECH_CODES for c in stream.codes)
    assert len({len(s.codes) for s in streams}) > 1


def test_only_speech_tokens_and_the_end_token_can_be_sampled(make_engine, llasa_parts, prompts) -> None:
    model, _, ids = llasa_parts
    window = SpeechWindow.for_ids(ids, model.config.vocab_size)
    forbidden = {5: 1e4, ids.speech_start_id: 1e4}  # a text token and a control token, made overwhelmingly likely
    forbidden |= {window.start + i: 1e4 for i in range(window.size) if float(window.mask[i]) != 0.0}
    engine = make_engine(_biased_copy(model, forbidden))
    codes, reason = run_alone(engine, prompts[0], SamplingParams(temperature=1.0, top_k=0, seed=2, max_new_tokens=50))
    assert reason is FinishReason.LENGTH
    assert len(codes) == 50
    assert all(0 <= c < NUM_SPEECH_CODES for c in codes)


# --- many sequences ---------------------------------------------------------------------------------------------


def test_sixteen_concurrent_submitters_each_get_their_own_codes(make_engine, prompts) -> None:
    engine = make_engine(max_batch_sequences=8)
    results: dict[int, tuple[list[int], list[int], FinishReason | None]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(16)

    def client(i: int) -> None:
        try:
            start.wait()
            stream = engine.submit(prompts[i % 4], SamplingParams(seed=100 + i, max_new_tokens=20 + i))
            read = list(stream)  # read as they come, in this thread
            results[i] = (read, stream.codes, stream.finish_reason)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(results) == list(range(16))
    for i, (read, stored, reason) in results.items():
        assert read == stored
        assert reason is FinishReason.LENGTH
        assert len(read) == 20 + i
        assert all(0 <= c < NUM_SPEECH_CODES for c in read)
    assert len({tuple(r[0][:20]) for r in results.values()}) == 16  # every request its own sequence
    assert engine.stats().steps < sum(20 + i for i in range(16)) // 2  # they ran together, not one by one


def test_concurrent_clients_mixing_reads_cancels_and_hang_ups_lose_nothing(make_engine, prompts) -> None:
    # 16 clients: a third cancel after a few codes, a third never read (they only wait), the rest read every code.
    engine = make_engine(max_batch_sequences=6)
    outcome: dict[int, tuple[str, list[int], FinishReason | None]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(16)

    def client(i: int) -> None:
        try:
            start.wait()
            # the cancelling clients' caps are out of reach, so a slow reader thread cannot see them finish first
            cap = 5000 if i % 3 == 0 else 40
            stream = engine.submit(prompts[i % 4], SamplingParams(seed=500 + i, max_new_tokens=cap))
            if i % 3 == 0:
                read = []
                for code in stream:
                    read.append(code)
                    if len(read) == 3 + i % 5:
                        stream.cancel()
                stream.wait()
                outcome[i] = ("cancel", read, stream.finish_reason)
            elif i % 3 == 1:
                stream.wait()
                outcome[i] = ("wait", stream.codes, stream.finish_reason)
            else:
                outcome[i] = ("read", list(stream), stream.finish_reason)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(outcome) == list(range(16))
    for i, (kind, codes, reason) in outcome.items():
        if kind == "cancel":
            assert reason is FinishReason.CANCELLED, i
            assert 3 + i % 5 <= len(codes) < 5000
        else:
            assert (reason, len(codes)) == (FinishReason.LENGTH, 40), i
    wait_until(lambda: engine.stats().running == engine.stats().waiting == 0, "the engine to drain")


def test_batched_runs_are_well_formed_and_each_reproducible_alone(make_engine, prompts) -> None:
    engine = make_engine(max_batch_sequences=8)
    params = [SamplingParams(seed=40 + i, max_new_tokens=30) for i in range(6)]
    batched = [engine.submit(prompts[i % 4], p) for i, p in enumerate(params)]
    for stream in batched:
        assert stream.wait() is FinishReason.LENGTH
        assert len(stream.codes) == 30
    alone = [run_alone(engine, prompts[i % 4], p)[0] for i, p in enumerate(params)]
    assert alone == [run_alone(engine, prompts[i % 4], p)[0] for i, p in enumerate(params)]
    # Batching may change the numerics (see the module docstring), so batched codes are not compared to alone.


def test_sequences_arriving_together_are_prefilled_together_and_stay_exact(make_engine, llasa_parts, prompts) -> None:
    # Held at the lease until all four are queued, so they are admitted, and prefilled, as one left-padded group.
    model, _, ids = llasa_parts
    granted = threading.Event()
    prefills: list[int] = []

    @contextlib.contextmanager
    def held_lease() -> Iterator[Any]:
        granted.wait()
        yield model

    def hook(phase: str, rows: int) -> None:
        if phase == "prefill":
            prefills.append(rows)

    engine = make_engine(lease=held_lease, step_hook=hook)
    streams = [engine.submit(p, SamplingParams(top_k=1, max_new_tokens=25)) for p in prompts]
    granted.set()
    assert [list(s) for s in streams] == [hf_greedy_codes(model, ids, p, 25) for p in prompts]
    assert prefills == [4]
    assert len({len(p) for p in prompts}) == 4  # different lengths: the group really was padded


def test_the_padded_batch_cache_holds_what_each_sequence_computes_alone(llasa_parts, prompts) -> None:
    # The random tiny model barely uses positions, so equal greedy codes could hide a position or padding error;
    # the keys (rotated by their positions) cannot: after a padded group prefill, a join and decode steps in the
    # batch, each row's real columns must equal one unpadded forward of that sequence's tokens alone.
    from llasa.engine.transformers_backend import _Runner, _Sequence

    model, _, ids = llasa_parts
    runner = _Runner(model, ids)

    def sequence(prompt_ids: list[int], generated: list[int] | None = None) -> _Sequence:
        stream = CodeStream(0, SamplingParams(top_k=1), len(prompt_ids))
        return _Sequence(stream, list(prompt_ids), 100, 0, 0, generated_ids=list(generated or []))

    with torch.inference_mode():
        group = [sequence(p) for p in prompts[:3]]
        batch, firsts = runner.prefill(group)
        for seq, first in zip(group, firsts, strict=True):
            seq.generated_ids.append(runner.window.start + int(first))
        runner.batch.join([batch])
        late = sequence(prompts[3])  # joins after two steps, with a prompt longer than the batch so far
        running = group
        for step in range(5):
            if step == 2:
                joined, (first,) = runner.prefill([late])
                late.generated_ids.append(runner.window.start + int(first))
                runner.batch.join([joined])
                running = [*group, late]
            for seq, index in zip(running, runner.decode_step(running), strict=True):
                seq.cached_tokens += 1
                seq.generated_ids.append(runner.window.start + index)
        mask = runner.batch.attention_mask
        for row, seq in enumerate(running):
            alone, _ = runner.prefill([sequence(seq.prompt_ids, seq.generated_ids)])
            real = mask[row].bool()
            assert int(real.sum()) == seq.cached_tokens
            for batched_layer, alone_layer in zip(runner.batch.cache.layers, alone.cache.layers, strict=True):
                torch.testing.assert_close(batched_layer.keys[row][:, real], alone_layer.keys[0], atol=1e-4, rtol=1e-4)
                torch.testing.assert_close(
                    batched_layer.values[row][:, real], alone_layer.values[0], atol=1e-4, rtol=1e-4
                )


def test_a_sequence_joins_a_running_batch_mid_run(make_engine, prompts) -> None:
    engine = make_engine()
    # The long one's cap is out of reach (it is cancelled at the end), so a slow test thread cannot miss the overlap.
    long = engine.submit(prompts[1], SamplingParams(seed=1, max_new_tokens=5000))
    wait_until(lambda: len(long.codes) >= 10, "the first sequence to get going")
    short = engine.submit(prompts[3], SamplingParams(seed=2, max_new_tokens=20))
    assert short.wait() is FinishReason.LENGTH
    assert len(short.codes) == 20
    assert not long.finished  # the short one finished inside the long one's run
    long.cancel()
    assert long.wait() is FinishReason.CANCELLED
    # One decode step advances both: the total is the long one's steps, not the sum.
    assert engine.stats().steps < len(long.codes) + 19


def test_cancel_while_queued_and_while_generating(make_engine, prompts) -> None:
    engine = make_engine(max_batch_sequences=2)
    a = engine.submit(prompts[0], SamplingParams(seed=1, max_new_tokens=5000))  # cancelled long before its cap
    b = engine.submit(prompts[1], SamplingParams(seed=2, max_new_tokens=1000))
    queued = engine.submit(prompts[2], SamplingParams(seed=3, max_new_tokens=400))
    wait_until(lambda: len(a.codes) >= 5 and len(b.codes) >= 5, "two sequences to run")
    assert engine.stats().waiting == 1
    queued.cancel()
    assert queued.wait() is FinishReason.CANCELLED
    assert queued.codes == []
    a.cancel()
    assert a.wait() is FinishReason.CANCELLED
    assert 5 <= len(a.codes) < 5000
    assert b.wait() is FinishReason.LENGTH  # the other one runs on
    assert len(b.codes) == 1000
    a.cancel()  # again, after the end: nothing happens
    assert a.finish_reason is FinishReason.CANCELLED


def test_admission_is_bounded_by_batch_size_and_kv_memory(make_engine, llasa_parts, prompts) -> None:
    rows_seen: list[int] = []

    def hook(phase: str, rows: int) -> None:
        if phase == "decode":
            rows_seen.append(rows)

    engine = make_engine(max_batch_sequences=3, step_hook=hook)
    streams = [engine.submit(prompts[i % 4], SamplingParams(seed=i, max_new_tokens=20)) for i in range(7)]
    assert all(s.wait() is FinishReason.LENGTH for s in streams)
    assert max(rows_seen) == 3

    config = llasa_parts[0].config
    per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * 4  # fp32 K and V
    longest = max(len(p) for p in prompts) + 20 + SPARE_COLUMNS
    rows_seen.clear()
    budget = make_engine(max_batch_sequences=8, kv_cache_bytes=2 * longest * per_token, step_hook=hook)
    streams = [budget.submit(prompts[i % 4], SamplingParams(seed=i, max_new_tokens=20)) for i in range(6)]
    assert all(s.wait() is FinishReason.LENGTH for s in streams)
    assert max(rows_seen) == 2  # the cap would allow 8; the KV estimate allows two of these at a time


# --- out of memory ----------------------------------------------------------------------------------------------


def test_an_out_of_memory_step_shrinks_the_batch_and_loses_nothing(make_engine, prompts) -> None:
    failures: list[int] = []

    def hook(phase: str, rows: int) -> None:
        if phase == "decode" and rows >= 4 and not failures:
            failures.append(rows)
            raise torch.OutOfMemoryError("injected: CUDA out of memory")

    engine = make_engine(max_batch_sequences=8, step_hook=hook)
    streams = [engine.submit(prompts[i % 4], SamplingParams(seed=i, max_new_tokens=40)) for i in range(6)]
    for stream in streams:
        assert stream.wait() is FinishReason.LENGTH
        assert len(stream.codes) == 40
        assert all(0 <= c < NUM_SPEECH_CODES for c in stream.codes)
    assert len(failures) == 1
    stats = engine.stats()
    assert stats.oom_shrinks == 1
    assert stats.tokens == 6 * 40  # every token sampled once: the failed step was undone, not half-recorded
    # once the engine is idle, the shrunken limit is lifted for the next batch
    wait_until(lambda: engine.stats().batch_limit == 8, "the batch limit to be restored when idle")
    again = [engine.submit(prompts[i % 4], SamplingParams(seed=i, max_new_tokens=5)) for i in range(6)]
    assert all(s.wait() is FinishReason.LENGTH for s in again)
    assert engine.stats().oom_shrinks == 1


def test_out_of_memory_half_way_through_a_forward_is_undone(make_engine, llasa_parts, prompts) -> None:
    # Raised as the last decoder layer starts: the first layer's cache has already grown by the failed step.
    model = copy.deepcopy(llasa_parts[0])
    failures: list[int] = []

    def fail_once(module: Any, args: Any) -> None:
        rows = args[0].shape[0]
        if rows >= 3 and args[0].shape[1] == 1 and not failures:
            failures.append(rows)
            raise torch.OutOfMemoryError("injected: CUDA out of memory")

    model.model.layers[-1].register_forward_pre_hook(fail_once)
    engine = make_engine(model, max_batch_sequences=8)
    # Greedy, so that every sequence's right answer is known: HF's greedy decoding of its prompt, alone.
    streams = [engine.submit(prompts[i % 4], SamplingParams(top_k=1, max_new_tokens=30)) for i in range(5)]
    for stream in streams:
        assert stream.wait() is FinishReason.LENGTH
    assert failures
    assert engine.stats().oom_shrinks == 1
    reference = llasa_parts[0]
    for i, stream in enumerate(streams):
        assert stream.codes == hf_greedy_codes(reference, llasa_parts[2], prompts[i % 4], 30), f"sequence {i}"


def test_out_of_memory_while_merging_new_sequences_requeues_them(make_engine, prompts, monkeypatch) -> None:
    from llasa.engine.batch import PaddedBatch

    join = PaddedBatch.join
    failures: list[int] = []

    def join_failing_once(self: PaddedBatch, others: list[PaddedBatch]) -> None:
        if self.rows and not failures:
            failures.append(len(others))
            raise torch.OutOfMemoryError("injected: CUDA out of memory")
        join(self, others)

    monkeypatch.setattr(PaddedBatch, "join", join_failing_once)
    engine = make_engine()
    first = engine.submit(prompts[0], SamplingParams(seed=1, max_new_tokens=60))
    wait_until(lambda: len(first.codes) >= 2, "the first sequence to run")
    later = [engine.submit(prompts[i], SamplingParams(seed=i, max_new_tokens=30)) for i in (1, 2, 3)]
    for stream in [first, *later]:
        assert stream.wait() is FinishReason.LENGTH
    assert [len(s.codes) for s in later] == [30, 30, 30]
    assert failures
    assert engine.stats().oom_shrinks == 1


def test_out_of_memory_alone_ends_the_sequence_with_an_error(make_engine, prompts) -> None:
    def hook(phase: str, rows: int) -> None:
        if phase == "decode":
            raise torch.OutOfMemoryError("injected: CUDA out of memory")

    engine = make_engine(step_hook=hook)
    stream = engine.submit(prompts[0], SamplingParams(seed=1, max_new_tokens=10))
    assert stream.wait() is FinishReason.ERROR
    assert isinstance(stream.error, torch.OutOfMemoryError)
    assert len(stream.codes) == 1  # the first token came from the prefill, before the failing step


# --- lifecycle ----------------------------------------------------------------------------------------------------


def test_the_model_is_leased_while_there_is_work_and_released_when_idle(make_engine, llasa_parts, prompts) -> None:
    lease = CountingLease(llasa_parts[0])
    engine = make_engine(lease=lease)
    streams = [engine.submit(prompts[i % 4], SamplingParams(seed=i, max_new_tokens=15)) for i in range(4)]
    for stream in streams:
        stream.wait()
    wait_until(lambda: lease.exited == lease.entered, "the lease to be given back")
    first_round = lease.entered
    assert 1 <= first_round <= 4
    run_alone(engine, prompts[0], SamplingParams(seed=9, max_new_tokens=3))
    wait_until(lambda: lease.exited == lease.entered == first_round + 1, "a second lease, given back")


def test_no_kv_cache_outlives_the_work(make_engine, prompts) -> None:
    from transformers import DynamicCache

    engine = make_engine()
    streams = [engine.submit(prompts[i % 4], SamplingParams(seed=i, max_new_tokens=10)) for i in range(3)]
    for stream in streams:
        stream.wait()
    wait_until(lambda: engine.stats().running == 0, "the engine to go idle")

    def live_caches() -> int:
        gc.collect()
        return sum(type(o) is DynamicCache for o in gc.get_objects())

    wait_until(lambda: live_caches() == 0, "the batch's KV cache to be freed")


def test_a_queued_sequence_is_cancelled_while_the_model_is_not_yet_leased(make_engine, llasa_parts, prompts) -> None:
    # A GPU manager may make the engine wait for the model (another service holds the card); a client that hangs
    # up meanwhile must not wait for that.
    granted = threading.Event()
    lease = CountingLease(llasa_parts[0])

    @contextlib.contextmanager
    def slow_lease() -> Iterator[Any]:
        granted.wait()
        with lease() as model:
            yield model

    engine = make_engine(lease=slow_lease)
    gone = engine.submit(prompts[0], SamplingParams(seed=1, max_new_tokens=5))
    kept = engine.submit(prompts[1], SamplingParams(seed=2, max_new_tokens=5))
    gone.cancel()
    assert gone.wait() is FinishReason.CANCELLED
    assert lease.entered == 0  # ended before the model was ever leased
    granted.set()
    assert kept.wait() is FinishReason.LENGTH
    assert len(kept.codes) == 5


def test_a_lease_may_yield_the_services_model_wrapper(llasa_parts, prompts) -> None:
    # The GPU manager's `use("llasa")` yields LlasaModel: the LM as `.model`, the speech ids as `.token_ids`.
    model, _, ids = llasa_parts
    wrapper = SimpleNamespace(model=model, token_ids=ids)
    engine = TransformersEngine(lambda: contextlib.nullcontext(wrapper))
    try:
        codes, reason = run_alone(engine, prompts[0], SamplingParams(seed=3, max_new_tokens=12))
    finally:
        engine.shutdown()
    direct = TransformersEngine(lambda: contextlib.nullcontext(model), ids)
    try:
        assert (codes, reason) == run_alone(direct, prompts[0], SamplingParams(seed=3, max_new_tokens=12))
    finally:
        direct.shutdown()
    confused = TransformersEngine(lambda: contextlib.nullcontext(object()))
    try:
        stream = confused.submit(prompts[0], SamplingParams())
        assert stream.wait() is FinishReason.ERROR
        assert isinstance(stream.error, TypeError)
    finally:
        confused.shutdown()


def test_a_failing_lease_fails_the_waiting_sequences(make_engine, prompts) -> None:
    @contextlib.contextmanager
    def broken() -> Iterator[Any]:
        raise ModelUnavailable("llasa could not be loaded")
        yield  # pragma: no cover

    engine = make_engine(lease=broken)
    stream = engine.submit(prompts[0], SamplingParams(seed=1))
    assert stream.wait() is FinishReason.ERROR
    assert isinstance(stream.error, ModelUnavailable)


def test_shutdown_cancels_what_is_left_and_joins_the_thread(make_engine, prompts) -> None:
    engine = make_engine(max_batch_sequences=1)
    running = engine.submit(prompts[0], SamplingParams(seed=1, max_new_tokens=5000))
    queued = engine.submit(prompts[1], SamplingParams(seed=2, max_new_tokens=5000))
    wait_until(lambda: len(running.codes) >= 3, "the first sequence to start")
    engine.shutdown()
    assert engine.thread is not None
    assert not engine.thread.is_alive()
    assert running.finish_reason is FinishReason.CANCELLED
    assert queued.finish_reason is FinishReason.CANCELLED
    with pytest.raises(Busy):
        engine.submit(prompts[0], SamplingParams())
    assert engine.stats().running == engine.stats().waiting == 0


def test_streams_block_until_codes_arrive_and_end_with_a_reason() -> None:
    stream = CodeStream(1, SamplingParams(), prompt_len=3)
    got: list[int] = []
    reader = threading.Thread(target=lambda: got.extend(stream))
    reader.start()
    stream.push([1, 2])
    stream.push([3])
    stream.finish(FinishReason.END_TOKEN)
    reader.join()
    assert got == [1, 2, 3]
    assert stream.read_from(3) == []
    assert stream.wait() is FinishReason.END_TOKEN
    with pytest.raises(RuntimeError):
        stream.push([4])


def test_a_growing_cache_layer_writes_in_place_and_keeps_earlier_views() -> None:
    from llasa.engine.batch import GrowingLayer

    layer = GrowingLayer()
    first = torch.randn(2, 3, 5, 4)
    layer.adopt(first, first.clone())
    before = layer.keys  # what a snapshot holds
    steps = [torch.randn(2, 3, 1, 4) for _ in range(SPARE_COLUMNS + 2)]
    layer.update(steps[0], steps[0])
    buffer = layer.key_buffer
    for step in steps[1:SPARE_COLUMNS]:
        layer.update(step, step)
    assert layer.key_buffer is buffer  # room to spare: no reallocation, no copy of the cache
    for step in steps[SPARE_COLUMNS:]:
        layer.update(step, step)
    assert layer.key_buffer is not buffer  # out of room: grown once
    torch.testing.assert_close(layer.keys, torch.cat([first, *steps], dim=2))
    torch.testing.assert_close(before, first)  # the snapshot's view is untouched by the in-place writes
    assert layer.get_seq_length() == 5 + len(steps)
