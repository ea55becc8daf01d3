"""The REST API end to end over real HTTP on 127.0.0.1: waitress in a thread, `requests` and the official `openai`
client, against the real TTSService on the tiny checkpoints.

One server serves the whole module (apps with other settings live in test_api_limits.py). Generation is kept to
a fraction of a second of audio per text chunk so the file stays fast; the audio is noise, so the tests check
lengths, rates, formats, headers, states and errors, never how it sounds.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import re
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import openai
import pytest
import requests
import soundfile
from conftest import tiny_settings
from flask import Flask
from openapi_spec_validator import validate as validate_spec

from api_server import RunningServer, create_app
from llasa.config import Settings
from llasa.service import TTSService

REPO = Path(__file__).resolve().parents[2]
AUDIO_DIR = REPO / "tests" / "data" / "audio"  # the conftest's `audio_dir`, for module scope
EN_TRANSCRIPT = "The quick brown fox jumps over the lazy dog. This is a short reference recording."
QUICK = {"max_audio_seconds": 0.3, "seed": 11}
MAX_TEXT_CHARS = 1500
MAX_UPLOAD_MB = 2
DEADLINE_S = 120.0
TIMEOUT_S = 120


def settings_for(tiny_models: Path, root: Path, **overrides: Any) -> Settings:
    return tiny_settings(tiny_models, root, **{"max_audio_seconds": 0.3, **overrides})


@dataclass
class Api:
    url: str
    service: TTSService
    settings: Settings
    app: Flask

    def get(self, path: str, **kw: Any) -> requests.Response:
        return requests.get(self.url + path, timeout=TIMEOUT_S, **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        return requests.post(self.url + path, timeout=TIMEOUT_S, **kw)

    def patch(self, path: str, **kw: Any) -> requests.Response:
        return requests.patch(self.url + path, timeout=TIMEOUT_S, **kw)

    def delete(self, path: str, **kw: Any) -> requests.Response:
        return requests.delete(self.url + path, timeout=TIMEOUT_S, **kw)

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def api(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    settings = settings_for(
        tiny_models,
        tmp_path_factory.mktemp("api"),
        max_text_chars=MAX_TEXT_CHARS,
        max_upload_mb=MAX_UPLOAD_MB,
    )
    service = TTSService(settings)
    app = create_app(service, settings)
    server = RunningServer(app, settings, host="127.0.0.1", port=0).start()
    try:
        yield Api(server.url, service, settings, app)
    finally:
        server.stop()
        service.shutdown()


def assert_error(response: requests.Response, status: int, code: str | None = None, field: str | None = None) -> dict:
    """The one error shape, the right status, and nothing of the server's insides."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert error["message"]
    if code is not None:
        assert error["code"] == code, error
    if field is not None:
        assert error.get("field") == field, error
    assert "Traceback" not in response.text
    assert 'File "' not in response.text
    return error


