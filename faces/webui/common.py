"""What every tab of the web UI shares: constants, formatting helpers, the theme, i18n and auth set-up."""

from __future__ import annotations

import logging
import re

import gradio as gr

from faces.webui.i18n import language_of, static_translations, text
from llasa.config import Settings

logger = logging.getLogger(__name__)


GPU_CONCURRENCY_ID = "gpu"
"""Every UI event that runs a model shares this gradio concurrency group (limit 1)."""
ADMIN_CONCURRENCY_ID = "gpu_admin"
"""Offload / release / timeouts: serialised among themselves but never queued behind a synthesis, so the GPU
panel answers while a long job runs (the manager defers moving a busy model and says so)."""
HISTORY_LIMIT = 10
"""Results of one browser session kept in the list below the player."""
GPU_REFRESH_S = 5.0
MODE_REFERENCE, MODE_SAVED, MODE_NONE = "reference", "saved", "none"
CAPTIONS_NONE = "none"
"""The captions dropdown's "no captions" (its other values are the caption formats: srt, vtt, json)."""
ALL_MODELS = "all"
TRANSCRIBE_LANGUAGES = ("auto", "zh", "en", "yue", "ja", "ko", "fr", "de", "es", "ru", "it", "pt")
EXAMPLE_TEXTS = (
    "今天天气真好，我们一起去公园散步吧。",
    "The quick brown fox jumps over the lazy dog. It was a bright cold day in April.",
    "欢迎使用 Llasa 语音合成，它可以用几秒钟的声音克隆任何人的音色。",
    "Voice cloning needs only a few seconds of clear speech and its transcript.",
)

UI_CSS = """
.llasa-count { text-align: right; font-size: var(--text-sm); color: var(--body-text-color-subdued);
  margin-top: calc(-1 * var(--spacing-md)); }
.llasa-notice blockquote { border-left: 4px solid var(--color-accent); background: var(--background-fill-secondary);
  padding: var(--spacing-md) var(--spacing-lg); border-radius: var(--radius-md); margin: 0; }
.llasa-facts table { width: 100%; }
.llasa-bottom { align-items: flex-end; }
.llasa-carrier { display: none !important; }
footer { opacity: 0.8; }
"""

# The live player. The hidden carrier box holds "<take id>;<rate>:<base64 16-bit PCM>;<rate>:<base64>;..." and
# grows by one piece per audio window (gradio sends a growing string as appends, so each window crosses the
# wire once). The browser plays the pieces it has not played yet back to back on one AudioContext: updates
# that arrive together (the page may see only the last of them) lose nothing. A new take id starts over.
# No server-side encoder: gradio's streaming gr.Audio needs the ffmpeg program, which the image does not ship.
LIVE_PLAY_JS = """(value) => {
  const w = window;
  const pieces = (value || "").split(";");
  const take = pieces.shift();
  if (!take) return [];
  if (take !== w.llasaLiveTake) { LIVE_STOP(); w.llasaLiveTake = take; w.llasaLiveNext = 0; }
  const ctx = w.llasaLive || (w.llasaLive = new (w.AudioContext || w.webkitAudioContext)());
  if (ctx.state === "suspended") ctx.resume();
  for (let k = w.llasaLiveNext; k < pieces.length; k++) {
    const [rate, data] = pieces[k].split(":");
    const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
    const view = new DataView(bytes.buffer);
    const n = bytes.length >> 1;
    if (!n) continue;
    const buffer = ctx.createBuffer(1, n, Number(rate));
    const samples = buffer.getChannelData(0);
    for (let i = 0; i < n; i++) samples[i] = view.getInt16(2 * i, true) / 32768;
    const source = ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(ctx.destination);
    const at = Math.max(ctx.currentTime + 0.05, w.llasaLiveAt || 0);
    source.start(at);
    w.llasaLiveAt = at + buffer.duration;
    w.llasaLiveSources.push(source);
    w.llasaLivePieces = (w.llasaLivePieces || 0) + 1;
    w.llasaLiveSeconds = (w.llasaLiveSeconds || 0) + buffer.duration;
  }
  w.llasaLiveNext = Math.max(w.llasaLiveNext, pieces.length);
  return [];
}"""

# Stops what the live player has scheduled, and the rest of that take (Cancel, or a new take).
LIVE_STOP_JS = """() => {
  for (const source of window.llasaLiveSources || []) { try { source.stop(); } catch (e) {} }
  window.llasaLiveSources = [];
  window.llasaLiveAt = 0;
  window.llasaLiveNext = Infinity;
  return [];
}"""
LIVE_PLAY_JS = LIVE_PLAY_JS.replace("LIVE_STOP()", "(" + LIVE_STOP_JS + ")()")

# Counts characters in the browser as the user types: no server round trip per key stroke.
COUNT_JS = """(value) => {
  const n = [...(value || "")].length;
  return (n > LIMIT ? "⚠️ " : "") + n + " / LIMIT";
}"""


def build_i18n(settings: Settings) -> gr.I18n:
    """The browser-side translations (English + Chinese) with the settings' numbers filled in."""
    return gr.I18n(**static_translations(max_text_chars=settings.max_text_chars))


def ui_theme() -> gr.themes.Base:
    """A soft theme with gradio's bundled fonts (nothing is fetched from the internet), light and dark."""
    return gr.themes.Soft(primary_hue="indigo", secondary_hue="sky", neutral_hue="slate")


def parse_gradio_auth(value: str) -> tuple[str, str] | None:
    """`user:password` -> (user, password); empty -> None. The password may contain ':'."""
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ValueError("GRADIO_AUTH must look like user:password (both non-empty); leave it empty for an open UI")
    return user, password


def lang_of(request: gr.Request | None) -> str:
    if request is None:
        return "en"
    try:
        return language_of(request.headers.get("accept-language"))
    except AttributeError:
        return "en"


def md(value: object) -> str:
    """User text made safe inside Markdown (and table cells): no markup, no HTML, one line."""
    cleaned = " ".join(str(value).split())
    return re.sub(r"([\\`*_\[\]|<>#~])", r"\\\1", cleaned)


def preview(value: str, limit: int = 60) -> str:
    value = " ".join(value.split())
    return value if len(value) <= limit else value[: limit - 1] + "…"


def bytes_text(value: object) -> str:
    if not isinstance(value, int | float) or value < 0:
        return "–"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def seconds_text(value: object, lang: str) -> str:
    if value is None:
        return "–"
    if not isinstance(value, int | float):
        return str(value)
    if value < 0:
        return text(lang, "never")
    return f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"


def optional_number(value: object) -> float | None:
    if value is None or value == "":
        return None
    return float(value)  # type: ignore[arg-type]


GPU_JOB = {"concurrency_id": GPU_CONCURRENCY_ID, "concurrency_limit": 1}
"""Event options of everything that runs a model: one at a time per page, queued."""
GPU_ADMIN = {"concurrency_id": ADMIN_CONCURRENCY_ID, "concurrency_limit": 1}
LIGHT = {"queue": False, "show_progress": "hidden"}
"""Event options of what only reads state: no queue, no spinner."""
