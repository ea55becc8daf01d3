"""MCP front end: the TTS service as tools for AI assistants (FastMCP 4).

`create_mcp(service, settings)` builds the server over the process's one `TTSService` (so MCP, REST and the UI
share models, the GPU queue and the voice library). `main.py` serves it over streamable HTTP at
`http://HOST:MCP_PORT/mcp` with `run_http()`; `python mcp_server.py --stdio` serves it over stdio for desktop
assistants that start their own servers (that process then builds its own service and GPU manager).

The tools decode a request, call one service method and encode the answer. Audio comes in as a path inside
MCP_ALLOWED_DIRS or as base64 (see mcp_inputs.py); generated audio is saved under OUTPUT_DIR and described by
path + download URL, and with MCP_AUDIO_RETURN=inline|both also returned as MCP audio content. Service errors
(`llasa.errors.TTSError`) become tool errors carrying the same message REST gives; anything else is logged here
and reported without details. No torch import here: the service module is imported only by `main()`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import math
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import uvicorn
from fastmcp import Context, FastMCP
from fastmcp.exceptions import ToolError
from fastmcp.server.auth import AccessToken, TokenVerifier
from fastmcp.tools.base import ToolResult
from fastmcp.utilities.types import Audio
from mcp.types import ContentBlock, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

from faces.inputs import read_audio_input
from llasa import __version__
from llasa.audio import AUDIO_FORMATS, validate_output
from llasa.bootstrap import FrontEnd, bind, client_host, load_settings_or_exit, run_alone, run_logged, start_process
from llasa.config import Settings
from llasa.errors import TTSError
from llasa.types import MAX_SEED, SAMPLE_RATE, GenerationParams, SynthesisRequest, TranscriptionRequest

if TYPE_CHECKING:
    from llasa.service import TTSService

logger = logging.getLogger(__name__)

MCP_PATH = "/mcp"
INSTRUCTIONS = """\
Llasa text-to-speech with voice cloning (Chinese and English). generate_speech reads text aloud in the voice of a
short reference recording (3-15 s, given as a file path or base64), of a saved voice (list_voices, create_voice),
or in the model's own voice; the result is an audio file with a download URL. transcribe_audio turns speech into
text. The GPU tools show and control where the models live (GPU, CPU RAM, unloaded)."""

# --- annotations: hints the assistant's client uses to decide what needs the user's confirmation -------------
_READ_ONLY = ToolAnnotations(read_only_hint=True, open_world_hint=False)
_READ_ONLY_IDEMPOTENT = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)
_ADDITIVE = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False)
_ADDITIVE_IDEMPOTENT = ToolAnnotations(
    read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False
)
_DESTRUCTIVE = ToolAnnotations(
    read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=False
)

# --- argument types ------------------------------------------------------------------------------------------
# The ranges are stated in the input schema for the client, but enforced by the service (GenerationParams,
# validate_output, the GPU manager), so an out-of-range value gets the same message as over REST.
# (A null instance ignores numeric keywords, so they can sit beside the `anyOf` of an optional number.)


def _schema(**keywords: Any) -> Any:
    return Field(json_schema_extra=keywords)


Temperature = Annotated[float | None, _schema(exclusiveMinimum=0, maximum=2)]
TopP = Annotated[float | None, _schema(exclusiveMinimum=0, maximum=1)]
TopK = Annotated[int | None, _schema(minimum=0, maximum=65536)]
RepetitionPenalty = Annotated[float | None, _schema(minimum=0.5, maximum=2)]
MaxAudioSeconds = Annotated[float | None, _schema(exclusiveMinimum=0, maximum=300)]
Seed = Annotated[int | None, _schema(minimum=0, maximum=MAX_SEED)]
OutputFormat = Annotated[str, _schema(enum=list(AUDIO_FORMATS))]
OutputSampleRate = Annotated[int | None, _schema(minimum=8000, maximum=192000)]
TimeoutSeconds = Annotated[float | None, _schema(minimum=-1)]
ModelName = Annotated[str | None, _schema(enum=["llasa", "xcodec2", "whisper", None])]


#: Settings whose values the tool descriptions quote.
_DOC_SETTINGS = (
    "max_text_chars",
    "max_upload_mb",
    "max_reference_seconds",
    "max_audio_seconds",
    "default_temperature",
    "default_top_p",
    "default_top_k",
    "default_repetition_penalty",
    "gpu_idle_timeout",
    "model_evict_timeout",
    "gpu_offload_after_use",
)


class SpeechResult(BaseModel):
    """What generate_speech returns (as structured content)."""

    path: str = Field(description="Absolute path of the saved audio file on the server.")
    url: str = Field(description="Download URL of the file on the REST server (kept for OUTPUT_TTL_HOURS).")
    id: str = Field(description="Output id (the file name under OUTPUT_DIR).")
    format: str
    mime_type: str
    size_bytes: int
    duration_s: float
    sample_rate: int = Field(description="Sample rate of the saved file (Hz).")
    reference_text: str = Field(description="Transcript of the reference the voice was cloned from ('' if none).")
    voice: str | None = Field(description="Saved voice used, if any.")
    seed: int | None = Field(description="Seed used; pass it again to repeat the result.")
    chunks: int = Field(description="Number of text chunks synthesised one after another.")
    num_codes: int = Field(description="Speech codes generated (50 per second of audio).")
    reference_seconds: float
    reference_trimmed: bool
    timings_s: dict[str, float] = Field(description="Wall time per stage (transcribe, encode, generate, decode).")
    real_time_factor: float
    warnings: list[str] = Field(description="Things to tell the user, e.g. that the reference was trimmed.")
    audio_inline: bool = Field(description="True when the audio itself is also in this result as audio content.")


class VoiceEntry(BaseModel):
    """One saved voice."""

    name: str
    transcript: str
    duration_s: float
    num_codes: int
    created_at: str
    codec_model: str = ""
    warnings: list[str] = Field(
        default_factory=list,
        description="Things to tell the user about this voice, e.g. that its recording was trimmed and "
        "re-transcribed (check the transcript and fix it with update_voice).",
    )


class VoiceList(BaseModel):
    voices: list[VoiceEntry]
    count: int


class ApiKeyVerifier(TokenVerifier):
    """Accepts exactly one bearer token, API_KEY (compared in constant time)."""

    def __init__(self, api_key: str) -> None:
        super().__init__()
        self._key = api_key.encode()

    async def verify_token(self, token: str) -> AccessToken | None:
        if not hmac.compare_digest(token.encode(), self._key):
            return None
        return AccessToken(token=token, client_id="api-key", scopes=[])


@contextlib.contextmanager
def _tool_errors(tool: str) -> Iterator[None]:
    """Map the service's errors to tool errors with the same message REST gives; mask anything else."""
    try:
        yield
    except ToolError:
        raise
    except TTSError as e:
        # The caller's mistake (4xx) is routine; a busy or broken server (5xx) is worth a warning.
        level = logging.INFO if e.status_code < 500 else logging.WARNING
        logger.log(level, "%s refused (%s): %s", tool, e.code, e.message)
        # FastMCP logs every ToolError again; ours above already says what happened.
        raise ToolError(e.message, log_level=logging.DEBUG) from e
    except Exception as e:
        logger.exception("%s failed unexpectedly", tool)
        raise ToolError(
            f"{tool} failed because of an internal error; the server log has the details", log_level=logging.DEBUG
        ) from e


