"""The API & MCP tab: how to reach REST and MCP from here, with copyable examples."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import gradio as gr

from faces.webui.handlers import WebUIBase
from llasa.config import client_host

logger = logging.getLogger(__name__)


class ConnectHandlers(WebUIBase):
    """The API & MCP tab handlers (a mixin of `faces.webui.page.WebUI`)."""

    def connection_examples(self, request: gr.Request | None) -> tuple[str, str, str]:
        """curl, MCP client and gradio_client examples with the host this page was reached at."""
        s = self.settings
        scheme, hostname = "http", ""
        if request is not None:
            try:
                scheme = request.headers.get("x-forwarded-proto") or request.url.scheme or "http"
                hostname = request.url.hostname or ""
            except AttributeError:
                hostname = ""
        if not hostname:
            hostname = client_host(s.host)
        if ":" in hostname and not hostname.startswith("["):
            hostname = f"[{hostname}]"
        api = s.public_base_url or f"{scheme}://{hostname}:{s.api_port}"
        mcp_url = f"{scheme}://{hostname}:{s.mcp_port}/mcp"
        ui_url = f"{scheme}://{hostname}:{s.ui_port}/"
        auth = ' \\\n  -H "Authorization: Bearer $API_KEY"' if s.api_key else ""
        curl = "\n".join(
            [
                "# Health and GPU status",
                f"curl {api}/health",
                f"curl {api}/api/gpu/status{auth}",
                "",
                "# Clone a voice from a reference clip (its transcript is optional: it is transcribed if missing)",
                f"curl -X POST {api}/api/tts{auth} \\",
                '  -F "text=Hello from Llasa." \\',
                '  -F "reference_audio=@reference.wav" \\',
                '  -F "reference_text=What the reference clip says." \\',
                "  -o speech.wav",
                "",
                "# Use a saved voice, MP3 output",
                f"curl -X POST {api}/api/tts{auth} \\",
                '  -F "text=今天天气真好。" -F "voice=alice" -F "format=mp3" -o speech.mp3',
                "",
                "# OpenAI-compatible speech endpoint",
                f"curl {api}/v1/audio/speech{auth} \\",
                '  -H "Content-Type: application/json" \\',
                '  -d \'{"model": "llasa", "input": "Hello!", "voice": "alice", "response_format": "wav"}\' \\',
                "  -o speech.wav",
                "",
                "# Transcribe a clip",
                f"curl -X POST {api}/api/transcribe{auth} -F " + '"audio=@reference.wav"',
                "",
                "# Free the GPU now (all models to CPU RAM)",
                f"curl -X POST {api}/api/gpu/offload{auth}",
                "",
                f"# Interactive documentation: {api}/apidocs",
            ]
        )
        headers = ',\n      "headers": {"Authorization": "Bearer <API_KEY>"}' if s.api_key else ""
        mcp = (
            "{\n"
            '  "mcpServers": {\n'
            '    "llasa-tts": {\n'
            '      "type": "http",\n'
            f'      "url": "{mcp_url}"{headers}\n'
            "    }\n"
            "  }\n"
            "}"
        )
        auth_arg = ', auth=("user", "password")' if s.gradio_auth else ""
        python = "\n".join(
            [
                "from gradio_client import Client, handle_file",
                "",
                f'client = Client("{ui_url}"{auth_arg})',
                "audio_path, file_path, facts, *_ = client.predict(",
                '    voice_mode="reference",',
                '    reference_audio=handle_file("reference.wav"),',
                '    reference_text="",  # empty: transcribed on the server',
                '    voice=None,  # or a saved voice\'s name, with voice_mode="saved"',
                '    language="auto",',
                '    text_input="Hello from Llasa.",',
                '    api_name="/synthesize",',
                ")",
                "print(audio_path, facts)",
            ]
        )
        return curl, mcp, python


def create_connect_tab(t: gr.I18n) -> SimpleNamespace:
    """The tab's components (call inside `gr.Tabs()`); `create_ui` wires the events that span tabs."""
    # --- API & MCP ------------------------------------------------------------------------------
    with gr.Tab(t("tab_api"), id="api") as api_tab:
        gr.Markdown(t("api_intro_md"))
        curl_code = gr.Code(language="shell", label=t("curl_examples"), buttons=["copy"], interactive=False)
        mcp_code = gr.Code(language="json", label=t("mcp_config"), buttons=["copy"], interactive=False)
        python_code = gr.Code(language="python", label=t("python_client"), buttons=["copy"], interactive=False)

    return SimpleNamespace(
        api_tab=api_tab,
        curl_code=curl_code,
        mcp_code=mcp_code,
        python_code=python_code,
    )
