"""Many REST clients at once over real sockets, mixing every way of asking and of leaving.

16 clients per round: streamed `/v1/audio/speech` (raw audio and SSE), plain `/api/tts`, one that cancels a stream
after its first bytes and one that hangs up before its answer. Every answer must be its own request's (seed,
length), nothing may be lost, and afterwards the engine runs no sequence and no model is leased. Three rounds
in a row keep the process's memory flat. Then cancellation while queued (every GPU slot held) and while
generating.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
import soundfile
from conftest import busy_gpu
from test_api_limits import TIMEOUT_S, Served, settings_for, wait_for

from llasa.types import GenerationParams, SynthesisRequest

CLIENTS = 16
ROUNDS = 3
STREAM_RATE = 24_000  # /v1/audio/speech answers at OpenAI's rate
# What each client does, by index % 8: three raw audio streams, two SSE streams, two plain /api/tts; the last
# slot cancels a stream after its first bytes (index 7) or hangs up before any answer (index 15).
KINDS = ("audio", "audio", "audio", "sse", "sse", "tts", "tts", "leave")
# Growth of the resident set over rounds 2 and 3 against round 1 (which finishes warming models, threads and
# buffer pools up). Measured here: +10 MiB, then +3 MiB. A round moves about 4 s of audio (a few hundred kB) and
# the models are loaded once; what still varies between rounds is allocator fragmentation across ~40 threads,
# tens of MiB at worst, hence the generous bound. It catches a leak of about 3 MiB or more per request (32
# requests over two rounds: e.g. retained engine sequences or decoder states), not one of a request's audio alone.
RSS_GROWTH_LIMIT_BYTES = 96 * 2**20


def text_of(index: int) -> str:
    return f"Client {index} speaks."


def seed_of(index: int) -> int:
    return 2000 + index


def max_seconds_of(index: int) -> float:
    return 0.1 + 0.02 * index


@pytest.fixture(scope="module")
def served(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    instance = Served(settings_for(tiny_models, tmp_path_factory.mktemp("mixed"), max_queue=CLIENTS))
    try:
        yield instance
    finally:
        instance.close()


@pytest.fixture(scope="module")
def expected_samples(served: Served) -> dict[int, int]:
    """Each request's length in 16 kHz samples, run alone through the service (a seed repeats a request)."""
    lengths = {}
    for index in range(CLIENTS):
        params = GenerationParams(seed=seed_of(index), max_audio_seconds=max_seconds_of(index))
        lengths[index] = len(served.service.synthesize(SynthesisRequest(text_of(index), params=params)).audio)
    return lengths


def speech_body(index: int, stream_format: str) -> dict[str, Any]:
    return {
        "input": text_of(index),
        "voice": "alloy",
        "response_format": "pcm",
        "stream_format": stream_format,
        "seed": seed_of(index),
        "max_audio_seconds": max_seconds_of(index),
    }


