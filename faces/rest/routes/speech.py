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

from faces.rest.audio import MAX_SPEED, MIN_SPEED, OPENAI_SAMPLE_RATE, StreamEncoder, time_stretch
from faces.rest.common import (
    ApiContext,
    DisconnectWatch,
    api_context,
    parse_generation_params,
    parse_number,
    parse_text,
    read_body,
    synthesis_headers,
)
from llasa.audio import AUDIO_FORMATS, encode_audio
from llasa.errors import Cancelled, InvalidInput, TTSError, VoiceNotFound
from llasa.outputs import FORMAT_EXTENSIONS
from llasa.types import SAMPLE_RATE, SynthesisRequest

logger = logging.getLogger(__name__)

bp = Blueprint("speech", __name__)


OPENAI_VOICES = frozenset(
    {"alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse", "marin", "cedar"}
)


OPENAI_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")


def resolve_voice(value: object) -> str | None:
    ctx = api_context()
    if isinstance(value, dict):
        value = value.get("id")
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidInput('voice must be a name or an object {"id": "<name>"}', field="voice")
    name = value.strip()
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


# Long only on paper: ~70 of its lines are the Swagger YAML in the docstring.
@bp.post("/v1/audio/speech")
def speech() -> Response:
    """Generate speech (OpenAI-compatible): the whole file, a raw audio stream, or server-sent events.
    Extra fields beyond OpenAI's (seed, temperature, top_p, top_k, repetition_penalty, max_audio_seconds,
    language) tune the generation.
    ---
    tags: [openai]
    consumes: [application/json]
    produces: [audio/mpeg, audio/ogg, audio/aac, audio/flac, audio/wav, audio/pcm, text/event-stream, application/json]
    parameters:
      - in: body
        name: body
        required: true
        schema:
          type: object
          required: [input]
          properties:
            model: {type: string, example: tts-1, description: 'any id of GET /v1/models (all mean Llasa)'}
            input: {type: string, description: 'the text to speak (at most MAX_TEXT_CHARS)'}
            voice:
              description: >-
                a string (a saved voice name, or an OpenAI built-in name such as alloy: the model's own voice
                unless a saved voice has that name) or an object {"id": "<saved voice name>"}; no type is
                declared because Swagger 2.0 cannot say "string or object"
              example: alloy
            instructions: {type: string, description: accepted and ignored}
            response_format: {type: string, enum: [mp3, opus, aac, flac, wav, pcm], default: mp3}
            speed: {type: number, minimum: 0.25, maximum: 4.0, default: 1.0}
            stream_format: {type: string, enum: [audio, sse], description: 'omit for the whole file at once'}
            seed: {type: integer}
            temperature: {type: number}
            top_p: {type: number}
            top_k: {type: integer}
            repetition_penalty: {type: number}
            max_audio_seconds: {type: number}
            language: {type: string}
    responses:
      200:
        description: 'audio in response_format at 24 kHz (pcm: raw s16le mono), or SSE events with base64 audio'
        schema: {type: string, format: binary}
      400:
        description: a bad field (the error names it)
        schema: {$ref: '#/definitions/Error'}
      401:
        description: missing or wrong API key
        schema: {$ref: '#/definitions/Error'}
      404:
        description: unknown voice
        schema: {$ref: '#/definitions/Error'}
      415:
        description: body that is not JSON
        schema: {$ref: '#/definitions/Error'}
      429:
        description: MAX_QUEUE requests already wait for the GPU (see Retry-After)
        schema: {$ref: '#/definitions/Error'}
      499:
        description: the client disconnected and the synthesis was stopped
        schema: {$ref: '#/definitions/Error'}
      500:
        description: the model produced nothing usable, or an internal error
        schema: {$ref: '#/definitions/Error'}
      503:
        description: the GPU stayed busy too long, or a model cannot be loaded
        schema: {$ref: '#/definitions/Error'}
    """
    ctx = api_context()
    fields, files = read_body()
    if files:
        raise InvalidInput("send /v1/audio/speech as a JSON object, not as a file upload", field="body")
    parse_text(fields.get("model"), "model")
    parse_text(fields.get("instructions"), "instructions")
    fmt = fields.get("response_format") or "mp3"
    if fmt not in OPENAI_FORMATS:
        raise InvalidInput(
            f"response_format {fmt!r} is not supported; use one of {', '.join(OPENAI_FORMATS)}",
            field="response_format",
        )
    speed = parse_number(fields.get("speed"), "speed")
    speed = 1.0 if speed is None else float(speed)
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise InvalidInput(f"speed is {speed:g}; it must be between {MIN_SPEED} and {MAX_SPEED}", field="speed")
    stream_format = fields.get("stream_format")
    if stream_format not in (None, "", "audio", "sse"):
        raise InvalidInput(f"stream_format {stream_format!r} is not supported; use audio or sse", field="stream_format")
    endpoint = {"sse": "speech_sse", "audio": "speech_stream"}.get(stream_format or "", "speech")
    synthesis = SynthesisRequest(
        text=parse_text(fields.get("input"), "input", required=True),
        voice=resolve_voice(fields.get("voice")),
        language=parse_text(fields.get("language"), "language"),
        params=parse_generation_params(fields),
        surface="rest",
        endpoint=endpoint,
    )
    if stream_format:
        return _stream_speech(ctx, synthesis, fmt=fmt, speed=speed, sse=stream_format == "sse")
    result = ctx.synthesize(synthesis)
    audio = time_stretch(result.audio, result.sample_rate, speed)
    data = encode_audio(audio, result.sample_rate, fmt, target_sample_rate=OPENAI_SAMPLE_RATE)
    headers = synthesis_headers(result, sample_rate=OPENAI_SAMPLE_RATE, fmt=fmt)
    headers["X-Audio-Duration-S"] = f"{len(audio) / result.sample_rate:.3f}"
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

    def sse_event(payload: dict[str, Any]) -> bytes:
        return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()

    def body() -> Iterator[bytes]:
        outcome = "cancelled"
        samples_in = 0
        try:
            for piece in itertools.chain([first], pieces):
                samples_in += len(piece.audio)
                data = encoder.push(piece.audio)
                if piece.final:
                    data += encoder.finish()
                if data:
                    yield (
                        sse_event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
                        if sse
                        else data
                    )
            outcome = "ok"
            if sse:
                yield sse_event(
                    {"type": "speech.audio.done", "duration_s": round(encoder.samples_out / OPENAI_SAMPLE_RATE, 3)}
                )
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
            logger.exception("speech stream failed after %d samples", samples_in)
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
