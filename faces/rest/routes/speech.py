"""OpenAI-compatible speech: POST /v1/audio/speech (the whole file, a raw audio stream, or server-sent events)."""

from __future__ import annotations

import base64
import itertools
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, request

from faces.rest.audio import OPENAI_SAMPLE_RATE, StreamEncoder, time_stretch
from faces.rest.common import (
    ApiContext,
    DisconnectWatch,
    api_context,
    captions_at_speed,
    captions_headers,
    synthesis_headers,
)
from faces.rest.openapi import AUDIO_CONTENT, JSON, SYNTHESIS_HEADERS, Reply, operation
from faces.rest.request_models import SpeechBody, VoiceRef
from faces.rest.schemas import SpeechEvent
from llasa.audio import AUDIO_FORMATS, encode_audio
from llasa.errors import Cancelled, InvalidInput, TTSError, VoiceNotFound
from llasa.outputs import FORMAT_EXTENSIONS
from llasa.types import SAMPLE_RATE, AudioPiece, ChunkReport, SynthesisRequest, SynthesisResult

logger = logging.getLogger(__name__)

bp = Blueprint("speech", __name__)


OPENAI_VOICES = frozenset(
    {"alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse", "marin", "cedar"}
)


def resolve_voice(voice: str | VoiceRef | None) -> str | None:
    """The saved voice a speech request names; None for the model's own voice (no voice, or a built-in name)."""
    ctx = api_context()
    name = voice.id if isinstance(voice, VoiceRef) else voice
    if not name:
        return None
    name = name.strip()
    try:
        return ctx.service.get_voice(name).name
    except VoiceNotFound:
        if name.lower() in OPENAI_VOICES:
            return None  # OpenAI's built-in name without a saved voice of that name: the model's own voice
        raise VoiceNotFound(
            f"no saved voice named {name!r}; list them with GET /v1/audio/voices, create one with "
            "POST /v1/audio/voices, or use a built-in name such as 'alloy' (the model's own voice)",
            field="voice",
        ) from None
    except InvalidInput as e:
        raise InvalidInput(e.message, field="voice") from e


@bp.post("/v1/audio/speech")
@operation(
    "openai",
    body=SpeechBody,
    media=(JSON,),
    responses={
        200: Reply(
            "audio in response_format at 24 kHz (pcm: raw s16le mono), or server-sent events with base64 audio",
            {**AUDIO_CONTENT, "text/event-stream": SpeechEvent},
            SYNTHESIS_HEADERS,
        )
    },
    errors=(400, 404, 415, 429, 499, 500, 503),
)
def speech(body: SpeechBody) -> Response:
    """Generate speech (OpenAI-compatible): the whole file, a raw audio stream, or server-sent events.
    Extra fields beyond OpenAI's (seed, temperature, top_p, top_k, repetition_penalty, max_audio_seconds,
    language) tune the generation; verify and captions check it and time its words (docs/quality.md)."""
    ctx = api_context()
    endpoint = {"sse": "speech_sse", "audio": "speech_stream"}.get(body.stream_format or "", "speech")
    synthesis = SynthesisRequest(
        text=body.input,
        voice=resolve_voice(body.voice),
        language=body.language,
        params=body.generation_params(),
        surface="rest",
        endpoint=endpoint,
        verify=body.verify,
        captions=body.captions,
    )
    fmt = body.response_format
    if body.stream_format == "audio" and synthesis.captions:
        raise InvalidInput(
            "captions cannot travel in a raw audio stream; use stream_format=sse (captions come as events) or omit "
            "stream_format (the captions are linked in X-Captions-URL)",
            field="captions",
        )
    if body.stream_format:
        return _stream_speech(ctx, synthesis, fmt=fmt, speed=body.speed, sse=body.stream_format == "sse")
    result = ctx.synthesize(synthesis)
    audio = time_stretch(result.audio, result.sample_rate, body.speed)
    data = encode_audio(audio, result.sample_rate, fmt, target_sample_rate=OPENAI_SAMPLE_RATE)
    headers = synthesis_headers(result, sample_rate=OPENAI_SAMPLE_RATE, fmt=fmt)
    headers["X-Audio-Duration-S"] = f"{len(audio) / result.sample_rate:.3f}"
    headers.update(captions_headers(ctx, result, speed=body.speed))
    headers["Content-Disposition"] = f'inline; filename="speech.{FORMAT_EXTENSIONS[fmt]}"'
    return Response(data, mimetype=AUDIO_FORMATS[fmt], headers=headers)


