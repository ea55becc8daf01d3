"""REST and MCP read audio through the one reader (faces/inputs.py): the same clip, sent both ways in every
encoding, is accepted by both and gives the same transcript; the same bad input is refused by both alike."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import tiny_settings
from fastmcp import Client

from api_server import RunningServer, create_app
from llasa.service import TTSService
from mcp_server import create_http_server, create_mcp

CLIP = Path(__file__).resolve().parents[1] / "data" / "audio" / "en_16k_mono.wav"


def encodings(data: bytes) -> dict[str, str]:
    standard = base64.b64encode(data).decode()
    return {
        "standard": standard,
        "url_safe_unpadded": base64.urlsafe_b64encode(data).decode().rstrip("="),
        "line_wrapped": "\n".join(textwrap.wrap(standard, 76)),
        "mime_wrapped_crlf": "\r\n".join(textwrap.wrap(standard, 64)),
        "data_uri": "data:audio/wav;base64," + standard,
    }


@contextlib.contextmanager
def mcp_url(service: TTSService) -> Iterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = create_http_server(create_mcp(service, service.settings), service.settings, host="127.0.0.1", port=port)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive(), "the MCP server thread died while starting"
        assert time.monotonic() < deadline, "the MCP server did not start in time"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


@pytest.fixture(scope="module")
def faces(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    settings = tiny_settings(tiny_models, tmp_path_factory.mktemp("both_faces"))
    service = TTSService(settings)
    running = RunningServer(create_app(service, settings), settings, host="127.0.0.1", port=0).start()
    try:
        with mcp_url(service) as url:
            yield running.url, url
    finally:
        running.stop()
        service.shutdown()


def over_mcp(url: str, args: dict[str, Any]) -> tuple[bool, Any]:
    async def go() -> Any:
        async with Client(url, timeout=180) as client:
            return await client.call_tool("transcribe_audio", args, raise_on_error=False)

    result = asyncio.run(go())
    if result.is_error:
        return False, "\n".join(block.text for block in result.content if block.type == "text")
    return True, result.structured_content


@pytest.mark.parametrize("encoding", sorted(encodings(b"x")))
def test_the_same_clip_is_read_the_same_way_over_rest_and_mcp(faces: tuple[str, str], encoding: str) -> None:
    rest, mcp = faces
    text = encodings(CLIP.read_bytes())[encoding]
    response = requests.post(f"{rest}/api/transcribe", json={"audio": text, "language": "en"}, timeout=180)
    assert response.status_code == 200, response.text
    ok, answer = over_mcp(mcp, {"audio_base64": text, "language": "en"})
    assert ok, answer
    assert answer["text"] == response.json()["text"]
    assert answer["duration_s"] == pytest.approx(response.json()["duration_s"])


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ("not base64 at all!", "not valid base64"),
        ("data:audio/wav,RIFF", "without ';base64'"),
        ("data:audio/wav;base64,", "empty"),
    ],
)
def test_the_same_bad_input_is_refused_the_same_way(faces: tuple[str, str], payload: str, words: str) -> None:
    rest, mcp = faces
    response = requests.post(f"{rest}/api/transcribe", json={"audio": payload}, timeout=60)
    assert response.status_code == 400
    assert words in response.json()["error"]["message"]
    ok, message = over_mcp(mcp, {"audio_base64": payload})
    assert not ok
    assert words in message
