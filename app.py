"""The web UI (port 7860), run alone: `python app.py` (REST and MCP are main.py's).

The face itself lives in `faces/webui/` (the page, one module per tab, i18n); this entry point re-exports what
callers import (`from app import create_ui`) and starts it through `llasa.bootstrap`, like every entry point.
"""

from __future__ import annotations

from faces.webui.common import GPU_CONCURRENCY_ID, parse_gradio_auth
from faces.webui.page import WebUI, create_ui, launch_ui, start_in_background
from llasa.bootstrap import load_settings_or_exit, run_alone, start_process

__all__ = ["GPU_CONCURRENCY_ID", "WebUI", "create_ui", "launch_ui", "main", "parse_gradio_auth", "start_in_background"]


def main() -> None:
    """Settings -> logging -> TTSService -> gradio, until SIGTERM / Ctrl-C releases every model."""
    settings = load_settings_or_exit()
    start_process(settings)
    run_alone(settings, lambda service: launch_ui(create_ui(service, settings), settings), label="web UI")


if __name__ == "__main__":
    main()
