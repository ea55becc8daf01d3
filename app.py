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
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from llasa.bootstrap import FrontEnd, bind, client_host, load_settings_or_exit, run_alone, start_process
from llasa.config import Settings
from llasa.errors import AudioTooShort, Busy, Cancelled, SilentAudio, TTSError
from llasa.types import SAMPLE_RATE, DeviceStatus, GenerationParams, SynthesisRequest, TranscriptionRequest
from ui_i18n import STRINGS, language_of, static_translations, text

if TYPE_CHECKING:
    from llasa.service import TTSService
    from llasa.types import SynthesisResult

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
ALL_MODELS = "all"
MODEL_NAMES = ("llasa", "xcodec2", "whisper")
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
footer { opacity: 0.8; }
"""

# Counts characters in the browser as the user types: no server round trip per key stroke.
_COUNT_JS = """(value) => {
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


def _lang(request: gr.Request | None) -> str:
    if request is None:
        return "en"
    try:
        return language_of(request.headers.get("accept-language"))
    except AttributeError:
        return "en"


def _md(value: object) -> str:
    """User text made safe inside Markdown (and table cells): no markup, no HTML, one line."""
    cleaned = " ".join(str(value).split())
    return re.sub(r"([\\`*_\[\]|<>#~])", r"\\\1", cleaned)


def _preview(value: str, limit: int = 60) -> str:
    value = " ".join(value.split())
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _bytes_text(value: object) -> str:
    if not isinstance(value, int | float) or value < 0:
        return "–"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _seconds_text(value: object, lang: str) -> str:
    if value is None:
        return "–"
    if not isinstance(value, int | float):
        return str(value)
    if value < 0:
        return text(lang, "never")
    return f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"


def _optional_number(value: object) -> float | None:
    if value is None or value == "":
        return None
    return float(value)  # type: ignore[arg-type]


class _WebUI:
    """The event handlers. Parameter names are the API parameter names that gradio_client callers use."""

    def __init__(self, service: TTSService, settings: Settings, formats: list[str]) -> None:
        self.service = service
        self.settings = settings
        self.formats = formats
        # session hash -> cancel flag of the synthesis that session is running now
        self._running: dict[str, threading.Event] = {}
        self._running_lock = threading.Lock()

    # --- errors -------------------------------------------------------------------------------------------

    @staticmethod
    def _error(lang: str, message: str, code: str = "invalid_input") -> gr.Error:
        title_key = f"error_{code}"
        title = text(lang, title_key if title_key in STRINGS["en"] else "error_title")
        # gradio's toast heading is its own untranslated "Error", so the message leads with the localised title.
        # Plain text, not HTML: gradio_client users read this string as it is.
        return gr.Error(f"{title}: {message}", title=title, print_exception=False)

    @contextmanager
    def _user_errors(self, lang: str) -> Iterator[None]:
        """Map service errors to readable gr.Error messages; never show a stack trace to the user."""
        try:
            yield
        except gr.Error:
            raise
        except TTSError as exc:
            message = exc.message
            if isinstance(exc, Busy):
                message += " " + text(lang, "retry_after", seconds=exc.retry_after_s)
            logger.info("UI request refused: %s (%s)", exc.message, exc.code)
            raise self._error(lang, message, exc.code) from exc
        except Exception as exc:
            logger.exception("UI request failed")
            raise self._error(lang, text(lang, "error_internal"), "internal_error") from exc

    # --- cancel -------------------------------------------------------------------------------------------

    @contextmanager
    def _cancel_scope(self, request: gr.Request | None) -> Iterator[threading.Event]:
        key = getattr(request, "session_hash", None) or "-"
        event = threading.Event()
        with self._running_lock:
            self._running[key] = event
        try:
            yield event
        finally:
            with self._running_lock:
                if self._running.get(key) is event:
                    del self._running[key]

    def cancel(self, request: gr.Request) -> None:
        """Stop this browser session's running synthesis (the service checks the flag between tokens)."""
        key = getattr(request, "session_hash", None) or "-"
        with self._running_lock:
            event = self._running.get(key)
        if event is not None:
            event.set()
            logger.info("synthesis cancelled from the web UI")

    # --- synthesis ----------------------------------------------------------------------------------------

    def _transcribe_reference(self, audio: str | None, language: str | None, lang: str) -> tuple[str, float | None]:
        """The transcript of the part of a reference clip that synthesis will use, and the kept seconds when the
        clip is trimmed (None when it is used whole), so the transcript box matches what the model hears."""
        if not audio:
            raise self._error(lang, text(lang, "need_audio"))
        kept_s: float | None = None
        source: str | bytes = audio
        with self._user_errors(lang):
            kept = self._kept_part(audio)
            if kept is not None:
                # Exactly the samples the service keeps (and transcribes itself when it trims).
                source, kept_s = kept
            result = self.service.transcribe(
                TranscriptionRequest(source, language or None, surface="webui", endpoint="transcribe")
            )
        if not result.text.strip():
            gr.Warning(text(lang, "no_speech"))
        return result.text.strip(), kept_s

    def _trim_notice(self, lang: str, kept_s: float) -> str:
        return (
            "> "
            + text(lang, "trimmed_notice", max_s=self.settings.max_reference_seconds, kept_s=kept_s)
            + " "
            + text(lang, "transcript_redone", kept_s=kept_s)
        )

    def transcribe(self, audio: str | None, language: str | None, request: gr.Request) -> str:
        """Transcribe a reference clip with faster-whisper; returns the text (empty when no speech was found).
        A clip longer than MAX_REFERENCE_SECONDS is transcribed for the part that synthesis keeps."""
        lang = _lang(request)
        return self._transcribe_reference(audio, language, lang)[0]

    def transcribe_upload(self, audio: str | None, language: str | None, request: gr.Request) -> tuple[str, str]:
        """A new clip's transcript (of the part that is kept) and the trim notice (empty when not trimmed)."""
        lang = _lang(request)
        transcript, kept_s = self._transcribe_reference(audio, language, lang)
        return transcript, "" if kept_s is None else self._trim_notice(lang, kept_s)

    def _voice_arguments(
        self, lang: str, voice_mode: str, reference_audio: str | None, reference_text: str | None, voice: str | None
    ) -> tuple[dict[str, Any], bool]:
        """The request's voice fields for the chosen mode, and whether the UI itself trimmed the reference."""
        if voice_mode == MODE_SAVED:
            if not voice:
                raise self._error(lang, text(lang, "need_voice"), "voice_not_found")
            return {"voice": voice}, False
        if voice_mode == MODE_NONE:
            return {}, False
        if not reference_audio:
            raise self._error(lang, text(lang, "need_reference"))
        transcript = (reference_text or "").strip()
        if transcript:
            # The transcript box holds the words of the part that is kept (filled from it on upload, then maybe
            # corrected): send exactly that part, so the service has nothing to trim and keeps the transcript.
            kept = self._kept_part(reference_audio)
            if kept is not None:
                return {"reference_audio": kept[0], "reference_text": transcript}, True
        return {"reference_audio": reference_audio, "reference_text": transcript or None}, False

    def _kept_part(self, reference_audio: str) -> tuple[bytes, float] | None:
        """The clip as the service would trim it (wav bytes, kept seconds); None when it is used whole. A clip
        too short or silent is left to the service, which reports it with its own clear error."""
        from llasa.audio import encode_audio, prepare_reference

        try:
            prepared = prepare_reference(
                reference_audio,
                max_seconds=self.settings.max_reference_seconds,
                min_seconds=self.settings.min_reference_seconds,
                max_bytes=self.settings.max_upload_bytes,
            )
        except (AudioTooShort, SilentAudio):
            return None
        if not prepared.trimmed:
            return None
        return encode_audio(prepared.samples, SAMPLE_RATE, "wav"), len(prepared.samples) / SAMPLE_RATE

    def _progress_reporter(self, progress: gr.Progress, lang: str) -> Callable[[int, int, str], None]:
        unit = text(lang, "unit_chunks")

        def report(done: int, total: int, stage: str) -> None:
            n = max(int(total), 1)
            key = f"stage_{stage}"
            desc = text(lang, key, i=min(done + 1, n), n=n, done=done) if key in STRINGS["en"] else stage
            progress((int(done), n), desc=desc, unit=unit)

        return report

    def synthesize(
        self,
        voice_mode: str,
        reference_audio: str | None,
        reference_text: str | None,
        voice: str | None,
        language: str | None,
        text_input: str,
        temperature: float | None,
        top_p: float | None,
        top_k: float | None,
        repetition_penalty: float | None,
        max_seconds: float | None,
        seed: float | None,
        output_format: str | None,
        history: list[dict[str, Any]] | None,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (gradio's documented way to receive a tracker)
    ) -> tuple[Any, ...]:
        """Speak `text_input` in the chosen voice; returns player audio, download file, facts and history."""
        lang = _lang(request)
        history = list(history or [])
        fmt = (output_format or "wav").lower()
        with self._user_errors(lang):
            if fmt not in self.formats:
                raise self._error(
                    lang, f"format {fmt!r} is not supported; use one of {', '.join(self.formats)}", "invalid_input"
                )
            voice_fields, kept_by_ui = self._voice_arguments(lang, voice_mode, reference_audio, reference_text, voice)
            seed_value = None if seed is None or seed == "" or float(seed) < 0 else int(seed)
            params = GenerationParams(
                temperature=_optional_number(temperature),
                top_p=_optional_number(top_p),
                top_k=None if top_k is None or top_k == "" else int(top_k),
                repetition_penalty=_optional_number(repetition_penalty),
                max_audio_seconds=_optional_number(max_seconds),
                seed=seed_value,
            )
            synthesis = SynthesisRequest(
                text=text_input or "",
                language=language or None,
                params=params,
                surface="webui",
                endpoint="synthesize",
                **voice_fields,
            )
            progress(0, desc=text(lang, "stage_queue"))
            try:
                with self._cancel_scope(request) as cancel:
                    result = self.service.synthesize(
                        synthesis, progress=self._progress_reporter(progress, lang), cancel=cancel
                    )
            except Cancelled:
                # The user asked for it: a notice, not an error, and the previous result stays on screen.
                gr.Info(text(lang, "cancelled"))
                return (*(gr.update() for _ in range(4)), history, gr.update(), gr.update(), gr.update())
            download = self.service.save_output(result, fmt)
            playable = download if fmt == "wav" else self.service.save_output(result, "wav")

        # Plain values (not gr.update) throughout, so gradio_client callers get strings and files back.
        notice = ""
        if result.reference_trimmed:
            notice = self._trim_notice(lang, result.reference_seconds)
        elif kept_by_ui:
            notice = (
                "> "
                + text(
                    lang, "trimmed_notice", max_s=self.settings.max_reference_seconds, kept_s=result.reference_seconds
                )
                + " "
                + text(lang, "transcript_for_kept", kept_s=result.reference_seconds)
            )
        facts = self._facts_markdown(result, lang, download.url, trim_notice=notice.removeprefix("> "))
        if voice_mode == MODE_SAVED:
            voice_label = voice or ""
        elif voice_mode == MODE_NONE:
            voice_label = text(lang, "no_reference")
        else:
            voice_label = text(lang, "uploaded_clip")
        history.insert(
            0,
            {
                "time": time.strftime("%H:%M:%S"),
                "text": _preview(text_input or ""),
                "voice": voice_label,
                "duration_s": round(result.duration_s, 2),
                "rtf": round(result.real_time_factor, 3),
                "seed": result.seed,
                "path": str(download.path),
            },
        )
        del history[HISTORY_LIMIT:]
        # Fill the transcript box with what the model was conditioned on when the user left it empty.
        # A trimmed clip's transcript was redone by the service for the kept part: show that one, so the box
        # and "Transcript used" agree.
        transcript = reference_text or ""
        if voice_mode == MODE_REFERENCE and (not transcript.strip() or result.reference_trimmed):
            transcript = result.reference_text or transcript
        return (
            str(playable.path),
            str(download.path),
            facts,
            notice,
            history,
            self._history_markdown(history, lang),
            self._history_files(history),
            transcript,
        )

    def _facts_markdown(self, result: SynthesisResult, lang: str, url: str, *, trim_notice: str = "") -> str:
        stages = ("load", "transcribe", "encode", "generate", "decode", "total")
        timings = " · ".join(
            f"{text(lang, 'stage_name_' + stage)} {result.timings_s[stage]:.2f} s"
            for stage in stages
            if stage in result.timings_s
        )
        lines = [
            f"| {text(lang, 'fact_duration')} | {text(lang, 'fact_rtf')} | {text(lang, 'fact_chunks')} "
            f"| {text(lang, 'fact_seed')} |",
            "|---|---|---|---|",
            f"| {result.duration_s:.2f} s | {result.real_time_factor:.3f} | {result.chunks} | {result.seed} |",
            "",
            f"**{text(lang, 'fact_timings')}**: {timings}  ",
            f"_{text(lang, 'fact_rtf')}: {text(lang, 'fact_rtf_hint')}_",
        ]
        if result.voice:
            lines.append(f"\n**{text(lang, 'fact_voice')}**: {_md(result.voice)}")
        if result.reference_text:
            lines.append(f"\n**{text(lang, 'fact_reference_text')}**: {_md(result.reference_text)}")
        lines.append(f"\n**{text(lang, 'fact_link')}**: `{url}`")
        notes = [_md(w) for w in getattr(result, "warnings", []) or [] if w]
        if trim_notice:
            # The service's trim note is English; the UI says the same in the page's language.
            notes = [n for n in notes if "trimmed" not in n]
            notes.insert(0, trim_notice)
        if notes:
            lines.append(f"\n**{text(lang, 'fact_notes')}**:")
            lines.extend(f"- {n}" for n in notes)
        return "\n".join(lines)

    @staticmethod
    def _history_markdown(history: list[dict[str, Any]], lang: str) -> str:
        if not history:
            return text(lang, "history_empty")
        columns = ("col_time", "col_text", "col_voice", "col_duration", "col_rtf", "col_seed", "col_file")
        lines = [
            "| " + " | ".join(text(lang, c) for c in columns) + " |",
            "|" + "---|" * len(columns),
        ]
        for item in history:
            lines.append(
                f"| {item['time']} | {_md(item['text'])} | {_md(item['voice'])} | {item['duration_s']:.2f} s "
                f"| {item['rtf']:.3f} | {item['seed']} | {_md(Path(item['path']).name)} |"
            )
        return "\n".join(lines)

    @staticmethod
    def _history_files(history: list[dict[str, Any]]) -> list[str] | None:
        # Outputs older than OUTPUT_TTL_HOURS are deleted by the service: list only what still exists.
        files = [item["path"] for item in history if Path(item["path"]).is_file()]
        return files or None

    # --- voices -------------------------------------------------------------------------------------------

    def _voice_views(self, lang: str, *, selected: str | None = None) -> tuple[str, Any, Any]:
        voices = self.service.list_voices()
        names = [v.name for v in voices]
        if voices:
            rows = [
                f"| {text(lang, 'col_name')} | {text(lang, 'col_transcript')} | {text(lang, 'col_duration')} "
                f"| {text(lang, 'col_created')} |",
                "|---|---|---|---|",
            ]
            rows.extend(
                f"| {_md(v.name)} | {_md(_preview(v.transcript, 80))} | {v.duration_s:.1f} s "
                f"| {_md(v.created_at[:19].replace('T', ' '))} |"
                for v in voices
            )
            table = "\n".join(rows)
        else:
            table = text(lang, "voices_empty")
        keep = selected if selected in names else None
        return table, gr.update(choices=names), gr.update(choices=names, value=keep)

    def list_voices(self, request: gr.Request) -> tuple[str, Any, Any]:
        """The saved voices as a table, and both voice pickers refreshed."""
        lang = _lang(request)
        with self._user_errors(lang):
            return self._voice_views(lang)

    def save_voice(
        self,
        name: str,
        reference_audio: str | None,
        reference_text: str | None,
        overwrite: bool,
        request: gr.Request,
    ) -> tuple[str, str, Any, Any]:
        """Save the current reference clip and transcript under `name` (transcribed if the transcript is empty)."""
        lang = _lang(request)
        if not (name or "").strip():
            raise self._error(lang, text(lang, "need_voice_name"))
        if not reference_audio:
            raise self._error(lang, text(lang, "need_audio"))
        with self._user_errors(lang):
            info = self.service.create_voice(
                name, reference_audio, (reference_text or "").strip() or None, overwrite=bool(overwrite)
            )
            table, synth_picker, library_picker = self._voice_views(lang, selected=info.name)
        message = text(lang, "voice_saved", name=_md(info.name), duration_s=info.duration_s)
        return message, table, synth_picker, library_picker

    def preview_voice(self, name: str | None, request: gr.Request) -> tuple[str | None, str]:
        """A saved voice's reference clip and transcript (editable on the page)."""
        lang = _lang(request)
        if not name:
            return None, ""
        with self._user_errors(lang):
            info = self.service.get_voice(name)
            path = self.service.voice_audio_path(name)
        return str(path), info.transcript

    def update_voice(self, name: str | None, transcript: str | None, request: gr.Request) -> tuple[str, str, str]:
        """Replace a saved voice's transcript (the words spoken in its clip); no model work."""
        lang = _lang(request)
        if not name:
            raise self._error(lang, text(lang, "need_voice"), "voice_not_found")
        with self._user_errors(lang):
            info = self.service.update_voice(name, transcript or "")
            table, _synth_picker, _library_picker = self._voice_views(lang, selected=info.name)
        return text(lang, "voice_updated", name=_md(info.name)), table, info.transcript

    def delete_voice(self, name: str | None, request: gr.Request) -> tuple[str, str, Any, Any, None, str]:
        """Delete a saved voice from the shared library."""
        lang = _lang(request)
        if not name:
            raise self._error(lang, text(lang, "need_voice"), "voice_not_found")
        with self._user_errors(lang):
            self.service.delete_voice(name)
            table, _synth_picker, library_picker = self._voice_views(lang)
        names = [v.name for v in self.service.list_voices()]
        message = text(lang, "voice_deleted", name=_md(name))
        # The synthesis picker forgets the deleted voice too.
        return message, table, gr.update(choices=names, value=None), library_picker, None, ""

    # --- GPU ----------------------------------------------------------------------------------------------

    def _gpu_views(self, lang: str) -> tuple[str, str, dict[str, Any]]:
        status = self.service.gpu_status()
        columns = ("col_model", "col_state", "col_device", "col_memory", "col_idle", "col_leases", "col_loads")
        rows = [
            "| " + " | ".join(text(lang, c) for c in columns) + " |",
            "|" + "---|" * len(columns),
        ]
        for name, info in status.models.items():
            rows.append(
                f"| **{_md(name)}** | {_md(self._state_text(info.state, lang))} "
                f"| {_md(info.device or '–')} "
                f"| {_bytes_text(info.size_bytes)} "
                f"| {_seconds_text(info.idle_s, lang)} "
                f"| {info.leases} "
                f"| {info.loads} / {info.offloads} |"
            )
        card = self._card_markdown(status.device, lang)
        return "\n".join(rows), card, status.to_dict()

    @staticmethod
    def _state_text(state: object, lang: str) -> str:
        key = f"state_{state}"
        return text(lang, key) if key in STRINGS["en"] else str(state or "–")

    def _card_markdown(self, device: DeviceStatus, lang: str) -> str:
        lines = []
        if device.kind == "cpu":
            lines.append(text(lang, "card_none"))
        if device.total_bytes:
            lines.append(
                text(
                    lang,
                    "card_line",
                    name=_md(device.name),
                    used=_bytes_text(device.used_bytes),
                    free=_bytes_text(device.free_bytes),
                    total=_bytes_text(device.total_bytes),
                )
            )
            if device.process_bytes is not None:
                lines.append(text(lang, "card_process", bytes=_bytes_text(device.process_bytes)))
        lines.append(text(lang, "queue_line", depth=self.service.queue_depth))
        return "  \n".join(lines)

    def gpu_status(self, request: gr.Request) -> tuple[str, str, dict[str, Any]]:
        """Each model's state, device, memory and idle time; the card's memory; the raw status dict."""
        lang = _lang(request)
        with self._user_errors(lang):
            return self._gpu_views(lang)

    def show_gpu_tab(self, request: gr.Request) -> tuple[Any, ...]:
        """Start the auto-refresh timer and show the status at once."""
        return (gr.Timer(active=True), *self.gpu_status(request))

    def _gpu_action(self, action: str, model: str | None, request: gr.Request) -> tuple[str, str, str, dict]:
        lang = _lang(request)
        target = None if not model or model == ALL_MODELS else model
        with self._user_errors(lang):
            outcome = self.service.offload(target) if action == "offload" else self.service.release(target)
            table, card, status = self._gpu_views(lang)
        per_model = outcome.get("models", outcome) if isinstance(outcome, dict) else {}
        detail = ", ".join(f"{k}: {v}" for k, v in per_model.items()) if per_model else str(outcome)
        message = text(lang, "gpu_done", action=text(lang, f"action_{action}"), detail=_md(detail))
        return message, table, card, status

    def offload(self, model: str | None, request: gr.Request) -> tuple[str, str, str, dict]:
        """Move one model (or all) from the GPU to CPU RAM; a model in use moves when its request ends."""
        return self._gpu_action("offload", model, request)

    def release(self, model: str | None, request: gr.Request) -> tuple[str, str, str, dict]:
        """Drop one model (or all) from memory altogether; it is loaded again on the next request."""
        return self._gpu_action("release", model, request)

    def set_timeouts(
        self,
        idle_timeout_s: float | None,
        evict_timeout_s: float | None,
        offload_after_use: bool | None,
        request: gr.Request,
    ) -> tuple[str, str, str, dict]:
        """Change the GPU idle timeout, the RAM eviction timeout and offload-after-use for this process."""
        lang = _lang(request)
        with self._user_errors(lang):
            self.service.set_timeouts(
                idle_timeout_s=_optional_number(idle_timeout_s),
                evict_timeout_s=_optional_number(evict_timeout_s),
                offload_after_use=None if offload_after_use is None else bool(offload_after_use),
            )
            table, card, status = self._gpu_views(lang)
        message = text(
            lang,
            "timeouts_set",
            idle=_seconds_text(_optional_number(idle_timeout_s), lang),
            evict=_seconds_text(_optional_number(evict_timeout_s), lang),
            after="✓" if offload_after_use else "✗",
        )
        return message, table, card, status

    def timeout_values(self) -> tuple[float, float, bool]:
        """The manager's current timeouts, for the GPU tab's inputs."""
        policy = self.service.gpu_status().settings
        return policy.idle_timeout_s, policy.evict_timeout_s, policy.offload_after_use

    # --- API & MCP ----------------------------------------------------------------------------------------

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
            hostname = "127.0.0.1" if s.host in ("0.0.0.0", "::", "") else s.host
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

    # --- page load ----------------------------------------------------------------------------------------

    def on_load(self, request: gr.Request) -> tuple[Any, ...]:
        """Everything that depends on the visitor's language or host, or on the shared state."""
        lang = _lang(request)
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
    ui = _WebUI(service, settings, formats)
    t = build_i18n(settings)
    gpu = {"concurrency_id": GPU_CONCURRENCY_ID, "concurrency_limit": 1}
    admin = {"concurrency_id": ADMIN_CONCURRENCY_ID, "concurrency_limit": 1}
    light = {"queue": False, "show_progress": "hidden"}

    # gradio keeps its own copies of results and uploads: drop them on the same schedule as OUTPUT_TTL_HOURS.
    ttl_s = max(int(settings.output_ttl_hours * 3600), 60)
    with gr.Blocks(title=t("title"), analytics_enabled=False, delete_cache=(min(ttl_s, 3600), ttl_s)) as demo:
        gr.Markdown(t("header_md"))
        with gr.Tabs():
            # --- Synthesize -----------------------------------------------------------------------------
            with gr.Tab(t("tab_synth"), id="synth") as synth_tab:
                with gr.Row(equal_height=False):
                    with gr.Column(scale=1):
                        voice_mode = gr.Radio(
                            [
                                (t("mode_reference"), MODE_REFERENCE),
                                (t("mode_saved"), MODE_SAVED),
                                (t("mode_none"), MODE_NONE),
                            ],
                            value=MODE_REFERENCE,
                            label=t("voice_mode"),
                            elem_id="voice-mode",
                        )
                        with gr.Column(visible=True) as reference_group:
                            reference_audio = gr.Audio(
                                sources=["upload", "microphone"],
                                type="filepath",
                                label=t("ref_audio"),
                                elem_id="reference-audio",
                            )
                            with gr.Row(elem_classes=["llasa-bottom"]):
                                language = gr.Dropdown(
                                    list(TRANSCRIBE_LANGUAGES),
                                    value="auto",
                                    # Any other Whisper code can be typed; the service checks it.
                                    allow_custom_value=True,
                                    label=t("language"),
                                    info=t("language_info"),
                                    scale=2,
                                )
                                transcribe_btn = gr.Button(t("transcribe_btn"), scale=1, elem_id="transcribe")
                            reference_text = gr.Textbox(
                                label=t("transcript"),
                                info=t("transcript_info"),
                                placeholder=t("transcript_placeholder"),
                                lines=3,
                                elem_id="reference-text",
                            )
                        with gr.Row(visible=False) as saved_group:
                            voice = gr.Dropdown(
                                [],
                                value=None,
                                # Choices are filled per browser session; API callers (and voices saved over
                                # REST or MCP since) name any voice: the service refuses unknown ones clearly.
                                allow_custom_value=True,
                                label=t("saved_voice"),
                                info=t("saved_voice_info"),
                                scale=4,
                                elem_id="saved-voice",
                            )
                            refresh_voices_btn = gr.Button(t("refresh"), scale=1, size="sm")
                    with gr.Column(scale=1):
                        text_input = gr.Textbox(
                            label=t("text"),
                            info=t("text_info"),
                            placeholder=t("text_placeholder"),
                            lines=6,
                            elem_id="text-input",
                        )
                        char_count = gr.HTML(
                            f"0 / {settings.max_text_chars}", elem_classes=["llasa-count"], elem_id="char-count"
                        )
                        gr.Examples([[e] for e in EXAMPLE_TEXTS], inputs=[text_input], label=t("examples"))
                        with gr.Accordion(t("advanced"), open=False):
                            with gr.Row():
                                temperature = gr.Slider(
                                    0.05,
                                    2.0,
                                    value=settings.default_temperature,
                                    step=0.05,
                                    label=t("temperature"),
                                    info=t("temperature_info"),
                                )
                                top_p = gr.Slider(
                                    0.05,
                                    1.0,
                                    value=settings.default_top_p,
                                    step=0.01,
                                    label=t("top_p"),
                                    info=t("top_p_info"),
                                )
                            with gr.Row():
                                top_k = gr.Slider(
                                    0,
                                    200,
                                    value=min(settings.default_top_k, 200),
                                    step=1,
                                    label=t("top_k"),
                                    info=t("top_k_info"),
                                )
                                repetition_penalty = gr.Slider(
                                    0.5,
                                    2.0,
                                    value=settings.default_repetition_penalty,
                                    step=0.05,
                                    label=t("repetition_penalty"),
                                    info=t("repetition_penalty_info"),
                                )
                            with gr.Row():
                                max_seconds = gr.Slider(
                                    1,
                                    300,
                                    value=settings.max_audio_seconds,
                                    step=1,
                                    label=t("max_seconds"),
                                    info=t("max_seconds_info"),
                                )
                                seed = gr.Number(
                                    value=-1, precision=0, minimum=-1, label=t("seed"), info=t("seed_info")
                                )
                            output_format = gr.Dropdown(formats, value="wav", label=t("output_format"))
                        with gr.Row():
                            generate_btn = gr.Button(t("generate_btn"), variant="primary", scale=3, elem_id="generate")
                            cancel_btn = gr.Button(t("cancel_btn"), variant="stop", scale=1, elem_id="cancel")
                        # The browser's own player: a plain <audio src> that every browser (and screen reader)
                        # handles, seekable while the file loads.
                        result_audio = gr.Audio(
                            type="filepath",
                            label=t("result_audio"),
                            interactive=False,
                            waveform_options=gr.WaveformOptions(show_recording_waveform=False),
                            elem_id="result-audio",
                        )
                        # Shown once there is something to download (an empty file box is a big blank panel).
                        result_file = gr.File(
                            label=t("result_file"), interactive=False, visible=False, elem_id="result-file"
                        )
                        notice = gr.Markdown("", elem_classes=["llasa-notice"], elem_id="notice")
                        facts = gr.Markdown(elem_classes=["llasa-facts"], elem_id="facts")
                with gr.Accordion(t("history"), open=True):
                    history_md = gr.Markdown(elem_id="history")
                    history_files = gr.File(
                        label=t("history_files"),
                        file_count="multiple",
                        interactive=False,
                        visible=False,
                        elem_id="history-files",
                    )
                history = gr.State([])

            # --- Voices ---------------------------------------------------------------------------------
            with gr.Tab(t("tab_voices"), id="voices") as voices_tab:
                gr.Markdown(t("voices_intro_md"))
                with gr.Row():
                    voice_name = gr.Textbox(label=t("voice_name"), placeholder=t("voice_name_placeholder"), scale=3)
                    overwrite = gr.Checkbox(label=t("overwrite"), value=False, scale=1)
                    save_voice_btn = gr.Button(t("save_voice_btn"), variant="primary", scale=2)
                voice_message = gr.Markdown(elem_id="voice-message")
                gr.Markdown(t("voice_list_md"))
                voice_table = gr.Markdown(elem_id="voice-table")
                with gr.Row():
                    with gr.Column(scale=1):
                        library_voice = gr.Dropdown(
                            [], value=None, label=t("voice_pick"), allow_custom_value=True, elem_id="library-voice"
                        )
                        with gr.Row():
                            refresh_library_btn = gr.Button(t("refresh"), size="sm")
                            delete_voice_btn = gr.Button(t("delete_btn"), variant="stop", size="sm")
                    with gr.Column(scale=2):
                        preview_audio = gr.Audio(
                            type="filepath",
                            label=t("preview_audio"),
                            interactive=False,
                            waveform_options=gr.WaveformOptions(show_recording_waveform=False),
                            elem_id="preview-audio",
                        )
                        preview_text = gr.Textbox(
                            label=t("voice_transcript"),
                            info=t("voice_transcript_info"),
                            lines=3,
                            elem_id="voice-transcript",
                        )
                        update_voice_btn = gr.Button(t("update_voice_btn"), size="sm", elem_id="update-voice")

            # --- GPU ------------------------------------------------------------------------------------
            with gr.Tab(t("tab_gpu"), id="gpu") as gpu_tab:
                gr.Markdown(t("gpu_intro_md"))
                card = gr.Markdown(elem_id="gpu-card")
                models_table = gr.Markdown(elem_id="gpu-models")
                with gr.Row():
                    gpu_model = gr.Dropdown(
                        [(t("all_models"), ALL_MODELS), *((name, name) for name in MODEL_NAMES)],
                        value=ALL_MODELS,
                        label=t("gpu_model"),
                        scale=2,
                    )
                    offload_btn = gr.Button(t("offload_btn"), scale=1)
                    release_btn = gr.Button(t("release_btn"), variant="stop", scale=1)
                    refresh_gpu_btn = gr.Button(t("refresh"), scale=1)
                gpu_message = gr.Markdown()
                with gr.Row():
                    idle_timeout = gr.Number(
                        value=settings.gpu_idle_timeout,
                        minimum=-1,
                        label=t("idle_timeout"),
                        info=t("idle_timeout_info"),
                    )
                    evict_timeout = gr.Number(
                        value=settings.model_evict_timeout,
                        minimum=-1,
                        label=t("evict_timeout"),
                        info=t("evict_timeout_info"),
                    )
                    with gr.Column():
                        offload_after_use = gr.Checkbox(
                            value=settings.gpu_offload_after_use, label=t("offload_after_use")
                        )
                        apply_btn = gr.Button(t("apply_btn"))
                with gr.Accordion(t("raw_status"), open=False):
                    raw_status = gr.JSON()
                timer = gr.Timer(GPU_REFRESH_S, active=False)

            # --- API & MCP ------------------------------------------------------------------------------
            with gr.Tab(t("tab_api"), id="api") as api_tab:
                gr.Markdown(t("api_intro_md"))
                curl_code = gr.Code(language="shell", label=t("curl_examples"), buttons=["copy"], interactive=False)
                mcp_code = gr.Code(language="json", label=t("mcp_config"), buttons=["copy"], interactive=False)
                python_code = gr.Code(language="python", label=t("python_client"), buttons=["copy"], interactive=False)

            # --- Guide ----------------------------------------------------------------------------------
            with gr.Tab(t("tab_help"), id="help") as help_tab:
                gr.Markdown(t("usage_md"))

        # --- events: synthesize -----------------------------------------------------------------------------
        voice_mode.change(
            lambda mode: (gr.update(visible=mode == MODE_REFERENCE), gr.update(visible=mode == MODE_SAVED)),
            inputs=[voice_mode],
            outputs=[reference_group, saved_group],
            api_visibility="private",
            **light,
        )
        text_input.change(
            None,
            inputs=[text_input],
            outputs=[char_count],
            js=_COUNT_JS.replace("LIMIT", str(settings.max_text_chars)),
        )
        transcribe_btn.click(
            ui.transcribe, inputs=[reference_audio, language], outputs=[reference_text], api_name="transcribe", **gpu
        )
        # A new clip fills its transcript in at once (editable afterwards).
        for trigger, name in (
            (reference_audio.upload, "transcribe_upload"),
            (reference_audio.stop_recording, "transcribe_recording"),
        ):
            trigger(
                ui.transcribe_upload,
                inputs=[reference_audio, language],
                outputs=[reference_text, notice],
                api_name=name,
                api_visibility="private",
                **gpu,
            )
        reference_audio.clear(lambda: ("", ""), outputs=[reference_text, notice], api_visibility="private", **light)
        generate = generate_btn.click(
            ui.synthesize,
            inputs=[
                voice_mode,
                reference_audio,
                reference_text,
                voice,
                language,
                text_input,
                temperature,
                top_p,
                top_k,
                repetition_penalty,
                max_seconds,
                seed,
                output_format,
                history,
            ],
            outputs=[
                result_audio,
                result_file,
                facts,
                notice,
                history,
                history_md,
                history_files,
                reference_text,
            ],
            api_name="synthesize",
            show_progress_on=[result_audio],
            **gpu,
        )
        # The file boxes appear with the first result (plain outputs above keep the API simple).
        generate.success(
            lambda: (gr.update(visible=True), gr.update(visible=True)),
            outputs=[result_file, history_files],
            api_visibility="private",
            **light,
        )
        # Two halves: the flag stops the running model at its next token; `cancels` drops a queued request
        # and frees the browser at once.
        cancel_btn.click(ui.cancel, inputs=None, outputs=None, cancels=[generate], api_name="cancel", **light)
        voice_views = [voice_table, voice, library_voice]
        refresh_voices_btn.click(ui.list_voices, outputs=voice_views, api_name="list_voices", **light)

        # --- events: voices ---------------------------------------------------------------------------------
        save_voice_btn.click(
            ui.save_voice,
            inputs=[voice_name, reference_audio, reference_text, overwrite],
            outputs=[voice_message, voice_table, voice, library_voice],
            api_name="save_voice",
            **gpu,
        )
        refresh_library_btn.click(ui.list_voices, outputs=voice_views, api_visibility="private", **light)
        library_voice.change(
            ui.preview_voice,
            inputs=[library_voice],
            outputs=[preview_audio, preview_text],
            api_name="preview_voice",
            **light,
        )
        update_voice_btn.click(
            ui.update_voice,
            inputs=[library_voice, preview_text],
            outputs=[voice_message, voice_table, preview_text],
            api_name="update_voice",
            **light,
        )
        delete_voice_btn.click(
            ui.delete_voice,
            inputs=[library_voice],
            outputs=[voice_message, voice_table, voice, library_voice, preview_audio, preview_text],
            api_name="delete_voice",
            **light,
        )

        # --- events: GPU ------------------------------------------------------------------------------------
        gpu_views = [models_table, card, raw_status]
        refresh_gpu_btn.click(ui.gpu_status, outputs=gpu_views, api_name="gpu_status", **light)
        timer.tick(ui.gpu_status, outputs=gpu_views, api_visibility="private", **light)
        offload_btn.click(
            ui.offload, inputs=[gpu_model], outputs=[gpu_message, *gpu_views], api_name="offload", **admin
        )
        release_btn.click(
            ui.release, inputs=[gpu_model], outputs=[gpu_message, *gpu_views], api_name="release", **admin
        )
        apply_btn.click(
            ui.set_timeouts,
            inputs=[idle_timeout, evict_timeout, offload_after_use],
            outputs=[gpu_message, *gpu_views],
            api_name="set_timeouts",
            **admin,
        )
        # The panel refreshes itself only while it is shown.
        gpu_tab.select(
            ui.show_gpu_tab,
            outputs=[timer, *gpu_views],
            api_visibility="private",
            **light,
        )
        for other in (synth_tab, voices_tab, api_tab, help_tab):
            other.select(lambda: gr.Timer(active=False), outputs=[timer], api_visibility="private", **light)

        demo.load(
            ui.on_load,
            outputs=[
                *voice_views,
                *gpu_views,
                idle_timeout,
                evict_timeout,
                offload_after_use,
                curl_code,
                mcp_code,
                python_code,
                history_md,
                facts,
            ],
            api_visibility="private",
            **light,
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


def main() -> None:
    """Run the web UI alone: Settings -> logging -> TTSService -> gradio (REST and MCP are main.py's)."""
    settings = load_settings_or_exit()
    start_process(settings)
    run_alone(settings, lambda service: launch_ui(create_ui(service, settings), settings), label="web UI")


if __name__ == "__main__":
    main()
