"""The MCP server end to end: the fastmcp Client over real streamable HTTP on 127.0.0.1 and over stdio (a
subprocess), against the real TTSService on the tiny checkpoints.

One server per module serves most tests (path mode); tests that need another configuration (inline audio, a
small upload limit) start their own server over the same service. Generation is kept to a fraction of a second
of audio per chunk so the file stays fast.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import soundfile
import srt
import webvtt
from conftest import tiny_settings
from fastmcp import Client
from fastmcp.client.transports import StdioTransport
from fastmcp.exceptions import McpError, ToolError

from llasa.audio import validate_output
from llasa.config import ENV_FILE_VARIABLE, Settings
from llasa.errors import InvalidInput, NotFound, VoiceNotFound
from llasa.service import NOTHING_TO_CHANGE, TTSService
from llasa.types import GenerationParams, SynthesisRequest
from mcp_server import create_http_server, create_mcp

REPO = Path(__file__).resolve().parents[2]
AUDIO_DIR = REPO / "tests" / "data" / "audio"  # the conftest's `audio_dir`, for module-scoped fixtures
TOOLS = {
    "generate_speech",
    "transcribe_audio",
    "get_gpu_status",
    "offload_gpu",
    "release_gpu",
    "update_gpu_timeout",
    "list_voices",
    "create_voice",
    "update_voice",
    "delete_voice",
}
REF_TRANSCRIPT = "The quick brown fox."
REF_SECONDS = 1.2  # the references are cut from en_16k_mono.wav: short keeps encoding cheap
# Short generation: a fraction of a second of speech per text chunk.
QUICK = {"max_audio_seconds": 0.2, "seed": 7}
# Several chunks' worth of text (a chunk holds up to ~20 s of speech); each chunk still generates only QUICK's
# fraction of a second.
LONG_TEXT = " ".join(
    f"Sentence number {i} tells a little more of this long story about a quiet afternoon in the park."
    for i in range(1, 13)
)
# Four of those sentences make two chunks: the per-chunk checks of verify and captions.
TWO_CHUNKS_TEXT = " ".join(
    f"Sentence number {i} tells a little more of this long story about a quiet afternoon in the park."
    for i in range(1, 5)
)
START_TIMEOUT_S = 60.0
CALL_TIMEOUT_S = 180.0


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def settings_for(tiny_models: Path, root: Path, **overrides: Any) -> Settings:
    return tiny_settings(tiny_models, root, **{"max_audio_seconds": 0.2, **overrides})


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve_http(mcp: Any, settings: Settings) -> Iterator[str]:
    """Serve `mcp` over streamable HTTP on a free port in a background thread; yield its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = create_http_server(mcp, settings, host="127.0.0.1", port=port)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        assert thread.is_alive(), "the MCP HTTP server thread died while starting"
        assert time.monotonic() < deadline, "the MCP HTTP server did not start in time"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


def client(url: str, **kwargs: Any) -> Client:
    return Client(url, timeout=CALL_TIMEOUT_S, **kwargs)


