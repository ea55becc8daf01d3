"""The vLLM backend against a real vLLM server (vLLM's CPU build) on the tiny Llasa: codes, seeds, the stop token,
the speech-only logits processor, small requests, cancellation, replicas, and a server killed and restarted."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from vllm_server import VLLM_PYTHON, VLLMServer, free_port, serving

from llasa.engine.types import CodeStream, FinishReason, SamplingParams
from llasa.engine.vllm_backend import VLLMBackend
from llasa.errors import InvalidInput, ModelUnavailable
from llasa.prompt import NUM_SPEECH_CODES, SpeechTokenIds, build_prompt_ids, lookup_token_ids

pytestmark = pytest.mark.skipif(
    not VLLM_PYTHON, reason="needs vLLM's CPU build: ./test_all.sh installs it and sets LLASA_VLLM_PYTHON"
)

DEADLINE_S = 60.0


@pytest.fixture(scope="module")
def tokenizer(tiny_models: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_models / "llasa")


@pytest.fixture(scope="module")
def token_ids(tokenizer: Any) -> SpeechTokenIds:
    return lookup_token_ids(tokenizer)


@pytest.fixture(scope="module")
def prompt_ids(tokenizer: Any) -> list[int]:
    return build_prompt_ids(tokenizer, "Hello from vLLM.", "A short reference.", [11, 22, 33, 44])


@pytest.fixture(scope="module")
def server(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    with serving(tiny_models / "llasa", log) as server:
        yield server


@pytest.fixture
def backend(server: VLLMServer, token_ids: SpeechTokenIds) -> Iterator[VLLMBackend]:
    backend = VLLMBackend([server.url], token_ids, retry_after_s=0.5)
    yield backend
    backend.shutdown()


def _codes(stream: Any) -> list[int]:
    return list(stream)


def test_codes_stream_from_the_server(backend: VLLMBackend, prompt_ids: list[int]) -> None:
    stream = backend.submit(prompt_ids, SamplingParams(seed=3, max_new_tokens=20))
    codes = _codes(stream)
    # exactly 20: the logits processor let only speech tokens through (a text token would not parse as a code)
    assert len(codes) == 20
    assert all(0 <= c < NUM_SPEECH_CODES for c in codes)
    assert stream.finish_reason is FinishReason.LENGTH


def test_a_seed_reproduces_and_another_differs(backend: VLLMBackend, prompt_ids: list[int]) -> None:
    first = _codes(backend.submit(prompt_ids, SamplingParams(seed=42, max_new_tokens=16)))
    again = _codes(backend.submit(prompt_ids, SamplingParams(seed=42, max_new_tokens=16)))
    other = _codes(backend.submit(prompt_ids, SamplingParams(seed=43, max_new_tokens=16)))
    assert first == again
    assert first != other


def test_top_k_one_is_greedy(backend: VLLMBackend, prompt_ids: list[int]) -> None:
    one = _codes(backend.submit(prompt_ids, SamplingParams(seed=1, top_k=1, max_new_tokens=8)))
    two = _codes(backend.submit(prompt_ids, SamplingParams(seed=2, top_k=1, max_new_tokens=8)))
    assert one == two


def test_generation_stops_at_the_end_token(
    server: VLLMServer, token_ids: SpeechTokenIds, prompt_ids: list[int]
) -> None:
    """A random model never samples the real end token, so this names a code it does sample as the end token:
    vLLM must stop there, and the end token itself is not a code."""
    plain = VLLMBackend([server.url], token_ids)
    codes = _codes(plain.submit(prompt_ids, SamplingParams(seed=5, max_new_tokens=12)))
    stop_at = next(i for i in range(3, len(codes)) if codes[i] not in codes[:i])
    end_id = token_ids.first_speech_id + codes[stop_at]
    stopping = VLLMBackend(
        [server.url],
        SpeechTokenIds(token_ids.speech_start_id, end_id, token_ids.first_speech_id),
    )
    stream = stopping.submit(prompt_ids, SamplingParams(seed=5, max_new_tokens=12))
    assert _codes(stream) == codes[:stop_at]
    assert stream.finish_reason is FinishReason.END_TOKEN


def test_requests_stay_small(backend: VLLMBackend, prompt_ids: list[int]) -> None:
    """The speech-only restriction is three numbers, not 65,537 allowed ids (~450 KB)."""
    body = backend._request_body("llasa", prompt_ids, SamplingParams(seed=1), 100)
    overhead = len(json.dumps({**body, "prompt": []}))
    assert overhead < 1024
    assert "allowed_token_ids" not in body


def test_the_processor_only_restricts_requests_that_ask(server: VLLMServer, prompt_ids: list[int]) -> None:
    """A plain completion on the same server samples text tokens (the tiny model is random): the restriction is
    the processor's doing, per request."""
    model = requests.get(f"{server.url}/v1/models", timeout=10).json()["data"][0]["id"]
    body = {"model": model, "prompt": prompt_ids, "max_tokens": 30, "seed": 1, "return_token_ids": True}
    plain = requests.post(f"{server.url}/v1/completions", json=body, timeout=DEADLINE_S).json()
    assert any(t < 128_264 for t in plain["choices"][0]["token_ids"])
    bad = requests.post(
        f"{server.url}/v1/completions",
        json={**body, "vllm_xargs": {"llasa_first_speech_id": 128_264}},
        timeout=DEADLINE_S,
    )
    assert bad.status_code == 400
    assert "llasa_num_speech" in bad.text