def _stream_speech(ctx: ApiContext, synthesis: SynthesisRequest, *, fmt: str, speed: float, sse: bool) -> Response:
    """Start a streamed synthesis; errors up to the first chunk still become a normal HTTP error response.

    The service counts the synthesis (pieces, outcome, duration) in its metrics; closing `pieces` early is a
    cancellation there."""
    cancel = threading.Event()
    watch = DisconnectWatch(request.environ, cancel).start()
    try:
        pieces = ctx.service.synthesize_stream(synthesis, cancel=cancel)
        # Waiting for the GPU slot and the first chunk here lets a full queue (429), a busy GPU (503) or a
        # failed first chunk answer with a proper status instead of a broken stream.
        first = next(pieces)
    except BaseException:
        watch.stop()
        raise
    encoder = StreamEncoder(fmt, SAMPLE_RATE, output_rate=OPENAI_SAMPLE_RATE, speed=speed)
    wire = _Wire(encoder, sse=sse, speed=speed)

    def body() -> Iterator[bytes]:
        outcome = "cancelled"
        try:
            for piece in itertools.chain([first], pieces):
                data = wire.piece(piece)
                if data:
                    yield data
            outcome = "ok"
            if sse:
                yield wire.done()
        except TTSError as e:
            outcome = "cancelled" if isinstance(e, Cancelled) else "error"
            logger.info("speech stream ended early: %s", e.message)
            if outcome == "cancelled":
                return  # the client is gone (or gave up): nobody to tell
            if not sse:
                raise  # a cut chunked body is how a raw audio stream says it failed
            yield sse_event({"type": "error", "error": {"code": e.code, "message": e.message}})
        except GeneratorExit:
            outcome = "cancelled"  # the server closed the response: the client went away
            raise
        except Exception:
            # A bug, not the client leaving: count it as an error and keep the trace (the body is cut off).
            outcome = "error"
            logger.exception("speech stream failed after %d samples", wire.samples_in)
            raise
        finally:
            # Also reached by GeneratorExit when the server closes the response because the client went away.
            watch.stop()
            if outcome != "ok":
                cancel.set()
                pieces.close()  # leaves the GPU slot at once
                encoder.close()

    mimetype = "text/event-stream" if sse else AUDIO_FORMATS[fmt]
    headers = {
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
        "X-Sample-Rate": str(OPENAI_SAMPLE_RATE),
        "X-Chunks": str(first.chunks_total),
        "X-Seed": "" if first.seed is None else str(first.seed),
    }
    return Response(body(), mimetype=mimetype, headers=headers)


def sse_event(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


class _Wire:
    """Turns a synthesis stream's pieces into the response body: encoded audio (raw, or SSE delta events), each
    chunk's check as an event (SSE only), and the closing event with the captions."""

    def __init__(self, encoder: StreamEncoder, *, sse: bool, speed: float) -> None:
        self.encoder = encoder
        self.sse = sse
        self.speed = speed
        self.samples_in = 0
        self.result: SynthesisResult | None = None

    def piece(self, piece: AudioPiece) -> bytes:
        if piece.report is not None:
            return sse_event(_chunk_event(piece.report, self.speed)) if self.sse else b""
        self.samples_in += len(piece.audio)
        data = self.encoder.push(piece.audio)
        if piece.final:
            data += self.encoder.finish()
            self.result = piece.result
        if not data or not self.sse:
            return data
        return sse_event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})

    def done(self) -> bytes:
        done: dict[str, Any] = {
            "type": "speech.audio.done",
            "duration_s": round(self.encoder.samples_out / OPENAI_SAMPLE_RATE, 3),
        }
        result = self.result
        if result is not None and result.captions is not None:
            done["captions"] = captions_at_speed(result, self.speed)
            done["caption_format"] = result.caption_format
        if result is not None and result.warnings:
            done["warnings"] = result.warnings
        return sse_event(done)


def _chunk_event(report: ChunkReport, speed: float) -> dict[str, Any]:
    """A chunk's check as an SSE event, sent after the chunk's audio: its takes and, with verify or captions,
    what was heard and when each word is spoken (seconds of the stream's audio, after `speed`)."""
    event: dict[str, Any] = {
        "type": "speech.chunk.checked",
        "chunk_index": report.index,
        "attempts": report.attempts,
        "kept_attempt": report.kept_attempt,
        "problems": report.problems,
        "transcript": report.transcript,
        "error_rate": None if report.error_rate is None else round(report.error_rate, 4),
    }
    if report.words is not None:
        event["words"] = [
            {"word": w.word, "start_s": round(w.start_s / speed, 3), "end_s": round(w.end_s / speed, 3)}
            for w in report.words
        ]
    return event
