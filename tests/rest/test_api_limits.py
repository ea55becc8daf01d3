"""The REST API under load and misuse, over real HTTP on 127.0.0.1 against the real TTSService (tiny checkpoints):
API keys, the GPU queue's 429, 16 concurrent clients, clients that hang up mid-synthesis, and internal errors.

The GPU slots held by a test below are the real manager's (`service.manager.gpu_slot()`, every one of them, via
conftest's `busy_gpu`), the ones every request waits for: holding them makes "the card is busy" deterministic
instead of a race against the clock.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import requests
import soundfile
from conftest import busy_gpu, tiny_settings

from api_server import RunningServer, create_app
from llasa.config import Settings
from llasa.service import TTSService
from llasa.types import GenerationParams, SynthesisRequest

TIMEOUT_S = 120
DEADLINE_S = 120.0
CLIENTS = 16
# About 4 minutes of text: a dozen chunks of at most 20 s each.
LONG_TEXT = " ".join(f"Sentence number {i} is spoken here." for i in range(60))


def settings_for(tiny_models: Path, root: Path, **overrides: Any) -> Settings:
    return tiny_settings(tiny_models, root, **{"max_audio_seconds": 0.3, **overrides})


class Served:
    """A real TTSService behind a real waitress server on a free port."""

    def __init__(
        self,
        settings: Settings,
        *,
        extra_routes: Callable[[Any], None] | None = None,
        cleanup_interval_s: float | None = None,
    ) -> None:
        self.settings = settings
        self.service = TTSService(settings)
        self.app = create_app(self.service, settings)
        if extra_routes is not None:
            extra_routes(self.app)
        self.server = RunningServer(
            self.app, settings, host="127.0.0.1", port=0, cleanup_interval_s=cleanup_interval_s
        ).start()
        self.url = self.server.url

    def close(self) -> None:
        self.server.stop()
        self.service.shutdown()

    def metric(self, name: str, **labels: str) -> float:
        text = requests.get(self.url + "/metrics", timeout=TIMEOUT_S, headers=self.auth()).text
        total = 0.0
        for line in text.splitlines():
            match = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
            if not match or match.group(1) != name:
                continue
            got = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            if all(got.get(k) == v for k, v in labels.items()):
                total += float(match.group(3))
        return total

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.settings.api_key}"} if self.settings.api_key else {}


@pytest.fixture(scope="module")
def served(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    instance = Served(settings_for(tiny_models, tmp_path_factory.mktemp("api-limits")))
    try:
        yield instance
    finally:
        instance.close()


def wait_for(predicate: Callable[[], Any], what: str, deadline_s: float = DEADLINE_S) -> Any:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def check_error(response: requests.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert "Traceback" not in response.text
    return error


# --- API key ------------------------------------------------------------------------------------------------------


def test_api_key_guards_every_route_but_health(make_settings: Callable[..., Settings], caplog: Any) -> None:
    def add_failing_route(app: Any) -> None:
        def boom() -> None:
            raise RuntimeError("secret internal detail /etc/shadow")

        app.add_url_rule("/boom", "boom", boom)

    served = Served(make_settings(api_key="s3cret-key", host="127.0.0.1"), extra_routes=add_failing_route)
    try:
        url = served.url
        assert requests.get(url + "/health", timeout=TIMEOUT_S).status_code == 200
        assert requests.get(url + "/ready", timeout=TIMEOUT_S).status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-key"}):
            for path in ("/api/gpu/status", "/metrics", "/v1/models", "/api/jobs/x", "/apidocsx", "/apispec_2.json"):
                response = requests.get(url + path, headers=headers, timeout=TIMEOUT_S)
                check_error(response, 401, "unauthorized")
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
            check_error(
                requests.post(url + "/api/tts", json={"text": "hi"}, headers=headers, timeout=TIMEOUT_S),
                401,
                "unauthorized",
            )
        good = {"Authorization": "Bearer s3cret-key"}
        assert requests.get(url + "/api/gpu/status", headers=good, timeout=TIMEOUT_S).status_code == 200
        assert requests.get(url + "/apispec_1.json", headers=good, timeout=TIMEOUT_S).status_code == 200
        # The docs load without the key (they describe the API, they expose no data); the UI's Authorize button
        # (a bearer security definition) sends the key with the calls made from it.
        spec = requests.get(url + "/apispec_1.json", timeout=TIMEOUT_S)
        assert spec.status_code == 200
        bearer = spec.json()["components"]["securitySchemes"]["bearer"]
        assert (bearer["type"], bearer["scheme"]) == ("http", "bearer")  # the UI adds "Bearer " to the key
        assert spec.json()["security"] == [{"bearer": []}]
        assert spec.json()["paths"]["/health"]["get"]["security"] == []  # what needs no key says so
        ui = requests.get(url + "/apidocs/", timeout=TIMEOUT_S)
        assert ui.status_code == 200
        static = sorted(set(re.findall(r'(/flasgger_static/[^"\']+)', ui.text)))
        assert static
        for asset in static:
            assert requests.get(url + asset, timeout=TIMEOUT_S).status_code == 200, asset
        # CORS preflights carry no credentials by design; they must not be refused.
        preflight = requests.options(
            url + "/api/tts",
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
            timeout=TIMEOUT_S,
        )
        assert preflight.status_code == 200
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
        client = openai.OpenAI(base_url=url + "/v1", api_key="s3cret-key", max_retries=0)
        assert "tts-1" in {m.id for m in client.models.list()}
        # An unexpected exception: 500 in the usual shape, the trace in the log only.
        with caplog.at_level(logging.ERROR, logger="faces.rest"):
            crash = requests.get(url + "/boom", headers=good, timeout=TIMEOUT_S)
        error = check_error(crash, 500, "internal_error")
        assert "secret internal detail" not in crash.text
        assert "RuntimeError" not in crash.text
        incident = re.search(r"incident (\w+)", error["message"]).group(1)
        assert any(incident in r.getMessage() and r.exc_info for r in caplog.records)
    finally:
        served.close()


# --- the GPU queue ------------------------------------------------------------------------------------------------


def tts_request(url: str, index: int) -> tuple[int, requests.Response]:
    fields = {"text": f"Client {index} speaks.", "seed": 1000 + index, "max_audio_seconds": 0.1 + 0.02 * index}
    return index, requests.post(url + "/api/tts", data=fields, timeout=TIMEOUT_S)


def check_own_audio(index: int, response: requests.Response) -> np.ndarray:
    """The response belongs to request `index`: its seed, its length limit, its declared duration."""
    assert response.status_code == 200, response.text
    assert response.headers["X-Seed"] == str(1000 + index)
    audio, rate = soundfile.read(io.BytesIO(response.content), dtype="float32")
    assert rate == 16000
    assert len(audio) / rate == pytest.approx(float(response.headers["X-Audio-Duration-S"]), abs=1e-3)
    assert len(audio) / rate <= 0.1 + 0.02 * index + 0.021
    return audio


def test_full_queue_answers_429_with_retry_after(make_settings: Callable[..., Settings]) -> None:
    max_queue = 4
    served = Served(make_settings(max_queue=max_queue, host="127.0.0.1", max_audio_seconds=0.3))
    try:
        results: dict[int, requests.Response] = {}
        with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
            with busy_gpu(served.service.manager):  # the card is busy with other jobs
                futures = [pool.submit(tts_request, served.url, i) for i in range(CLIENTS)]

                def settled() -> bool:
                    refused = sum(1 for f in futures if f.done() and f.result()[1].status_code == 429)
                    return refused + served.service.queue_depth == CLIENTS

                wait_for(settled, "every request to be either queued or refused")
                # While the card is held nothing can have finished with audio.
                assert not any(f.done() and f.result()[1].status_code == 200 for f in futures)
            for future in futures:
                index, response = future.result()
                results[index] = response
        statuses = sorted(r.status_code for r in results.values())
        assert statuses == [200] * max_queue + [429] * (CLIENTS - max_queue)
        for index, response in results.items():
            if response.status_code == 429:
                error = check_error(response, 429, "queue_full")
                assert "MAX_QUEUE" in error["message"]
                assert int(response.headers["Retry-After"]) >= 1
            else:
                check_own_audio(index, response)
        assert served.metric("llasa_http_errors_total", route="/api/tts", code="queue_full") == CLIENTS - max_queue
    finally:
        served.close()


def test_sixteen_concurrent_clients_each_get_their_own_audio(served: Served) -> None:
    barrier = threading.Barrier(CLIENTS)

    def client(index: int) -> tuple[int, requests.Response]:
        barrier.wait()
        return tts_request(served.url, index)

    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        results = dict(pool.map(client, range(CLIENTS)))
    assert sorted(results) == list(range(CLIENTS))
    audio = {}
    for index, response in results.items():
        assert response.status_code in (200, 429), response.text
        if response.status_code == 200:
            audio[index] = check_own_audio(index, response)
    # MAX_QUEUE is 16 here: one runs, 15 wait, nobody is refused.
    assert len(audio) == CLIENTS
    # Same seed and text again, directly through the service: the very same samples come back.
    for index in (0, 7, 15):
        expected = served.service.synthesize(
            SynthesisRequest(
                f"Client {index} speaks.",
                params=GenerationParams(seed=1000 + index, max_audio_seconds=0.1 + 0.02 * index),
            )
        ).audio
        assert len(audio[index]) == len(expected)
        np.testing.assert_allclose(audio[index], expected, atol=1 / 32768 + 1e-6)  # 16-bit WAV rounding


# --- clients that hang up -----------------------------------------------------------------------------------------


def test_stream_disconnect_stops_generation(served: Served) -> None:
    body = {
        "input": LONG_TEXT,
        "voice": "alloy",
        "response_format": "pcm",
        "stream_format": "audio",
        "max_audio_seconds": 0.2,
    }
    cancelled_before = served.metric("llasa_syntheses_total", endpoint="speech_stream", outcome="cancelled")
    sent_before = served.metric("llasa_stream_chunks_total", endpoint="speech_stream")
    response = requests.post(served.url + "/v1/audio/speech", json=body, stream=True, timeout=TIMEOUT_S)
    assert response.status_code == 200
    first = next(response.iter_content(chunk_size=1024))
    assert first
    response.close()  # hang up mid-stream
    wait_for(
        lambda: (
            served.metric("llasa_syntheses_total", endpoint="speech_stream", outcome="cancelled") > cancelled_before
        ),
        "the stream's synthesis to be cancelled",
    )
    sent = served.metric("llasa_stream_chunks_total", endpoint="speech_stream") - sent_before
    # The GPU slot is free again: the next request runs at once instead of queueing behind a ghost. It also
    # tells how many chunks the whole text has (a few codes per chunk keep it quick).
    wait_for(lambda: served.service.gpu_status().queue.busy is False, "the GPU slot to be released")
    whole = requests.post(
        served.url + "/api/tts", json={"text": LONG_TEXT, "seed": 3, "max_audio_seconds": 0.04}, timeout=TIMEOUT_S
    )
    assert whole.status_code == 200
    chunks = int(whole.headers["X-Chunks"])
    assert chunks >= 8
    assert 1 <= sent <= chunks // 2  # stopped long before the text was spoken


def test_disconnect_cancels_a_plain_synthesis(served: Served) -> None:
    cancelled_before = served.metric("llasa_syntheses_total", endpoint="tts", outcome="cancelled")
    body = json.dumps({"text": LONG_TEXT, "max_audio_seconds": 1.0, "seed": 9}).encode()
    host = urllib.parse.urlsplit(served.url)
    with socket.create_connection((host.hostname, host.port), timeout=TIMEOUT_S) as sock:
        head = (
            f"POST /api/tts HTTP/1.1\r\nHost: {host.netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        sock.sendall(head + body)
        wait_for(lambda: served.service.gpu_status().queue.busy, "the synthesis to start")
    # The socket is closed: the server notices and stops the synthesis.
    wait_for(
        lambda: served.metric("llasa_syntheses_total", endpoint="tts", outcome="cancelled") > cancelled_before,
        "the abandoned synthesis to be cancelled",
    )
    wait_for(lambda: served.service.gpu_status().queue.busy is False, "the GPU slot to be released")


# --- CORS (opt-in with CORS_ORIGINS) ------------------------------------------------------------------------------


def cors_preflight(url: str, origin: str) -> requests.Response:
    return requests.options(
        url + "/v1/audio/speech",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
        timeout=TIMEOUT_S,
    )


def test_cors_allows_only_the_configured_origins(make_settings: Callable[..., Settings]) -> None:
    served = Served(make_settings(cors_origins="https://a.example, https://b.example", host="127.0.0.1"))
    try:
        allowed = cors_preflight(served.url, "https://a.example")
        assert allowed.status_code == 200
        assert allowed.headers["Access-Control-Allow-Origin"] == "https://a.example"
        assert "authorization" in allowed.headers["Access-Control-Allow-Headers"].lower()
        refused = cors_preflight(served.url, "https://evil.example")
        assert "Access-Control-Allow-Origin" not in refused.headers
        response = requests.get(served.url + "/v1/models", headers={"Origin": "https://b.example"}, timeout=TIMEOUT_S)
        assert response.headers["Access-Control-Allow-Origin"] == "https://b.example"
        assert "X-Audio-Duration-S" in response.headers["Access-Control-Expose-Headers"]
        other = requests.get(served.url + "/v1/models", headers={"Origin": "https://evil.example"}, timeout=TIMEOUT_S)
        assert other.status_code == 200
        assert "Access-Control-Allow-Origin" not in other.headers
    finally:
        served.close()


def test_cors_star_allows_any_origin(make_settings: Callable[..., Settings]) -> None:
    served = Served(make_settings(cors_origins="*", host="127.0.0.1"))
    try:
        preflight = cors_preflight(served.url, "https://anywhere.example")
        assert preflight.headers["Access-Control-Allow-Origin"] in ("*", "https://anywhere.example")
        response = requests.get(served.url + "/v1/models", headers={"Origin": "https://x.example"}, timeout=TIMEOUT_S)
        assert response.headers["Access-Control-Allow-Origin"] in ("*", "https://x.example")
    finally:
        served.close()


# --- output expiry --------------------------------------------------------------------------------------------------


def test_expired_outputs_are_deleted_and_their_jobs_forgotten(make_settings: Callable[..., Settings]) -> None:
    served = Served(make_settings(host="127.0.0.1", max_audio_seconds=0.3), cleanup_interval_s=0.1)
    try:
        submitted = requests.post(
            served.url + "/api/tts?async=true", json={"text": "Soon gone.", "seed": 3}, timeout=TIMEOUT_S
        )
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]

        def finished() -> dict | None:
            job = requests.get(served.url + f"/api/jobs/{job_id}", timeout=TIMEOUT_S).json()
            return job if job["state"] in ("done", "failed", "cancelled") else None

        job = wait_for(finished, "the job to finish")
        assert job["state"] == "done", job
        path = served.service.output_path(job["output"]["id"])
        keeper = served.settings.output_dir / ("f" * 32 + ".wav")  # a fresh output must survive the cleanup
        keeper.write_bytes(path.read_bytes())
        assert served.metric("llasa_jobs", state="done") == 1
        # Age the file past OUTPUT_TTL_HOURS: the service's cleanup thread deletes it within an interval...
        old = time.time() - served.settings.output_ttl_hours * 3600 - 60
        os.utime(path, (old, old))
        wait_for(lambda: not path.exists(), "the expired output to be deleted")
        # ...and the API's timer forgets its job (checked through /metrics, which does not expire jobs itself).
        wait_for(lambda: served.metric("llasa_jobs", state="done") == 0, "the expired job to be forgotten")
        check_error(requests.get(served.url + f"/api/jobs/{job_id}", timeout=TIMEOUT_S), 404, "not_found")
        assert keeper.exists()
    finally:
        served.close()


# --- async jobs and a full GPU queue -------------------------------------------------------------------------------


def test_accepted_job_waits_for_room_in_a_full_gpu_queue(make_settings: Callable[..., Settings]) -> None:
    served = Served(make_settings(max_queue=1, host="127.0.0.1", max_audio_seconds=0.3))
    manager = served.service.manager
    waiter_done = threading.Event()

    def wait_in_queue() -> None:
        with manager.gpu_slot():
            pass
        waiter_done.set()

    def job(job_id: str) -> dict:
        return requests.get(served.url + f"/api/jobs/{job_id}", timeout=TIMEOUT_S).json()

    try:
        with busy_gpu(manager):  # the card is busy...
            waiter = threading.Thread(target=wait_in_queue, daemon=True)
            waiter.start()
            wait_for(lambda: served.service.queue_depth == 1, "the queue to fill")  # ...and its queue is full
            body = {"text": "Accepted, so it must run.", "seed": 5}
            kept = requests.post(served.url + "/api/tts?async=true", json=body, timeout=TIMEOUT_S).json()
            dropped = requests.post(served.url + "/api/tts?async=true", json=body, timeout=TIMEOUT_S).json()
            wait_for(lambda: job(kept["id"])["progress"]["stage"] == "waiting_for_gpu_queue", "the job to wait")
            assert job(kept["id"])["state"] == "running"
            assert job(dropped["id"])["state"] == "queued"
            # Cancelling a job that waits for room stops it.
            cancelled = requests.delete(served.url + f"/api/jobs/{dropped['id']}", timeout=TIMEOUT_S).json()
            assert cancelled["state"] == "cancelled"
        waiter.join(DEADLINE_S)
        assert waiter_done.is_set()
        finished = wait_for(lambda: (j := job(kept["id"]))["state"] in ("done", "failed", "cancelled") and j, "done")
        assert finished["state"] == "done", finished
        assert finished["error"] is None
        assert requests.get(finished["output"]["url"], timeout=TIMEOUT_S).status_code == 200
        # A job cancelled while it waits for room in the queue ends cancelled, not failed.
        with busy_gpu(manager):
            waiter = threading.Thread(target=wait_in_queue, daemon=True)
            waiter.start()
            wait_for(lambda: served.service.queue_depth == 1, "the queue to fill again")
            third = requests.post(served.url + "/api/tts?async=true", json=body, timeout=TIMEOUT_S).json()
            wait_for(lambda: job(third["id"])["progress"]["stage"] == "waiting_for_gpu_queue", "the job to wait")
            requests.delete(served.url + f"/api/jobs/{third['id']}", timeout=TIMEOUT_S)
            ended = wait_for(lambda: (j := job(third["id"]))["state"] != "running" and j, "the cancel")
            assert ended["state"] == "cancelled", ended
        waiter.join(DEADLINE_S)
    finally:
        served.close()