def create_mcp(service: TTSService, settings: Settings) -> FastMCP:
    """Build the MCP server around `service`. Nothing is started; serve it with `run_http()` or `run(stdio)`."""
    mcp = FastMCP(
        name="Llasa TTS",
        instructions=INSTRUCTIONS,
        version=__version__,
        auth=ApiKeyVerifier(settings.api_key) if settings.api_key else None,
        # Only our own ToolErrors reach the client verbatim; a stray exception says nothing about internals.
        mask_error_details=True,
    )
    # Docstrings quote this server's own limits and defaults, so the assistant reads the values in force.
    # (An explicit list: a docstring must never be able to quote API_KEY or HF_TOKEN.)
    doc_values = {name: getattr(settings, name) for name in _DOC_SETTINGS} | {
        "allowed_dirs": ", ".join(str(d) for d in settings.allowed_dirs)
    }

    def tool(**kwargs: Any) -> Callable[[Callable[..., Any]], Any]:
        def register(fn: Callable[..., Any]) -> Any:
            fn.__doc__ = (fn.__doc__ or "").format(**doc_values)
            return mcp.tool(fn, **kwargs)

        return register

    allowed_dirs = settings.allowed_dirs
    max_bytes = settings.max_upload_bytes

    def read_audio(
        path: str | None, data: str | None, path_field: str, data_field: str, *, required: bool
    ) -> bytes | None:
        return read_audio_input(
            path,
            data,
            allowed_dirs=allowed_dirs,
            max_bytes=max_bytes,
            path_field=path_field,
            base64_field=data_field,
            required=required,
        )

    @tool(annotations=_ADDITIVE, output_schema=SpeechResult.model_json_schema())
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
    ) -> ToolResult:
        """Read text aloud, cloning the voice of a reference recording or a saved voice (Chinese or English).

        The voice comes from one of: `voice` (a saved voice, see list_voices), a reference recording
        (`reference_audio_path` or `reference_audio_base64`; 3-{max_reference_seconds:g} s of clear speech works
        best, longer is trimmed), or neither (the model's own random voice). Long text is split at sentence ends
        and synthesised chunk by chunk; a progress notification is sent after each chunk. The audio is saved on
        the server.
        Returns JSON with `path` (file on the server), `url` (download link on the REST API), `duration_s`,
        `sample_rate`, `reference_text` (the transcript the voice was conditioned on), `seed`, `chunks`,
        `timings_s` and `warnings`; depending on the server's MCP_AUDIO_RETURN setting the audio itself is also
        attached as audio content (`audio_inline` says whether it was).

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
        """
        with _tool_errors("generate_speech"):
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

        def synthesize(progress: Callable[[int, int, str], None], cancel: threading.Event) -> ToolResult:
            reference = read_audio(
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
            )
            result = service.synthesize(synthesis, progress=progress, cancel=cancel)
            saved = service.save_output(result, fmt, sample_rate=sample_rate)
            return _speech_result(result, saved, settings, sample_rate)

        with _tool_errors("generate_speech"):
            return await _run_with_progress(ctx, synthesize)

    @tool(annotations=_READ_ONLY)
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
        with _tool_errors("transcribe_audio"):
            audio = read_audio(audio_path, audio_base64, "audio_path", "audio_base64", required=True)
            assert audio is not None
            transcription = TranscriptionRequest(audio, language, surface="mcp", endpoint="transcribe_audio")
            return service.transcribe(transcription).to_dict()

    @tool(annotations=_READ_ONLY_IDEMPOTENT)
    def get_gpu_status() -> dict[str, Any]:
        """Show where each model is and what the GPU holds.

        Returns JSON with `device` (the GPU's total/used/free memory, or the CPU), `models` (per model: state
        'unloaded' | 'loading' | 'gpu' | 'cpu', bytes, idle seconds, active requests, load/offload counts) and
        `settings` (the offload and eviction timeouts in force). Changes nothing.
        """
        with _tool_errors("get_gpu_status"):
            return service.gpu_status().to_dict()

    @tool(annotations=_ADDITIVE_IDEMPOTENT)
    def offload_gpu(model: ModelName = None) -> dict[str, Any]:
        """Move models from GPU memory to CPU RAM now, freeing VRAM; the next request moves them back quickly.

        A model that is serving a request is moved when that request ends (the result says so). Returns JSON
        describing what was offloaded or deferred. Nothing is lost.

        Args:
            model: 'llasa', 'xcodec2' or 'whisper'. Default: all models.
        """
        with _tool_errors("offload_gpu"):
            return service.offload(model)

    @tool(annotations=_ADDITIVE_IDEMPOTENT)
    def release_gpu(model: ModelName = None) -> dict[str, Any]:
        """Unload models from GPU memory and CPU RAM altogether; the next request loads them from disk (slower).

        A model that is serving a request is released when that request ends (the result says so). Saved voices
        and generated files are not touched. Returns JSON describing what was released or deferred.

        Args:
            model: 'llasa', 'xcodec2' or 'whisper'. Default: all models.
        """
        with _tool_errors("release_gpu"):
            return service.release(model)

    @tool(annotations=_ADDITIVE_IDEMPOTENT)
    def update_gpu_timeout(
        idle_timeout_s: TimeoutSeconds = None,
        evict_timeout_s: TimeoutSeconds = None,
        offload_after_use: bool | None = None,
    ) -> dict[str, Any]:
        """Change when idle models leave the GPU and RAM (until the server restarts). Give at least one argument.

        Returns JSON with the settings now in force.

        Args:
            idle_timeout_s: Seconds a model may stay idle on the GPU before moving to CPU RAM, when
                offload_after_use is false. 0 = at once, -1 = never.
                Server default {gpu_idle_timeout:g} (GPU_IDLE_TIMEOUT).
            evict_timeout_s: Seconds a model may stay idle in CPU RAM before it is unloaded altogether.
                0 = at once, -1 = never. Server default {model_evict_timeout:g} (MODEL_EVICT_TIMEOUT).
            offload_after_use: true = move each model to CPU RAM as soon as its request ends (frees the GPU for
                other programs); false = keep it on the GPU for idle_timeout_s. Server default {gpu_offload_after_use}.
        """
        with _tool_errors("update_gpu_timeout"):
            # An empty change and the ranges are the service's to check: its message reaches the caller unchanged.
            return service.set_timeouts(
                idle_timeout_s=idle_timeout_s,
                evict_timeout_s=evict_timeout_s,
                offload_after_use=offload_after_use,
            )

    @tool(annotations=_READ_ONLY_IDEMPOTENT)
    def list_voices() -> VoiceList:
        """List the saved voices that generate_speech can use by name (shared with the web UI and REST API).

        Returns JSON with `voices` (each with `name`, `transcript`, `duration_s`, `num_codes`, `created_at`) and
        `count`.
        """
        with _tool_errors("list_voices"):
            voices = [VoiceEntry.model_validate(v.to_dict()) for v in service.list_voices()]
            return VoiceList(voices=voices, count=len(voices))

    @tool(annotations=_ADDITIVE)
    def create_voice(
        name: str,
        audio_path: str | None = None,
        audio_base64: str | None = None,
        transcript: str | None = None,
    ) -> VoiceEntry:
        """Save a reference recording as a named voice, for generate_speech(voice=name).

        The recording is trimmed to {max_reference_seconds:g} s (MAX_REFERENCE_SECONDS), normalised and
        encoded once, so later syntheses with it start faster. Refused if the name is taken (delete_voice
        first to replace a voice). Returns JSON describing the saved voice (`name`, `transcript`,
        `duration_s`, `num_codes`, `created_at`) and `warnings` to pass on to the user (for example that a long
        recording was trimmed and the kept part transcribed again: check that transcript).

        Args:
            name: 1-64 characters: letters (any script), digits, spaces, '_', '-', '.'; starts with a letter or
                digit.
            audio_path: The recording: a file path (or file:// URL) inside the folders this server may read
                ({allowed_dirs}); relative paths are looked up there.
            audio_base64: The recording's file bytes as base64, optionally as a data URL. At most {max_upload_mb:g} MiB.
            transcript: Exact words spoken in the recording. Default: transcribed automatically.
        """
        with _tool_errors("create_voice"):
            audio = read_audio(audio_path, audio_base64, "audio_path", "audio_base64", required=True)
            assert audio is not None
            info = service.create_voice(name, audio, transcript)
            return VoiceEntry.model_validate(info.to_dict())

    @tool(annotations=_ADDITIVE_IDEMPOTENT)
    def update_voice(name: str, transcript: str) -> VoiceEntry:
        """Correct the transcript of a saved voice; its recording stays as it is.

        The transcript must match the voice's recording word for word (what is actually said, nothing more,
        nothing less): the model continues from it, so a wrong transcript makes generate_speech with this voice
        mispronounce or skip words. Use it when list_voices or create_voice shows a transcript with mistakes.
        Returns JSON describing the voice with its new transcript.

        Args:
            name: The voice's name, as list_voices shows it.
            transcript: The exact words spoken in the voice's recording.
        """
        with _tool_errors("update_voice"):
            info = service.update_voice(name, transcript)
            return VoiceEntry.model_validate(info.to_dict())

    @tool(annotations=_DESTRUCTIVE)
    def delete_voice(name: str) -> dict[str, Any]:
        """Delete a saved voice for good (its reference audio and transcript). Returns JSON with `deleted` (the name).

        Args:
            name: The voice's name, as list_voices shows it.
        """
        with _tool_errors("delete_voice"):
            service.delete_voice(name)
            return {"deleted": name.strip()}

    return mcp


