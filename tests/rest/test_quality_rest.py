"""verify and captions over REST (docs/quality.md): /api/tts as JSON, form and async job, /v1/audio/speech through
the official openai client, its SSE stream, and the refusals, against the real service on the tiny checkpoints
over real HTTP. The tiny Whisper hears noise, so every verified chunk takes all its retries."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import requests
import srt
import webvtt
from conftest import tiny_settings

from api_server import RunningServer, create_app
from llasa.service import TTSService

TIMEOUT_S = 120
QUICK = {"max_audio_seconds": 0.4, "seed": 21}
TEXT = "The quick brown fox jumps over the lazy dog."
WORDS = TEXT.rstrip(".").split()


class Api:
    def __init__(self, url: str, service: TTSService) -> None:
        self.url = url
        self.service = service

    def post(self, path: str, **kw: Any) -> requests.Response:
        return requests.post(self.url + path, timeout=TIMEOUT_S, **kw)

    def get(self, path: str, **kw: Any) -> requests.Response:
        return requests.get(self.url + path, timeout=TIMEOUT_S, **kw)

    def fetch(self, url: str) -> requests.Response:
        return requests.get(url, timeout=TIMEOUT_S)

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def api(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    settings = tiny_settings(tiny_models, tmp_path_factory.mktemp("quality-rest"))
    service = TTSService(settings)
    server = RunningServer(create_app(service, settings), settings, host="127.0.0.1", port=0).start()
    try:
        yield Api(server.url, service)
    finally:
        server.stop()
        service.shutdown()


def error_of(response: requests.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return response.json()["error"]


def test_tts_json_with_verify_reports_every_take_and_warns(api: Api) -> None:
    response = api.post("/api/tts?response=json", json={"text": TEXT, "verify": True, **QUICK})
    assert response.status_code == 200, response.text
    result = response.json()["result"]
    (chunk,) = result["chunk_reports"]
    assert chunk["attempts"] == 1 + api.service.settings.quality_retries
    assert len(chunk["problems"]) == chunk["attempts"]
    assert chunk["transcript"] is not None
    assert chunk["error_rate"] > api.service.settings.verify_max_cer
    assert any("did not pass every check" in w for w in result["warnings"])
    assert result["captions"] is None


def test_tts_json_with_captions_carries_them_inline(api: Api) -> None:
    response = api.post("/api/tts?response=json", json={"text": TEXT, "captions": "JSON", **QUICK})
    assert response.status_code == 200, response.text
    result = response.json()["result"]
    assert result["caption_format"] == "json"
    words = json.loads(result["captions"])
    assert [w["word"] for w in words] == WORDS
    assert all(0 <= w["start_s"] <= w["end_s"] <= result["duration_s"] + 1e-3 for w in words)
    assert result["chunk_reports"][0]["attempts"] == 1  # captions alone never retry


def test_tts_form_returns_audio_and_links_the_captions_file(api: Api) -> None:
    form = {"text": TEXT, "captions": "vtt", "verify": "false", **{k: str(v) for k, v in QUICK.items()}}
    response = api.post("/api/tts", data=form)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "audio/wav"
    assert response.headers["X-Takes"] == "1"
    download = api.fetch(response.headers["X-Captions-URL"])
    assert download.status_code == 200
    assert download.headers["Content-Type"].startswith("text/vtt")
    cues = webvtt.from_buffer(io.StringIO(download.text))
    assert " ".join(c.text for c in cues) == TEXT


def test_an_async_job_keeps_the_quality_fields(api: Api) -> None:
    response = api.post("/api/tts?async=true", json={"text": TEXT, "captions": "srt", "verify": True, **QUICK})
    assert response.status_code == 202, response.text
    location = response.headers["Location"]
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        job = api.get(location).json()
        if job["state"] in ("done", "failed", "cancelled") or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert job["state"] == "done", job
    result = job["result"]
    assert result["chunk_reports"][0]["attempts"] == 3
    assert list(srt.parse(result["captions"]))


def test_openai_speech_with_the_extension_fields_links_captions_scaled_to_speed(api: Api) -> None:
    client = api.openai()
    extra = {"captions": "srt", "verify": False, **QUICK}
    normal = client.audio.speech.with_raw_response.create(
        model="tts-1", input=TEXT, voice="alloy", response_format="wav", extra_body=extra
    )
    fast = client.audio.speech.with_raw_response.create(
        model="tts-1", input=TEXT, voice="alloy", response_format="wav", speed=2.0, extra_body=extra
    )
    cue_sets = []
    for raw in (normal, fast):
        assert raw.headers["X-Takes"] == "1"
        download = api.fetch(raw.headers["X-Captions-URL"])
        assert download.headers["Content-Type"].startswith("application/x-subrip")
        cues = list(srt.parse(download.text))
        assert cues[-1].end.total_seconds() <= float(raw.headers["X-Audio-Duration-S"]) + 1e-3
        cue_sets.append(cues)
    # the same seed, the same take: at speed 2 every cue comes twice as early
    for slow_cue, fast_cue in zip(*cue_sets, strict=True):
        assert fast_cue.start.total_seconds() == pytest.approx(slow_cue.start.total_seconds() / 2, abs=0.002)


def sse_events(response: requests.Response) -> list[dict[str, Any]]:
    return [json.loads(line[5:]) for line in response.iter_lines(decode_unicode=True) if line.startswith("data:")]


def test_sse_sends_each_chunks_check_after_its_audio_and_the_captions_at_the_end(api: Api) -> None:
    body = {
        "model": "tts-1",
        "input": "One sentence goes here. 第二句话在这里。",
        "stream_format": "sse",
        "response_format": "pcm",
        "captions": "json",
        **QUICK,
    }
    with api.post("/v1/audio/speech", json=body, stream=True) as response:
        assert response.status_code == 200, response.text
        events = sse_events(response)
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "speech.audio.done"
    checked = [e for e in events if e["type"] == "speech.chunk.checked"]
    assert len(checked) == int(response.headers["X-Chunks"])
    assert kinds.index("speech.audio.delta") < kinds.index("speech.chunk.checked")
    words = [w["word"] for e in checked for w in e["words"]]
    assert words == ["One", "sentence", "goes", "here", *"第二句话在这里"]
    done = events[-1]
    assert done["caption_format"] == "json"
    assert [w["word"] for w in json.loads(done["captions"])] == words


def test_sse_with_verify_reports_what_it_could_not_take_back(api: Api) -> None:
    body = {"model": "tts-1", "input": TEXT, "stream_format": "sse", "verify": True, **QUICK}
    with api.post("/v1/audio/speech", json=body, stream=True) as response:
        events = sse_events(response)
    (checked,) = [e for e in events if e["type"] == "speech.chunk.checked"]
    assert checked["attempts"] == 1
    assert checked["transcript"] is not None
    assert any("already streamed" in p for p in checked["problems"])
    assert any("did not pass every check" in w for w in events[-1]["warnings"])


def test_a_raw_audio_stream_refuses_captions(api: Api) -> None:
    body = {"model": "tts-1", "input": TEXT, "stream_format": "audio", "captions": "srt", **QUICK}
    error = error_of(api.post("/v1/audio/speech", json=body), 400)
    assert error["field"] == "captions"
    assert "stream_format=sse" in error["message"]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/tts", {"text": TEXT, "captions": "ass"}, "captions"),
        ("/api/tts", {"text": TEXT, "verify": "perhaps"}, "verify"),
        ("/v1/audio/speech", {"input": TEXT, "captions": 3}, "captions"),
        ("/v1/audio/speech", {"input": TEXT, "verify": [True]}, "verify"),
    ],
)
def test_bad_quality_fields_are_refused_naming_the_field(api: Api, path: str, body: dict, field: str) -> None:
    error = error_of(api.post(path, json=body), 400)
    assert error["field"] == field
