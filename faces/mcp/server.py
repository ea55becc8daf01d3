"""MCP front end: the TTS service as tools for AI assistants (FastMCP 4).

`create_mcp(service, settings)` builds the server over the process's one `TTSService` (so MCP, REST and the UI
share models, the GPU queue and the voice library). `main.py` serves it over streamable HTTP at
`http://HOST:MCP_PORT/mcp` with `run_http()`; `python mcp_server.py --stdio` serves it over stdio for desktop
assistants that start their own servers (that process then builds its own service and GPU manager).

The tools decode a request, call one service method and encode the answer. Audio comes in as a path inside
MCP_ALLOWED_DIRS or as base64 (see faces/inputs.py); generated audio is saved under OUTPUT_DIR and described by
path + download URL, and with MCP_AUDIO_RETURN=inline|both also returned as MCP audio content. Service errors
(`llasa.errors.TTSError`) become tool errors carrying the same message REST gives; anything else is logged here
and reported without details. No torch import here: the service module is imported only by `main()`.
"""

from __future__ import annotations

import hmac
import logging
import math
import socket
import threading
from typing import TYPE_CHECKING, Any

import uvicorn
from fastmcp import FastMCP
from fastmcp.server.auth import AccessToken, TokenVerifier

from llasa import __version__
from llasa.bootstrap import FrontEnd, bind, run_logged
from llasa.config import Settings, client_host

if TYPE_CHECKING:
    from llasa.service import TTSService
from faces.mcp import gpu_tools, speech_tools, voice_tools
from faces.mcp.common import tool_decorator

logger = logging.getLogger(__name__)


MCP_PATH = "/mcp"

INSTRUCTIONS = """\
Llasa text-to-speech with voice cloning (Chinese and English). generate_speech reads text aloud in the voice of a
short reference recording (3-15 s, given as a file path or base64), of a saved voice (list_voices, create_voice),
or in the model's own voice; the result is an audio file with a download URL. transcribe_audio turns speech into
text. The GPU tools show and control where the models live (GPU, CPU RAM, unloaded)."""


class ApiKeyVerifier(TokenVerifier):
    """Accepts exactly one bearer token, API_KEY (compared in constant time)."""

    def __init__(self, api_key: str) -> None:
        super().__init__()
        self._key = api_key.encode()

    async def verify_token(self, token: str) -> AccessToken | None:
        if not hmac.compare_digest(token.encode(), self._key):
            return None
        return AccessToken(token=token, client_id="api-key", scopes=[])


def create_mcp(service: TTSService, settings: Settings) -> FastMCP:
    """Build the MCP server around `service`. Nothing is started; serve it with `run_http()` or `run(stdio)`."""
    mcp = FastMCP(
        name="Llasa TTS",
        instructions=INSTRUCTIONS,
        version=__version__,
        auth=ApiKeyVerifier(settings.api_key) if settings.api_key else None,
        # Only our own ToolErrors reach the client verbatim; a stray exception says nothing about internals.
        mask_error_details=True,
    )
    tool = tool_decorator(mcp, settings)
    for group in (speech_tools, gpu_tools, voice_tools):
        group.register(tool, service, settings)
    return mcp


def create_http_server(
    mcp: FastMCP, settings: Settings, *, host: str | None = None, port: int | None = None
) -> uvicorn.Server:
    """A uvicorn server for streamable HTTP at `http://HOST:MCP_PORT/mcp` (bearer auth when API_KEY is set).

    Call `.run()` to serve (blocking; fine in a thread), set `.should_exit = True` to stop it.
    """
    config = uvicorn.Config(
        mcp.http_app(path=MCP_PATH),
        host=settings.host if host is None else host,
        port=settings.mcp_port if port is None else port,
        lifespan="on",
        ws="none",
        log_config=None,  # logging is configured once, by main.py
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=2,
    )
    return uvicorn.Server(config)


def run_http(mcp: FastMCP, settings: Settings, *, sockets: list[socket.socket] | None = None) -> None:
    """Serve `mcp` over streamable HTTP until the process stops (blocking; main.py runs it in a thread)."""
    server = create_http_server(mcp, settings)
    logger.info(
        "MCP server on http://%s:%d%s (%s)",
        settings.host,
        settings.mcp_port,
        MCP_PATH,
        "bearer token required" if settings.api_key else "no authentication",
    )
    server.run(sockets=sockets)


def start_in_background(service: Any, settings: Settings, grace_s: float) -> FrontEnd:
    """main.py's starter: the MCP server (streamable HTTP) on its own thread over the shared service."""
    sock = bind(settings.host, settings.mcp_port, "MCP_PORT")
    server = create_http_server(create_mcp(service, settings), settings)
    # After should_exit, uvicorn closes the listener and gives open requests (a tool call's synthesis) this long.
    server.config.timeout_graceful_shutdown = max(1, math.ceil(grace_s))
    thread = threading.Thread(
        target=run_logged, args=("MCP", lambda: server.run(sockets=[sock])), name="mcp", daemon=True
    )
    thread.start()

    def stop_accepting() -> None:
        server.should_exit = True

    def finish() -> None:
        thread.join(timeout=5)

    base = f"http://{client_host(settings.host)}:{settings.mcp_port}"
    # Probed at / (a 404): a request to /mcp itself would open and close an MCP session just to check the port.
    return FrontEnd("mcp", "MCP", f"{base}{MCP_PATH}", f"{base}/", stop_accepting, finish, thread)