async def _run_with_progress(
    ctx: Context, work: Callable[[Callable[[int, int, str], None], threading.Event], ToolResult]
) -> ToolResult:
    """Run blocking `work(progress, cancel)` in a worker thread, relaying its progress as MCP notifications.

    The service calls `progress(done, total, stage)` from the worker thread; each call is handed to the event
    loop and sent in order. MCP requires progress to increase, so only calls that advance `done` are sent
    (that is one per finished chunk, plus the first). If the client cancels the request, `cancel` is set so the
    synthesis stops at its next check and frees the GPU.
    """
    loop = asyncio.get_running_loop()
    updates: asyncio.Queue[tuple[int, int, str] | None] = asyncio.Queue()
    cancel = threading.Event()

    def progress(done: int, total: int, stage: str) -> None:
        loop.call_soon_threadsafe(updates.put_nowait, (done, total, stage))

    async def relay() -> None:
        sent = -1
        while (update := await updates.get()) is not None:
            done, total, stage = update
            if done <= sent:
                continue
            sent = done
            try:
                await ctx.report_progress(done, total, stage)
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


def _speech_result(result: Any, saved: Any, settings: Settings, sample_rate: int | None) -> ToolResult:
    """Structured result + content blocks for generate_speech, per MCP_AUDIO_RETURN."""
    facts = result.facts()
    mode = settings.mcp_audio_return
    inline = mode in ("inline", "both") and result.duration_s < settings.mcp_inline_max_seconds
    structured = SpeechResult(
        **saved.to_dict(),
        duration_s=facts["duration_s"],
        sample_rate=sample_rate or result.sample_rate,
        reference_text=facts["reference_text"],
        voice=facts["voice"],
        seed=facts["seed"],
        chunks=facts["chunks"],
        num_codes=facts["num_codes"],
        reference_seconds=facts["reference_seconds"],
        reference_trimmed=facts["reference_trimmed"],
        timings_s=facts["timings_s"],
        real_time_factor=facts["real_time_factor"],
        warnings=facts.get("warnings", []),
        audio_inline=inline,
    )
    summary = structured.model_dump()
    if mode in ("inline", "both") and not inline:
        summary["note"] = (
            f"the audio is {result.duration_s:.1f} s long, over the {settings.mcp_inline_max_seconds:g} s limit "
            "for inline audio (MCP_INLINE_MAX_SECONDS); download it from url"
        )
    content: list[ContentBlock] = []
    if mode == "inline" and inline:
        content.append(
            TextContent(
                type="text",
                text=f"Generated {structured.duration_s:.2f} s of speech ({structured.format}, "
                f"{structured.sample_rate} Hz); the audio follows.",
            )
        )
    else:
        content.append(TextContent(type="text", text=json.dumps(summary, ensure_ascii=False)))
    if inline:
        audio = Audio(data=Path(saved.path).read_bytes(), format=saved.format)
        content.append(audio.to_audio_content(mime_type=saved.mime_type))
    return ToolResult(content=content, structured_content=structured.model_dump())


