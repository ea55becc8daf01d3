"""The MCP server (port 7862, `/mcp`), run alone: `python mcp_server.py [--stdio]`.

The face itself lives in `faces/mcp/` (server factory, tools by topic, result models); this entry point
re-exports what callers import (`from mcp_server import create_mcp`) and starts it through `llasa.bootstrap`.
Run alone, it builds its own TTSService and GPU manager (models are not shared with a main.py process).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from faces.mcp.server import MCP_PATH, create_http_server, create_mcp, run_http, start_in_background
from llasa.bootstrap import load_settings_or_exit, run_alone, start_process

__all__ = ["MCP_PATH", "create_http_server", "create_mcp", "main", "run_http", "start_in_background"]

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    """Serve MCP over streamable HTTP, or over stdin/stdout with --stdio (every log line then goes to stderr)."""
    parser = argparse.ArgumentParser(description="Llasa TTS MCP server (streamable HTTP, or stdio with --stdio)")
    parser.add_argument(
        "--stdio", action="store_true", help="serve over stdin/stdout for a desktop assistant instead of HTTP"
    )
    args = parser.parse_args(argv)
    # The environment, then the checkout's .env (found wherever the client starts us), or LLASA_ENV_FILE's file.
    settings = load_settings_or_exit()
    start_process(settings)
    transport = "stdio" if args.stdio else f"http://{settings.host}:{settings.mcp_port}{MCP_PATH}"
    logger.info(
        "MCP over %s: this process builds its own TTSService and GPU manager (models load here, on %s, and are "
        "not shared with a main.py process)",
        transport,
        settings.device,
    )

    def serve(service: Any) -> None:
        mcp = create_mcp(service, settings)
        if args.stdio:
            mcp.run(transport="stdio", show_banner=False)
        else:
            run_http(mcp, settings)

    run_alone(settings, serve, label="MCP server")
    return 0


if __name__ == "__main__":
    sys.exit(main())
