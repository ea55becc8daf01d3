"""The REST API (port 7861), run alone: `python api_server.py [--host H] [--port P]`.

The face itself lives in `faces/rest/` (app factory, route groups, error mapping, spec, waitress server); this
entry point re-exports what callers import (`from api_server import create_app`) and starts it through
`llasa.bootstrap`, like every entry point.
"""

from __future__ import annotations

import argparse

from faces.rest.app import create_app
from faces.rest.server import RunningServer, make_server, serve, start_in_background
from llasa.bootstrap import load_settings_or_exit, run_alone, start_process

__all__ = ["RunningServer", "create_app", "main", "make_server", "serve", "start_in_background"]


def main(argv: list[str] | None = None) -> None:
    """Settings -> logging -> TTSService -> waitress, until SIGTERM / Ctrl-C releases every model."""
    parser = argparse.ArgumentParser(description="Llasa TTS REST API (Flask + waitress)")
    parser.add_argument("--host", help="address to bind (default: HOST)")
    parser.add_argument("--port", type=int, help="port (default: API_PORT)")
    args = parser.parse_args(argv)
    settings = load_settings_or_exit()
    start_process(settings)
    run_alone(
        settings,
        lambda service: serve(create_app(service, settings), settings, host=args.host, port=args.port),
        label="REST API",
    )


if __name__ == "__main__":
    main()
