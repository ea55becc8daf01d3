"""The Synthesize tab: reference upload or microphone, transcription, text, parameters, result, history."""

from __future__ import annotations

import base64
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from faces.webui.i18n import STRINGS, text
from llasa.config import Settings
from llasa.errors import AudioTooShort, Cancelled, SilentAudio
from llasa.types import SAMPLE_RATE, GenerationParams, SynthesisRequest, TranscriptionRequest

if TYPE_CHECKING:
    from llasa.types import SynthesisResult

from types import SimpleNamespace

from faces.webui.common import (
    CAPTIONS_NONE,
    COUNT_JS,
    EXAMPLE_TEXTS,
    GPU_JOB,
    HISTORY_LIMIT,
    LIGHT,
    LIVE_PLAY_JS,
    LIVE_STOP_JS,
    MODE_NONE,
    MODE_REFERENCE,
    MODE_SAVED,
    TRANSCRIBE_LANGUAGES,
    lang_of,
    md,
    optional_number,
    preview,
)
from faces.webui.handlers import WebUIBase

logger = logging.getLogger(__name__)


class SynthesisHandlers(WebUIBase):
    """The Synthesize tab handlers (a mixin of `faces.webui.page.WebUI`)."""

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
        lang = lang_of(request)
        return self._transcribe_reference(audio, language, lang)[0]

    def transcribe_upload(self, audio: str | None, language: str | None, request: gr.Request) -> tuple[str, str]:
        """A new clip's transcript (of the part that is kept) and the trim notice (empty when not trimmed)."""
        lang = lang_of(request)
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

    def _stream_result(
        self, synthesis: SynthesisRequest, lang: str, progress: gr.Progress, cancel: Any
    ) -> Iterator[str | SynthesisResult]:
        """The live player's carrier value after each audio window (see LIVE_PLAY_JS), then the whole result.

        A verified synthesis is not streamed: a misread chunk is generated again, and audio already played cannot
        be taken back, so it runs whole and the player gets it at the end (the progress bar counts the chunks).
        """
        from llasa.audio import pcm16_bytes

        reporter = self._progress_reporter(progress, lang)
        if synthesis.verify:
            yield self.service.synthesize(synthesis, progress=reporter, cancel=cancel)
            return
        pieces = self.service.synthesize_stream(synthesis, progress=reporter, cancel=cancel)
        with closing(pieces):  # type: ignore[type-var]  # a generator has close()
            carrier = uuid.uuid4().hex
            for piece in pieces:
                # A chunk's report (its captions) has no audio for the player; the final result brings them all.
                if piece.report is None and len(piece.audio):
                    carrier += f";{SAMPLE_RATE}:{base64.b64encode(pcm16_bytes(piece.audio)).decode('ascii')}"
                    yield carrier
                if piece.result is not None:
                    yield piece.result

    # Over 100 lines because gradio hands every input over as its own parameter (19 lines of signature) and
    # the result is 10 outputs built in one place; the steps themselves are helpers above.
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
        verify: bool | None,
        captions: str | None,
        history: list[dict[str, Any]] | None,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (gradio's documented way to receive a tracker)
    ) -> Iterator[tuple[Any, ...]]:
        """Speak `text_input` in the chosen voice: the live player gets each audio window as it is generated
        (unless `verify`), then the last update brings the player audio, download file, facts, history and the
        captions file (`captions`: "srt", "vtt", "json" or "none")."""
        lang = lang_of(request)
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
                temperature=optional_number(temperature),
                top_p=optional_number(top_p),
                top_k=None if top_k is None or top_k == "" else int(top_k),
                repetition_penalty=optional_number(repetition_penalty),
                max_audio_seconds=optional_number(max_seconds),
                seed=seed_value,
            )
            synthesis = SynthesisRequest(
                text=text_input or "",
                language=language or None,
                params=params,
                surface="webui",
                endpoint="synthesize",
                verify=self.settings.verify_default if verify is None else verify,
                captions=None if captions == CAPTIONS_NONE else captions,
                **voice_fields,
            )
            progress(0, desc=text(lang, "stage_queue"))
            unchanged = (*(gr.update() for _ in range(4)), history, *(gr.update() for _ in range(4)))
            result: SynthesisResult | None = None
            try:
                with self._cancel_scope(request) as cancel:
                    for item in self._stream_result(synthesis, lang, progress, cancel):
                        if isinstance(item, str):
                            yield (*unchanged, item)
                        else:
                            result = item
            except Cancelled:
                # The user asked for it: a notice, not an error, and the previous result stays on screen.
                gr.Info(text(lang, "cancelled"))
                yield (*unchanged, gr.update())
                return
            assert result is not None  # the stream's final piece carries it
            download = self.service.save_output(result, fmt)
            playable = download if fmt == "wav" else self.service.save_output(result, "wav")
            captions_file = None
            if result.captions is not None and result.caption_format is not None:
                captions_file = self.service.outputs.save_captions(result.captions, result.caption_format)

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
        facts = self._facts_markdown(
            result,
            lang,
            download.url,
            trim_notice=notice.removeprefix("> "),
            captions_url=captions_file.url if captions_file else "",
        )
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
                "text": preview(text_input or ""),
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
        yield (
            str(playable.path),
            str(download.path),
            facts,
            notice,
            history,
            self._history_markdown(history, lang),
            self._history_files(history),
            transcript,
            str(captions_file.path) if captions_file else None,
            # The carrier keeps the take until the next one, so a last piece that arrives with this update
            # still plays.
            gr.update(),
        )

    def _facts_markdown(
        self, result: SynthesisResult, lang: str, url: str, *, trim_notice: str = "", captions_url: str = ""
    ) -> str:
        stages = ("load", "transcribe", "encode", "generate", "decode", "verify", "total")
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
            lines.append(f"\n**{text(lang, 'fact_voice')}**: {md(result.voice)}")
        if result.reference_text:
            lines.append(f"\n**{text(lang, 'fact_reference_text')}**: {md(result.reference_text)}")
        lines.append(f"\n**{text(lang, 'fact_link')}**: `{url}`")
        if captions_url:
            lines.append(f"\n**{text(lang, 'fact_captions_link')}**: `{captions_url}`")
        lines.extend(self._chunk_reports_markdown(result, lang))
        notes = [md(w) for w in getattr(result, "warnings", []) or [] if w]
        if trim_notice:
            # The service's trim note is English; the UI says the same in the page's language.
            notes = [n for n in notes if "trimmed" not in n]
            notes.insert(0, trim_notice)
        if notes:
            lines.append(f"\n**{text(lang, 'fact_notes')}**:")
            lines.extend(f"- {n}" for n in notes)
        return "\n".join(lines)

    @staticmethod
    def _chunk_reports_markdown(result: SynthesisResult, lang: str) -> list[str]:
        """Per chunk: the takes it needed, what the recogniser heard and its error rate. Only when there is more
        to say than "one take, nothing wrong" (something was checked, retried or found)."""
        reports = result.chunk_reports
        if not any(r.transcript is not None or r.attempts > 1 or r.problems for r in reports):
            return []
        columns = ("col_chunk", "col_text", "col_attempts", "col_kept", "col_heard", "col_error_rate", "col_problems")
        lines = [
            f"\n**{text(lang, 'fact_chunk_reports')}**:\n",
            "| " + " | ".join(text(lang, c) for c in columns) + " |",
            "|" + "---|" * len(columns),
        ]
        for r in reports:
            # "—": not transcribed; "∅": transcribed, and nothing was heard
            heard = "—" if r.transcript is None else (md(preview(r.transcript)) or "∅")
            error_rate = "—" if r.error_rate is None else f"{r.error_rate:.0%}"
            problems = md("; ".join(r.problems)) if r.problems else "—"
            lines.append(
                f"| {r.index + 1} | {md(preview(r.text))} | {r.attempts} | {r.kept_attempt} | {heard} "
                f"| {error_rate} | {problems} |"
            )
        return lines

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
                f"| {item['time']} | {md(item['text'])} | {md(item['voice'])} | {item['duration_s']:.2f} s "
                f"| {item['rtf']:.3f} | {item['seed']} | {md(Path(item['path']).name)} |"
            )
        return "\n".join(lines)

    @staticmethod
    def _history_files(history: list[dict[str, Any]]) -> list[str] | None:
        # Outputs older than OUTPUT_TTL_HOURS are deleted by the service: list only what still exists.
        files = [item["path"] for item in history if Path(item["path"]).is_file()]
        return files or None