def decode(data: bytes) -> tuple[np.ndarray, int]:
    """Decode any container PyAV reads to mono float samples and the stream's rate."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        frames = [frame.to_ndarray().reshape(frame.samples, -1)[:, 0] for frame in container.decode(stream)]
        rate = stream.rate
    return np.concatenate(frames) if frames else np.zeros(0), rate


def metric_value(api: Api, name: str, **labels: str) -> float:
    text = api.get("/metrics").text
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    total = 0.0
    for line in text.splitlines():
        match = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        got = ",".join(sorted((match.group(2) or "").split(","))) if match.group(2) else ""
        if all(part in got.split(",") for part in wanted.split(",") if part):
            total += float(match.group(3))
    return total


def wait_for(predicate: Any, what: str, deadline_s: float = DEADLINE_S) -> Any:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# --- status and GPU routes --------------------------------------------------------------------------------------


def test_health_and_ready(api: Api) -> None:
    health = api.get("/health")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok"
    assert set(body["models"]) == {"llasa", "xcodec2", "whisper"}
    assert body["device"] == "cpu"
    ready = api.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["ready"] is True


def test_gpu_routes(api: Api) -> None:
    status = api.get("/api/gpu/status")
    assert status.status_code == 200
    assert set(status.json()["models"]) == {"llasa", "xcodec2", "whisper"}
    assert api.post("/api/gpu/offload", json={"model": "llasa"}).status_code == 200
    assert api.post("/api/gpu/offload").status_code == 200
    assert api.post("/api/gpu/release", json={}).status_code == 200
    # The GPU manager's own message, the same MCP gives.
    unknown = assert_error(api.post("/api/gpu/release", json={"model": "gpt-5"}), 404, "not_found", "model")
    assert "no model named 'gpt-5'" in unknown["message"]
    timeouts = api.post("/api/gpu/timeout", json={"idle_timeout_s": 120, "evict_timeout_s": -1})
    assert timeouts.status_code == 200, timeouts.text
    assert_error(api.post("/api/gpu/timeout", json={}), 400, field="idle_timeout_s")
    assert_error(api.post("/api/gpu/timeout", json={"evict_timeout_s": "soon"}), 400, field="evict_timeout_s")
    assert_error(api.post("/api/gpu/timeout", json={"idle_timeout_s": -5}), 400, field="idle_timeout_s")
    assert_error(api.post("/api/gpu/timeout", json={"offload_after_use": "maybe"}), 400, field="offload_after_use")
    assert_error(api.post("/api/gpu/offload", data="model=llasa", headers={"Content-Type": "text/plain"}), 415)


# --- /api/tts -----------------------------------------------------------------------------------------------------


def test_tts_returns_wav_with_facts_in_headers(api: Api) -> None:
    response = api.post("/api/tts", data={"text": "Hello world.", **QUICK})
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "audio/wav"
    audio, rate = soundfile.read(io.BytesIO(response.content))
    assert rate == 16000 == int(response.headers["X-Sample-Rate"])
    assert len(audio) > 0
    assert float(response.headers["X-Audio-Duration-S"]) == pytest.approx(len(audio) / rate, abs=1e-3)
    assert len(audio) / rate <= QUICK["max_audio_seconds"] + 0.02
    assert response.headers["X-Seed"] == str(QUICK["seed"])
    assert int(response.headers["X-Chunks"]) == 1
    timings = json.loads(response.headers["X-Timings-S"])
    assert {"generate", "decode", "total"} <= set(timings)
    assert response.headers["X-Reference-Text"] == ""


@pytest.mark.parametrize(("fmt", "rate"), [("flac", 24000), ("mp3", 22050), ("opus", 48000), ("aac", 16000)])
def test_tts_formats_and_sample_rates(api: Api, fmt: str, rate: int) -> None:
    response = api.post("/api/tts", json={"text": "Format check.", "format": fmt, "sample_rate": rate, **QUICK})
    assert response.status_code == 200, response.text
    assert response.headers["X-Audio-Format"] == fmt
    audio, decoded_rate = decode(response.content)
    assert decoded_rate == rate
    duration = float(response.headers["X-Audio-Duration-S"])
    # Encoders pad a little (priming, frame sizes); the length must still be the synthesis's.
    assert len(audio) / decoded_rate == pytest.approx(duration, abs=0.15)


def test_tts_pcm_is_raw_16_bit(api: Api) -> None:
    response = api.post("/api/tts", json={"text": "Raw samples.", "format": "pcm", "sample_rate": 24000, **QUICK})
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "audio/pcm"
    assert response.headers["X-Sample-Rate"] == "24000"
    samples = len(response.content) // 2
    assert len(response.content) % 2 == 0
    assert samples / 24000 == pytest.approx(float(response.headers["X-Audio-Duration-S"]), abs=0.01)


def test_tts_with_uploaded_reference_and_transcript(api: Api) -> None:
    with open(AUDIO_DIR / "en_16k_mono.wav", "rb") as f:
        response = api.post(
            "/api/tts",
            data={"text": "Cloned voice.", "reference_text": EN_TRANSCRIPT, **QUICK},
            files={"reference_audio": ("ref.wav", f, "audio/wav")},
        )
    assert response.status_code == 200, response.text
    assert urllib.parse.unquote(response.headers["X-Reference-Text"]) == EN_TRANSCRIPT
    assert 5.0 < float(response.headers["X-Reference-Seconds"]) < 6.5


def test_tts_json_with_base64_reference_and_chinese_transcript(api: Api) -> None:
    reference = base64.b64encode((AUDIO_DIR / "zh_16k_mono.flac").read_bytes()).decode()
    transcript = "今天天气很好，我们一起去公园散步吧。"
    response = api.post(
        "/api/tts",
        json={
            "text": "你好。",
            "reference_audio": "data:audio/flac;base64," + reference,
            "reference_text": transcript,
            **QUICK,
        },
    )
    assert response.status_code == 200, response.text
    assert urllib.parse.unquote(response.headers["X-Reference-Text"]) == transcript


def test_tts_json_response_and_download(api: Api) -> None:
    response = api.post("/api/tts?response=json", json={"text": "Download me.", "format": "mp3", **QUICK})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["result"]["seed"] == QUICK["seed"]
    assert body["result"]["duration_s"] > 0
    output = body["output"]
    assert output["url"] == f"{api.url}/api/outputs/{output['id']}"
    assert "path" not in output  # the server's file system stays private
    download = requests.get(output["url"], timeout=TIMEOUT_S)
    assert download.status_code == 200
    assert download.headers["Content-Type"] == "audio/mpeg"
    assert len(download.content) == output["size_bytes"]
    assert decode(download.content)[0].size > 0


def test_outputs_cannot_escape_the_output_folder(api: Api) -> None:
    secret = api.settings.output_dir.parent / "secret.wav"
    secret.write_bytes(b"RIFF TOP-SECRET-CONTENT")
    # Raw requests: `requests` would normalise the dot segments away before they reach the server.
    tricks = [
        "/api/outputs/../secret.wav",
        "/api/outputs/..%2Fsecret.wav",
        "/api/outputs/%2e%2e%2fsecret.wav",
        "/api/outputs/..%5Csecret.wav",
        "/api/outputs/%2Fetc%2Fpasswd",
        "/api/outputs//etc/passwd",
        "/api/outputs/0123456789abcdef0123456789abcdef.wav%00.txt",
        "/api/outputs/0123456789abcdef0123456789abcdef.wav",
        "/api/outputs/nothing",
    ]
    host = urllib.parse.urlsplit(api.url)
    for path in tricks:
        connection = http.client.HTTPConnection(host.hostname, host.port, timeout=TIMEOUT_S)
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        connection.close()
        assert response.status == 404, (path, body)
        assert b"TOP-SECRET-CONTENT" not in body
        assert b"root:" not in body
        assert json.loads(body)["error"]["code"] == "not_found", body


def test_tts_bad_input_names_the_field(api: Api) -> None:
    cases = [
        ({"seed": 1}, "text"),
        ({"text": "   "}, "text"),
        ({"text": "x" * (MAX_TEXT_CHARS + 1)}, "text"),
        ({"text": "hi", "temperature": "hot"}, "temperature"),
        ({"text": "hi", "temperature": 7}, "temperature"),
        ({"text": "hi", "top_k": 2.5}, "top_k"),
        ({"text": "hi", "seed": -1}, "seed"),
        ({"text": "hi", "format": "ogg"}, "format"),
        ({"text": "hi", "sample_rate": 12345}, "sample_rate"),
        ({"text": "hi", "reference_audio": "not base64!"}, "reference_audio"),
        ({"text": "hi", "reference_text": "words without audio"}, "reference_text"),
        ({"text": "hi", "language": "klingon"}, "language"),
    ]
    for fields, field in cases:
        assert_error(api.post("/api/tts", json=fields), 400, field=field)
    assert_error(api.post("/api/tts?response=yaml", json={"text": "hi"}), 400, field="response")
    assert_error(api.post("/api/tts?async=perhaps", json={"text": "hi"}), 400, field="async")
    bad_json = api.post("/api/tts", data="{not json", headers={"Content-Type": "application/json"})
    assert_error(bad_json, 400, "invalid_input", "body")
    assert_error(api.post("/api/tts", json=["text"]), 400, field="body")
    assert_error(api.post("/api/tts", data=b"text=hi", headers={"Content-Type": "text/plain"}), 415)


def test_tts_unreadable_and_unknown_references(api: Api) -> None:
    garbage = api.post(
        "/api/tts", data={"text": "hi", **QUICK}, files={"reference_audio": ("x.wav", b"\x00\x01garbage" * 200)}
    )
    assert_error(garbage, 415, "unsupported_audio")
    silence = (AUDIO_DIR / "silence_3s.wav").read_bytes()
    silent = api.post("/api/tts", data={"text": "hi", **QUICK}, files={"reference_audio": ("s.wav", silence)})
    assert_error(silent, 400)
    empty = api.post("/api/tts", data={"text": "hi"}, files={"reference_audio": ("e.wav", b"")})
    assert_error(empty, 400, field="reference_audio")
    assert_error(api.post("/api/tts", json={"text": "hi", "voice": "nobody", **QUICK}), 404, "voice_not_found")


def test_upload_over_the_limit_is_413(api: Api) -> None:
    blob = b"\x00" * (MAX_UPLOAD_MB * 1024 * 1024 + 1024)
    response = api.post("/api/tts", data={"text": "hi"}, files={"reference_audio": ("big.wav", blob)})
    error = assert_error(response, 413, "payload_too_large")
    assert "MAX_UPLOAD_MB" in error["message"]
    b64 = base64.b64encode(blob).decode()
    assert_error(api.post("/api/tts", json={"text": "hi", "reference_audio": b64}), 413)
    assert_error(api.post("/api/transcribe", files={"audio": ("big.wav", blob)}), 413)


def test_unknown_routes_and_methods_answer_json(api: Api) -> None:
    assert_error(api.get("/api/nothing"), 404, "not_found")
    wrong_method = api.delete("/api/tts")
    assert_error(wrong_method, 405, "method_not_allowed")
    assert "POST" in wrong_method.headers["Allow"]


# --- /api/transcribe ----------------------------------------------------------------------------------------------


def test_transcribe(api: Api) -> None:
    with open(AUDIO_DIR / "en_16k_mono.wav", "rb") as f:
        response = api.post("/api/transcribe", files={"audio": f}, data={"language": "en"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"text", "language", "duration_s", "segments"}
    assert body["language"] == "en"
    assert body["duration_s"] == pytest.approx(5.8, abs=0.3)
    assert_error(api.post("/api/transcribe", data={"language": "en"}), 400, field="audio")
    assert_error(api.post("/api/transcribe", files={"audio": ("x.mp3", b"ID3 not really")}), 415)
    with open(AUDIO_DIR / "en_16k_mono.wav", "rb") as f:
        assert_error(api.post("/api/transcribe", files={"audio": f}, data={"language": "xx-yy"}), 400, field="language")


# --- asynchronous jobs --------------------------------------------------------------------------------------------


def poll_job(api: Api, job_id: str, states: tuple[str, ...]) -> dict:
    def finished() -> dict | None:
        job = api.get(f"/api/jobs/{job_id}").json()
        return job if job["state"] in states else None

    return wait_for(finished, f"job {job_id} to reach {states}")


def test_async_job_lifecycle(api: Api) -> None:
    submitted = api.post(
        "/api/tts?async=true", json={"text": "A job. It has two sentences.", "format": "flac", **QUICK}
    )
    assert submitted.status_code == 202, submitted.text
    job = submitted.json()
    assert submitted.headers["Location"] == f"/api/jobs/{job['id']}"
    assert job["state"] in ("queued", "running", "done")
    done = poll_job(api, job["id"], ("done", "failed", "cancelled"))
    assert done["state"] == "done", done
    assert done["progress"]["chunks_done"] == done["progress"]["chunks_total"] == done["result"]["chunks"] >= 1
    assert done["result"]["seed"] == QUICK["seed"]
    assert done["output"]["format"] == "flac"
    download = requests.get(done["output"]["url"], timeout=TIMEOUT_S)
    assert download.status_code == 200
    assert decode(download.content)[0].size > 0
    assert_error(api.delete(f"/api/jobs/{job['id']}"), 409, "job_finished")
    assert_error(api.get("/api/jobs/0123456789abcdef"), 404, "not_found")
    assert_error(api.delete("/api/jobs/0123456789abcdef"), 404, "not_found")
    # A job lives as long as its output: once the file is gone the job is forgotten.
    api.service.output_path(done["output"]["id"]).unlink()
    assert_error(api.get(f"/api/jobs/{job['id']}"), 404)


def test_async_job_bad_input_is_refused_at_once(api: Api) -> None:
    assert_error(api.post("/api/tts?async=true", json={"text": "x" * (MAX_TEXT_CHARS + 1)}), 400, field="text")
    assert_error(api.post("/api/tts?async=true", json={"text": "hi", "voice": "nobody"}), 404, "voice_not_found")
    garbage = api.post("/api/tts?async=true", data={"text": "hi"}, files={"reference_audio": ("x.wav", b"junk" * 100)})
    assert_error(garbage, 415, "unsupported_audio")


def test_format_and_rate_pair_is_refused_before_synthesis(api: Api) -> None:
    def syntheses() -> float:
        return sum(metric_value(api, "llasa_syntheses_total", endpoint=e) for e in ("tts", "tts_job"))

    before = syntheses()
    jobs_before = metric_value(api, "llasa_jobs")
    body = {"text": "Opus cannot do 44.1 kHz.", "format": "opus", "sample_rate": 44100, **QUICK}
    for query in ("", "?response=json", "?async=true"):
        error = assert_error(api.post("/api/tts" + query, json=body), 400, field="sample_rate")
        assert "48000" in error["message"]
    multipart = {k: str(v) for k, v in body.items()}
    assert_error(api.post("/api/tts?async=true", data=multipart), 400, field="sample_rate")
    # Nothing was synthesised, and no job was accepted.
    assert syntheses() == before
    assert metric_value(api, "llasa_jobs") == jobs_before
    assert api.post("/api/tts", json={**body, "sample_rate": 48000}).status_code == 200


def test_async_jobs_cancel_running_and_queued(api: Api) -> None:
    long_text = " ".join(f"Sentence number {i} is here." for i in range(40))
    assert len(long_text) <= MAX_TEXT_CHARS
    first = api.post("/api/tts?async=true", json={"text": long_text, "max_audio_seconds": 1.0, "seed": 1}).json()
    second = api.post("/api/tts?async=true", json={"text": "Never runs.", **QUICK}).json()

    def first_is_generating() -> bool:
        job = api.get(f"/api/jobs/{first['id']}").json()
        return job["state"] == "running" and job["progress"]["chunks_total"] > 1

    # Cancel once the chunks are planned, so the test can see that it stopped part-way.
    wait_for(first_is_generating, "the first job to start generating")
    queued = api.delete(f"/api/jobs/{second['id']}")
    assert queued.status_code == 200
    assert queued.json()["state"] == "cancelled"
    running = api.delete(f"/api/jobs/{first['id']}")
    assert running.status_code == 200
    assert running.json()["cancel_requested"] is True
    cancelled = poll_job(api, first["id"], ("done", "failed", "cancelled"))
    assert cancelled["state"] == "cancelled", cancelled
    assert cancelled["progress"]["chunks_done"] < cancelled["progress"]["chunks_total"]
    assert cancelled["output"] is None
    never = api.get(f"/api/jobs/{second['id']}").json()
    assert never["state"] == "cancelled"
    assert never["started_at"] is None


# --- OpenAI-compatible routes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav"])
def test_openai_speech_every_container_format(api: Api, fmt: str) -> None:
    audio = api.openai().audio.speech.create(
        model="tts-1", voice="alloy", input="Hello there.", response_format=fmt, extra_body=QUICK
    )
    samples, rate = decode(audio.content)
    assert rate == (48000 if fmt == "opus" else 24000)
    assert 0 < len(samples) / rate <= QUICK["max_audio_seconds"] + 0.1


def test_openai_speech_pcm_default_mp3_and_speed(api: Api) -> None:
    client = api.openai()
    pcm = client.audio.speech.create(
        model="tts-1", voice="nova", input="Speed test.", response_format="pcm", extra_body=QUICK
    ).content
    assert len(pcm) % 2 == 0
    fast = client.audio.speech.create(
        model="tts-1", voice="nova", input="Speed test.", response_format="pcm", speed=2.0, extra_body=QUICK
    ).content
    slow = client.audio.speech.create(
        model="tts-1", voice="nova", input="Speed test.", response_format="pcm", speed=0.25, extra_body=QUICK
    ).content
    # Same seed, same audio: 24 kHz 16-bit samples, twice as fast = half as long, a quarter speed = 4x as long.
    assert len(fast) / len(pcm) == pytest.approx(0.5, abs=0.08)
    assert len(slow) / len(pcm) == pytest.approx(4.0, abs=0.3)
    default = client.audio.speech.create(model="gpt-4o-mini-tts", voice="alloy", input="Default.", extra_body=QUICK)
    assert default.content[:3] == b"ID3" or default.content[0] == 0xFF  # mp3 by default
    raw = api.post("/v1/audio/speech", json={"input": "Headers.", "voice": "alloy", "response_format": "wav", **QUICK})
    assert raw.headers["X-Sample-Rate"] == "24000"
    assert raw.headers["X-Seed"] == str(QUICK["seed"])


def test_openai_speech_streams_audio_chunk_by_chunk(api: Api) -> None:
    # About 30 s of text: more than one chunk of at most 20 s (chunking depends on the text, not on the cap).
    text = " ".join(f"Sentence number {n} of the stream is spoken right now." for n in range(10))
    body = {"max_audio_seconds": 0.2, "seed": 5}
    chunks_before = metric_value(api, "llasa_stream_chunks_total", endpoint="speech_stream")
    with api.openai().audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=text, response_format="wav", stream_format="audio", extra_body=body
    ) as response:
        assert response.headers["content-type"] == "audio/wav"
        assert "content-length" not in response.headers
        assert response.headers["X-Seed"] == "5"
        streamed_chunks = int(response.headers["X-Chunks"])
        data = b"".join(response.iter_bytes())
    # One header for the whole stream, open-ended sizes, then 24 kHz 16-bit mono samples.
    assert data[:4] == b"RIFF"
    assert data.count(b"RIFF") == 1
    assert data[4:8] == b"\xff\xff\xff\xff"
    assert int.from_bytes(data[24:28], "little") == 24000
    streamed = len(data) - 44
    whole_response = api.post(
        "/v1/audio/speech", json={"input": text, "voice": "alloy", "response_format": "pcm", **body}
    )
    whole = whole_response.content
    # The stream resamples piece by piece with a stateful resampler: the same samples, give or take a few.
    assert abs(streamed - len(whole)) <= 2 * 64
    chunks = metric_value(api, "llasa_stream_chunks_total", endpoint="speech_stream") - chunks_before
    text_chunks = int(whole_response.headers["X-Chunks"])
    assert text_chunks >= 2
    assert streamed_chunks == text_chunks
    assert chunks == text_chunks + 1  # one piece per text chunk as it is done, then the held-back crossfade tail


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "pcm"])
def test_openai_speech_stream_other_formats(api: Api, fmt: str) -> None:
    response = api.post(
        "/v1/audio/speech",
        json={"input": "One. Two.", "voice": "alloy", "response_format": fmt, "stream_format": "audio", **QUICK},
        stream=True,
    )
    assert response.status_code == 200
    data = b"".join(response.iter_content(chunk_size=None))
    if fmt == "pcm":
        assert len(data) % 2 == 0
        assert len(data) > 0
    else:
        samples, rate = decode(data)
        assert rate == (48000 if fmt == "opus" else 24000)
        assert samples.size > 0


def test_openai_stream_failure_counts_as_an_error(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The service counts syntheses (every face): break the pieces its stream is made of.
    real = api.service._stream

    def breaks_after_the_first_piece(*args: Any, **kwargs: Any) -> Iterator[Any]:
        pieces = real(*args, **kwargs)
        try:
            yield next(pieces)
            raise RuntimeError("encoder bug")  # a fault in the stream, not the client leaving
        finally:
            pieces.close()

    monkeypatch.setattr(api.service, "_stream", breaks_after_the_first_piece)
    labels = {"endpoint": "speech_stream"}
    errors = metric_value(api, "llasa_syntheses_total", outcome="error", **labels)
    cancelled = metric_value(api, "llasa_syntheses_total", outcome="cancelled", **labels)
    body = {"input": "Two sentences here. And the second one.", "stream_format": "audio", "response_format": "pcm"}
    with caplog.at_level("ERROR", logger="faces.rest.routes.speech"):
        try:
            response = api.post("/v1/audio/speech", json={**body, **QUICK}, stream=True)
            assert response.status_code == 200
            b"".join(response.iter_content(4096))
        except requests.exceptions.RequestException:
            pass  # the cut body is how a raw stream reports the failure
        wait_for(
            lambda: metric_value(api, "llasa_syntheses_total", outcome="error", **labels) == errors + 1,
            "the failed stream to be counted as an error",
        )
    assert metric_value(api, "llasa_syntheses_total", outcome="cancelled", **labels) == cancelled
    failures = [r for r in caplog.records if r.name == "faces.rest.routes.speech" and r.levelname == "ERROR"]
    assert failures
    assert failures[0].exc_info is not None
    assert "encoder bug" in str(failures[0].exc_info[1])


def test_openai_speech_sse_events(api: Api) -> None:
    response = api.post(
        "/v1/audio/speech",
        json={
            "input": "Events. More events.",
            "voice": "alloy",
            "response_format": "pcm",
            "stream_format": "sse",
            **QUICK,
        },
        stream=True,
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = [
        json.loads(line[len("data: ") :])
        for line in response.iter_lines(decode_unicode=True)
        if line and line.startswith("data: ")
    ]
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    assert events[-1]["type"] == "speech.audio.done"
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert len(pcm) % 2 == 0
    assert events[-1]["duration_s"] == pytest.approx(len(pcm) / 2 / 24000, abs=0.002)


def test_openai_speech_errors(api: Api) -> None:
    client = api.openai()
    with pytest.raises(openai.NotFoundError) as missing:
        client.audio.speech.create(model="tts-1", voice="nobody-saved-this", input="hi", extra_body=QUICK)
    assert missing.value.body["code"] == "voice_not_found"  # the SDK unwraps {"error": {...}}
    with pytest.raises(openai.BadRequestError):
        client.audio.speech.create(model="tts-1", voice="alloy", input="hi", speed=5.0)
    cases = [
        ({"voice": "alloy"}, "input"),
        ({"input": "hi", "voice": "alloy", "speed": 0.1}, "speed"),
        ({"input": "hi", "voice": "alloy", "speed": "fast"}, "speed"),
        ({"input": "hi", "voice": "alloy", "response_format": "ogg"}, "response_format"),
        ({"input": "hi", "voice": "alloy", "stream_format": "chunks"}, "stream_format"),
        ({"input": "hi", "voice": 42}, "voice"),
        ({"input": "hi", "voice": "../etc"}, "voice"),
        ({"input": "hi", "voice": "alloy", "temperature": 0}, "temperature"),
    ]
    for body, field in cases:
        assert_error(api.post("/v1/audio/speech", json=body), 400, field=field)
    streamed_error = api.post(
        "/v1/audio/speech", json={"input": "hi", "voice": "ghost", "stream_format": "audio"}, stream=True
    )
    assert_error(streamed_error, 404, "voice_not_found")


def test_openai_transcriptions_every_format(api: Api) -> None:
    # A tiny random Whisper decodes speech until its length limit (seconds per call on these cores): speech goes
    # through the formats that carry segments, silence (VAD: nothing to decode) through the others.
    client = api.openai()
    speech, silence = AUDIO_DIR / "en_16k_mono.wav", AUDIO_DIR / "silence_3s.wav"
    with open(speech, "rb") as f:
        verbose = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="verbose_json")
    assert verbose.duration == pytest.approx(5.8, abs=0.3)
    assert verbose.segments
    assert all(isinstance(segment.start, float) and isinstance(segment.text, str) for segment in verbose.segments)
    with open(speech, "rb") as f:
        srt = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="srt", language="en")
    cues = re.findall(r"(?m)^(\d+)\n(\d\d:\d\d:\d\d,\d{3}) --> (\d\d:\d\d:\d\d,\d{3})\n", srt)
    assert [int(number) for number, _, _ in cues] == list(range(1, len(cues) + 1))
    assert cues
    with open(silence, "rb") as f:
        as_json = client.audio.transcriptions.create(model="whisper-1", file=f)
    assert as_json.text == ""
    with open(silence, "rb") as f:
        as_text = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="text")
    assert as_text.strip() == ""
    with open(silence, "rb") as f:
        vtt = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:03.000\n")
    bad = api.post("/v1/audio/transcriptions", files={"file": silence.open("rb")}, data={"response_format": "docx"})
    assert_error(bad, 400, field="response_format")
    assert_error(api.post("/v1/audio/transcriptions", data={"model": "whisper-1"}), 400, field="file")


def test_openai_models(api: Api) -> None:
    ids = {model.id for model in api.openai().models.list()}
    assert {"tts-1", "tts-1-hd", "gpt-4o-mini-tts", "whisper-1", "llasa"} <= ids


def test_voice_library_and_speech_with_saved_voices(api: Api) -> None:
    client = api.openai()
    wav = (AUDIO_DIR / "en_16k_mono.wav").read_bytes()
    created = api.post(
        "/v1/audio/voices", data={"name": "narrator", "transcript": EN_TRANSCRIPT}, files={"audio_sample": wav}
    )
    assert created.status_code == 201, created.text
    voice = created.json()
    assert voice["id"] == voice["name"] == "narrator"
    assert voice["transcript"] == EN_TRANSCRIPT
    assert voice["num_codes"] > 0
    assert "codes" not in voice
    # OpenAI's audio.voice shape, plus the service's own fields.
    assert voice["object"] == "audio.voice"
    assert voice["type"] == "audio_sample"
    assert isinstance(voice["created_at"], int)
    assert abs(voice["created_at"] - time.time()) < 3600
    assert voice["created_iso"].startswith(time.strftime("%Y-", time.gmtime(voice["created_at"])))
    assert voice["warnings"] == []
    assert "narrator" in {v["id"] for v in api.get("/v1/audio/voices").json()["data"]}
    assert api.get("/v1/audio/voices/narrator").json()["duration_s"] == voice["duration_s"]
    preview = api.get("/v1/audio/voices/narrator/audio")
    assert preview.status_code == 200
    assert soundfile.info(io.BytesIO(preview.content)).samplerate == 16000
    dup = api.post("/v1/audio/voices", data={"name": "narrator", "transcript": "x"}, files={"audio_sample": wav})
    assert_error(dup, 409, "voice_exists")
    # A saved voice by name, by {"id": ...}, and a saved voice that shadows a built-in name.
    raw = client.audio.speech.with_raw_response.create(
        model="tts-1", voice={"id": "narrator"}, input="As the narrator.", response_format="wav", extra_body=QUICK
    )
    assert raw.headers["X-Voice"] == "narrator"
    assert urllib.parse.unquote(raw.headers["X-Reference-Text"]) == EN_TRANSCRIPT
    builtin = api.post("/v1/audio/speech", json={"input": "Own voice.", "voice": "echo", **QUICK})
    assert builtin.status_code == 200
    assert builtin.headers["X-Voice"] == ""
    api.post("/v1/audio/voices", data={"name": "echo", "transcript": EN_TRANSCRIPT}, files={"audio_sample": wav})
    shadowed = api.post("/v1/audio/speech", json={"input": "Saved echo.", "voice": "echo", **QUICK})
    assert shadowed.headers["X-Voice"] == "echo"
    # The same library serves /api/tts.
    assert api.post("/api/tts", data={"text": "Saved.", "voice": "narrator", **QUICK}).headers["X-Voice"] == "narrator"
    # Errors.
    assert_error(api.post("/v1/audio/voices", data={"name": "../evil"}, files={"audio_sample": wav}), 400, field="name")
    assert_error(api.post("/v1/audio/voices", data={"name": "nosample"}), 400, field="audio_sample")
    assert_error(api.post("/v1/audio/voices", files={"audio_sample": wav}), 400, field="name")
    assert_error(api.get("/v1/audio/voices/ghost"), 404, "voice_not_found")
    assert_error(api.get("/v1/audio/voices/ghost/audio"), 404, "voice_not_found")
    # Delete.
    # Edit the transcript.
    edited = api.patch("/v1/audio/voices/narrator", json={"transcript": "  The quick brown fox.  "})
    assert edited.status_code == 200, edited.text
    assert edited.json()["transcript"] == "The quick brown fox."
    assert edited.json()["object"] == "audio.voice"
    assert api.get("/v1/audio/voices/narrator").json()["transcript"] == "The quick brown fox."
    assert_error(api.patch("/v1/audio/voices/narrator", json={}), 400, field="transcript")
    assert_error(api.patch("/v1/audio/voices/narrator", json={"transcript": "   "}), 400, field="transcript")
    assert_error(api.patch("/v1/audio/voices/ghost", json={"transcript": "Hello."}), 404, "voice_not_found")
    deleted = {"id": "narrator", "object": "audio.voice.deleted", "deleted": True}
    assert api.delete("/v1/audio/voices/narrator").json() == deleted
    assert api.delete("/v1/audio/voices/echo").status_code == 200
    assert_error(api.get("/v1/audio/voices/narrator"), 404, "voice_not_found")
    assert_error(api.delete("/v1/audio/voices/narrator"), 404, "voice_not_found")


def test_openai_sdk_voices_create_and_delete(api: Api) -> None:
    from openai.types.audio import Voice, VoiceDeleted

    client = api.openai()
    with (AUDIO_DIR / "en_16k_mono.wav").open("rb") as sample:
        voice = client.audio.voices.create(
            name="sdk voice", audio_sample=sample, consent="cons_unused", extra_body={"transcript": EN_TRANSCRIPT}
        )
    assert isinstance(voice, Voice)
    assert voice.id == voice.name == "sdk voice"
    assert voice.object == "audio.voice"
    assert voice.type == "audio_sample"
    assert isinstance(voice.created_at, int)
    assert voice.created_at > 1_700_000_000
    deleted = client.audio.voices.delete("sdk voice")
    assert isinstance(deleted, VoiceDeleted)
    assert deleted.id == "sdk voice"
    assert deleted.object == "audio.voice.deleted"
    assert deleted.deleted is True
    with pytest.raises(openai.NotFoundError):
        client.audio.voices.delete("sdk voice")


# --- docs, metrics, CORS ------------------------------------------------------------------------------------------


def test_openapi_spec_is_valid_and_covers_every_route(api: Api) -> None:
    spec = api.get("/apispec_1.json").json()
    assert spec["openapi"].startswith("3.0.")
    validate_spec(spec)  # OpenAPI 3.0 schema + semantic checks
    app = api.app
    documented = {(path, method.upper()) for path, item in spec["paths"].items() for method in item}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith("flasgger."):
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (path, method) in documented, f"{method} {path} is not in /apispec_1.json"
            operation = spec["paths"][path][method.lower()]
            assert operation.get("summary"), f"{method} {path} has no summary"
            assert operation["responses"], f"{method} {path} documents no responses"
            for name in re.findall(r"<(?:\w+:)?(\w+)>", rule.rule):
                assert any(p["name"] == name and p["in"] == "path" for p in operation.get("parameters", []))
    schemas = spec["components"]["schemas"]
    tts = spec["paths"]["/api/tts"]["post"]
    assert set(tts["requestBody"]["content"]) == {
        "application/json",
        "multipart/form-data",
        "application/x-www-form-urlencoded",
    }
    rate = schemas["TTSBody"]["properties"]["sample_rate"]
    assert rate["enum"] == [8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000]
    # The JSON variant answers JSON, documented as such (Swagger 2.0 could only say "binary").
    answers = tts["responses"]["200"]["content"]
    assert answers["application/json"]["schema"] == {"$ref": "#/components/schemas/TTSJsonResponse"}
    assert answers["audio/wav"]["schema"] == {"type": "string", "format": "binary"}
    for path in ("/api/transcribe", "/v1/audio/transcriptions", "/v1/audio/voices"):  # base64 in JSON bodies
        assert "application/json" in spec["paths"][path]["post"]["requestBody"]["content"], path
    speech_voice = schemas["SpeechBody"]["properties"]["voice"]
    assert "type" not in speech_voice  # a string or {"id": ...}
    assert speech_voice["anyOf"] == [{"type": "string"}, {"$ref": "#/components/schemas/VoiceRef"}]
    docs = api.get("/apidocs/")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


def test_metrics(api: Api) -> None:
    api.post("/api/tts", json={"text": "Count me.", **QUICK})
    api.get("/api/nothing")
    response = api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    assert metric_value(api, "llasa_http_requests_total", route="/api/tts", method="POST", status="200") >= 1
    assert metric_value(api, "llasa_http_errors_total", route="<unmatched>", code="not_found") >= 1
    assert metric_value(api, "llasa_syntheses_total", endpoint="tts", outcome="ok") >= 1
    assert metric_value(api, "llasa_audio_seconds_total", endpoint="tts") > 0
    assert metric_value(api, "llasa_synthesis_duration_seconds_count", endpoint="tts") >= 1
    assert metric_value(api, "llasa_real_time_factor_count") >= 1
    text = response.text
    assert "llasa_queue_depth" in text
    states = {m: metric_value(api, "llasa_model_state", model=m) for m in ("llasa", "xcodec2", "whisper")}
    assert states == {"llasa": 1.0, "xcodec2": 1.0, "whisper": 1.0}  # each model is in exactly one state
    # The GPU manager's counters and durations per model (loads, reloads, last load time...).
    assert metric_value(api, "llasa_model_loads", model="llasa") >= 1
    assert metric_value(api, "llasa_model_last_load_s", model="llasa") > 0


def test_no_cors_headers_by_default(api: Api) -> None:
    assert api.settings.cors_origin_list == []
    preflight = requests.options(
        api.url + "/v1/audio/speech",
        headers={"Origin": "https://webui.example", "Access-Control-Request-Method": "POST"},
        timeout=TIMEOUT_S,
    )
    assert "Access-Control-Allow-Origin" not in preflight.headers
    response = api.get("/v1/models", headers={"Origin": "https://webui.example"})
    assert response.status_code == 200
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Expose-Headers" not in response.headers


def test_front_end_imports_no_torch_and_starts_nothing() -> None:
    code = (
        "import sys, threading; import api_server, faces.rest.app; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch imported'; "
        "assert threading.active_count() == 1, threading.enumerate()"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert done.returncode == 0, done.stderr
