"""The embedded engine: continuous batching over a Llasa `LlamaForCausalLM` in this process.

One background thread owns the step loop. Each pass it
1. drops cancelled sequences (queued or running),
2. admits waiting sequences in FIFO order while the batch has fewer than `max_batch_sequences` rows and the
   padded KV cache estimate stays within `kv_cache_bytes`: those admitted together are prefilled in one
   left-padded forward (one alone has no padding), their first tokens sampled, and their cache rows merged into
   the batch (`PaddedBatch.join`),
3. runs one decode step for every running sequence together and retires those that sampled the end token or hit
   their length cap (`PaddedBatch.keep`), without stalling the others.
The model comes from `model_lease()`, a context manager entered when the first sequence arrives and left when no
sequence is running or waiting, so a GPU manager can hold the weights on the GPU exactly while there is work.

Why a hand-written step loop rather than transformers' own continuous batching (`generate_batch`,
`init_continuous_batching`, paged attention): measured on the 2-core CPU of the development machine on the same
prompts (`bench/bench_engine.py --hf-continuous-batching`, bench/RESULTS.md), `generate_batch` gave 5-8 tokens/s
for 1 sequence and 67-138 for 16, against 308-638 and 976-2176 for this loop (ENVIRONMENT.md had found the same gap
against a plain batched `generate`); it also samples through one generation config for the whole batch, with no
per-request generator or logits mask, so per-sequence seeds and the speech-only mask would need its internals
anyway. This loop is HF `generate`'s left-padded batched path (SDPA, a `DynamicCache`) with joins and leaves
added. Three more choices:
- Logits are computed only for the speech window (`SpeechWindow`, the 65,539 ids holding the speech tokens and
  the end token) instead of all 193,800: the same distribution under the speech-only mask, a third of the output
  layer's work.
- Sampling is per row (`llasa.engine.sampling`): each sequence has its own CPU `torch.Generator` and parameters.
- The batch cache grows in place (`batch.GrowingLayer`) instead of being concatenated (copied) at every step.
Not done yet, for the GPU: with a padding mask transformers' SDPA path expands the KV heads to the query heads at
every step (`repeat_kv`; 8 -> 32 on Llasa-8B), which a paged or varlen attention kernel would avoid; and a long
prompt's prefill is not chunked, so it delays the running sequences' next step by its whole duration.
`bench_engine.py --device cuda --llasa-8b-shape [--attn-implementation ...]` is there to measure them.

Numerics and reproducibility: a sequence's logits depend on the batch it ran in. Padding columns are masked
exactly, but the batched matrix products sum in a different order for a different batch shape, so logits can
differ in the last bits and a sampled token can flip, after which the sequences diverge. What is guaranteed: a
seeded sequence run alone gives the same codes every time (prefill alone, then batch-of-one steps); in a batch (or
a prefill group) it
gives well-formed codes from its own seed, not necessarily the same ones. The codes of a seed are also not the
ones `LlasaModel.generate_codes` (HF `generate`) gives for it: same distribution, draws made differently (see
`llasa.engine.sampling`). A sequence requeued after an
out-of-memory (below) recomputes its cache from its tokens, so it continues well-formed but may continue
differently from an undisturbed run.

Out of memory during a step (CUDA's `torch.OutOfMemoryError`, or one raised by the `step_hook` a test injects):
the step is undone (the cache tensors from before it are kept), the batch is halved by requeueing the most
recently admitted sequences at the head of the queue with their codes, sampler state and RNG intact (they are
prefilled again from prompt + codes when re-admitted), and the step is retried. The halved limit holds until the
engine goes idle. Out of memory in a group prefill falls back to prefilling one at a time; in a lone prefill or
while merging into the batch, the sequences go back to the queue until the batch is smaller. A sequence that runs
out of memory alone ends with ERROR; nothing is dropped silently.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from llasa.engine.batch import SPARE_COLUMNS, PaddedBatch
from llasa.engine.sampling import RowState, SpeechWindow, make_row_state, sample_next
from llasa.engine.types import CodeStream, EngineStats, FinishReason, SamplingParams, prepare_submission
from llasa.errors import Busy
from llasa.prompt import SpeechTokenIds

logger = logging.getLogger(__name__)

#: Llasa was trained on 2048-token sequences: prompt + new tokens must fit.
DEFAULT_CONTEXT_TOKENS = 2048

ModelLease = Callable[[], contextlib.AbstractContextManager[Any]]
#: step_hook(phase, rows): called before every forward ("prefill" with 1 row, "decode" with the batch's rows).
StepHook = Callable[[str, int], None]


@dataclass
class _Sequence:
    stream: CodeStream
    prompt_ids: list[int]
    max_new_tokens: int
    seed: int
    order: int
    sampler: RowState | None = None
    generated_ids: list[int] = field(default_factory=list)
    """Token ids sampled so far (the end token is never stored: the sequence leaves when it comes)."""
    cached_tokens: int = 0
    """Real (non-padding) tokens of this sequence in the batch cache = position of its next input."""

    @property
    def next_input(self) -> int:
        return self.generated_ids[-1]


def _unwrap(leased: Any, token_ids: SpeechTokenIds | None) -> tuple[Any, SpeechTokenIds]:
    """The causal LM and speech ids from what a lease yields: the LM itself, or a wrapper with `.model` and
    `.token_ids` (`LlasaModel`)."""
    model = leased if hasattr(leased, "get_decoder") else getattr(leased, "model", None)
    ids = token_ids or getattr(leased, "token_ids", None)
    if model is None or not hasattr(model, "get_decoder") or ids is None:
        raise TypeError(
            f"the model lease yielded {type(leased).__name__}: expected a causal LM (with token_ids given to the "
            "engine) or an object with .model and .token_ids"
        )
    return model, ids


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError)


class TransformersEngine:
    """Continuous-batching generation backend over an in-process Llasa LM (`GenerationBackend`).

    `model_lease()` returns a context manager yielding the `LlamaForCausalLM`, or an object holding it as `.model`
    with its speech ids as `.token_ids` (the service's `LlasaModel`, so `lambda: manager.use("llasa")` works as
    it is). The model may move between leases; it is not used outside one. `token_ids` are the tokenizer's speech
    ids (`llasa.prompt.lookup_token_ids`); None takes them from the leased object.
    `kv_cache_bytes` bounds the padded KV cache (rows x (longest prompt + cap + 128 spare) x bytes per token);
    None = no bound but `max_batch_sequences`. `context_tokens` caps prompt + new tokens (Llasa: 2048).
    `step_hook(phase, rows)` runs before every forward (tests inject out-of-memory errors there). The worker
    thread starts at the first submit; `shutdown()` ends it.
    """

    def __init__(
        self,
        model_lease: ModelLease,
        token_ids: SpeechTokenIds | None = None,
        *,
        max_batch_sequences: int = 16,
        kv_cache_bytes: int | None = None,
        context_tokens: int = DEFAULT_CONTEXT_TOKENS,
        step_hook: StepHook | None = None,
        name: str = "llasa-engine",
    ) -> None:
        if max_batch_sequences < 1:
            raise ValueError(f"max_batch_sequences is {max_batch_sequences}; it must be at least 1")
        self.name = name
        self.max_batch_sequences = max_batch_sequences
        self.kv_cache_bytes = kv_cache_bytes
        self.context_tokens = context_tokens
        self._lease = model_lease
        self._token_ids = token_ids
        self._step_hook = step_hook
        # Lock order: self._cond, then a stream's own lock (CodeStream calls cancel callbacks outside its lock).
        self._cond = threading.Condition()
        self._waiting: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []
        self._thread: threading.Thread | None = None
        self._shutdown = False
        self._next_id = 0
        self._steps = 0
        self._tokens = 0
        self._oom_limit: int | None = None
        self._oom_shrinks = 0

    # --- public API ------------------------------------------------------------------------------------------

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams) -> CodeStream:
        ids, params, room = prepare_submission(prompt_ids, params, self.context_tokens)
        with self._cond:
            if self._shutdown:
                raise Busy(f"{self.name} is shut down; no new sequences are accepted")
            self._next_id += 1
            stream = CodeStream(self._next_id, params, len(ids))
            seq = _Sequence(stream, ids, min(params.max_new_tokens, room), int(params.seed), self._next_id)
            self._waiting.append(seq)
            self._ensure_thread()
            self._cond.notify_all()
        stream.add_cancel_callback(lambda: self._cancel_queued(seq))
        return stream

    def shutdown(self, *, wait: bool = True) -> None:
        with self._cond:
            self._shutdown = True
            self._cond.notify_all()
            thread = self._thread
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join()

    def stats(self) -> EngineStats:
        with self._cond:
            return EngineStats(
                running=len(self._running),
                waiting=len(self._waiting),
                steps=self._steps,
                tokens=self._tokens,
                batch_limit=self._batch_limit(),
                oom_shrinks=self._oom_shrinks,
            )

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    # --- worker ----------------------------------------------------------------------------------------------

    def _cancel_queued(self, seq: _Sequence) -> None:
        """cancel() of a stream: a queued sequence ends at once (even while the worker waits for the model's
        lease); a running one is dropped by the worker at its next step."""
        with self._cond:
            queued = seq in self._waiting
            if queued:
                self._waiting.remove(seq)
            self._cond.notify_all()
        if queued:
            seq.stream.finish(FinishReason.CANCELLED)

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def _batch_limit(self) -> int:
        return min(self.max_batch_sequences, self._oom_limit or self.max_batch_sequences)

    def _run(self) -> None:
        reason, error = FinishReason.CANCELLED, None
        try:
            while True:
                with self._cond:
                    while not self._waiting and not self._shutdown:
                        self._oom_limit = None  # idle: the next batch may grow to the full limit again
                        self._cond.wait()
                    if self._shutdown:
                        break
                try:
                    with self._lease() as model, torch.inference_mode():
                        self._serve(model)
                except Exception as e:  # the lease itself failed (model unavailable, GPU busy...)
                    logger.exception("%s: could not get the model; failing the waiting sequences", self.name)
                    self._fail_all(e)
        except BaseException as e:  # a bug in the loop: refuse new work rather than let submitters hang
            logger.exception("%s: the engine thread failed", self.name)
            reason, error = FinishReason.ERROR, e
            raise
        finally:
            with self._cond:
                self._shutdown = True
            self._end_all(reason, error)

    def _serve(self, model: Any) -> None:
        """Run steps until nothing is running or waiting (or shutdown); the caller holds the model's lease."""
        runner = _Runner(*_unwrap(model, self._token_ids))
        try:
            while True:
                with self._cond:
                    if self._shutdown or (not self._waiting and not self._running):
                        return
                self._reap_cancelled(runner)
                self._admit(runner)
                if self._running:
                    self._decode(runner)
        except Exception as e:
            logger.exception("%s: generation failed; failing the running sequences", self.name)
            self._end_running(runner, FinishReason.ERROR, e)
        finally:
            if self._running:  # shutdown while running
                self._end_running(runner, FinishReason.CANCELLED, None)
            runner.batch.clear()

    def _reap_cancelled(self, runner: _Runner) -> None:
        with self._cond:
            cancelled = [s for s in self._waiting if s.stream.cancel_requested]
            for seq in cancelled:
                self._waiting.remove(seq)
        for seq in cancelled:
            seq.stream.finish(FinishReason.CANCELLED)
        gone = [i for i, s in enumerate(self._running) if s.stream.cancel_requested]
        if gone:
            for i in gone:
                self._running[i].stream.finish(FinishReason.CANCELLED)
            self._drop_rows(runner, set(gone))

    def _drop_rows(self, runner: _Runner, rows: set[int]) -> None:
        keep = [i for i in range(len(self._running)) if i not in rows]
        runner.batch.keep(keep)
        with self._cond:
            self._running = [self._running[i] for i in keep]

    def _take_admissible(self, runner: _Runner) -> list[_Sequence]:
        """Pop the waiting sequences that may join now (FIFO: the first that does not fit stops admission)."""
        taken: list[_Sequence] = []
        with self._cond:
            while self._waiting and len(self._running) + len(taken) < self._batch_limit():
                seq = self._waiting[0]
                if self._running or taken:
                    group = self._running + taken + [seq]
                    if not runner.fits(group, self.kv_cache_bytes):
                        break
                taken.append(self._waiting.popleft())
        return taken

    def _admit(self, runner: _Runner) -> None:
        taken = self._take_admissible(runner)
        if not taken:
            return
        try:
            self._hook("prefill", len(taken))
            group, firsts = runner.prefill(taken)
        except Exception as e:
            if len(taken) == 1 or not _is_oom(e):
                self._admit_one_by_one(runner, taken, e)
                return
            # A prefill of several at once ran out of memory: its activations, not the batch, were too much.
            logger.warning("%s: prefill of %d sequences ran out of memory; one at a time", self.name, len(taken))
            self._admit_one_by_one(runner, taken, None)
            return
        self._join(runner, taken, group, firsts)

    def _admit_one_by_one(self, runner: _Runner, taken: list[_Sequence], failed: BaseException | None) -> None:
        """Prefill `taken` one at a time; `failed` is the error a lone sequence already met (not retried)."""
        for index, seq in enumerate(taken):
            error = failed if len(taken) == 1 else None
            if error is None:
                try:
                    self._hook("prefill", 1)
                    group, firsts = runner.prefill([seq])
                except Exception as e:
                    error = e
            if error is not None:
                if not _is_oom(error) or not self._running:
                    seq.stream.finish(FinishReason.ERROR, error)  # fails alone: it cannot run at all
                    logger.warning("%s: sequence %d failed in prefill: %s", self.name, seq.order, error)
                    continue
                self._requeue(taken[index:])
                self._note_oom(len(self._running), error)
                return
            self._join(runner, [seq], group, firsts)

    def _join(self, runner: _Runner, seqs: list[_Sequence], group: PaddedBatch, firsts: list[int | None]) -> None:
        """Record each new sequence's first token and merge the ones still going into the running batch."""
        going = [
            i
            for i, (seq, first) in enumerate(zip(seqs, firsts, strict=True))
            if first is None or self._record_token(seq, first, runner.window)
        ]
        if not going:
            return
        joined = [seqs[i] for i in going]
        try:
            group.keep(going)
            runner.batch.join([group])  # allocates the merged cache: it can run out of memory too
        except Exception as e:
            if not _is_oom(e) or (len(joined) == 1 and not self._running):
                for seq in joined:
                    seq.stream.finish(FinishReason.ERROR, e)  # a lone sequence that does not fit cannot run
                if not _is_oom(e):
                    raise
                return
            for seq in joined:
                seq.cached_tokens = 0  # prefilled again from prompt + codes when re-admitted
            self._requeue(joined)
            self._note_oom(max(1, len(self._running)), e)
            return
        with self._cond:
            self._running.extend(joined)

    def _decode(self, runner: _Runner) -> None:
        rows = len(self._running)
        snapshot = runner.batch.snapshot()
        try:
            self._hook("decode", rows)
            indices = runner.decode_step(self._running)
        except Exception as e:
            if not _is_oom(e):
                raise
            runner.batch.restore(snapshot)
            self._shrink_after_oom(runner, e)
            return
        with self._cond:
            self._steps += 1
        pairs = zip(self._running, indices, strict=True)
        done = {i for i, (seq, index) in enumerate(pairs) if not self._record(seq, index, runner.window)}
        if done:
            self._drop_rows(runner, done)

    def _record(self, seq: _Sequence, index: int, window: SpeechWindow) -> bool:
        seq.cached_tokens += 1  # its input token of this step is in the cache now
        return self._record_token(seq, index, window)

    def _record_token(self, seq: _Sequence, index: int, window: SpeechWindow) -> bool:
        """Take a sampled window index; False when the sequence finished with it."""
        with self._cond:
            self._tokens += 1
        if index == window.end_index:
            seq.stream.finish(FinishReason.END_TOKEN)
            return False
        seq.generated_ids.append(window.start + index)
        seq.stream.push([index - window.first_code_index])
        if len(seq.generated_ids) >= seq.max_new_tokens:
            seq.stream.finish(FinishReason.LENGTH)
            return False
        return True

    def _hook(self, phase: str, rows: int) -> None:
        if self._step_hook is not None:
            self._step_hook(phase, rows)

    # --- out of memory ---------------------------------------------------------------------------------------

    def _note_oom(self, rows: int, error: BaseException) -> None:
        with self._cond:
            self._oom_limit = max(1, rows)
            self._oom_shrinks += 1
        logger.warning("%s: out of memory (%s); batch limited to %d sequences until idle", self.name, error, rows)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _requeue(self, seqs: list[_Sequence]) -> None:
        """Put sequences back at the head of the queue, oldest first, with their state intact."""
        with self._cond:
            for seq in sorted(seqs, key=lambda s: s.order, reverse=True):
                self._waiting.appendleft(seq)

    def _shrink_after_oom(self, runner: _Runner, error: BaseException) -> None:
        rows = len(self._running)
        if rows == 1:
            seq = self._running[0]
            seq.stream.finish(FinishReason.ERROR, error)
            self._drop_rows(runner, {0})
            logger.warning("%s: sequence %d ran out of memory alone: %s", self.name, seq.order, error)
            return
        keep_rows = max(1, rows // 2)
        newest_first = sorted(range(rows), key=lambda i: self._running[i].order, reverse=True)
        evicted = set(newest_first[: rows - keep_rows])
        evicted_seqs = [self._running[i] for i in evicted]
        for seq in evicted_seqs:
            seq.cached_tokens = 0  # its cache rows are dropped; re-admission prefills prompt + codes again
        self._drop_rows(runner, evicted)
        self._requeue(evicted_seqs)
        self._note_oom(keep_rows, error)

    # --- endings ---------------------------------------------------------------------------------------------

    def _end_running(self, runner: _Runner, reason: FinishReason, error: BaseException | None) -> None:
        for seq in self._running:
            seq.stream.finish(reason, error)
        with self._cond:
            self._running = []
        runner.batch.clear()

    def _fail_all(self, error: BaseException) -> None:
        with self._cond:
            waiting, self._waiting = list(self._waiting), deque()
        for seq in waiting:
            seq.stream.finish(FinishReason.ERROR, error)

    def _end_all(self, reason: FinishReason, error: BaseException | None) -> None:
        with self._cond:
            pending = list(self._waiting) + self._running
            self._waiting, self._running = deque(), []
        for seq in pending:
            seq.stream.finish(reason, error)


class _Runner:
    """The model side of one lease: forward passes, the speech window's output rows, the padded batch."""

    def __init__(self, model: Any, token_ids: SpeechTokenIds) -> None:
        self.model = model
        self.decoder = model.get_decoder()
        head = model.get_output_embeddings()
        self.window = SpeechWindow.for_ids(token_ids, int(head.weight.shape[0]))
        # A view, not a copy: the window's rows of the output layer.
        self.head_weight = head.weight[self.window.start : self.window.stop]
        bias = getattr(head, "bias", None)
        self.head_bias = bias[self.window.start : self.window.stop] if bias is not None else None
        self.device = head.weight.device
        self.mask = self.window.mask.to(self.device)
        self.batch = PaddedBatch(model.config)
        config = model.config.get_text_config(decoder=True)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        self.kv_bytes_per_token = 2 * config.num_hidden_layers * kv_heads * head_dim * head.weight.element_size()

    def fits(self, group: list[_Sequence], budget: int | None) -> bool:
        """Whether the padded cache of `group` (rows x (longest prompt + cap + the spare columns a growing
        layer reserves)) stays within `budget` bytes. An estimate: a join or leave briefly holds the old and the
        new cache together."""
        if budget is None:
            return True
        longest = max(len(s.prompt_ids) + s.max_new_tokens for s in group) + SPARE_COLUMNS
        return len(group) * longest * self.kv_bytes_per_token <= budget

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = torch.nn.functional.linear(hidden, self.head_weight, self.head_bias)
        return logits.float()

    def prefill(self, seqs: list[_Sequence]) -> tuple[PaddedBatch, list[int | None]]:
        """Prefill sequences together (left-padded to the longest; one sequence alone has no padding).

        A new sequence gets its sampler and its first token (a window index); a requeued one (codes already
        sampled) is prefilled through all but its last code, which is its next input, and gets None.
        """
        from transformers import DynamicCache

        rows = [s.prompt_ids + s.generated_ids[:-1] for s in seqs]
        width = max(len(r) for r in rows)
        # Padding columns take the row's first token (any id would do: they are masked out).
        input_ids = torch.tensor([[r[0]] * (width - len(r)) + r for r in rows], dtype=torch.long, device=self.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long, device=self.device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        out = self.decoder(
            input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True
        )
        firsts: list[int | None] = [None] * len(seqs)
        fresh = [i for i, s in enumerate(seqs) if not s.generated_ids]
        for i, seq in enumerate(seqs):
            seq.cached_tokens = len(rows[i])
            if i in fresh and seq.sampler is None:
                seq.sampler = make_row_state(seq.stream.params, seq.seed, seq.prompt_ids, self.window, self.device)
        if fresh:
            hidden = out.last_hidden_state[torch.tensor(fresh, device=self.device), -1]
            sampled = sample_next(self._logits(hidden), [seqs[i].sampler for i in fresh], self.mask)  # type: ignore[misc]
            for i, index in zip(fresh, sampled, strict=True):
                firsts[i] = index
        return PaddedBatch.of(self.model.config, cache, mask), firsts

    def decode_step(self, running: list[_Sequence]) -> list[int]:
        """One token for every running sequence (row order = `running`); returns sampled window indices."""
        input_ids = torch.tensor([[s.next_input] for s in running], dtype=torch.long, device=self.device)
        positions = torch.tensor([[s.cached_tokens] for s in running], dtype=torch.long, device=self.device)
        attention_mask = self.batch.extend_mask()
        out = self.decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            cache=self.batch.cache,
            use_cache=True,
        )
        logits = self._logits(out.last_hidden_state[:, -1])
        return sample_next(logits, [s.sampler for s in running], self.mask)  # type: ignore[misc]
