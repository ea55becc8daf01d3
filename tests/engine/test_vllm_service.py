"""The whole service with LLASA_ENGINE=vllm against real vLLM servers (vLLM's CPU build, tiny Llasa): the REST
app over real HTTP (synthesis, streaming as audio and SSE, 8 concurrent clients, a hung-up stream, the GPU manager
sleeping and waking the server), one MCP `generate_speech` call and one gradio_client call through the same engine;
then two replicas behind one service, one of them frozen, killed and restarted.

One vLLM server for the module, killed and restarted once (by the last tests), and a second one for the replica
tests. Generation stays short: the tiny model samples until its length limit, so `max_audio_seconds` is the length
of each answer.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import soundfile
from conftest import tiny_settings
from vllm_server import VLLM_PYTHON, VLLMServer, free_port, serving

from api_server import RunningServer, create_app
from llasa.config import Settings
from llasa.engine.types import CodeStream, FinishReason
from llasa.errors import ModelUnavailable
from llasa.gpu import DeviceMemory, MultiModelGPUManager
from llasa.models.vllm_server import load_vllm_server
from llasa.service import TTSService
from llasa.units import CODES_PER_SECOND

pytestmark = pytest.mark.skipif(
    not VLLM_PYTHON, reason="needs vLLM's CPU build: ./test_all.sh installs it and sets LLASA_VLLM_PYTHON"
)

TIMEOUT_S = 120
DEADLINE_S = 60.0
RATE = 16000
PCM_RATE = 24000  # the OpenAI route's rate
# Several text chunks, each allowed 20 s (1,000 codes): seconds of sampling on these cores, for the hang-up tests.
LONG_STREAM = {
    "input": " ".join(
        f"Sentence number {i} tells a little more of this long story about a quiet park." for i in range(24)
    ),
    "voice": "alloy",
    "response_format": "pcm",
    "stream_format": "audio",
    "max_audio_seconds": 20,
    "seed": 5,
}


def wait_for(predicate: Callable[[], Any], what: str, deadline_s: float = DEADLINE_S) -> Any:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Served:
    """A real TTSService (LLASA_ENGINE=vllm) behind a real waitress server on a free port."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.service = TTSService(settings)
        self.server = RunningServer(create_app(self.service, settings), settings, host="127.0.0.1", port=0).start()
        self.url = self.server.url

    def close(self) -> None:
        self.server.stop()
        self.service.shutdown()

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.post(self.url + path, timeout=TIMEOUT_S, **kwargs)

    def get(self, path: str) -> requests.Response:
        return requests.get(self.url + path, timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def vllm(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    with serving(tiny_models / "llasa", tmp_path_factory.mktemp("vllm-service") / "server.log") as server:
        yield server


@pytest.fixture(scope="module")
def settings(tiny_models: Path, vllm: VLLMServer, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return tiny_settings(
        tiny_models,
        tmp_path_factory.mktemp("vllm-service-root"),
        llasa_engine="vllm",
        vllm_url=vllm.url,
        max_audio_seconds=30.0,
    )


@pytest.fixture(scope="module")
def served(settings: Settings) -> Iterator[Served]:
    instance = Served(settings)
    try:
        yield instance
    finally:
        instance.close()


def tts(served: Served, index: int, seconds: float) -> tuple[int, requests.Response]:
    fields = {"text": f"Client {index} speaks.", "seed": 1000 + index, "max_audio_seconds": seconds}
    return index, served.post("/api/tts", data=fields)


def vllm_is_sleeping(vllm: VLLMServer) -> bool:
    return requests.get(vllm.url + "/is_sleeping", timeout=TIMEOUT_S).json()["is_sleeping"]


def wav_seconds(response: requests.Response) -> tuple[np.ndarray, float]:
    assert response.status_code == 200, response.text
    audio, rate = soundfile.read(io.BytesIO(response.content), dtype="float32")
    assert rate == RATE
    return audio, len(audio) / rate


def record_sequences(served: Served, monkeypatch: pytest.MonkeyPatch) -> list[CodeStream]:
    """The code streams the service's engine hands out from now on, in order (its own submit, watched on the way
    out): what a test reads to know which sequences are still in flight."""
    engine = served.service._engine_backend()
    submit = engine.submit
    streams: list[CodeStream] = []

    def recording_submit(*args: Any, **kwargs: Any) -> CodeStream:
        stream = submit(*args, **kwargs)
        streams.append(stream)
        return stream

    monkeypatch.setattr(engine, "submit", recording_submit)
    return streams


# --- synthesis ----------------------------------------------------------------------------------------------------


def test_tts_gives_audio_of_the_requested_length_from_the_vllm_engine(served: Served) -> None:
    _, response = tts(served, 0, 0.5)
    audio, seconds = wav_seconds(response)
    # the random model never samples the end token: it stops at the length limit, 25 codes of 320 samples
    assert seconds == pytest.approx(0.5, abs=0.021)
    assert float(response.headers["X-Audio-Duration-S"]) == pytest.approx(seconds, abs=1e-3)
    assert np.isfinite(audio).all()
    engine = served.get("/api/gpu/status").json()["engine"]
    assert engine["backend"] == "vllm"
    assert engine["ready"] is True
    assert engine["replicas"][0]["completed"] >= 1
    # the LM ran on the server: the service never loaded its own Llasa
    assert served.service.manager.state_of("llasa") == "unloaded"


def test_openai_speech_streams_audio_and_sse(served: Served) -> None:
    body = {"input": "Streamed. Twice.", "voice": "alloy", "response_format": "pcm", "seed": 3}
    raw = served.post(
        "/v1/audio/speech", json={**body, "stream_format": "audio", "max_audio_seconds": 0.6}, stream=True
    )
    assert raw.status_code == 200, raw.text
    pieces = list(raw.iter_content(chunk_size=None))
    assert len(pieces) >= 2  # audio arrived before the end
    pcm = b"".join(pieces)
    # two sentences, each up to 0.6 s
    assert 0.6 - 0.05 <= len(pcm) / 2 / PCM_RATE <= 1.2 + 0.05

    sse = served.post("/v1/audio/speech", json={**body, "stream_format": "sse", "max_audio_seconds": 0.4}, stream=True)
    assert sse.status_code == 200, sse.text
    assert sse.headers["Content-Type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in sse.iter_lines(decode_unicode=True) if line.startswith("data: ")]
    assert events[-1]["type"] == "speech.audio.done"
    assert {e["type"] for e in events[:-1]} == {"speech.audio.delta"}
    assert events[-1]["duration_s"] > 0.3


def test_eight_concurrent_requests_each_get_their_own_audio(served: Served) -> None:
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: tts(served, i, 0.1 + 0.04 * i), range(8)))
    audios: list[np.ndarray] = []
    for index, response in results:
        audio, seconds = wav_seconds(response)
        assert response.headers["X-Seed"] == str(1000 + index)
        assert seconds == pytest.approx(0.1 + 0.04 * index, abs=0.021)  # its own length limit
        audios.append(audio)
    assert len({a.tobytes() for a in audios}) == 8
    engine = served.service.engine_status()
    assert engine.running == 0


def test_a_hung_up_stream_frees_its_sequences_on_the_server(
    served: Served, vllm: VLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    sequences = record_sequences(served, monkeypatch)
    finished = vllm.metric("vllm:request_success_total")
    response = served.post("/v1/audio/speech", json=LONG_STREAM, stream=True)
    assert response.status_code == 200, response.text
    assert next(response.iter_content(chunk_size=1024))
    response.close()

    wait_for(lambda: all(s.finished for s in sequences), "the service to end the abandoned sequences")
    # some were still being sampled when the client hung up (several chunks of 1,000 codes each)
    assert any(s.finish_reason is FinishReason.CANCELLED for s in sequences)
    wait_for(lambda: served.service.engine_status().running == 0, "the client to forget them")
    # and the server stopped sampling them: aborted, not run to their ends for nobody (vLLM counts the requests it
    # finished, by any reason but an abort; its counters and gauges are updated together)
    wait_for(lambda: vllm.metric("vllm:num_requests_running") == 0, "vLLM to abort the abandoned sequences")
    assert vllm.metric("vllm:request_success_total") - finished < len(sequences)


# --- the other faces, same engine ---------------------------------------------------------------------------------


def test_mcp_generate_speech_through_vllm(served: Served) -> None:
    from fastmcp import Client

    from mcp_server import create_http_server, create_mcp

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = create_http_server(
        create_mcp(served.service, served.settings), served.settings, host="127.0.0.1", port=port
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, "the MCP server to start")

        async def call() -> Any:
            async with Client(f"http://127.0.0.1:{port}/mcp", timeout=TIMEOUT_S) as client:
                return await client.call_tool(
                    "generate_speech", {"text": "Hello.", "max_audio_seconds": 0.3, "seed": 7}
                )

        data = asyncio.run(call()).structured_content
        assert data["duration_s"] == pytest.approx(0.3, abs=0.021)
        assert Path(data["path"]).is_file()
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


def test_gradio_client_synthesizes_through_vllm(served: Served) -> None:
    from gradio_client import Client

    import app

    settings = served.settings.model_copy(update={"ui_port": free_port()})
    demo = app.create_ui(served.service, settings)
    url = app.launch_ui(demo, settings, prevent_thread_lock=True)
    client = Client(url, verbose=False, analytics_enabled=False, download_files=str(settings.temp_dir / "ui"))
    try:
        playable, *_ = client.predict(
            voice_mode="none",
            reference_audio=None,
            reference_text="",
            voice=None,
            language="auto",
            text_input="Hello from the UI.",
            max_seconds=1,
            seed=7,
            output_format="wav",
            api_name="/synthesize",
        )
        samples, rate = soundfile.read(playable)
        assert rate == RATE
        assert len(samples) / rate == pytest.approx(1.0, abs=0.021)
    finally:
        client.close()
        demo.close()


# --- the GPU manager puts the local server to sleep and wakes it -------------------------------------------------


def test_the_manager_sleeps_the_idle_server_and_a_request_wakes_it(
    served: Served, vllm: VLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = served.service.manager
    assert "vllm" in manager.model_names  # 127.0.0.1 is this host: managed (VLLM_MANAGED=auto)
    _, first = tts(served, 2, 0.1)
    assert first.status_code == 200, first.text
    # GPU_OFFLOAD_AFTER_USE (the default): idle after the last request, so asleep, by the server's own word
    wait_for(lambda: manager.state_of("vllm") == "cpu", "the manager to offload the idle server")
    assert vllm_is_sleeping(vllm) is True
    engine = served.get("/api/gpu/status").json()["engine"]
    assert (engine["managed"], engine["sleeping"]) == (True, True)
    before = served.get("/api/gpu/status").json()["models"]["vllm"]

    sequences = record_sequences(served, monkeypatch)
    response = served.post("/v1/audio/speech", json={**LONG_STREAM, "seed": 8}, stream=True)
    assert response.status_code == 200, response.text
    assert next(response.iter_content(chunk_size=1024))
    # Sequences in flight: the server awake and leased, so the idle offload leaves it alone. Read first, then count
    # the sequences still unfinished: each of those held its lease (taken by submit, ended after its stream ended)
    # through all the readings, however late the first audio came.
    state, leases, sleeping = manager.state_of("vllm"), manager.model_status("vllm")["leases"], vllm_is_sleeping(vllm)
    in_flight = sum(not s.finished for s in sequences)
    assert in_flight >= 1, "every sequence had ended before the readings: nothing in flight to check"
    assert (state, sleeping) == ("gpu", False)
    assert leases >= in_flight
    response.close()

    wait_for(lambda: all(s.finished for s in sequences), "the service to end the abandoned sequences")
    wait_for(lambda: vllm.metric("vllm:num_requests_running") == 0, "vLLM to abort the abandoned sequences")
    wait_for(lambda: manager.state_of("vllm") == "cpu", "the manager to put the idle server back to sleep")
    assert manager.model_status("vllm")["leases"] == 0
    assert vllm_is_sleeping(vllm) is True
    after = served.get("/api/gpu/status").json()["models"]["vllm"]
    assert after["reloads"] > before["reloads"]
    assert after["offloads"] > before["offloads"]
    assert after["size_bytes"] > 0  # its reservation: VLLM_GPU_MEMORY_UTILIZATION of the device
    # and a plain request after that still works (wakes it once more)
    _, done = tts(served, 3, 0.2)
    assert wav_seconds(done)[1] == pytest.approx(0.2, abs=0.021)


def test_admission_puts_the_idle_server_to_sleep_to_make_room(settings: Settings, vllm: VLLMServer) -> None:
    """On a 5 GB card with the server awake (4 GB), a 2 GB codec fits only once the server sleeps; the server cannot
    wake while the codec holds its 2 GB, and wakes once the idle codec makes room. The memory is a probe's numbers
    (a CPU server frees nothing); the sleeps and wakes are the real server's."""
    gb = 10**9
    awake: dict[str, bool] = {"vllm": False, "codec": False}

    class Codec:
        def move_to(self, device: str) -> None:
            awake["codec"] = device != "cpu"

        def size_bytes(self) -> int:
            return 2 * gb

        def close(self) -> None:
            awake["codec"] = False

    def probe() -> DeviceMemory:
        used = 4 * gb * (vllm_is_sleeping(vllm) is False) + 2 * gb * awake["codec"]
        return DeviceMemory(5 * gb, 5 * gb - used, used, used, "probe")

    def load_codec(device: str) -> Codec:
        awake["codec"] = True
        return Codec()

    stay = settings.model_copy(
        update={"gpu_offload_after_use": False, "gpu_idle_timeout": -1, "gpu_memory_headroom_mb": 0}
    )
    manager = MultiModelGPUManager(stay, device="cpu", memory_probe=probe, collect_garbage=False)
    manager.register_model("vllm", lambda device: load_vllm_server(stay, 4 * gb))
    manager.register_model("codec", load_codec, estimated_bytes=2 * gb)
    try:
        with manager.use("vllm"):
            assert vllm_is_sleeping(vllm) is False
        with manager.use("codec"):
            assert manager.state_of("vllm") == "cpu"
            assert vllm_is_sleeping(vllm) is True
            with pytest.raises(ModelUnavailable, match="vllm needs"), manager.use("vllm"):
                pass
        with manager.use("vllm"):  # the idle codec makes room
            assert manager.state_of("codec") == "cpu"
            assert vllm_is_sleeping(vllm) is False
    finally:
        manager.shutdown()
        requests.post(vllm.url + "/wake_up", timeout=TIMEOUT_S)  # leave it awake for the module's service


# --- two replicas behind one service; faults (last: these kill and restart the module's server) -------------------


@pytest.fixture(scope="module")
def second_vllm(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    """A second replica beside the module's server (idle, it takes ~1% of a core)."""
    with serving(tiny_models / "llasa", tmp_path_factory.mktemp("vllm-replica") / "server.log") as server:
        yield server


@pytest.fixture(scope="module")
def served_pair(
    tiny_models: Path, vllm: VLLMServer, second_vllm: VLLMServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """A second service with VLLM_URL=<the module's server>,<the second one> (two replicas: neither is managed)."""
    settings = tiny_settings(
        tiny_models,
        tmp_path_factory.mktemp("vllm-pair-root"),
        llasa_engine="vllm",
        vllm_url=f"{vllm.url},{second_vllm.url}",
        max_audio_seconds=30.0,
        # the run-on guard would bound a short text's take to a few seconds; the long take must stay long
        runon_slack_s=60.0,
    )
    instance = Served(settings)
    try:
        yield instance
    finally:
        instance.close()


def replicas(served: Served) -> dict[str, dict[str, Any]]:
    return {r["url"]: r for r in served.get("/api/gpu/status").json()["engine"]["replicas"]}


def test_replicas_share_the_load_and_one_dying_mid_stream_fails_only_that_stream(
    served: Served, served_pair: Served, vllm: VLLMServer, second_vllm: VLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two replicas, A (the module's server) and B: a long stream goes to A (both idle: the first listed), and
    while A holds it, frozen so it cannot finish, new requests go to B, the one with fewer sequences in flight.
    Then A dies: its stream ends with an error event, never as short audio; requests keep succeeding on B and
    /ready stays true, while the one-server service in front of A answers 503 naming the engine."""
    a, b = vllm.url, second_vllm.url
    # the one-server service manages A and may have put it to sleep; a sleeping vLLM holds requests until woken
    requests.post(f"{a}/wake_up", timeout=TIMEOUT_S).raise_for_status()
    assert served.get("/ready").status_code == 200
    assert served_pair.get("/ready").status_code == 200
    sequences = record_sequences(served_pair, monkeypatch)
    long_codes = 30 * CODES_PER_SECOND
    frozen = threading.Event()
    push = CodeStream.push

    def push_then_freeze_a(stream: CodeStream, codes: list[int]) -> None:
        # The fault, injected in the client's own thread as the long sequence's first audio window arrives: A
        # hangs there, far from its 1,500 codes, however this process's threads are scheduled.
        push(stream, codes)
        first_window = served_pair.settings.stream_first_codes
        if stream.params.max_new_tokens == long_codes and len(stream.codes) >= first_window and not frozen.is_set():
            frozen.set()
            vllm.freeze()

    monkeypatch.setattr(CodeStream, "push", push_then_freeze_a)
    one_take = {"input": "One long take.", "voice": "alloy", "response_format": "pcm", "stream_format": "sse"}
    long = served_pair.post("/v1/audio/speech", json={**one_take, "max_audio_seconds": 30, "seed": 4}, stream=True)
    assert long.status_code == 200, long.text
    assert long.headers["X-Chunks"] == "1"
    events = long.iter_lines(decode_unicode=True)
    assert next(line for line in events if line.startswith("data: "))  # audio is flowing
    (stream,) = sequences
    assert frozen.is_set()
    assert not stream.finished
    assert (replicas(served_pair)[a]["outstanding"], replicas(served_pair)[b]["outstanding"]) == (1, 0)

    completed = {url: r["completed"] for url, r in replicas(served_pair).items()}
    for index in range(2):
        _, response = tts(served_pair, 20 + index, 0.2)
        assert wav_seconds(response)[1] == pytest.approx(0.2, abs=0.021)
    now = replicas(served_pair)
    assert (now[a]["completed"], now[b]["completed"]) == (completed[a], completed[b] + 2)
    assert now[a]["outstanding"] == 1
    assert not stream.finished

    vllm.kill()
    rest = [json.loads(line[6:]) for line in events if line.startswith("data: ")]
    assert rest, "the stream ended without a word"
    assert rest[-1]["type"] == "error"
    assert rest[-1]["error"]["code"] == "model_unavailable"
    assert a in rest[-1]["error"]["message"]
    assert "incomplete" in rest[-1]["error"]["message"]
    assert all(e["type"] == "speech.audio.delta" for e in rest[:-1])  # no "done": the audio is known short

    # the survivor takes everything; the dead replica is skipped (an attempt on it fails before any code and moves
    # on), and /ready stays true while one replica answers
    for index in range(2):
        _, response = tts(served_pair, 30 + index, 0.2)
        assert wav_seconds(response)[1] == pytest.approx(0.2, abs=0.021)
    assert served_pair.get("/ready").status_code == 200
    now = replicas(served_pair)
    assert (now[a]["healthy"], now[b]["healthy"]) == (False, True)
    assert now[a]["failures"] >= 1
    assert (now[a]["completed"], now[b]["completed"]) == (completed[a], completed[b] + 4)
    assert (now[a]["outstanding"], now[b]["outstanding"]) == (0, 0)

    # the one-server service in front of A: a clear 503 naming the engine, quickly, and /ready false
    response = served.post("/api/tts", data={"text": "Nobody serves this.", "max_audio_seconds": 0.2})
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "model_unavailable"
    assert "vLLM" in error["message"]
    assert a in error["message"]
    again = served.post("/v1/audio/speech", json={"input": "Still nobody.", "stream_format": "audio"})
    assert again.status_code == 503
    assert "vLLM" in again.json()["error"]["message"]
    ready = served.get("/ready")
    assert ready.status_code == 503
    assert ready.json()["error"]["code"] == "not_ready"
    assert "vllm" in ready.json()["error"]["message"]
    assert served.get("/api/gpu/status").json()["engine"]["ready"] is False


def test_the_killed_server_restarted_is_used_again(served: Served, served_pair: Served, vllm: VLLMServer) -> None:
    """Runs after the test above killed the module's server: restarted, both services recover without a restart
    of their own, and the pair sends work to it again."""
    vllm.kill()  # already dead, unless the test above stopped early (then it may be frozen)
    vllm.start()
    vllm.wait_healthy()
    # the pair first: the one-server service manages A and puts it to sleep after its request, and a sleeping vLLM
    # holds the requests it gets until it is woken up
    wait_for(lambda: served_pair.get("/ready").status_code == 200 and replicas(served_pair)[vllm.url]["healthy"], "A")
    completed = replicas(served_pair)[vllm.url]["completed"]
    _, response = tts(served_pair, 40, 0.2)  # both idle: the first listed, A
    assert wav_seconds(response)[1] == pytest.approx(0.2, abs=0.021)
    assert replicas(served_pair)[vllm.url]["completed"] == completed + 1

    wait_for(lambda: served.get("/ready").status_code == 200, "/ready to recover")
    _, response = tts(served, 9, 0.2)
    assert wav_seconds(response)[1] == pytest.approx(0.2, abs=0.021)