# --- serving ---------------------------------------------------------------------------------------------------


def create_http_server(
    mcp: FastMCP, settings: Settings, *, host: str | None = None, port: int | None = None
) -> uvicorn.Server:
    """A uvicorn server for streamable HTTP at `http://HOST:MCP_PORT/mcp` (bearer auth when API_KEY is set).

    Call `.run()` to serve (blocking; fine in a thread), set `.should_exit = True` to stop it.
    """
    config = uvicorn.Config(
        mcp.http_app(path=MCP_PATH),
        host=settings.host if host is None else host,
        port=settings.mcp_port if port is None else port,
        lifespan="on",
        ws="none",
        log_config=None,  # logging is configured once, by main.py
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=2,
    )
    return uvicorn.Server(config)


def run_http(mcp: FastMCP, settings: Settings, *, sockets: list[socket.socket] | None = None) -> None:
    """Serve `mcp` over streamable HTTP until the process stops (blocking; main.py runs it in a thread)."""
    server = create_http_server(mcp, settings)
    logger.info(
        "MCP server on http://%s:%d%s (%s)",
        settings.host,
        settings.mcp_port,
        MCP_PATH,
        "bearer token required" if settings.api_key else "no authentication",
    )
    server.run(sockets=sockets)


def start_in_background(service: Any, settings: Settings, grace_s: float) -> FrontEnd:
    """main.py's starter: the MCP server (streamable HTTP) on its own thread over the shared service."""
    sock = bind(settings.host, settings.mcp_port, "MCP_PORT")
    server = create_http_server(create_mcp(service, settings), settings)
    # After should_exit, uvicorn closes the listener and gives open requests (a tool call's synthesis) this long.
    server.config.timeout_graceful_shutdown = max(1, math.ceil(grace_s))
    thread = threading.Thread(
        target=run_logged, args=("MCP", lambda: server.run(sockets=[sock])), name="mcp", daemon=True
    )
    thread.start()

    def stop_accepting() -> None:
        server.should_exit = True

    def finish() -> None:
        thread.join(timeout=5)

    base = f"http://{client_host(settings.host)}:{settings.mcp_port}"
    # Probed at / (a 404): a request to /mcp itself would open and close an MCP session just to check the port.
    return FrontEnd("mcp", "MCP", f"{base}{MCP_PATH}", f"{base}/", stop_accepting, finish, thread)