def test_concurrent_sequences_each_get_their_own_codes(backend: VLLMBackend, prompt_ids: list[int]) -> None:
    results: dict[int, list[int]] = {}

    def run(seed: int) -> None:
        results[seed] = _codes(backend.submit(prompt_ids, SamplingParams(seed=seed, max_new_tokens=24)))

    threads = [threading.Thread(target=run, args=(seed,)) for seed in range(100, 108)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE_S)
    assert sorted(results) == list(range(100, 108))
    assert all(len(codes) == 24 for codes in results.values())
    assert len({tuple(codes) for codes in results.values()}) == 8
    assert backend.status()["replicas"][0]["outstanding"] == 0


def test_cancel_mid_stream_aborts_the_request_on_the_server(
    backend: VLLMBackend, server: VLLMServer, prompt_ids: list[int]
) -> None:
    stream = backend.submit(prompt_ids, SamplingParams(seed=9, max_new_tokens=1500))
    assert len(stream.read_from(0)) >= 1
    stream.cancel()
    assert stream.wait() is FinishReason.CANCELLED
    assert len(stream.codes) < 1500
    deadline = time.monotonic() + DEADLINE_S
    while server.metric("vllm:num_requests_running") > 0:
        assert time.monotonic() < deadline, "vLLM kept generating for a client that went away"
        time.sleep(0.2)


def test_a_sequence_holds_its_lease_from_submit_until_its_stream_has_ended(
    server: VLLMServer, token_ids: SpeechTokenIds, prompt_ids: list[int]
) -> None:
    """A managed server's lease is taken by submit() itself (on the caller's thread) and ended only after the stream
    has ended: a sequence the caller holds unfinished always holds one, so the GPU manager never puts the server to
    sleep under it, however late its thread runs."""
    taken_by: list[threading.Thread] = []
    streams: list[CodeStream] = []
    ended_when_released: list[bool] = []

    @contextlib.contextmanager
    def lease() -> Iterator[None]:
        taken_by.append(threading.current_thread())
        try:
            yield
        finally:
            ended_when_released.append(streams[0].finished)

    backend = VLLMBackend([server.url], token_ids, lease=lease)
    try:
        stream = backend.submit(prompt_ids, SamplingParams(seed=9, max_new_tokens=1500))
        streams.append(stream)
        assert taken_by == [threading.current_thread()]
        assert len(stream.read_from(0)) >= 1
        stream.cancel()
        assert stream.wait() is FinishReason.CANCELLED
        deadline = time.monotonic() + DEADLINE_S
        while not ended_when_released:
            assert time.monotonic() < deadline, "the lease was never ended"
            time.sleep(0.05)
        assert ended_when_released == [True]
    finally:
        backend.shutdown()


def test_a_prompt_past_the_context_is_invalid(backend: VLLMBackend) -> None:
    with pytest.raises(InvalidInput, match="context"):
        backend.submit(list(range(1, 2049)), SamplingParams(seed=1))


def test_a_dead_replica_is_skipped(server: VLLMServer, token_ids: SpeechTokenIds, prompt_ids: list[int]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    backend = VLLMBackend([dead, server.url], token_ids, retry_after_s=60)
    try:
        streams = [backend.submit(prompt_ids, SamplingParams(seed=s, max_new_tokens=6)) for s in range(4)]
        assert all(len(_codes(s)) == 6 for s in streams)
        status = {r["url"]: r for r in backend.status()["replicas"]}
        assert status[dead]["healthy"] is False
        assert status[dead]["failures"] >= 1
        assert status[server.url]["completed"] == 4
        assert backend.status()["ready"] is True
    finally:
        backend.shutdown()


def test_no_replica_answering_fails_quickly_and_names_the_engine(
    token_ids: SpeechTokenIds, prompt_ids: list[int]
) -> None:
    backend = VLLMBackend([f"http://127.0.0.1:{free_port()}"], token_ids, retry_after_s=60)
    try:
        stream = backend.submit(prompt_ids, SamplingParams(seed=1))
        assert stream.wait() is FinishReason.ERROR
        assert isinstance(stream.error, ModelUnavailable)
        assert "vLLM" in str(stream.error)
        assert backend.status()["ready"] is False
        # known down: refused at once, before a thread or a connection
        with pytest.raises(ModelUnavailable, match="vLLM"):
            backend.submit(prompt_ids, SamplingParams(seed=1))
    finally:
        backend.shutdown()


def test_server_killed_mid_stream_then_restarted(
    server: VLLMServer, token_ids: SpeechTokenIds, prompt_ids: list[int]
) -> None:
    """The stream fails with an error (never silently short audio); after a restart the same backend recovers.
    Runs last in this module: it restarts the module's server."""
    backend = VLLMBackend([server.url], token_ids, retry_after_s=0.5, read_timeout_s=30)
    try:
        stream = backend.submit(prompt_ids, SamplingParams(seed=9, max_new_tokens=1500))
        assert len(stream.read_from(0)) >= 1
        server.kill()
        assert stream.wait() is FinishReason.ERROR
        assert isinstance(stream.error, ModelUnavailable)
        assert "incomplete" in str(stream.error)
        assert not backend.check_health()
        server.start()
        server.wait_healthy()
        deadline = time.monotonic() + DEADLINE_S
        while not backend.check_health():
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert len(_codes(backend.submit(prompt_ids, SamplingParams(seed=1, max_new_tokens=5)))) == 5
    finally:
        backend.shutdown()


def test_logits_processor_bookkeeping_in_vllms_python() -> None:
    """Adds, removals, moves and swaps of the V1 processor, and the Model Runner V2 processor's row mapping (a CPU
    server never loads it), checked inside vLLM's own virtualenv."""
    import subprocess

    result = subprocess.run(
        [VLLM_PYTHON, str(Path(__file__).with_name("vllm_plugin_checks.py"))],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "llasa_logits checks passed" in result.stdout
