"""The Voices tab: save, list, preview, edit and delete saved voices."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import gradio as gr

from faces.webui.common import GPU_JOB, LIGHT, lang_of, md, preview
from faces.webui.handlers import WebUIBase
from faces.webui.i18n import text
from llasa.config import Settings

logger = logging.getLogger(__name__)


class VoiceHandlers(WebUIBase):
    """The Voices tab handlers (a mixin of `faces.webui.page.WebUI`)."""

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
                f"| {md(v.name)} | {md(preview(v.transcript, 80))} | {v.duration_s:.1f} s "
                f"| {md(v.created_at[:19].replace('T', ' '))} |"
                for v in voices
            )
            table = "\n".join(rows)
        else:
            table = text(lang, "voices_empty")
        keep = selected if selected in names else None
        return table, gr.update(choices=names), gr.update(choices=names, value=keep)

    def list_voices(self, request: gr.Request) -> tuple[str, Any, Any]:
        """The saved voices as a table, and both voice pickers refreshed."""
        lang = lang_of(request)
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
        lang = lang_of(request)
        if not (name or "").strip():
            raise self._error(lang, text(lang, "need_voice_name"))
        if not reference_audio:
            raise self._error(lang, text(lang, "need_audio"))
        with self._user_errors(lang):
            info = self.service.create_voice(
                name, reference_audio, (reference_text or "").strip() or None, overwrite=bool(overwrite)
            )
            table, synth_picker, library_picker = self._voice_views(lang, selected=info.name)
        message = text(lang, "voice_saved", name=md(info.name), duration_s=info.duration_s)
        return message, table, synth_picker, library_picker

    def preview_voice(self, name: str | None, request: gr.Request) -> tuple[str | None, str]:
        """A saved voice's reference clip and transcript (editable on the page)."""
        lang = lang_of(request)
        if not name:
            return None, ""
        with self._user_errors(lang):
            info = self.service.get_voice(name)
            path = self.service.voice_audio_path(name)
        return str(path), info.transcript

    def update_voice(self, name: str | None, transcript: str | None, request: gr.Request) -> tuple[str, str, str]:
        """Replace a saved voice's transcript (the words spoken in its clip); no model work."""
        lang = lang_of(request)
        if not name:
            raise self._error(lang, text(lang, "need_voice"), "voice_not_found")
        with self._user_errors(lang):
            info = self.service.update_voice(name, transcript or "")
            table, _synth_picker, _library_picker = self._voice_views(lang, selected=info.name)
        return text(lang, "voice_updated", name=md(info.name)), table, info.transcript

    def delete_voice(self, name: str | None, request: gr.Request) -> tuple[str, str, Any, Any, None, str]:
        """Delete a saved voice from the shared library."""
        lang = lang_of(request)
        if not name:
            raise self._error(lang, text(lang, "need_voice"), "voice_not_found")
        with self._user_errors(lang):
            self.service.delete_voice(name)
            table, _synth_picker, library_picker = self._voice_views(lang)
        names = [v.name for v in self.service.list_voices()]
        message = text(lang, "voice_deleted", name=md(name))
        # The synthesis picker forgets the deleted voice too.
        return message, table, gr.update(choices=names, value=None), library_picker, None, ""


def create_voices_tab(t: gr.I18n) -> SimpleNamespace:
    """The tab's components (call inside `gr.Tabs()`); `create_ui` wires the events that span tabs."""
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

    return SimpleNamespace(
        voices_tab=voices_tab,
        voice_message=voice_message,
        voice_table=voice_table,
        voice_name=voice_name,
        overwrite=overwrite,
        save_voice_btn=save_voice_btn,
        library_voice=library_voice,
        preview_audio=preview_audio,
        preview_text=preview_text,
        update_voice_btn=update_voice_btn,
        refresh_library_btn=refresh_library_btn,
        delete_voice_btn=delete_voice_btn,
    )


def wire_voices_events(ui: VoiceHandlers, page: SimpleNamespace, settings: Settings) -> None:
    """This tab's events; `page` holds every tab's components."""
    gpu, light = GPU_JOB, LIGHT
    # The synthesis tab's voice picker lists the library too.
    page.refresh_voices_btn.click(ui.list_voices, outputs=page.voice_views, api_name="list_voices", **light)
    page.save_voice_btn.click(
        ui.save_voice,
        inputs=[page.voice_name, page.reference_audio, page.reference_text, page.overwrite],
        outputs=[page.voice_message, page.voice_table, page.voice, page.library_voice],
        api_name="save_voice",
        **gpu,
    )
    page.refresh_library_btn.click(ui.list_voices, outputs=page.voice_views, api_visibility="private", **light)
    page.library_voice.change(
        ui.preview_voice,
        inputs=[page.library_voice],
        outputs=[page.preview_audio, page.preview_text],
        api_name="preview_voice",
        **light,
    )
    page.update_voice_btn.click(
        ui.update_voice,
        inputs=[page.library_voice, page.preview_text],
        outputs=[page.voice_message, page.voice_table, page.preview_text],
        api_name="update_voice",
        **light,
    )
    page.delete_voice_btn.click(
        ui.delete_voice,
        inputs=[page.library_voice],
        outputs=[
            page.voice_message,
            page.voice_table,
            page.voice,
            page.library_voice,
            page.preview_audio,
            page.preview_text,
        ],
        api_name="delete_voice",
        **light,
    )
    # The synthesis tab's voice picker refreshes from the library too.
    page.refresh_voices_btn.click(ui.list_voices, outputs=page.voice_views, api_name="list_voices", **light)
