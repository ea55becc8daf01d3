"""Speech tools: generate_speech (with progress notifications) and transcribe_audio."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from contextlib import closing
from typing import TYPE_CHECKING, Any

from fastmcp import Context
from fastmcp.tools.base import ToolResult

from llasa.audio import validate_output
from llasa.config import Settings
from llasa.types import SAMPLE_RATE, GenerationParams, SynthesisRequest, TranscriptionRequest

if TYPE_CHECKING:
    from llasa.service import TTSService
    from llasa.types import SynthesisResult
from faces.mcp.common import (
    ADDITIVE,
    READ_ONLY,
    CaptionFormat,
    MaxAudioSeconds,
    OutputFormat,
    OutputSampleRate,
    RepetitionPenalty,
    Seed,
    Temperature,
    ToolDecorator,
    TopK,
    TopP,
    read_audio,
    tool_errors,
)
from faces.mcp.results import SpeechResult, speech_result

logger = logging.getLogger(__name__)


Progress = Callable[[float, float | None, str], None]
"""progress(done, total, message) from the worker thread: done and total in seconds of audio (total None while
unknown)."""


async def _run_with_progress(ctx: Context, work: Callable[[Progress, threading.Event], ToolResult]) -> ToolResult:
    """Run blocking `work(progress, cancel)` in a worker thread, relaying its progress as MCP notifications.

    Each `progress(done, total, message)` call is handed to the event loop and sent in order. MCP requires
    progress to increase, so only calls that advance `done` are sent. If the client cancels the request, `cancel`
    is set so the synthesis stops at its next check and frees the GPU.
    """
    loop = asyncio.get_running_loop()
    updates: asyncio.Queue[tuple[float, float | None, str] | None] = asyncio.Queue()
    cancel = threading.Event()

    def progress(done: float, total: float | None, message: str) -> None:
        loop.call_soon_threadsafe(updates.put_nowait, (done, total, message))

    async def relay() -> None:
        sent = -1.0
        while (update := await updates.get()) is not None:
            done, total, message = update
            if done <= sent:
                continue
            sent = done
            try:
                await ctx.report_progress(done, total, message)
            except Exception:
                # A client that went away must not fail the synthesis it asked for.
                logger.debug("could not send a progress notification", exc_info=True)

    relay_task = asyncio.ensure_future(relay())
    try:
        result = await asyncio.to_thread(work, progress, cancel)
    except BaseException:
        cancel.set()
        relay_task.cancel()
        raise
    # Every progress call was queued before the worker returned, so the sentinel comes after all of them.
    updates.put_nowait(None)
    await relay_task
    return result


def _stream_with_progress(
    service: TTSService,
    synthesis: SynthesisRequest,
    planned_s_per_chunk: float,
    progress: Progress,
    cancel: threading.Event,
) -> SynthesisResult:
    """Run the synthesis as a stream and report each audio window: done = seconds of audio so far, total = the
    planned seconds (chunks x max_audio_seconds, an upper bound), then done = total = the duration at the end.
    Before the first window one notification at 0 names the stage (queue, transcribe, encode)."""
    seconds = 0.0
    pieces = service.synthesize_stream(
        synthesis, progress=lambda _done, _total, stage: progress(0.0, None, stage), cancel=cancel
    )
    with closing(pieces):  # type: ignore[type-var]  # a generator has close()
        for piece in pieces:
            if piece.result is not None:
                duration = round(piece.result.duration_s, 3)
                progress(duration, duration, "done")
                return piece.result
            if piece.report is not None:  # a chunk's captions, no audio: the final result carries them all
                continue
            seconds += len(piece.audio) / SAMPLE_RATE
            progress(
                round(seconds, 3),
                round(piece.chunks_total * planned_s_per_chunk, 3),
                f"chunk {piece.chunk_index + 1} of {piece.chunks_total}",
            )
    raise RuntimeError("the synthesis stream ended without its result")


def _verify_with_progress(
    service: TTSService, synthesis: SynthesisRequest, progress: Progress, cancel: threading.Event
) -> SynthesisResult:
    """Run a verified synthesis whole (not streamed: a stream cannot take back audio it has sent, so it could not
    generate a misread chunk again) and report each chunk as it is kept: done = chunks kept, total = chunks.
    Before that one notification at 0 names the stage (queue, transcribe, encode)."""

    def chunk_progress(done: int, total: int, stage: str) -> None:
        if stage == "chunk_done":
            progress(float(done), float(total), f"{done} of {total} chunks checked")
        else:
            progress(0.0, None, stage)

    return service.synthesize(synthesis, progress=chunk_progress, cancel=cancel)


def register(tool: ToolDecorator, service: TTSService, settings: Settings) -> None:
    """Add the speech tools to the server `tool` registers on."""
    _add_generate_speech(tool, service, settings)
    _add_transcribe_audio(tool, service, settings)


def _add_generate_speech(tool: ToolDecorator, service: TTSService, settings: Settings) -> None:
    @tool(annotations=ADDITIVE, output_schema=SpeechResult.model_json_schema())
    async def generate_speech(
        ctx: Context,
        text: str,
        voice: str | None = None,
        reference_audio_path: str | None = None,
        reference_audio_base64: str | None = None,
        reference_text: str | None = None,
        language: str | None = None,
        temperature: Temperature = None,
        top_p: TopP = None,
        top_k: TopK = None,
        repetition_penalty: RepetitionPenalty = None,
        max_audio_seconds: MaxAudioSeconds = None,
        seed: Seed = None,
        format: OutputFormat = "wav",
        sample_rate: OutputSampleRate = None,
        verify: bool | None = None,
        captions: CaptionFormat = None,
    ) -> ToolResult:
        """Read text aloud, cloning the voice of a reference recording or a saved voice (Chinese or English).

        The voice comes from one of: `voice` (a saved voice, see list_voices), a reference recording
        (`reference_audio_path` or `reference_audio_base64`; 3-{max_reference_seconds:g} s of clear speech works
        best, longer is trimmed), or neither (the model's own random voice). Long text is split at sentence ends
        and synthesised chunk by chunk. Progress notifications follow the audio as it is generated, several per
        chunk: progress = seconds of audio so far, total = the planned seconds (an upper bound), both equal to the
        duration at the end; with `verify` they count the chunks checked instead (progress = chunks kept, total =
        chunks). The audio is saved on the server.
        Returns JSON with `path` (file on the server), `url` (download link on the REST API), `duration_s`,
        `sample_rate`, `reference_text` (the transcript the voice was conditioned on), `seed`, `chunks`,
        `timings_s`, `warnings` (read them: e.g. a chunk whose every take failed its checks) and `chunk_reports`
        (per text chunk: `attempts`, `kept_attempt`, `problems`, and with verify the `transcript` heard and its
        `error_rate`); with `captions` also `captions` (the text), `caption_format`, `captions_path` and
        `captions_url`. Depending on the server's MCP_AUDIO_RETURN setting the audio itself is also attached as
        audio content (`audio_inline` says whether it was).

        Args:
            text: The words to speak, 1 to {max_text_chars} characters (MAX_TEXT_CHARS).
            voice: Name of a saved voice to speak with. Not together with a reference recording.
            reference_audio_path: Reference recording: a file path (or file:// URL) inside the folders this
                server may read ({allowed_dirs}); relative paths are looked up there. wav, flac, mp3, ogg/opus,
                m4a or webm.
            reference_audio_base64: Reference recording as base64 file bytes, optionally as a data URL
                ('data:audio/wav;base64,...'). At most {max_upload_mb:g} MiB (MAX_UPLOAD_MB).
            reference_text: Exact transcript of the reference recording. Default: transcribed automatically.
            language: Language of the reference for automatic transcription, e.g. 'en' or 'zh'. Default: detected.
            temperature: Sampling temperature, in (0, 2]. Default {default_temperature:g} (DEFAULT_TEMPERATURE).
            top_p: Nucleus sampling threshold, in (0, 1]. Default {default_top_p:g} (DEFAULT_TOP_P).
            top_k: Sample among the k likeliest codes, 0 to 65536; 0 = off. Default {default_top_k} (DEFAULT_TOP_K).
            repetition_penalty: 0.5 to 2; 1.0 = off.
                Default {default_repetition_penalty:g} (DEFAULT_REPETITION_PENALTY).
            max_audio_seconds: Upper bound on the audio generated per text chunk, in (0, 300] seconds.
                Default {max_audio_seconds:g} (MAX_AUDIO_SECONDS).
            seed: Random seed, 0 to 4294967295, to make a result repeatable. Default: a random one (returned).
            format: Audio format of the saved file: wav (default), flac, mp3, opus, aac or pcm (raw 16-bit).
            sample_rate: Sample rate of the saved file in Hz, 8000 to 192000 (mp3, aac and opus take only their
                codec's standard rates). Default 16000, the model's own rate.
            verify: Check every chunk with speech recognition: Whisper transcribes each take, and a take whose
                error rate against the chunk's text is above {verify_max_cer:g} (VERIFY_MAX_CER) is generated
                again with another seed, up to {quality_retries} more times (QUALITY_RETRIES); when no take passes,
                the best is kept and `warnings` says so. Slower (a transcription per take). Default
                {verify_default} (VERIFY_DEFAULT). Loops, run-ons and dead air are caught either way.
            captions: Word-timed captions of the speech, made with Whisper's word timings: 'srt' or 'vtt'
                (subtitle cues) or 'json' (a list of objects with `word`, `start_s` and `end_s`). Returned as text
                in `captions` and saved beside the audio (`captions_path`, `captions_url`). Default: none.
        """
        with tool_errors("generate_speech"):
            # Checked before the synthesis, so a bad format does not cost a generation first.
            fmt = validate_output(format, sample_rate or SAMPLE_RATE)
        params = GenerationParams(
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            repetition_penalty=repetition_penalty,
            max_audio_seconds=max_audio_seconds,
            seed=seed,
        )

        def synthesize(progress: Progress, cancel: threading.Event) -> ToolResult:
            reference = read_audio(
                settings,
                reference_audio_path,
                reference_audio_base64,
                "reference_audio_path",
                "reference_audio_base64",
                required=False,
            )
            synthesis = SynthesisRequest(
                text=text,
                reference_audio=reference,
                reference_text=reference_text,
                voice=voice,
                language=language,
                params=params,
                surface="mcp",
                endpoint="generate_speech",
                # Resolved here, so the way it runs (whole when verified) and what the service does agree.
                verify=settings.verify_default if verify is None else verify,
                captions=captions,
            )
            if synthesis.verify:
                result = _verify_with_progress(service, synthesis, progress, cancel)
            else:
                planned_s = max_audio_seconds if max_audio_seconds is not None else settings.max_audio_seconds
                result = _stream_with_progress(service, synthesis, planned_s, progress, cancel)
            saved = service.save_output(result, fmt, sample_rate=sample_rate)
            saved_captions = None
            if result.captions is not None and result.caption_format is not None:
                saved_captions = service.outputs.save_captions(result.captions, result.caption_format)
            return speech_result(result, saved, settings, sample_rate, saved_captions)

        with tool_errors("generate_speech"):
            return await _run_with_progress(ctx, synthesize)


def _add_transcribe_audio(tool: ToolDecorator, service: TTSService, settings: Settings) -> None:
    @tool(annotations=READ_ONLY)
    def transcribe_audio(
        audio_path: str | None = None, audio_base64: str | None = None, language: str | None = None
    ) -> dict[str, Any]:
        """Transcribe speech in an audio file to text with Whisper (silence gives empty text).

        Give the audio as exactly one of `audio_path` or `audio_base64`. Returns JSON with `text`, `language`
        (detected or given), `duration_s` and `segments` (each with `start_s`, `end_s`, `text`).

        Args:
            audio_path: A file path (or file:// URL) inside the folders this server may read ({allowed_dirs});
                relative paths are looked up there. wav, flac, mp3, ogg/opus, m4a or webm.
            audio_base64: The audio file's bytes as base64, optionally as a data URL ('data:audio/wav;base64,...').
                At most {max_upload_mb:g} MiB (MAX_UPLOAD_MB).
            language: Language code such as 'en' or 'zh'. Default: detected.
        """
        with tool_errors("transcribe_audio"):
            audio = read_audio(settings, audio_path, audio_base64, "audio_path", "audio_base64", required=True)
            assert audio is not None
            transcription = TranscriptionRequest(audio, language, surface="mcp", endpoint="transcribe_audio")
            return service.transcribe(transcription).to_dict()
