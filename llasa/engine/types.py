"""What crosses the engine's seam: sampling parameters, the code stream a submission returns, the backend protocol.

Every backend (the embedded transformers engine today, a vLLM client later) implements `GenerationBackend`:

    stream = backend.submit(prompt_ids, SamplingParams(seed=7, max_new_tokens=500))
    for code in stream:          # blocks until the next code; ends at end-of-stream
        ...
    stream.finish_reason         # FinishReason.END_TOKEN / LENGTH / CANCELLED / ERROR
    stream.cancel()              # from any thread; the sequence leaves the batch at the next step
    backend.shutdown()

No torch here: a face or the service can import this module cheaply.
"""

from __future__ import annotations

import enum
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from llasa.errors import InvalidInput

#: Temperatures below this sample greedily (argmax), as vLLM does (its `_SAMPLING_EPS`): logits divided by a smaller
#: one overflow float32 to inf, and a softmax over inf is nan.
GREEDY_BELOW_TEMPERATURE = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence is sampled. Exactly these values are used: never a checkpoint's `generation_config`.

    The speech-only mask and the stop at `<|SPEECH_GENERATION_END|>` always apply; they are not parameters.
    """

    temperature: float = 0.8
    """Softmax temperature; 0 (or anything below GREEDY_BELOW_TEMPERATURE) means greedy (argmax)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p (1.0 = off)."""
    top_k: int = 50
    """Keep the top_k most likely tokens (0 = off; 1 = greedy)."""
    repetition_penalty: float = 1.0
    """HF's (CTRL) penalty over every token of the prompt and the output so far (1.0 = off)."""
    seed: int | None = None
    """Seed of this sequence's own RNG: the same seed gives the same codes for a sequence run alone. None = random."""
    max_new_tokens: int = 1500
    """Most tokens sampled, the end token included (HF's meaning); also bounded by the model's context."""

    def validate(self) -> None:
        """Raise InvalidInput naming the first parameter out of range."""
        checks = [
            ("temperature", self.temperature >= 0, "must be 0 (greedy) or more"),
            ("top_p", 0 < self.top_p <= 1, "must be in (0, 1]"),
            ("top_k", self.top_k >= 0, "must be 0 (off) or more"),
            ("repetition_penalty", self.repetition_penalty > 0, "must be more than 0 (1.0 = off)"),
            ("max_new_tokens", self.max_new_tokens >= 1, "must be at least 1"),
            ("seed", self.seed is None or self.seed >= 0, "must be 0 or more"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise InvalidInput(f"{name} is {getattr(self, name)!r}; it {rule}", field=name)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW_TEMPERATURE or self.top_k == 1


class FinishReason(enum.StrEnum):
    """Why a code stream ended."""

    END_TOKEN = "end_token"  # noqa: S105 (a finish reason, not a password)
    """The model sampled <|SPEECH_GENERATION_END|>: the speech is complete."""
    LENGTH = "length"
    """max_new_tokens (or the context) ran out first: the speech was cut off."""
    CANCELLED = "cancelled"
    """cancel() was called (or the engine shut down) before the end."""
    ERROR = "error"
    """The backend failed; `CodeStream.error` holds the exception."""


class CodeStream:
    """The speech codes (0..65535) of one submitted sequence, as they are sampled.

    Thread-safe: the backend pushes from its thread, any number of threads may read. Iterating blocks, without a
    timeout, until the next code or the end of the stream; after the end, `finish_reason` says why (and `error`
    holds the exception for ERROR). `codes` is everything pushed so far, whoever read it.
    """

    def __init__(self, request_id: int, params: SamplingParams, prompt_len: int) -> None:
        self.request_id = request_id
        self.params = params
        self.prompt_len = prompt_len
        self._cond = threading.Condition()
        self._codes: list[int] = []
        self._finish_reason: FinishReason | None = None
        self._error: BaseException | None = None
        self._cancel_requested = False
        self._on_cancel: list[Callable[[], None]] = []
        self._on_update: list[Callable[[], None]] = []

    # --- consumer side ----------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[int]:
        """Every code from the first, blocking for the next; ends at end-of-stream (each iterator starts at 0)."""
        index = 0
        while True:
            batch = self.read_from(index)
            if not batch:
                return
            index += len(batch)
            yield from batch

    def read_from(self, index: int, timeout_s: float | None = None) -> list[int]:
        """Codes from position `index` on: blocks until there is at least one or the stream ended ([] then).

        With `timeout_s`, returns [] after that long without news too (check `finished` to tell the two apart):
        a reader that must also watch something else (a cancel event) polls with it."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while len(self._codes) <= index and self._finish_reason is None:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._cond.wait(remaining)
            return self._codes[index:]

    def wait(self) -> FinishReason:
        """Block until the stream ends; returns why."""
        with self._cond:
            while self._finish_reason is None:
                self._cond.wait()
            return self._finish_reason

    @property
    def codes(self) -> list[int]:
        with self._cond:
            return list(self._codes)

    @property
    def finished(self) -> bool:
        with self._cond:
            return self._finish_reason is not None

    @property
    def finish_reason(self) -> FinishReason | None:
        with self._cond:
            return self._finish_reason

    @property
    def error(self) -> BaseException | None:
        with self._cond:
            return self._error

    @property
    def cancel_requested(self) -> bool:
        with self._cond:
            return self._cancel_requested

    def cancel(self) -> None:
        """Ask the backend to drop this sequence; it ends with CANCELLED at the backend's next step (no-op once
        the stream has ended). Safe from any thread, any number of times."""
        with self._cond:
            if self._cancel_requested or self._finish_reason is not None:
                return
            self._cancel_requested = True
            callbacks = list(self._on_cancel)
        for callback in callbacks:
            callback()

    # --- producer side (backends) -----------------------------------------------------------------------------

    def add_cancel_callback(self, callback: Callable[[], None]) -> None:
        """Backends: `callback()` runs (in the cancelling thread) when cancel() is first called; it must be quick."""
        with self._cond:
            self._on_cancel.append(callback)

    def add_update_callback(self, callback: Callable[[], None]) -> None:
        """Readers watching many streams: `callback()` runs (in the backend's thread) after every push and at the
        end; it must be quick (set an event). Runs at once if the stream has already ended."""
        with self._cond:
            self._on_update.append(callback)
            ended = self._finish_reason is not None
        if ended:
            callback()

    def _updated(self) -> None:
        with self._cond:
            callbacks = list(self._on_update)
        for callback in callbacks:
            callback()

    def push(self, codes: Sequence[int]) -> None:
        with self._cond:
            if self._finish_reason is not None:
                raise RuntimeError(f"stream {self.request_id} already ended; cannot push codes")
            self._codes.extend(codes)
            self._cond.notify_all()
        self._updated()

    def finish(self, reason: FinishReason, error: BaseException | None = None) -> None:
        """End the stream (the first call wins; later ones are ignored)."""
        with self._cond:
            if self._finish_reason is not None:
                return
            self._finish_reason = reason
            self._error = error
            self._cond.notify_all()
        self._updated()


@dataclass(frozen=True)
class EngineStats:
    """A backend's batch now and its totals (the service shows them in the GPU status and /metrics)."""

    running: int
    """Sequences being generated now."""
    waiting: int
    """Sequences queued for a place in the batch."""
    steps: int
    """Decode steps run (each advances every running sequence by one token); 0 where the backend cannot tell."""
    tokens: int
    """Tokens sampled, first tokens after prefill included."""
    batch_limit: int
    """max_batch_sequences, or less after an out-of-memory shrink (until the engine goes idle); 0 = the server's."""
    oom_shrinks: int
    ready: bool = True
    """Can take sequences now (a vLLM backend: at least one replica is believed healthy)."""
    replicas: tuple[dict, ...] = ()
    """A vLLM backend's replicas (url, healthy, outstanding, completed, failures, last_error)."""


def prepare_submission(
    prompt_ids: Sequence[int], params: SamplingParams, context_tokens: int
) -> tuple[list[int], SamplingParams, int]:
    """What every backend checks before queueing a sequence: valid parameters, a prompt that leaves room in the
    context. Returns the prompt as ints, the parameters with a seed (a random one when none was given, so the stream
    can report it) and the room left for new tokens; raises InvalidInput otherwise."""
    params.validate()
    ids = [int(t) for t in prompt_ids]
    if not ids:
        raise InvalidInput("the prompt is empty")
    room = context_tokens - len(ids)
    if room < 1:
        raise InvalidInput(
            f"the prompt takes {len(ids)} tokens, the whole {context_tokens}-token context; "
            "use a shorter reference or text"
        )
    seed = params.seed if params.seed is not None else random.SystemRandom().randrange(2**63)
    return ids, replace(params, seed=seed), room


class GenerationBackend(Protocol):
    """The seam between the service and whatever runs the Llasa LM (embedded transformers, a vLLM server)."""

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams) -> CodeStream:
        """Queue one sequence; its codes arrive on the returned stream. Raises InvalidInput for a prompt that
        does not fit the context or parameters out of range, and Busy when the backend is shut down."""
        ...

    def shutdown(self, *, wait: bool = True) -> None:
        """Stop: every unfinished stream ends with CANCELLED; with `wait`, return after the worker has exited."""
        ...

    def stats(self) -> EngineStats:
        """The batch now and the totals so far."""
        ...
