"""The launcher: one process, one TTSService, three faces.

    python main.py                      # web UI (UI_PORT), REST API (API_PORT) and MCP server (MCP_PORT)
    python main.py --only api,mcp       # a subset

Settings -> logging -> one TTSService around the process's one GPU manager -> the REST API and the MCP server on
their own threads -> the web UI; then wait for a signal (`llasa.bootstrap.Launcher`). No model loads at start-up.
SIGTERM or SIGINT: the listeners close, running requests get `--grace-s` seconds, every model is released, exit 0.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

FRONT_ENDS = ("ui", "api", "mcp")
# Imported only when chosen: `--only api` never imports gradio.
FACE_MODULES = {"api": "api_server", "mcp": "mcp_server", "ui": "app"}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Llasa TTS: web UI, REST API and MCP server in one process, sharing one GPU manager."
    )
    parser.add_argument("--only", default=",".join(FRONT_ENDS), help="comma-separated faces: ui, api, mcp (all)")
    parser.add_argument(
        "--grace-s",
        type=float,
        default=30.0,
        help="on SIGTERM/SIGINT, seconds running requests may take to finish before models are released",
    )
    parser.add_argument(
        "--ready-timeout-s",
        type=float,
        default=120.0,
        help="seconds to wait for every chosen port to answer before giving up with exit code 1",
    )
    args = parser.parse_args(argv)
    chosen = [part.strip().lower() for part in args.only.split(",") if part.strip()]
    if set(chosen) - set(FRONT_ENDS) or not chosen:
        parser.error(f"--only takes a comma-separated subset of ui, api, mcp; got {args.only!r}")
    args.only = [name for name in ("api", "mcp", "ui") if name in chosen]  # the UI last: it launches the slowest
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from llasa.bootstrap import Launcher, load_settings_or_exit, start_process

    settings = load_settings_or_exit()
    start_process(settings)
    faces = [importlib.import_module(FACE_MODULES[name]).start_in_background for name in args.only]
    launcher = Launcher(settings, faces, grace_s=args.grace_s, ready_timeout_s=args.ready_timeout_s)
    return launcher.run()


if __name__ == "__main__":
    sys.exit(main())
