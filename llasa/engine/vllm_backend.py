"""The Llasa LM on one or more vLLM servers: the engine's second backend (`GenerationBackend`), an HTTP client.

The service builds the prompt ids exactly as for the embedded engine and sends them to vLLM's OpenAI-compatible
`/v1/completions` as a token-id prompt, streaming, with the sequence's seed and sampling parameters, stopping at
`<|SPEECH_GENERATION_END|>` and reading the sampled ids back (`return_token_ids`). The speech-only restriction is
the server's logits processor (`vllm_plugins/llasa_logits.py`), switched on per request by three numbers in
`vllm_xargs`, so a request stays well under a kilobyte instead of carrying 65,537 allowed ids.

Replicas: `urls` may name several servers. A sequence goes to the healthy replica with the fewest sequences in
flight; a replica that refuses a connection or answers with a server error is skipped for `retry_after_s`, then
tried again. A failure before the first code moves the sequence to the next replica (nothing was lost); a failure
after it ends the stream with ERROR and a `ModelUnavailable` naming the replica, never silently short.

Each sequence streams on a thread of its own, started by one dispatcher thread: `submit()` returns without waiting
for a thread to start (on a busy machine that took seconds per thread), so the submissions of a request's later
chunks never hold back the first chunk's audio.

Cancelling a stream closes its HTTP response; vLLM aborts a request whose client went away.

A server the GPU manager manages (`lease`) is leased per sequence, from `submit()` until after its stream has
ended: a sequence the caller holds unfinished always holds a lease, also before its thread has run (which can take
seconds on a busy machine), so the manager never puts the server to sleep under it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import requests

from llasa.engine.types import CodeStream, EngineStats, FinishReason, SamplingParams, prepare_submission
from llasa.errors import Busy, InvalidInput, ModelUnavailable, TTSError
from llasa.prompt import NUM_SPEECH_CODES, SpeechTokenIds

logger = logging.getLogger(__name__)

DEFAULT_CONTEXT_TOKENS = 2048
#: vLLM's finish reasons mapped onto the engine's.
_FINISH_REASONS = {"stop": FinishReason.END_TOKEN, "length": FinishReason.LENGTH, "abort": FinishReason.CANCELLED}


@dataclass
class Replica:
    """One vLLM server and what this client knows of it."""

    url: str
    outstanding: int = 0
    """Sequences this client has in flight there."""
    failed_until: float = 0.0
    """Monotonic time before which the replica is skipped (0 = healthy)."""
    last_error: str = ""
    model: str | None = None
    """The served model name (from /v1/models, asked once)."""
    completed: int = 0
    failures: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def status(self, now: float) -> dict[str, Any]:
        return {
            "url": self.url,
            "healthy": self.failed_until <= now,
            "outstanding": self.outstanding,
            "completed": self.completed,
            "failures": self.failures,
            "last_error": self.last_error or None,
        }


@dataclass
class _Pending:
    """A submitted sequence on its way to its thread: its stream, prompt, token limit and lease (held until the
    stream has ended)."""

    stream: CodeStream
    prompt_ids: list[int]
    max_tokens: int
    lease: contextlib.ExitStack


class _ReplicaFailed(Exception):
    """A replica could not take or finish a request (connection refused, server error, broken stream)."""


class VLLMBackend:
    """Streams Llasa speech codes from vLLM servers (`GenerationBackend`; see the module docstring)."""

    def __init__(
        self,
        urls: Sequence[str],
        token_ids: SpeechTokenIds,
        *,
        context_tokens: int = DEFAULT_CONTEXT_TOKENS,
        connect_timeout_s: float = 3.0,
        read_timeout_s: float = 60.0,
        retry_after_s: float = 5.0,
        session_factory: Callable[[], requests.Session] = requests.Session,
        clock: Callable[[], float] = time.monotonic,
        name: str = "vllm",
        lease: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    ) -> None:
        """`lease`, for the one server the GPU manager manages: taken by `submit()` (which wakes a sleeping server,
        so one that cannot wake refuses the submission) and held until the sequence's stream has ended."""
        cleaned = [url.strip().rstrip("/") for url in urls if url.strip()]
        if not cleaned:
            raise ValueError("VLLM_URL names no server: give one URL or several, comma-separated")
        self.name = name
        self.replicas = [Replica(url) for url in cleaned]
        self.context_tokens = context_tokens
        self._token_ids = token_ids
        self._timeouts = (connect_timeout_s, read_timeout_s)
        self._retry_after_s = retry_after_s
        self._session_factory = session_factory
        self._clock = clock
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._threads: set[threading.Thread] = set()
        self._streams: set[CodeStream] = set()
        #: Sequences whose thread the dispatcher has yet to start; None (put by shutdown) stops it.
        self._pending: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._dispatcher: threading.Thread | None = None
        self._shutdown = False
        self._tokens = 0
        self._lease = lease

    # --- GenerationBackend ---------------------------------------------------------------------------------------

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams) -> CodeStream:
        ids, params, room = prepare_submission(prompt_ids, params, self.context_tokens)
        with self._lock:
            self._refuse_new_sequences()
        lease = self._take_lease()  # outside the lock: it may wait for the server to wake up
        stream = CodeStream(next(self._ids), params, len(ids))
        try:
            with self._lock:
                self._refuse_new_sequences()  # shut down while the lease was being taken
                self._ensure_dispatcher()
                self._streams.add(stream)
                # Queued under the lock: always ahead of the stop mark that shutdown() queues.
                self._pending.put(_Pending(stream, ids, min(params.max_new_tokens, room), lease))
        except BaseException:
            lease.close()
            raise
        return stream

    def shutdown(self, *, wait: bool = True) -> None:
        with self._lock:
            self._shutdown = True
            streams = list(self._streams)
            dispatcher = self._dispatcher
            self._pending.put(None)
        for stream in streams:
            stream.cancel()
        if not wait:
            return
        if dispatcher is not None and dispatcher is not threading.current_thread():
            dispatcher.join(timeout=self._timeouts[0] + 5)
        with self._lock:  # complete now: the dispatcher has started every queued sequence
            threads = list(self._threads)
        for worker in threads:
            if worker is not threading.current_thread():
                worker.join(timeout=self._timeouts[0] + 5)

    # --- replicas ------------------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Replicas, their health and load, for the GPU status and /ready."""
        now = self._clock()
        with self._lock:
            replicas = [replica.status(now) for replica in self.replicas]
        return {"engine": self.name, "ready": any(r["healthy"] for r in replicas), "replicas": replicas}

    def stats(self) -> EngineStats:
        now = self._clock()
        with self._lock:
            replicas = tuple(replica.status(now) for replica in self.replicas)
            tokens = self._tokens
        return EngineStats(
            running=sum(r["outstanding"] for r in replicas),
            waiting=0,  # the servers queue; their own /metrics say how many wait
            steps=0,
            tokens=tokens,
            batch_limit=0,
            oom_shrinks=0,
            ready=any(r["healthy"] for r in replicas),
            replicas=replicas,
        )

    def check_health(self) -> bool:
        """Ask every replica's /health now (marking each healthy or not); True if any answers."""
        any_up = False
        for replica in self.replicas:
            try:
                with self._session_factory() as session:
                    response = session.get(f"{replica.url}/health", timeout=self._timeouts[0])
                up = response.status_code == 200
            except requests.RequestException as e:
                up = False
                replica.last_error = f"{type(e).__name__}: {e}"
            with self._lock:
                replica.failed_until = 0.0 if up else self._clock() + self._retry_after_s
            any_up = any_up or up
        return any_up

    def _refuse_new_sequences(self) -> None:
        """Raise if no sequence may start now: shut down, or every replica known to be down. Call under the lock."""
        if self._shutdown:
            raise Busy(f"{self.name} is shut down; no new sequences are accepted")
        if not self._healthy_replicas():
            raise self._all_down_error()

    def _take_lease(self) -> contextlib.ExitStack:
        """The sequence's lease on the managed server (an empty stack when none is managed); closing it ends it.
        A server that cannot be woken up (or has no room to) refuses the submission with the manager's
        ModelUnavailable, which says why."""
        stack = contextlib.ExitStack()
        if self._lease is not None:
            stack.enter_context(self._lease())
        return stack

    def _healthy_replicas(self) -> list[Replica]:
        now = self._clock()
        return [replica for replica in self.replicas if replica.failed_until <= now]

    def _all_down_error(self) -> ModelUnavailable:
        details = "; ".join(f"{r.url}: {r.last_error or 'unreachable'}" for r in self.replicas)
        return ModelUnavailable(
            f"the Llasa engine (vLLM at {', '.join(r.url for r in self.replicas)}) is not answering ({details}); "
            "it may be starting or restarting: try again shortly, or check VLLM_URL and the vLLM server's log"
        )

    def _pick(self, tried: set[str]) -> Replica | None:
        """The healthy, untried replica with the fewest sequences in flight (ties: the first listed)."""
        with self._lock:
            candidates = [r for r in self._healthy_replicas() if r.url not in tried]
            if not candidates:
                return None
            replica = min(candidates, key=lambda r: r.outstanding)
            replica.outstanding += 1
            return replica

    def _mark_failed(self, replica: Replica, error: BaseException) -> None:
        with self._lock:
            replica.failed_until = self._clock() + self._retry_after_s
            replica.last_error = f"{type(error).__name__}: {error}"
            replica.failures += 1
        logger.warning(
            "%s: replica %s failed (%s); skipping it for %.0f s", self.name, replica.url, error, self._retry_after_s
        )

    # --- one sequence --------------------------------------------------------------------------------------------

    def _ensure_dispatcher(self) -> None:
        """Start the dispatcher with the first sequence (under the lock)."""
        if self._dispatcher is None:
            dispatcher = threading.Thread(target=self._dispatch, name=f"{self.name}-dispatch", daemon=True)
            dispatcher.start()
            self._dispatcher = dispatcher

    def _dispatch(self) -> None:
        """Start each queued sequence's thread, in order, until shutdown's stop mark."""
        while (pending := self._pending.get()) is not None:
            stream = pending.stream
            worker = threading.Thread(
                target=self._run, args=(pending,), daemon=True, name=f"{self.name}-seq-{stream.request_id}"
            )
            with self._lock:
                self._threads.add(worker)
            try:
                worker.start()
            except RuntimeError as e:  # no thread to be had: this sequence fails, the next may get one
                with self._lock:
                    self._threads.discard(worker)
                    self._streams.discard(stream)
                stream.finish(FinishReason.ERROR, e)
                pending.lease.close()

    def _run(self, pending: _Pending) -> None:
        try:
            with pending.lease:  # ended only once the stream has ended, whatever ended it
                self._generate(pending.stream, pending.prompt_ids, pending.max_tokens)
        finally:
            with self._lock:
                self._streams.discard(pending.stream)
                self._threads.discard(threading.current_thread())

    def _generate(self, stream: CodeStream, prompt_ids: list[int], max_tokens: int) -> None:
        """Run the sequence on a replica (the next one while nothing was delivered) and end its stream."""
        tried: set[str] = set()
        try:
            while not stream.cancel_requested:
                replica = self._pick(tried)
                if replica is None:
                    stream.finish(FinishReason.ERROR, self._all_down_error())
                    return
                tried.add(replica.url)
                try:
                    reason = self._stream_from(replica, stream, prompt_ids, max_tokens)
                except _ReplicaFailed as e:
                    self._mark_failed(replica, e.__cause__ or e)
                    if stream.codes:  # codes were delivered: retrying elsewhere would splice two takes
                        stream.finish(
                            FinishReason.ERROR,
                            ModelUnavailable(
                                f"the Llasa engine's vLLM server {replica.url} failed in the middle of a sequence "
                                f"({e}); the audio is incomplete, try again"
                            ),
                        )
                        return
                    continue
                finally:
                    with self._lock:
                        replica.outstanding -= 1
                with self._lock:
                    replica.completed += 1
                stream.finish(reason)
                return
            stream.finish(FinishReason.CANCELLED)
        except TTSError as e:  # this request's own fault (a refused request): the reader gets it
            stream.finish(FinishReason.ERROR, e)
        except BaseException as e:  # never leave a reader blocked forever
            stream.finish(FinishReason.ERROR, e)
            raise

    def _model_name(self, replica: Replica, session: requests.Session) -> str:
        if replica.model is None:
            try:
                response = session.get(f"{replica.url}/v1/models", timeout=self._timeouts)
                response.raise_for_status()
                replica.model = str(response.json()["data"][0]["id"])
            except (requests.RequestException, KeyError, IndexError, ValueError) as e:
                raise _ReplicaFailed(f"GET /v1/models failed: {e}") from e
        return replica.model

    def _request_body(self, model: str, prompt_ids: list[int], params: SamplingParams, max_tokens: int) -> dict:
        ids = self._token_ids
        return {
            "model": model,
            "prompt": prompt_ids,
            "max_tokens": max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": params.top_k if params.top_k > 0 else -1,  # vLLM's "off" is -1
            "repetition_penalty": params.repetition_penalty,
            "seed": params.seed,
            "stream": True,
            "return_token_ids": True,
            "stop_token_ids": [ids.speech_end_id],
            "skip_special_tokens": False,
            "vllm_xargs": {
                "llasa_first_speech_id": ids.first_speech_id,
                "llasa_num_speech": NUM_SPEECH_CODES,
                "llasa_end_id": ids.speech_end_id,
            },
        }

    def _stream_from(
        self, replica: Replica, stream: CodeStream, prompt_ids: list[int], max_tokens: int
    ) -> FinishReason:
        """Run one sequence on `replica`, pushing codes as they arrive; the reason it ended."""
        with self._session_factory() as session:
            model = self._model_name(replica, session)
            body = self._request_body(model, prompt_ids, stream.params, max_tokens)
            try:
                response = session.post(f"{replica.url}/v1/completions", json=body, stream=True, timeout=self._timeouts)
            except requests.RequestException as e:
                raise _ReplicaFailed(f"POST /v1/completions failed: {e}") from e
            with response:
                if response.status_code >= 500:
                    raise _ReplicaFailed(f"HTTP {response.status_code}: {response.text[:300]}")
                if response.status_code != 200:
                    # A 4xx is this request's fault (vLLM validated it), not the replica's.
                    raise InvalidInput(f"vLLM refused the request: HTTP {response.status_code}: {response.text[:300]}")
                stream.add_cancel_callback(response.close)
                if stream.cancel_requested:
                    return FinishReason.CANCELLED
                return self._read_events(response, stream)

    def _read_events(self, response: requests.Response, stream: CodeStream) -> FinishReason:
        ids = self._token_ids
        reason: FinishReason | None = None
        try:
            for data in _sse_data(response.iter_lines()):
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    raise _ReplicaFailed(f"error event: {event['error']}")
                for choice in event.get("choices", []):
                    codes = [
                        t - ids.first_speech_id
                        for t in choice.get("token_ids") or ()
                        if t != ids.speech_end_id and ids.is_speech(t)
                    ]
                    if codes:
                        stream.push(codes)
                        with self._lock:
                            self._tokens += len(codes)
                    if choice.get("finish_reason"):
                        reason = _FINISH_REASONS.get(choice["finish_reason"], FinishReason.ERROR)
        except (requests.RequestException, ValueError, AttributeError) as e:
            if stream.cancel_requested:
                return FinishReason.CANCELLED
            raise _ReplicaFailed(f"the stream broke: {type(e).__name__}: {e}") from e
        if stream.cancel_requested:
            return FinishReason.CANCELLED
        if reason is None:
            raise _ReplicaFailed("the stream ended without a finish reason")
        return reason


def _sse_data(lines: Iterator[bytes]) -> Iterator[str]:
    """The `data:` payloads of a server-sent event stream."""
    for raw in lines:
        if raw and raw.startswith(b"data:"):
            yield raw[5:].strip().decode()