async def call(url: str, tool: str, args: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    async with client(url) as c:
        return await c.call_tool(tool, args or {}, **kwargs)


async def call_error(url: str, tool: str, args: dict[str, Any]) -> str:
    """Call a tool that must fail; return the error text the client sees."""
    async with client(url) as c:
        result = await c.call_tool(tool, args, raise_on_error=False)
    assert result.is_error, f"{tool}({args}) succeeded but should have failed: {result.content}"
    text = "\n".join(block.text for block in result.content if block.type == "text")
    assert "Traceback" not in text
    return text


@contextlib.contextmanager
def serve_rest(service: TTSService, settings: Settings) -> Iterator[str]:
    """The REST API over the same service on a free port; yield its base URL once /health answers."""
    from api_server import create_app, make_server

    rest = make_server(create_app(service, settings), settings, host="127.0.0.1", port=0)
    thread = threading.Thread(target=rest.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{rest.effective_port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                if requests.get(f"{base}/health", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "the REST server did not answer in time"
            time.sleep(0.05)
        yield base
    finally:
        rest.close()
        thread.join(timeout=15)


# --- fixtures -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mcp")


@pytest.fixture(scope="module")
def settings(tiny_models: Path, root: Path) -> Settings:
    return settings_for(tiny_models, root)


@pytest.fixture(scope="module")
def service(settings: Settings) -> Iterator[TTSService]:
    svc = TTSService(settings)
    yield svc
    svc.shutdown()


@pytest.fixture(scope="module")
def url(service: TTSService, settings: Settings) -> Iterator[str]:
    with serve_http(create_mcp(service, settings), settings) as address:
        yield address


def write_short_reference(target: Path) -> Path:
    """The first REF_SECONDS of the English recording, as a wav file at `target`."""
    samples, rate = soundfile.read(str(AUDIO_DIR / "en_16k_mono.wav"), dtype="float32")
    target.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(target), samples[: int(REF_SECONDS * rate)], rate)
    return target


@pytest.fixture(scope="module")
def reference_wav(settings: Settings) -> Path:
    """A short English recording inside an allowed folder (TEMP_DIR/refs)."""
    return write_short_reference(Path(settings.temp_dir) / "refs" / "en_short.wav")


def test_importing_mcp_server_loads_no_model_library() -> None:
    """The front end never imports torch or transformers (the service is imported by main() only)."""
    code = "import sys, mcp_server; print(sorted({'torch', 'transformers', 'faster_whisper'} & set(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# --- listing --------------------------------------------------------------------------------------------------


def test_tools_are_listed_with_schemas_descriptions_and_annotations(url: str, settings: Settings) -> None:
    async def listing() -> list[Any]:
        async with client(url) as c:
            return await c.list_tools()

    tools = {tool.name: tool for tool in run(listing())}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert len(tool.description or "") > 40, tool.name
        assert "{" not in tool.description, f"unformatted placeholder in {tool.name}'s description"
        for name, prop in tool.input_schema.get("properties", {}).items():
            assert prop.get("description"), f"{tool.name}.{name} has no description"
            assert "{" not in prop["description"], f"unformatted placeholder in {tool.name}.{name}"

    speech = tools["generate_speech"]
    props = speech.input_schema["properties"]
    assert speech.input_schema["required"] == ["text"]
    assert "ctx" not in props
    assert {"text", "voice", "reference_audio_path", "reference_audio_base64", "reference_text", "seed"} <= set(props)
    assert (props["temperature"]["exclusiveMinimum"], props["temperature"]["maximum"]) == (0, 2)
    assert (props["seed"]["minimum"], props["seed"]["maximum"]) == (0, 2**32 - 1)
    assert f"Default {settings.default_temperature:g}" in props["temperature"]["description"]
    assert props["format"]["enum"] == ["wav", "flac", "mp3", "opus", "aac", "pcm"]
    assert {"path", "url", "duration_s", "sample_rate", "reference_text"} <= set(speech.output_schema["properties"])
    assert "url" in speech.description
    # The assistant is told which folders it may name files in.
    for tool, arg in (("generate_speech", "reference_audio_path"), ("transcribe_audio", "audio_path")):
        assert str(Path(settings.temp_dir).resolve()) in tools[tool].input_schema["properties"][arg]["description"]
    assert "progress" in speech.description
    assert props["captions"]["enum"] == ["srt", "vtt", "json", None]
    verify = " ".join(props["verify"]["description"].split())
    assert f"{settings.verify_max_cer:g} (VERIFY_MAX_CER)" in verify
    assert f"up to {settings.quality_retries} more times (QUALITY_RETRIES)" in verify
    assert f"Default {str(settings.verify_default).lower()} (VERIFY_DEFAULT)" in verify
    assert {"chunk_reports", "captions", "caption_format", "captions_path", "captions_url", "warnings"} <= set(
        speech.output_schema["properties"]
    )

    def hints(name: str) -> dict[str, Any]:
        return tools[name].annotations.model_dump(by_alias=True, exclude_none=True)

    for name in ("get_gpu_status", "list_voices", "transcribe_audio"):
        assert hints(name)["readOnlyHint"] is True, name
    assert hints("delete_voice")["destructiveHint"] is True
    for name in ("generate_speech", "create_voice", "update_voice", "offload_gpu", "release_gpu", "update_gpu_timeout"):
        assert hints(name)["readOnlyHint"] is False, name
        assert hints(name)["destructiveHint"] is False, name
    assert all(hints(name)["openWorldHint"] is False for name in TOOLS)
    # "vllm" too: a managed vLLM server (LLASA_ENGINE=vllm) is offloaded and released by name like the others
    assert tools["offload_gpu"].input_schema["properties"]["model"]["enum"] == [
        "llasa",
        "xcodec2",
        "whisper",
        "vllm",
        None,
    ]
    update = tools["update_voice"]
    assert update.input_schema["required"] == ["name", "transcript"]
    assert "word for word" in update.description
    assert "warnings" in tools["create_voice"].output_schema["properties"]


# --- generate_speech ------------------------------------------------------------------------------------------


def test_generate_speech_saves_a_file_and_returns_path_url_and_facts(url: str, settings: Settings) -> None:
    result = run(call(url, "generate_speech", {"text": "Hello there.", **QUICK}))
    data = result.structured_content
    path = Path(data["path"])
    assert path.is_file()
    assert path.parent == Path(settings.output_dir).resolve()
    assert data["url"] == f"{settings.api_base_url}/api/outputs/{path.name}"
    assert data["id"] == path.name
    info = soundfile.info(str(path))
    assert info.samplerate == data["sample_rate"] == 16000
    assert info.frames / info.samplerate == pytest.approx(data["duration_s"], abs=0.002)
    assert 0 < data["duration_s"] <= 0.4 + 0.02
    assert data["reference_text"] == ""
    assert data["seed"] == 7
    assert data["chunks"] == 1
    assert data["audio_inline"] is False
    assert set(data["timings_s"]) >= {"generate", "decode", "total"}
    # Path mode: the text content is the same JSON, and no audio rides along.
    assert [block.type for block in result.content] == ["text"]
    assert json.loads(result.content[0].text)["path"] == data["path"]


def test_format_and_sample_rate_are_applied(url: str) -> None:
    result = run(call(url, "generate_speech", {"text": "Hi.", "format": "flac", "sample_rate": 24000, **QUICK}))
    data = result.structured_content
    assert data["format"] == "flac"
    assert data["mime_type"] == "audio/flac"
    assert data["path"].endswith(".flac")
    assert soundfile.info(data["path"]).samplerate == data["sample_rate"] == 24000


def test_progress_follows_the_audio_windows(url: str) -> None:
    """One chunk of several seconds: a notification per audio window, in seconds of audio, strictly increasing,
    ending at the duration."""
    updates: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        updates.append((progress, total, message))

    args = {"text": "One sentence, spoken slowly, that goes on for a few seconds.", "max_audio_seconds": 4, "seed": 9}
    result = run(call(url, "generate_speech", args, progress_handler=on_progress))
    data = result.structured_content
    assert data["chunks"] == 1
    assert data["duration_s"] >= 1.0, "the seed should give a few seconds of speech"
    values = [progress for progress, _total, _message in updates]
    assert values == sorted(set(values)), f"progress must strictly increase: {updates}"
    windows = [(p, t) for p, t, message in updates if message == "chunk 1 of 1"]
    assert len(windows) > data["chunks"] + 1, f"expected a notification per audio window: {updates}"
    assert all(total == 4.0 for _p, total in windows)  # the plan: 1 chunk x max_audio_seconds
    assert updates[-1] == (
        pytest.approx(data["duration_s"], abs=1e-3),
        pytest.approx(data["duration_s"], abs=1e-3),
        "done",
    )


def test_progress_covers_every_chunk(url: str) -> None:
    updates: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        updates.append((progress, total, message))

    result = run(call(url, "generate_speech", {"text": LONG_TEXT, **QUICK}, progress_handler=on_progress))
    chunks = result.structured_content["chunks"]
    assert chunks >= 2, "the text should need several chunks at this budget"
    values = [progress for progress, _total, _message in updates]
    assert values == sorted(set(values)), f"progress must strictly increase: {updates}"
    messages = {message for _p, _t, message in updates}
    assert {f"chunk {i} of {chunks}" for i in range(1, chunks + 1)} <= messages
    assert updates[-1][0] == pytest.approx(result.structured_content["duration_s"], abs=1e-3)


def test_verify_retries_every_chunk_and_keeps_the_best_take_with_a_warning(url: str, settings: Settings) -> None:
    """The tiny Whisper hears noise, so no take passes: every chunk is made 1 + QUALITY_RETRIES times, the best
    take is kept, and the result says so. A verified synthesis is not streamed (a stream cannot take back audio
    it has sent), so progress counts the chunks checked."""
    updates: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        updates.append((progress, total, message))

    result = run(
        call(url, "generate_speech", {"text": TWO_CHUNKS_TEXT, "verify": True, **QUICK}, progress_handler=on_progress)
    )
    data = result.structured_content
    takes = 1 + settings.quality_retries
    assert data["chunks"] == 2
    reports = data["chunk_reports"]
    assert [(r["index"], r["attempts"]) for r in reports] == [(0, takes), (1, takes)]
    for report in reports:
        assert 1 <= report["kept_attempt"] <= takes
        assert len(report["problems"]) == takes
        assert all("error rate" in problem for problem in report["problems"])
        assert isinstance(report["transcript"], str)
        assert report["error_rate"] > settings.verify_max_cer
    kept_warnings = [w for w in data["warnings"] if "did not pass every check" in w]
    assert len(kept_warnings) == 2
    assert kept_warnings[0].startswith(f"chunk 1 of 2: kept take {reports[0]['kept_attempt']} of {takes}")
    assert data["timings_s"]["verify"] > 0
    assert data["captions"] is None
    assert data["captions_path"] is None
    assert data["captions_url"] is None
    assert soundfile.info(data["path"]).frames / 16000 == pytest.approx(data["duration_s"], abs=0.002)
    values = [progress for progress, _total, _message in updates]
    assert values == sorted(set(values)), f"progress must strictly increase: {updates}"
    assert [(p, t, m) for p, t, m in updates if p > 0] == [
        (1, 2, "1 of 2 chunks checked"),
        (2, 2, "2 of 2 chunks checked"),
    ]


def test_verify_false_overrides_a_server_that_verifies_by_default(service: TTSService, settings: Settings) -> None:
    verifying = settings.model_copy(update={"verify_default": True})
    with serve_http(create_mcp(service, verifying), verifying) as address:
        by_default = run(call(address, "generate_speech", {"text": "Hello there.", **QUICK})).structured_content
        plain = run(call(address, "generate_speech", {"text": "Hello there.", "verify": False, **QUICK}))
    assert by_default["chunk_reports"][0]["attempts"] == 1 + settings.quality_retries
    assert by_default["chunk_reports"][0]["error_rate"] is not None
    (report,) = plain.structured_content["chunk_reports"]
    assert (report["attempts"], report["transcript"], report["error_rate"]) == (1, None, None)
    assert not any("did not pass" in w for w in plain.structured_content["warnings"])


def vtt_seconds(stamp: str) -> float:
    hours, minutes, seconds = stamp.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


@pytest.mark.parametrize("fmt", ["srt", "vtt", "json"])
def test_captions_are_returned_and_saved_beside_the_audio(url: str, settings: Settings, fmt: str) -> None:
    """Captions come from the stream's chunk reports (pieces without audio): progress still follows the audio
    windows and ends at the duration."""
    updates: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        updates.append((progress, total, message))

    args = {"text": "Good morning. 早上好。", "captions": fmt, "max_audio_seconds": 1.0, "seed": 4}
    data = run(call(url, "generate_speech", args, progress_handler=on_progress)).structured_content
    duration = data["duration_s"]
    assert data["caption_format"] == fmt
    captions = data["captions"]
    assert captions
    path = Path(data["captions_path"])
    assert path.parent == Path(settings.output_dir).resolve()
    assert path.suffix == f".{fmt}"
    assert path.read_text(encoding="utf-8") == captions
    assert data["captions_url"] == f"{settings.api_base_url}/api/outputs/{path.name}"
    assert path.name != Path(data["path"]).name
    if fmt == "srt":
        cues = list(srt.parse(captions))
        assert "".join(cue.content for cue in cues).replace(" ", "") == "Goodmorning.早上好。"
        spans = [(cue.start.total_seconds(), cue.end.total_seconds()) for cue in cues]
    elif fmt == "vtt":
        cues = webvtt.from_buffer(io.StringIO(captions))
        assert "Good morning." in " ".join(cue.text for cue in cues)
        spans = [(vtt_seconds(cue.start), vtt_seconds(cue.end)) for cue in cues]
    else:
        words = json.loads(captions)
        assert [word["word"] for word in words] == ["Good", "morning", "早", "上", "好"]
        spans = [(word["start_s"], word["end_s"]) for word in words]
    assert spans
    assert [start for start, _end in spans] == sorted(start for start, _end in spans)
    assert all(0 <= start <= end <= duration + 1e-3 for start, end in spans)
    # Words were timed (a transcription per chunk), but nothing was verified or made again.
    (report,) = data["chunk_reports"]
    assert report["attempts"] == 1
    assert not any("did not pass" in w for w in data["warnings"])
    values = [progress for progress, _total, _message in updates]
    assert values == sorted(set(values)), f"progress must strictly increase: {updates}"
    assert any(message == "chunk 1 of 1" for _p, _t, message in updates)
    assert updates[-1] == (pytest.approx(duration, abs=1e-3), pytest.approx(duration, abs=1e-3), "done")


def test_a_captions_file_downloads_from_the_rest_outputs_route(
    url: str, service: TTSService, settings: Settings
) -> None:
    with serve_rest(service, settings) as base:
        for fmt, mime_type in (("vtt", "text/vtt"), ("json", "application/json")):
            data = run(call(url, "generate_speech", {"text": "Hello there.", "captions": fmt, **QUICK}))
            output_id = Path(data.structured_content["captions_path"]).name
            assert data.structured_content["captions_url"].endswith(f"/api/outputs/{output_id}")
            answer = requests.get(f"{base}/api/outputs/{output_id}", timeout=30)
            assert answer.status_code == 200
            assert answer.headers["Content-Type"].startswith(mime_type)
            assert answer.content.decode("utf-8") == data.structured_content["captions"]


def test_bad_quality_arguments_are_tool_errors_naming_the_field(url: str, settings: Settings) -> None:
    outputs = Path(settings.output_dir)
    before = set(outputs.iterdir())
    with pytest.raises(InvalidInput) as expected:
        SynthesisRequest(text="Hi.", captions="ass")
    message = run(call_error(url, "generate_speech", {"text": "Hi.", "captions": "ass", **QUICK}))
    assert message == expected.value.message
    assert message.startswith("captions 'ass' is not a caption format")
    assert "srt, vtt, json" in message
    message = run(call_error(url, "generate_speech", {"text": "Hi.", "verify": "perhaps", **QUICK}))
    assert "verify" in message
    assert "bool" in message
    assert set(outputs.iterdir()) == before, "a refused request must not save anything"


def test_cancelling_the_call_stops_the_synthesis(url: str, service: TTSService, settings: Settings) -> None:
    """A client that gives up (here after the first chunk) cancels the request; the server stops generating
    at the engine's next step, frees the GPU queue and saves nothing."""
    outputs = Path(settings.output_dir)
    before = set(outputs.iterdir())
    text = " ".join([LONG_TEXT] * 4)

    async def cancel_after_first_chunk() -> list[float]:
        seen: list[float] = []
        first_chunk = asyncio.Event()

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            seen.append(progress)
            if message and message.startswith("chunk 2 of"):
                first_chunk.set()

        async with client(url) as c:
            call_task = asyncio.ensure_future(
                c.call_tool("generate_speech", {"text": text, **QUICK}, progress_handler=on_progress)
            )
            await asyncio.wait_for(first_chunk.wait(), CALL_TIMEOUT_S)
            call_task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call_task
            # Stay connected until the server has given the GPU slot back.
            deadline = time.monotonic() + CALL_TIMEOUT_S
            while service.gpu_status().queue.busy:
                assert time.monotonic() < deadline, "the cancelled synthesis kept the GPU"
                await asyncio.sleep(0.05)
        return seen

    seen = run(cancel_after_first_chunk())
    # Each chunk is at most QUICK's 0.2 s: well short of the whole text's chunks when it stopped.
    assert max(seen) < 4 * 0.2
    assert set(outputs.iterdir()) == before, "a cancelled synthesis must not save a file"


def test_reference_by_path_and_by_base64(url: str, reference_wav: Path) -> None:
    args = {"text": "Nice to meet you.", "reference_text": REF_TRANSCRIPT, **QUICK}
    by_path = run(call(url, "generate_speech", args | {"reference_audio_path": str(reference_wav)}))
    data = by_path.structured_content
    assert data["reference_text"] == REF_TRANSCRIPT
    assert data["reference_seconds"] == pytest.approx(REF_SECONDS, abs=0.05)

    encoded = "data:audio/wav;base64," + base64.b64encode(reference_wav.read_bytes()).decode()
    by_data = run(call(url, "generate_speech", args | {"reference_audio_base64": encoded})).structured_content
    assert by_data["reference_text"] == REF_TRANSCRIPT
    assert by_data["reference_seconds"] == data["reference_seconds"]
    # Same reference, text and seed: the same audio, whichever way the reference came in.
    assert by_data["num_codes"] == data["num_codes"]
    assert Path(by_data["path"]).read_bytes() == Path(data["path"]).read_bytes()


def test_paths_outside_the_allowed_folders_are_refused(
    url: str, settings: Settings, service: TTSService, reference_wav: Path, audio_dir: Path, tmp_path: Path
) -> None:
    allowed = Path(settings.temp_dir).resolve()
    outside = tmp_path / "outside.wav"
    shutil.copy(audio_dir / "en_16k_mono.wav", outside)
    (allowed / "link_out.wav").unlink(missing_ok=True)
    (allowed / "link_out.wav").symlink_to(outside)
    cases = {
        str(outside): "outside the folders this server may read",  # absolute, elsewhere
        str(audio_dir / "en_16k_mono.wav"): "outside the folders this server may read",
        "/etc/passwd": "outside the folders this server may read",
        f"{allowed}/../outputs/x.wav": "contains '..'",
        "../../etc/passwd": "contains '..'",
        "link_out.wav": "outside the folders this server may read",  # a symlink inside pointing out
        "refs/missing.wav": "does not exist",
    }
    for path, expected in cases.items():
        for tool, args in (
            ("generate_speech", {"text": "Hi.", "reference_audio_path": path, "reference_text": "Hi.", **QUICK}),
            ("transcribe_audio", {"audio_path": path}),
            ("create_voice", {"name": "sneaky", "audio_path": path, "transcript": "Hi."}),
        ):
            message = run(call_error(url, tool, args))
            assert expected in message, (tool, path, message)
            if "outside" in expected:
                assert str(allowed) in message  # tells where files may go
                assert "base64" in message  # and the other way in
    assert "sneaky" not in {voice.name for voice in service.list_voices()}


def test_errors_are_tool_errors_with_the_service_messages(url: str, reference_wav: Path) -> None:
    assert run(call_error(url, "generate_speech", {"text": "   "})) == "text is empty; give the words to speak"
    message = run(
        call_error(url, "generate_speech", {"text": "Hi.", "voice": "anyone", "reference_audio_path": "x.wav"})
    )
    # The path is checked first: nothing outside the sandbox is decoded, whatever else is wrong.
    assert "does not exist" in message
    message = run(
        call_error(
            url,
            "generate_speech",
            {"text": "Hi.", "voice": "anyone", "reference_audio_path": str(reference_wav)},
        )
    )
    assert message == "give either a saved voice or reference_audio, not both"
    assert "not both" in run(
        call_error(url, "transcribe_audio", {"audio_path": str(reference_wav), "audio_base64": "AAAA"})
    )
    assert "no audio given" in run(call_error(url, "transcribe_audio", {}))
    assert "not valid base64" in run(call_error(url, "transcribe_audio", {"audio_base64": "not base64!"}))
    junk = base64.b64encode(b"this is plain text, not audio at all " * 20).decode()
    assert "audio" in run(call_error(url, "transcribe_audio", {"audio_base64": junk})).lower()
    assert "language" in run(
        call_error(url, "transcribe_audio", {"audio_path": str(reference_wav), "language": "klingon"})
    )
    # Out-of-range parameters: the schema states the ranges, the service refuses with the message REST gives.
    for bad in ({"temperature": 5.0}, {"seed": -1}, {"top_p": 0.0}):
        with pytest.raises(InvalidInput) as expected:
            GenerationParams(**bad).validate()
        assert run(call_error(url, "generate_speech", {"text": "Hi.", **bad})) == expected.value.message
    for fmt, rate in (("midi", 16000), ("mp3", 11111)):
        with pytest.raises(InvalidInput) as expected:
            validate_output(fmt, rate)
        message = run(call_error(url, "generate_speech", {"text": "Hi.", "format": fmt, "sample_rate": rate}))
        assert message == expected.value.message


def test_unexpected_exceptions_are_masked(url: str, service: TTSService, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("secret detail /internal/path")

    # A fault in the service is what this test is not about; only its reporting is.
    monkeypatch.setattr(service, "gpu_status", broken)
    message = run(call_error(url, "get_gpu_status", {}))
    assert "internal error" in message
    assert "secret" not in message
    assert "/internal/path" not in message


# --- transcription, GPU, voices -------------------------------------------------------------------------------


def test_transcribe_audio(url: str, reference_wav: Path) -> None:
    result = run(call(url, "transcribe_audio", {"audio_path": "refs/en_short.wav", "language": "en"}))
    data = result.structured_content
    assert set(data) >= {"text", "language", "duration_s", "segments"}
    assert isinstance(data["text"], str)  # the tiny Whisper's words are noise
    assert data["language"] == "en"
    assert data["duration_s"] == pytest.approx(REF_SECONDS, abs=0.05)


def test_gpu_tools_change_and_report_model_state(url: str, service: TTSService, settings: Settings) -> None:
    # Keep models where they are after use, so that only the tools move them.
    run(call(url, "update_gpu_timeout", {"offload_after_use": False, "idle_timeout_s": -1}))
    try:
        run(call(url, "generate_speech", {"text": "Warm up.", **QUICK}))  # loads llasa and xcodec2
        status = run(call(url, "get_gpu_status")).structured_content
        assert set(status["models"]) == {"llasa", "xcodec2", "whisper"}
        assert status["models"]["llasa"]["state"] == "gpu"  # "gpu" = resident on the device (here the CPU)
        offloads = status["models"]["llasa"]["offloads"]

        offloaded = run(call(url, "offload_gpu", {"model": "llasa"})).structured_content
        assert offloaded == {"action": "offload", "models": {"llasa": "offloaded"}}
        llasa = run(call(url, "get_gpu_status")).structured_content["models"]["llasa"]
        assert (llasa["state"], llasa["offloads"]) == ("cpu", offloads + 1)

        released = run(call(url, "release_gpu", {"model": "xcodec2"})).structured_content
        assert released == {"action": "release", "models": {"xcodec2": "released"}}
        assert service.gpu_status().models["xcodec2"].state == "unloaded"

        everything = run(call(url, "offload_gpu")).structured_content
        assert set(everything["models"]) == {"llasa", "xcodec2", "whisper"}
    finally:
        service.set_timeouts(offload_after_use=settings.gpu_offload_after_use, idle_timeout_s=settings.gpu_idle_timeout)
    # Model names are the service's to check: its message comes through unchanged.
    for tool, action in (("offload_gpu", service.offload), ("release_gpu", service.release)):
        with pytest.raises(NotFound) as unknown:
            action("gpt")
        assert "no model named 'gpt'" in unknown.value.message
        assert run(call_error(url, tool, {"model": "gpt"})) == unknown.value.message
        # "vllm" is in the schema, but this service runs the embedded engine: the registered names are listed
        message = run(call_error(url, tool, {"model": "vllm"}))
        assert "no model named 'vllm'" in message
        assert "llasa" in message


def test_update_gpu_timeout(url: str, service: TTSService) -> None:
    before = service.gpu_status().to_dict()["settings"]
    try:
        now = run(call(url, "update_gpu_timeout", {"idle_timeout_s": 12.5, "evict_timeout_s": -1})).structured_content
        assert service.gpu_status().to_dict()["settings"] == now
        assert 12.5 in now.values()
        assert -1 in now.values()
        assert run(call_error(url, "update_gpu_timeout", {})) == NOTHING_TO_CHANGE
        for field in ("idle_timeout_s", "evict_timeout_s"):
            with pytest.raises(InvalidInput) as out_of_range:
                service.set_timeouts(**{field: -5.0})  # the tool takes a number: -5 arrives as -5.0
            assert f"{field} must be -1" in out_of_range.value.message
            assert run(call_error(url, "update_gpu_timeout", {field: -5})) == out_of_range.value.message
    finally:
        service.set_timeouts(
            **{k: before[k] for k in ("idle_timeout_s", "evict_timeout_s", "offload_after_use") if k in before}
        )


def test_voice_library_round_trip(url: str, reference_wav: Path, service: TTSService) -> None:
    created = run(
        call(
            url, "create_voice", {"name": "Narrator 1", "audio_path": str(reference_wav), "transcript": REF_TRANSCRIPT}
        )
    ).structured_content
    assert created["name"] == "Narrator 1"
    assert created["transcript"] == REF_TRANSCRIPT
    assert created["num_codes"] == pytest.approx(REF_SECONDS * 50, abs=2)
    assert created["warnings"] == []  # short enough to keep whole, so the given transcript stands
    try:
        listed = run(call(url, "list_voices")).structured_content
        assert "Narrator 1" in {v["name"] for v in listed["voices"]}
        assert listed["count"] == len(listed["voices"])

        message = run(
            call_error(
                url, "create_voice", {"name": "Narrator 1", "audio_path": str(reference_wav), "transcript": "Hi."}
            )
        )
        assert "already exists" in message

        spoken = run(call(url, "generate_speech", {"text": "Using a saved voice.", "voice": "Narrator 1", **QUICK}))
        assert spoken.structured_content["voice"] == "Narrator 1"
        assert spoken.structured_content["reference_text"] == REF_TRANSCRIPT

        bad_name = run(
            call_error(url, "create_voice", {"name": "../evil", "audio_path": str(reference_wav), "transcript": "x"})
        )
        assert "not allowed" in bad_name

        updated = run(
            call(url, "update_voice", {"name": "Narrator 1", "transcript": "  The quick   brown fox!  "})
        ).structured_content
        assert (updated["name"], updated["transcript"]) == ("Narrator 1", "The quick brown fox!")
        assert service.get_voice("Narrator 1").transcript == "The quick brown fox!"
        listed = run(call(url, "list_voices")).structured_content["voices"]
        assert {v["name"]: v["transcript"] for v in listed}["Narrator 1"] == "The quick brown fox!"
        # The service's refusals come through with its own words, and change nothing.
        for args in (
            {"name": "Narrator 1", "transcript": "   "},
            {"name": "Narrator 1", "transcript": "a <|eot_id|> b"},
            {"name": "Nobody", "transcript": "Words."},
        ):
            with pytest.raises((InvalidInput, VoiceNotFound)) as refused:
                service.update_voice(args["name"], args["transcript"])
            assert run(call_error(url, "update_voice", args)) == refused.value.message
        assert service.get_voice("Narrator 1").transcript == "The quick brown fox!"
    finally:
        deleted = run(call(url, "delete_voice", {"name": "Narrator 1"})).structured_content
    assert deleted == {"deleted": "Narrator 1"}
    assert "Narrator 1" not in {v.name for v in service.list_voices()}
    with pytest.raises(VoiceNotFound) as missing:
        service.delete_voice("Narrator 1")
    assert run(call_error(url, "delete_voice", {"name": "Narrator 1"})) == missing.value.message


# --- other configurations -------------------------------------------------------------------------------------


def test_create_voice_passes_on_the_trimmed_recording_warning(tiny_models: Path, tmp_path: Path) -> None:
    """A recording longer than MAX_REFERENCE_SECONDS is trimmed; the given transcript then no longer matches, the
    kept part is transcribed again, and create_voice says so (for the user to check, then fix with update_voice)."""
    short = settings_for(tiny_models, tmp_path, max_reference_seconds=1.0)
    reference = write_short_reference(Path(short.temp_dir) / "over_a_second.wav")  # REF_SECONDS > 1.0
    trimming = TTSService(short)
    try:
        with serve_http(create_mcp(trimming, short), short) as address:
            created = run(
                call(
                    address,
                    "create_voice",
                    {"name": "trimmed", "audio_path": str(reference), "transcript": REF_TRANSCRIPT},
                )
            ).structured_content
            assert len(created["warnings"]) == 1
            assert "trimmed" in created["warnings"][0]
            assert created["duration_s"] <= 1.0 + 1e-6
            assert created["transcript"] != REF_TRANSCRIPT  # redone from the kept second
            fixed = run(call(address, "update_voice", {"name": "trimmed", "transcript": "The quick"}))
            assert fixed.structured_content["transcript"] == "The quick"
            assert fixed.structured_content["warnings"] == []
    finally:
        trimming.shutdown()


def test_inline_and_both_modes_carry_the_audio_itself(service: TTSService, settings: Settings) -> None:
    for mode in ("inline", "both"):
        inline_settings = settings.model_copy(update={"mcp_audio_return": mode})
        with serve_http(create_mcp(service, inline_settings), inline_settings) as address:
            result = run(call(address, "generate_speech", {"text": "Inline audio.", **QUICK}))
        data = result.structured_content
        assert data["audio_inline"] is True
        audio = [block for block in result.content if block.type == "audio"]
        assert len(audio) == 1
        assert audio[0].mime_type == "audio/wav"
        raw = base64.b64decode(audio[0].data)
        assert raw == Path(data["path"]).read_bytes()  # the file is kept too, and is the same audio
        decoded, rate = soundfile.read(io.BytesIO(raw))
        assert rate == 16000
        assert len(decoded) / rate == pytest.approx(data["duration_s"], abs=0.002)
        texts = [block.text for block in result.content if block.type == "text"]
        if mode == "both":
            assert json.loads(texts[0])["url"] == data["url"]
        else:
            assert texts
            assert "speech" in texts[0]


def test_inline_is_skipped_over_the_length_limit(service: TTSService, settings: Settings) -> None:
    limited = settings.model_copy(update={"mcp_audio_return": "inline", "mcp_inline_max_seconds": 0.01})
    with serve_http(create_mcp(service, limited), limited) as address:
        result = run(call(address, "generate_speech", {"text": "Too long to inline.", **QUICK}))
    assert result.structured_content["audio_inline"] is False
    assert [block.type for block in result.content] == ["text"]
    summary = json.loads(result.content[0].text)
    assert "MCP_INLINE_MAX_SECONDS" in summary["note"]
    assert Path(summary["path"]).is_file()


def test_upload_limit_applies_to_paths_and_base64(service: TTSService, settings: Settings, reference_wav: Path) -> None:
    small = settings.model_copy(update={"max_upload_mb": 0.01})  # about 10 KB
    encoded = base64.b64encode(reference_wav.read_bytes()).decode()
    with serve_http(create_mcp(service, small), small) as address:
        for args in ({"audio_path": str(reference_wav)}, {"audio_base64": encoded}):
            message = run(call_error(address, "transcribe_audio", args))
            assert "MAX_UPLOAD_MB" in message, message


def test_api_key_is_required_over_http(make_settings: Any, tmp_path: Path) -> None:
    """`python mcp_server.py` as deployed: HTTP on MCP_PORT, bearer token required when API_KEY is set, and
    outputs older than OUTPUT_TTL_HOURS deleted by the process's own cleanup thread."""
    port = free_port()
    served = make_settings(api_key="s3cret-key", mcp_port=port, host="127.0.0.1")
    env = settings_env(served)
    # The key comes from an env file, as from the checkout's .env in a deployment (LLASA_ENV_FILE names it here).
    env_file = tmp_path / "llasa.env"
    env_file.write_text(f"API_KEY={env.pop('API_KEY')}\n", encoding="utf-8")
    env[ENV_FILE_VARIABLE] = str(env_file)
    outputs = Path(served.output_dir)
    outputs.mkdir(parents=True, exist_ok=True)
    expired, fresh = outputs / f"{'a' * 32}.wav", outputs / f"{'b' * 32}.wav"
    for path in (expired, fresh):
        path.write_bytes(b"RIFF")
    two_days_ago = time.time() - 2 * 24 * 3600  # the default TTL is 24 h
    os.utime(expired, (two_days_ago, two_days_ago))
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, str(REPO / "mcp_server.py")], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=log
    )
    address = f"http://127.0.0.1:{port}/mcp"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert process.poll() is None, (tmp_path / "server.log").read_text()
            try:
                answer = requests.post(address, json={}, timeout=5)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "mcp_server.py did not start listening in time"
                time.sleep(0.1)
        assert answer.status_code == 401
        assert "bearer" in answer.headers.get("WWW-Authenticate", "").lower()

        async def attempt(auth: str | None) -> list[str]:
            async with client(address, auth=auth) as c:
                return [tool.name for tool in await c.list_tools()]

        for wrong in (None, "wrong-key"):
            with pytest.raises(McpError):
                run(attempt(wrong))
        assert set(run(attempt("s3cret-key"))) == TOOLS
        while expired.exists():
            assert time.monotonic() < deadline, "mcp_server.py did not delete an expired output"
            time.sleep(0.1)
        assert fresh.exists()
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
    assert "builds its own TTSService" in (tmp_path / "server.log").read_text()


# --- stdio ----------------------------------------------------------------------------------------------------


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes `load_settings()` in a child process equal `settings` (for what tests set).

    LLASA_ENV_FILE is empty, so a developer's .env in the checkout cannot change what the test runs with.
    """
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    env[ENV_FILE_VARIABLE] = ""
    for name in (
        "llasa_model",
        "xcodec2_model",
        "whisper_model",
        "device",
        "output_dir",
        "temp_dir",
        "voices_dir",
        "gpu_monitor_interval",
        "max_audio_seconds",
        "whisper_max_new_tokens",
        "mcp_audio_return",
        "mcp_allowed_dirs",
        "api_key",
        "host",
        "mcp_port",
        "log_level",
    ):
        env[name.upper()] = str(getattr(settings, name))
    return env


def test_stdio_transport_serves_the_same_tools(make_settings: Any, tmp_path: Path) -> None:
    refs = write_short_reference(tmp_path / "refs" / "short.wav").parent
    env = settings_env(make_settings(mcp_audio_return="both", mcp_allowed_dirs=str(refs), max_audio_seconds=0.2))
    log_path = tmp_path / "stdio.log"
    transport = StdioTransport(
        command=sys.executable,
        args=[str(REPO / "mcp_server.py"), "--stdio"],
        env=env,
        cwd=str(tmp_path),
        keep_alive=False,
        log_file=log_path,
    )
    updates: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        updates.append(progress)

    async def session() -> tuple[list[str], Any, Any]:
        async with Client(transport, timeout=CALL_TIMEOUT_S, init_timeout=START_TIMEOUT_S) as c:
            names = [tool.name for tool in await c.list_tools()]
            status = await c.call_tool("get_gpu_status", {})
            speech = await c.call_tool(
                "generate_speech",
                {
                    "text": "Over standard input. And output.",
                    "reference_audio_path": "short.wav",  # relative to MCP_ALLOWED_DIRS
                    "reference_text": REF_TRANSCRIPT,
                    **QUICK,
                },
                progress_handler=on_progress,
            )
            with pytest.raises(ToolError, match="outside the folders"):
                await c.call_tool("transcribe_audio", {"audio_path": str(REPO / "mcp_server.py")})
            return names, status, speech

    names, status, speech = run(session())
    assert set(names) == TOOLS
    assert set(status.structured_content["models"]) == {"llasa", "xcodec2", "whisper"}
    data = speech.structured_content
    assert data["reference_text"] == REF_TRANSCRIPT
    assert Path(data["path"]).parent == (tmp_path / "outputs").resolve()
    assert data["audio_inline"] is True
    assert [block.type for block in speech.content] == ["text", "audio"]
    assert updates
    assert updates[-1] == pytest.approx(data["duration_s"], abs=1e-3)
    log = log_path.read_text()
    assert "MCP over stdio" in log
    assert "builds its own TTSService" in log


# --- one process, two surfaces --------------------------------------------------------------------------------


def test_rest_and_mcp_share_one_service(url: str, service: TTSService, settings: Settings, reference_wav: Path) -> None:
    """REST and MCP in one process over one TTSService: an offload through MCP shows in REST's GPU status, and a
    voice created over REST is listed by MCP's list_voices."""
    with serve_rest(service, settings) as base:
        run(call(url, "update_gpu_timeout", {"offload_after_use": False, "idle_timeout_s": -1}))
        try:
            run(call(url, "generate_speech", {"text": "Load the models.", **QUICK}))
            before = requests.get(f"{base}/api/gpu/status", timeout=30).json()["models"]["llasa"]
            assert before["state"] == "gpu"
            run(call(url, "offload_gpu", {"model": "llasa"}))
            after = requests.get(f"{base}/api/gpu/status", timeout=30).json()["models"]["llasa"]
            assert (after["state"], after["offloads"]) == ("cpu", before["offloads"] + 1)
        finally:
            service.set_timeouts(
                offload_after_use=settings.gpu_offload_after_use, idle_timeout_s=settings.gpu_idle_timeout
            )

        # The same mistake gets the same words on both surfaces.
        empty = requests.post(f"{base}/api/gpu/timeout", json={}, timeout=30)
        assert empty.status_code == 400
        assert empty.json()["error"]["message"] == run(call_error(url, "update_gpu_timeout", {}))

        with reference_wav.open("rb") as audio:
            created = requests.post(
                f"{base}/v1/audio/voices",
                data={"name": "from rest", "transcript": REF_TRANSCRIPT},
                files={"audio_sample": ("ref.wav", audio, "audio/wav")},
                timeout=CALL_TIMEOUT_S,
            )
        assert created.status_code in (200, 201), created.text
        try:
            voices = run(call(url, "list_voices")).structured_content["voices"]
            assert "from rest" in {v["name"] for v in voices}
        finally:
            service.delete_voice("from rest")