def _voice_inputs(t: gr.I18n) -> dict[str, Any]:
    """The voice column: reference clip (upload or microphone) + its transcript, or a saved voice."""
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
    return {
        "voice_mode": voice_mode,
        "reference_group": reference_group,
        "reference_audio": reference_audio,
        "reference_text": reference_text,
        "saved_group": saved_group,
        "voice": voice,
        "refresh_voices_btn": refresh_voices_btn,
        "language": language,
        "transcribe_btn": transcribe_btn,
    }


def _generation_parameters(settings: Settings, t: gr.I18n, formats: list[str]) -> dict[str, Any]:
    """The 'advanced' sampling parameters and the output format."""
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
        seed = gr.Number(value=-1, precision=0, minimum=-1, label=t("seed"), info=t("seed_info"))
    output_format = gr.Dropdown(formats, value="wav", label=t("output_format"))
    return {
        "output_format": output_format,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "repetition_penalty": repetition_penalty,
        "max_seconds": max_seconds,
        "seed": seed,
    }


def create_synthesis_tab(settings: Settings, t: gr.I18n, formats: list[str]) -> SimpleNamespace:
    """The tab's components (call inside `gr.Tabs()`); `create_ui` wires the events that span tabs."""
    # --- Synthesize -----------------------------------------------------------------------------
    with gr.Tab(t("tab_synth"), id="synth") as synth_tab:
        with gr.Row(equal_height=False):
            with gr.Column(scale=1):
                voice_inputs = _voice_inputs(t)
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
                    parameters = _generation_parameters(settings, t, formats)
                with gr.Row(elem_classes=["llasa-bottom"]):
                    verify = gr.Checkbox(
                        value=settings.verify_default,
                        label=t("verify"),
                        info=t("verify_info"),
                        scale=3,
                        elem_id="verify",
                    )
                    captions = gr.Dropdown(
                        [(t("captions_none"), CAPTIONS_NONE), ("SRT", "srt"), ("WebVTT", "vtt"), ("JSON", "json")],
                        value=CAPTIONS_NONE,
                        label=t("captions"),
                        info=t("captions_info"),
                        scale=2,
                        elem_id="captions",
                    )
                with gr.Row():
                    generate_btn = gr.Button(t("generate_btn"), variant="primary", scale=3, elem_id="generate")
                    cancel_btn = gr.Button(t("cancel_btn"), variant="stop", scale=1, elem_id="cancel")
                # Carries the audio pieces to the browser's live player while they are generated (LIVE_PLAY_JS);
                # hidden by CSS, not visible=False, so its change event runs in the page.
                live_audio = gr.Textbox(
                    value="",
                    interactive=False,
                    show_label=False,
                    container=False,
                    elem_classes=["llasa-carrier"],
                    elem_id="live-audio",
                )
                # The browser's own player for the whole result: a plain <audio src> that every browser (and
                # screen reader) handles, seekable while the file loads.
                result_audio = gr.Audio(
                    type="filepath",
                    label=t("result_audio"),
                    interactive=False,
                    waveform_options=gr.WaveformOptions(show_recording_waveform=False),
                    elem_id="result-audio",
                )
                # Shown once there is something to download (an empty file box is a big blank panel).
                result_file = gr.File(label=t("result_file"), interactive=False, visible=False, elem_id="result-file")
                captions_file = gr.File(
                    label=t("captions_file"), interactive=False, visible=False, elem_id="captions-file"
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

    return SimpleNamespace(
        **voice_inputs,
        **parameters,
        synth_tab=synth_tab,
        history=history,
        history_md=history_md,
        history_files=history_files,
        text_input=text_input,
        char_count=char_count,
        result_audio=result_audio,
        live_audio=live_audio,
        result_file=result_file,
        verify=verify,
        captions=captions,
        captions_file=captions_file,
        notice=notice,
        facts=facts,
        generate_btn=generate_btn,
        cancel_btn=cancel_btn,
    )


def wire_synthesis_events(ui: SynthesisHandlers, page: SimpleNamespace, settings: Settings) -> None:
    """This tab's events; `page` holds every tab's components."""
    gpu, light = GPU_JOB, LIGHT
    page.voice_mode.change(
        lambda mode: (gr.update(visible=mode == MODE_REFERENCE), gr.update(visible=mode == MODE_SAVED)),
        inputs=[page.voice_mode],
        outputs=[page.reference_group, page.saved_group],
        api_visibility="private",
        **light,
    )
    page.text_input.change(
        None,
        inputs=[page.text_input],
        outputs=[page.char_count],
        js=COUNT_JS.replace("LIMIT", str(settings.max_text_chars)),
    )
    page.transcribe_btn.click(
        ui.transcribe,
        inputs=[page.reference_audio, page.language],
        outputs=[page.reference_text],
        api_name="transcribe",
        **gpu,
    )
    # A new clip fills its transcript in at once (editable afterwards).
    for trigger, name in (
        (page.reference_audio.upload, "transcribe_upload"),
        (page.reference_audio.stop_recording, "transcribe_recording"),
    ):
        trigger(
            ui.transcribe_upload,
            inputs=[page.reference_audio, page.language],
            outputs=[page.reference_text, page.notice],
            api_name=name,
            api_visibility="private",
            **gpu,
        )
    page.reference_audio.clear(
        lambda: ("", ""), outputs=[page.reference_text, page.notice], api_visibility="private", **light
    )
    generate = page.generate_btn.click(
        ui.synthesize,
        inputs=[
            page.voice_mode,
            page.reference_audio,
            page.reference_text,
            page.voice,
            page.language,
            page.text_input,
            page.temperature,
            page.top_p,
            page.top_k,
            page.repetition_penalty,
            page.max_seconds,
            page.seed,
            page.output_format,
            page.verify,
            page.captions,
            page.history,
        ],
        outputs=[
            page.result_audio,
            page.result_file,
            page.facts,
            page.notice,
            page.history,
            page.history_md,
            page.history_files,
            page.reference_text,
            page.captions_file,
            page.live_audio,
        ],
        api_name="synthesize",
        show_progress_on=[page.result_audio],
        **gpu,
    )
    # The file boxes appear with the first result (plain outputs above keep the API simple); the captions box
    # only while there are captions.
    generate.success(
        lambda captions: (gr.update(visible=True), gr.update(visible=True), gr.update(visible=bool(captions))),
        inputs=[page.captions_file],
        outputs=[page.result_file, page.history_files, page.captions_file],
        api_visibility="private",
        **light,
    )
    # Two halves: the flag stops the running model at its next token; `cancels` drops a queued request
    # and frees the browser at once.
    page.cancel_btn.click(
        ui.cancel, inputs=None, outputs=None, cancels=[generate], api_name="cancel", js=LIVE_STOP_JS, **light
    )
    # "multiple": every update runs the player (the default drops triggers that come while one is pending).
    page.live_audio.change(None, inputs=[page.live_audio], outputs=None, js=LIVE_PLAY_JS, trigger_mode="multiple")
