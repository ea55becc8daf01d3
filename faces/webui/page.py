"""Gradio web UI (port 7860): clone a voice in the browser, in Chinese or English.

`create_ui(service, settings)` builds the page over the shared `TTSService`; `launch_ui(demo, settings)` serves it
(main.py runs it in the main thread beside REST and MCP); `python app.py` runs the UI alone.

Every event that does GPU work (synthesis, transcription, saving a voice) shares one gradio concurrency group
of size 1 and the queue is bounded by MAX_QUEUE, so a browser never runs two jobs on the card at once; the
service additionally serialises REST, MCP and UI work through the GPU manager's `gpu_slot()`.
Static labels are translated in the browser with `gr.I18n`; text made at request time (progress, errors,
tables) follows the request's Accept-Language header. No torch here: the UI only talks to the service.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from faces.webui.i18n import text
from llasa.bootstrap import FrontEnd, bind
from llasa.config import Settings, client_host

if TYPE_CHECKING:
    from llasa.service import TTSService
from types import SimpleNamespace

from faces.webui.common import LIGHT, UI_CSS, build_i18n, lang_of, parse_gradio_auth, ui_theme
from faces.webui.tabs.connect import ConnectHandlers, create_connect_tab
from faces.webui.tabs.gpu import GPUHandlers, create_gpu_tab, wire_gpu_events
from faces.webui.tabs.synthesis import SynthesisHandlers, create_synthesis_tab, wire_synthesis_events
from faces.webui.tabs.voices import VoiceHandlers, create_voices_tab, wire_voices_events

logger = logging.getLogger(__name__)


class WebUI(SynthesisHandlers, VoiceHandlers, GPUHandlers, ConnectHandlers):
    """The event handlers of every tab. Parameter names are the API parameter names gradio_client callers use."""

    # --- page load ----------------------------------------------------------------------------------------

    def on_load(self, request: gr.Request) -> tuple[Any, ...]:
        """Everything that depends on the visitor's language or host, or on the shared state."""
        lang = lang_of(request)
        with self._user_errors(lang):
            voices = self._voice_views(lang)
            gpu = self._gpu_views(lang)
            idle, evict, after = self.timeout_values()
        curl, mcp, python = self.connection_examples(request)
        return (
            *voices,
            *gpu,
            idle,
            evict,
            after,
            curl,
            mcp,
            python,
            text(lang, "history_empty"),
            text(lang, "facts_empty"),
        )


def create_ui(service: TTSService, settings: Settings) -> gr.Blocks:
    """The whole web UI over `service`. Serve it with `launch_ui(demo, settings)` (it needs the i18n and theme)."""
    from llasa.audio import AUDIO_FORMATS

    formats = list(AUDIO_FORMATS)
    ui = WebUI(service, settings, formats)
    t = build_i18n(settings)
    # gradio keeps its own copies of results and uploads: drop them on the same schedule as OUTPUT_TTL_HOURS.
    ttl_s = max(int(settings.output_ttl_hours * 3600), 60)
    with gr.Blocks(title=t("title"), analytics_enabled=False, delete_cache=(min(ttl_s, 3600), ttl_s)) as demo:
        gr.Markdown(t("header_md"))
        with gr.Tabs():
            synthesis = create_synthesis_tab(settings, t, formats)
            voices = create_voices_tab(t)
            gpu = create_gpu_tab(settings, t)
            connect = create_connect_tab(t)
            with gr.Tab(t("tab_help"), id="help") as help_tab:
                gr.Markdown(t("usage_md"))
        page = SimpleNamespace(**vars(synthesis), **vars(voices), **vars(gpu), **vars(connect), help_tab=help_tab)
        page.voice_views = [page.voice_table, page.voice, page.library_voice]
        page.gpu_views = [page.models_table, page.card, page.raw_status]
        wire_synthesis_events(ui, page, settings)
        wire_voices_events(ui, page, settings)
        wire_gpu_events(ui, page, settings)
        # The GPU panel refreshes itself only while it is shown.
        for other in (page.synth_tab, page.voices_tab, page.api_tab, page.help_tab):
            other.select(lambda: gr.Timer(active=False), outputs=[page.timer], api_visibility="private", **LIGHT)
        demo.load(
            ui.on_load,
            outputs=[
                *page.voice_views,
                *page.gpu_views,
                page.idle_timeout,
                page.evict_timeout,
                page.offload_after_use,
                page.curl_code,
                page.mcp_code,
                page.python_code,
                page.history_md,
                page.facts,
            ],
            api_visibility="private",
            **LIGHT,
        )

    # MAX_QUEUE is how many requests may wait for the GPU; gradio refuses new events beyond it ("queue full").
    # Its max_size counts waiting events only, and 0 would refuse every event, so at least 1.
    demo.queue(max_size=max(1, settings.max_queue), default_concurrency_limit=1)
    return demo


def launch_ui(demo: gr.Blocks, settings: Settings, *, prevent_thread_lock: bool = False) -> str:
    """Serve the UI on settings.host:settings.ui_port (blocking unless `prevent_thread_lock`); returns its URL."""
    auth = parse_gradio_auth(settings.gradio_auth)
    # Results and voice previews are files the service keeps in these folders; gradio serves only allowed paths.
    folders = (settings.output_dir, settings.voices_dir)
    allowed = sorted({str(Path(folder).expanduser().resolve()) for folder in folders})
    logger.info("web UI on http://%s:%d%s", settings.host, settings.ui_port, " (password protected)" if auth else "")
    demo.launch(
        server_name=settings.host,
        server_port=settings.ui_port,
        auth=auth,
        prevent_thread_lock=prevent_thread_lock,
        show_error=False,
        quiet=True,
        allowed_paths=allowed,
        max_file_size=settings.max_upload_bytes,
        ssr_mode=False,
        mcp_server=False,
        pwa=False,
        enable_monitoring=False,
        run_history=False,
        footer_links=["api", "settings"],
        i18n=build_i18n(settings),
        theme=ui_theme(),
        css=UI_CSS,
    )
    return demo.local_url or f"http://{settings.host}:{settings.ui_port}/"


def start_in_background(service: Any, settings: Settings, grace_s: float) -> FrontEnd:
    """main.py's starter: the web UI on gradio's own server thread over the shared service."""
    bind(settings.host, settings.ui_port, "UI_PORT").close()  # a taken port is a clear error before gradio starts
    blocks = create_ui(service, settings)
    launch_ui(blocks, settings, prevent_thread_lock=True)
    server = blocks.server  # gradio's uvicorn server, on its own thread

    def stop_accepting() -> None:
        # The listener closes; the open event streams stay, so a running synthesis still reaches its browser.
        server.config.timeout_graceful_shutdown = max(1, math.ceil(grace_s))
        server.should_exit = True

    url = f"http://{client_host(settings.host)}:{settings.ui_port}"
    return FrontEnd("ui", "Web UI", url, f"{url}/", stop_accepting, blocks.close, getattr(server, "thread", None))
