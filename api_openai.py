"""OpenAI-compatible audio routes, so the `openai` SDK, Open WebUI, Home Assistant or SillyTavern work unchanged.

- `POST /v1/audio/speech`: every response_format (pcm = 24 kHz s16le mono, like OpenAI's; the other formats are
  also 24 kHz), `speed` 0.25-4.0 (time-stretched after synthesis, pitch kept), `stream_format` `audio` (one
  continuous stream, sent as each text chunk is synthesised) or `sse` (`speech.audio.delta` / `.done` events).
  Without `stream_format` the whole file comes at once, with Content-Length and the X- facts headers.
- `POST /v1/audio/transcriptions`: json, text, srt, vtt, verbose_json.
- `GET /v1/models` and the voice library under `/v1/audio/voices`.
OpenAI's built-in voice names (alloy, echo, ...) mean a saved voice of that name if there is one, else the
model's own voice (no reference).
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, jsonify, request, send_file

from api_audio import MAX_SPEED, MIN_SPEED, OPENAI_SAMPLE_RATE, StreamEncoder, time_stretch
from api_common import (
    ApiContext,
    DisconnectWatch,
    parse_bool,
    parse_generation_params,
    parse_number,
    parse_text,
    read_audio_field,
    read_body,
    synthesis_headers,
)
from llasa.audio import AUDIO_FORMATS, encode_audio
from llasa.errors import Cancelled, InvalidInput, TTSError, VoiceNotFound
from llasa.outputs import FORMAT_EXTENSIONS
from llasa.types import SAMPLE_RATE, SynthesisRequest, TranscriptionRequest, TranscriptionResult

logger = logging.getLogger(__name__)

#: OpenAI's built-in voice names (see the SDK's `speech_create_params.Voice`).
OPENAI_VOICES = frozenset(
    {"alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse", "marin", "cedar"}
)
OPENAI_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
TRANSCRIPTION_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
#: Model ids clients may send; all speech ids mean the configured Llasa, whisper-1 the configured Whisper.
SPEECH_MODEL_IDS = ("llasa", "tts-1", "tts-1-hd", "gpt-4o-mini-tts")
TRANSCRIPTION_MODEL_IDS = ("whisper-1",)


def _unix_seconds(iso: object) -> int:
    """An ISO 8601 time as Unix seconds (OpenAI's `created_at`); 0 when the stored value cannot be read."""
    try:
        moment = datetime.fromisoformat(str(iso))
    except ValueError:
        return 0
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # the library stores UTC
    return int(moment.timestamp())


def _voice_object(info: Any) -> dict[str, Any]:
    """A saved voice shaped like OpenAI's `audio.voice` (id, object, type, name, created_at as Unix seconds),
    plus this service's fields: transcript, duration_s, num_codes, codec_model, created_iso and warnings."""
    data = info.to_dict()
    created_iso = data.pop("created_at")
    return {
        "id": info.name,
        "object": "audio.voice",
        "type": "audio_sample",
        "created_at": _unix_seconds(created_iso),
        "created_iso": created_iso,
        **data,
    }


def _timestamp(seconds: float, separator: str) -> str:
    millis = round(max(0.0, seconds) * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def format_subtitles(result: TranscriptionResult, fmt: str) -> str:
    """SRT or WebVTT cues from the transcription's segments (one cue for the whole text if there are none)."""
    segments = result.segments
    cues = [(s.start_s, s.end_s, s.text.strip()) for s in segments] or [(0.0, result.duration_s, result.text.strip())]
    separator = "," if fmt == "srt" else "."
    lines = [] if fmt == "srt" else ["WEBVTT", ""]
    for index, (start, end, text) in enumerate(cues, start=1):
        if fmt == "srt":
            lines.append(str(index))
        lines += [f"{_timestamp(start, separator)} --> {_timestamp(end, separator)}", text, ""]
    return "\n".join(lines)


def _verbose_json(result: TranscriptionResult) -> dict[str, Any]:
    return {
        "task": "transcribe",
        "language": result.language,
        "duration": result.duration_s,
        "text": result.text,
        "segments": [
            {
                "id": index,
                "seek": 0,
                "start": segment.start_s,
                "end": segment.end_s,
                "text": segment.text,
                # faster-whisper's per-segment scores are not part of the core's result; neutral values keep
                # clients that read these fields working.
                "tokens": [],
                "temperature": 0.0,
                "avg_logprob": 0.0,
                "compression_ratio": 1.0,
                "no_speech_prob": 0.0,
            }
            for index, segment in enumerate(result.segments)
        ],
    }


def register_openai_routes(app: Flask, ctx: ApiContext) -> None:
    """Add the /v1 routes to `app`."""
    service, settings = ctx.service, ctx.settings

    def resolve_voice(value: object) -> str | None:
        if isinstance(value, dict):
            value = value.get("id")
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise InvalidInput('voice must be a name or an object {"id": "<name>"}', field="voice")
        name = value.strip()
        try:
            return service.get_voice(name).name
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

    @app.post("/v1/audio/speech")
    def speech() -> Response:
        """Generate speech (OpenAI-compatible): the whole file, a raw audio stream, or server-sent events.
        Extra fields beyond OpenAI's (seed, temperature, top_p, top_k, repetition_penalty, max_audio_seconds,
        language) tune the generation.
        ---
        tags: [openai]
        consumes: [application/json]
        produces: [audio/mpeg, audio/ogg, audio/aac, audio/flac, audio/wav, audio/pcm, text/event-stream]
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
            raise InvalidInput(
                f"stream_format {stream_format!r} is not supported; use audio or sse", field="stream_format"
            )
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

    @app.post("/v1/audio/transcriptions")
    def transcriptions() -> Response:
        """Transcribe audio (OpenAI-compatible): json, text, srt, vtt or verbose_json.
        A JSON body works too, with `file` as base64 text or a data: URL (same fields, same limits).
        ---
        tags: [openai]
        consumes: [multipart/form-data, application/json]
        parameters:
          - in: formData
            name: file
            type: file
            required: true
            description: audio file (wav, flac, mp3, ogg, m4a, webm); in a JSON body, base64 text or a data URL
          - in: formData
            name: model
            type: string
            required: false
            description: whisper-1 or any id; the configured Whisper is used
          - in: formData
            name: language
            type: string
            required: false
            description: ISO-639-1 code such as en or zh; omit to detect
          - in: formData
            name: response_format
            type: string
            enum: [json, text, srt, vtt, verbose_json]
            required: false
          - {in: formData, name: prompt, type: string, required: false, description: accepted and ignored}
          - {in: formData, name: temperature, type: number, required: false, description: accepted and ignored}
        responses:
          200:
            description: 'the transcript: {"text"} for json, plain text for text/srt/vtt, segments for verbose_json'
            schema: {type: object, properties: {text: {type: string}}}
          400:
            description: missing file, bad language or response_format
            schema: {$ref: '#/definitions/Error'}
          401:
            description: missing or wrong API key
            schema: {$ref: '#/definitions/Error'}
          413:
            description: upload over MAX_UPLOAD_MB
            schema: {$ref: '#/definitions/Error'}
          415:
            description: unreadable audio, or a body that is not multipart
            schema: {$ref: '#/definitions/Error'}
          429:
            description: too many requests wait for the GPU (see Retry-After)
            schema: {$ref: '#/definitions/Error'}
          503:
            description: the GPU stayed busy too long, or a model cannot be loaded
            schema: {$ref: '#/definitions/Error'}
        """
        fields, files = read_body()
        fmt = fields.get("response_format") or "json"
        if fmt not in TRANSCRIPTION_FORMATS:
            raise InvalidInput(
                f"response_format {fmt!r} is not supported; use one of {', '.join(TRANSCRIPTION_FORMATS)}",
                field="response_format",
            )
        audio = read_audio_field(fields, files, "file", settings, required=True)
        language = parse_text(fields.get("language"), "language")
        result = service.transcribe(
            TranscriptionRequest(audio, language, surface="rest", endpoint="openai_transcriptions")
        )
        if fmt == "json":
            return jsonify({"text": result.text})
        if fmt == "verbose_json":
            return jsonify(_verbose_json(result))
        body = result.text if fmt == "text" else format_subtitles(result, fmt)
        mimetype = {"text": "text/plain", "srt": "application/x-subrip", "vtt": "text/vtt"}[fmt]
        return Response(body, mimetype=mimetype)

    @app.get("/v1/models")
    def models() -> Response:
        """Model ids this server accepts (OpenAI-compatible); every speech id uses the configured Llasa.
        ---
        tags: [openai]
        responses:
          200:
            description: a list of models
            schema:
              type: object
              properties:
                object: {type: string, example: list}
                data:
                  type: array
                  items:
                    type: object
                    properties:
                      id: {type: string}
                      object: {type: string}
                      created: {type: integer}
                      owned_by: {type: string}
                      root: {type: string}
          401:
            description: missing or wrong API key
            schema: {$ref: '#/definitions/Error'}
        """
        data = [
            {"id": mid, "object": "model", "created": 0, "owned_by": "llasa-tts", "root": settings.llasa_model}
            for mid in SPEECH_MODEL_IDS
        ] + [
            {"id": mid, "object": "model", "created": 0, "owned_by": "llasa-tts", "root": settings.whisper_model}
            for mid in TRANSCRIPTION_MODEL_IDS
        ]
        return jsonify({"object": "list", "data": data})

    @app.get("/v1/audio/voices")
    def list_voices() -> Response:
        """List the saved voices (shared with the web UI and MCP).
        ---
        tags: [voices]
        responses:
          200:
            description: the voices
            schema:
              type: object
              properties:
                object: {type: string, example: list}
                data: {type: array, items: {$ref: '#/definitions/Voice'}}
          401:
            description: missing or wrong API key
            schema: {$ref: '#/definitions/Error'}
        """
        return jsonify({"object": "list", "data": [_voice_object(v) for v in service.list_voices()]})

    @app.post("/v1/audio/voices")
    def create_voice() -> tuple[Response, int]:
        """Save a voice from an audio sample: trimmed 16 kHz reference, transcript (given or transcribed), codes.
        A JSON body works too, with `audio_sample` as base64 text or a data: URL (same fields, same limits).
        ---
        tags: [voices]
        consumes: [multipart/form-data, application/json]
        parameters:
          - in: formData
            name: name
            type: string
            required: true
            description: 1-64 letters, digits, spaces, _ - . (the voice id)
          - in: formData
            name: audio_sample
            type: file
            required: true
            description: the reference recording (0.5 s or more); in a JSON body, base64 text or a data URL
          - in: formData
            name: transcript
            type: string
            required: false
            description: its words (transcribed when omitted)
          - {in: formData, name: overwrite, type: boolean, required: false, description: 'replace a voice of that name'}
        responses:
          201:
            description: the saved voice
            schema: {$ref: '#/definitions/Voice'}
          400:
            description: bad name, missing or too short audio, no speech recognised
            schema: {$ref: '#/definitions/Error'}
          401:
            description: missing or wrong API key
            schema: {$ref: '#/definitions/Error'}
          409:
            description: a voice of that name exists (send overwrite=true to replace it)
            schema: {$ref: '#/definitions/Error'}
          413:
            description: upload over MAX_UPLOAD_MB
            schema: {$ref: '#/definitions/Error'}
          415:
            description: unreadable audio, or a body that is not multipart
            schema: {$ref: '#/definitions/Error'}
          429:
            description: too many requests wait for the GPU (see Retry-After)
            schema: {$ref: '#/definitions/Error'}
        """
        fields, files = read_body()
        name = parse_text(fields.get("name"), "name", required=True)
        audio = read_audio_field(fields, files, "audio_sample", settings, required=True)
        info = service.create_voice(
            name,
            audio,
            parse_text(fields.get("transcript"), "transcript"),
            overwrite=parse_bool(fields.get("overwrite"), "overwrite"),
        )
        return jsonify(_voice_object(info)), 201

    voice_id_param = """
        parameters:
          - {in: path, name: voice_id, type: string, required: true, description: the voice name}
        """

    @app.get("/v1/audio/voices/<voice_id>")
    def get_voice(voice_id: str) -> Response:
        return jsonify(_voice_object(service.get_voice(voice_id)))

    get_voice.__doc__ = (
        "One saved voice: name, transcript, duration, codes, creation time.\n        ---\n        tags: [voices]"
        + voice_id_param
        + """responses:
          200:
            description: the voice
            schema: {$ref: '#/definitions/Voice'}
          400:
            description: a name that cannot be a voice (path tricks)
            schema: {$ref: '#/definitions/Error'}
          401:
            description: missing or wrong API key
            schema: {$ref: '#/definitions/Error'}
          404:
            description: unknown voice
            schema: {$ref: '#/definitions/Error'}
        """
    )

    @app.get("/v1/audio/voices/<voice_id>/audio")
    def get_voice_audio(voice_id: str) -> Response:
        path = service.voice_audio_path(voice_id)
        return send_file(path, mimetype=AUDIO_FORMATS["wav"], download_name=f"{voice_id}.wav", conditional=True)

    get_voice_audio.__doc__ = (
        "The saved voice's reference recording (16 kHz mono WAV), for previews.\n        ---\n        tags: [voices]\n"
        "        produces: [audio/wav]"
        + voice_id_param
        + """responses:
          200:
            description: the reference audio
            schema: {type: string, format: binary}
          400:
            description: a name that cannot be a voice (path tricks)
            schema: {$ref: '#/definitions/Error'}
          401:
            description: missing or wrong API key
            schema: {$ref: '#/definitions/Error'}
          404:
            description: unknown voice
            schema: {$ref: '#/definitions/Error'}
        """
    )

    @app.patch("/v1/audio/voices/<voice_id>")
    def update_voice(voice_id: str) -> Response:
        fields, _files = read_body()
        transcript = parse_text(fields.get("transcript"), "transcript", required=True)
        return jsonify(_voice_object(service.update_voice(voice_id, transcript)))

    update_voice.__doc__ = (
        "Edit a saved voice's transcript (it must match the reference audio word for word); no model work."
        "\n        ---\n        tags: [voices]\n        consumes: [application/json, multipart/form-data]"
        + voice_id_param
        + """  - in: body
            name: body
            required: true
            schema:
              type: object
              required: [transcript]
              properties:
                transcript: {type: string, description: the words spoken in the voice's reference audio}
        responses:
          200:
            description: the voice with its new transcript
            schema: {$ref: '#/definitions/Voice'}
          400:
            description: missing or empty transcript, a name that cannot be a voice, or invalid JSON
            schema: {$ref: '#/definitions/Error'}
          401:
            description: missing or wrong API key
            schema: {$ref: '#/definitions/Error'}
          404:
            description: unknown voice
            schema: {$ref: '#/definitions/Error'}
          415:
            description: a body that is neither JSON nor a form
            schema: {$ref: '#/definitions/Error'}
        """
    )

    @app.delete("/v1/audio/voices/<voice_id>")
    def delete_voice(voice_id: str) -> Response:
        service.delete_voice(voice_id)
        return jsonify({"id": voice_id, "object": "audio.voice.deleted", "deleted": True})

    delete_voice.__doc__ = (
        "Delete a saved voice.\n        ---\n        tags: [voices]"
        + voice_id_param
        + """responses:
          200:
            description: deleted
            schema:
              type: object
              properties:
                id: {type: string}
                object: {type: string, enum: [audio.voice.deleted]}
                deleted: {type: boolean}
          400:
            description: a name that cannot be a voice (path tricks)
            schema: {$ref: '#/definitions/Error'}
          401:
            description: missing or wrong API key
            schema: {$ref: '#/definitions/Error'}
          404:
            description: unknown voice
            schema: {$ref: '#/definitions/Error'}
        """
    )


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