def main(argv: list[str] | None = None) -> int:
    """`python mcp_server.py [--stdio]`: serve MCP alone, with this process's own service and GPU manager."""
    parser = argparse.ArgumentParser(description="Llasa TTS MCP server (streamable HTTP, or stdio with --stdio)")
    parser.add_argument(
        "--stdio", action="store_true", help="serve over stdin/stdout for a desktop assistant instead of HTTP"
    )
    args = parser.parse_args(argv)
    # The environment, then the checkout's .env (found wherever the client starts us), or LLASA_ENV_FILE's file.
    settings = load_settings_or_exit()
    start_process(settings)  # every log line goes to stderr: in stdio mode stdout carries the protocol
    transport = "stdio" if args.stdio else f"http://{settings.host}:{settings.mcp_port}{MCP_PATH}"
    logger.info(
        "MCP over %s: this process builds its own TTSService and GPU manager (models load here, on %s, and are "
        "not shared with a main.py process)",
        transport,
        settings.device,
    )

    def serve(service: Any) -> None:
        mcp = create_mcp(service, settings)
        if args.stdio:
            mcp.run(transport="stdio", show_banner=False)
        else:
            run_http(mcp, settings)

    run_alone(settings, serve, label="MCP server")
    return 0


if __name__ == "__main__":
    sys.exit(main())