def hang_up(url: str, index: int) -> None:
    """Send a plain synthesis and close the socket without reading a byte of the answer."""
    body = json.dumps({"text": text_of(index), "seed": seed_of(index), "max_audio_seconds": 1.0}).encode()
    host = urllib.parse.urlsplit(url)
    with socket.create_connection((host.hostname, host.port), timeout=TIMEOUT_S) as sock:
        head = (
            f"POST /api/tts HTTP/1.1\r\nHost: {host.netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        sock.sendall(head + body)


def run_client(url: str, index: int, start: threading.Barrier) -> dict[str, Any]:
    """One client's request and what came back: its kind, seed header and audio length in samples."""
    kind = KINDS[index % len(KINDS)]
    start.wait(TIMEOUT_S)
    if kind == "tts":
        fields = {"text": text_of(index), "seed": seed_of(index), "max_audio_seconds": max_seconds_of(index)}
        response = requests.post(url + "/api/tts", data=fields, timeout=TIMEOUT_S)
        assert response.status_code == 200, response.text
        audio, rate = soundfile.read(io.BytesIO(response.content), dtype="float32")
        assert rate == 16000
        assert len(audio) / rate == pytest.approx(float(response.headers["X-Audio-Duration-S"]), abs=1e-3)
        return {"kind": kind, "seed": response.headers["X-Seed"], "samples": len(audio)}
    if kind == "leave" and index >= len(KINDS):
        hang_up(url, index)
        return {"kind": "hang_up"}
    stream_format = "audio" if kind == "leave" else kind
    with requests.post(
        url + "/v1/audio/speech", json=speech_body(index, stream_format), stream=True, timeout=TIMEOUT_S
    ) as response:
        assert response.status_code == 200, response.text
        seed = response.headers["X-Seed"]
        if kind == "leave":
            assert next(response.iter_content(chunk_size=256))
            return {"kind": "cancel", "seed": seed}  # leaving the block closes the connection mid-stream
        if kind == "audio":
            pcm = b"".join(response.iter_content(chunk_size=4096))
            return {"kind": kind, "seed": seed, "samples": len(pcm) // 2}
        pcm = b""
        done: dict[str, Any] = {}
        for line in response.iter_lines():
            if not line.startswith(b"data: "):
                continue
            event = json.loads(line[len(b"data: ") :])
            if event["type"] == "speech.audio.delta":
                pcm += base64.b64decode(event["audio"])
            else:
                done = event
        assert done.get("type") == "speech.audio.done", done
        assert done["duration_s"] == pytest.approx(len(pcm) / 2 / STREAM_RATE, abs=1e-3)
        return {"kind": kind, "seed": seed, "samples": len(pcm) // 2}


def assert_idle(served: Served) -> None:
    """No sequence in the engine, no request holding or waiting for a GPU slot, no model leased."""

    def idle() -> bool:
        engine = served.service.engine_status()
        gpu = served.service.gpu_status()
        return (
            engine.running == 0
            and engine.waiting == 0
            and not gpu.queue.busy
            and served.service.queue_depth == 0
            and all(model.leases == 0 for model in gpu.models.values())
        )

    wait_for(idle, "the engine and the GPU to be idle")


def test_sixteen_mixed_clients_three_rounds(served: Served, expected_samples: dict[int, int]) -> None:
    process = psutil.Process()
    rss: list[int] = []
    for _round in range(ROUNDS):
        start = threading.Barrier(CLIENTS)
        with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
            futures = {index: pool.submit(run_client, served.url, index, start) for index in range(CLIENTS)}
            answers = {index: future.result(timeout=TIMEOUT_S * 2) for index, future in futures.items()}
        assert sorted(answers) == list(range(CLIENTS))  # nothing lost
        for index, answer in answers.items():
            if answer["kind"] == "hang_up":
                continue
            assert answer["seed"] == str(seed_of(index)), (index, answer)
            if answer["kind"] == "cancel":
                continue
            expected = expected_samples[index]
            if answer["kind"] == "tts":
                assert answer["samples"] == expected, (index, answer)
            else:
                # The stream is resampled from 16 to 24 kHz on the way: 1.5 samples per sample, a few at the ends.
                assert answer["samples"] == pytest.approx(expected * 1.5, abs=8), (index, answer)
        assert_idle(served)
        rss.append(process.memory_info().rss)
    growth = max(rss[1:]) - rss[0]
    assert growth < RSS_GROWTH_LIMIT_BYTES, f"RSS per round (MiB): {[round(r / 2**20) for r in rss]}"


def test_a_queued_stream_whose_client_hangs_up_leaves_the_queue(served: Served) -> None:
    cancelled = "llasa_syntheses_total"
    before = served.metric(cancelled, endpoint="speech_stream", outcome="cancelled")
    tokens_before = served.service.engine_status().tokens
    body = json.dumps(speech_body(0, "audio")).encode()
    host = urllib.parse.urlsplit(served.url)
    with busy_gpu(served.service.manager):  # every GPU slot is held by other work
        with socket.create_connection((host.hostname, host.port), timeout=TIMEOUT_S) as sock:
            head = (
                f"POST /v1/audio/speech HTTP/1.1\r\nHost: {host.netloc}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            sock.sendall(head + body)
            wait_for(lambda: served.service.queue_depth == 1, "the stream to wait for a GPU slot")
        # Hung up while queued: it leaves the queue while the slots are still held, and never reaches the engine.
        wait_for(lambda: served.service.queue_depth == 0, "the abandoned request to leave the queue")
        wait_for(
            lambda: served.metric(cancelled, endpoint="speech_stream", outcome="cancelled") > before,
            "the abandoned request to be counted as cancelled",
        )
        assert served.service.engine_status().tokens == tokens_before
    assert_idle(served)


def test_a_stream_cancelled_while_generating_frees_its_sequences(served: Served) -> None:
    # Many chunks, each allowed 20 s: minutes of generation if it were not stopped.
    text = " ".join(f"Sentence number {i} is spoken here at length." for i in range(40))
    body = {"input": text, "voice": "alloy", "response_format": "pcm", "stream_format": "audio", "seed": 5}
    body["max_audio_seconds"] = 20
    with requests.post(served.url + "/v1/audio/speech", json=body, stream=True, timeout=TIMEOUT_S) as response:
        assert response.status_code == 200, response.text
        chunks = int(response.headers["X-Chunks"])
        assert chunks >= 2
        assert next(response.iter_content(chunk_size=256))
        # Every chunk was submitted at once: they are all in the engine now.
        assert served.service.engine_status().running + served.service.engine_status().waiting >= chunks - 1
        tokens_at_cancel = served.service.engine_status().tokens
    # The response is closed: the server notices, cancels, and the engine drops the sequences at its next step.
    assert_idle(served)
    spent = served.service.engine_status().tokens - tokens_at_cancel
    assert spent < chunks * 20 * 50  # far from the 50 codes per second of every chunk's 20 s
