"""The REST face's request models: pydantic models that validate every body and query, and generate the spec.

Each route names its models in `@operation(query=..., body=...)` (faces/rest/openapi.py): the decorator validates
the request with them and the spec's parameters and request bodies are their JSON schemas, so what is documented
is what is checked. A field is one line: its type, its range or choices, its description.

The same model reads a JSON body and a form: form values arrive as text and are coerced ("0.7" -> 0.7,
"true" -> True); an empty value or a JSON null means "not given", as a blank form field does. An audio field
(`OptionalAudio`, `RequiredAudio`) is an uploaded file part in a form, base64 text or a data: URL in JSON; either
way `faces.inputs.read_audio`, the reader MCP uses too, turns it into bytes. Unknown fields are ignored: OpenAI's
clients send fields this server has no use for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from faces.inputs import AudioInput, read_audio
from faces.rest.audio import MAX_SPEED, MIN_SPEED
from llasa.audio import validate_output
from llasa.errors import InvalidInput
from llasa.types import SAMPLE_RATE, GenerationParams
from llasa.units import MAX_SEED

#: Output rates a caller may ask for (every encoder we ship accepts these).
SampleRate = Literal[8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000]
AudioFormat = Literal["wav", "flac", "mp3", "opus", "aac", "pcm"]
OpenAIFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
TranscriptionFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]

#: The validation context key for the upload limit (bytes) that audio fields are read with.
UPLOAD_LIMIT = "max_upload_bytes"


def _not_a_boolean(value: object) -> object:
    # pydantic reads true as 1; a boolean where a number belongs is a mistake worth naming.
    if isinstance(value, bool):
        raise PydanticCustomError("number_type", "input should be a number, not true or false")
    return value


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def _int_from_text(value: object) -> object:
    # Choices among numbers arrive as text in a form ("24000").
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return value


Number = Annotated[float, BeforeValidator(_not_a_boolean)]
# The validator sits outside the union, so that pydantic can put a field's range on the number.
OptionalNumber = Annotated[float | None, BeforeValidator(_not_a_boolean)]
OptionalWhole = Annotated[int | None, BeforeValidator(_not_a_boolean)]


class AudioField:
    """Marks an audio field: a file part in a form, base64 text or a data: URL in JSON (see the module doc)."""

    def __init__(self, *, required: bool) -> None:
        self.required = required

    def read(self, value: object, info: ValidationInfo) -> bytes | None:
        given = value if isinstance(value, AudioInput) else AudioInput(base64_text=value)
        context = info.context or {}
        if UPLOAD_LIMIT not in context:
            raise RuntimeError(f"validate {info.field_name} with validate_request(), which passes the upload limit")
        assert info.field_name is not None  # an audio field is always a model field
        return read_audio(given, field=info.field_name, max_bytes=context[UPLOAD_LIMIT], required=self.required)


# In JSON an audio field is base64 text (OpenAPI's "byte" format; a data: URL or the URL-safe alphabet works too).
_AUDIO_TEXT = WithJsonSchema({"type": "string", "format": "byte"})
_OPTIONAL, _REQUIRED = AudioField(required=False), AudioField(required=True)
OptionalAudio = Annotated[bytes | None, _OPTIONAL, BeforeValidator(_OPTIONAL.read), _AUDIO_TEXT]
RequiredAudio = Annotated[bytes, _REQUIRED, BeforeValidator(_REQUIRED.read), _AUDIO_TEXT]


class RequestModel(BaseModel):
    """Base of every request model (see the module doc for how values are read)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _blank_is_not_given(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            return {key: value for key, value in data.items() if value is not None and value != ""}
        return data

    @classmethod
    def audio_fields(cls) -> tuple[str, ...]:
        """The fields that take audio: file parts in a form."""
        return tuple(
            name for name, info in cls.model_fields.items() if any(isinstance(m, AudioField) for m in info.metadata)
        )


Model = TypeVar("Model", bound=RequestModel)


def validate_request(model: type[Model], data: Mapping[str, Any], *, max_upload_bytes: int) -> Model:
    """`data` checked by `model`; a refusal is InvalidInput (400) naming the field, as every face reports it."""
    try:
        return model.model_validate(data, context={UPLOAD_LIMIT: max_upload_bytes})
    except ValidationError as e:
        raise _invalid_input(e) from None


#: pydantic's wording where it names Python types.
_WORDING = {"model_type": "input should be an object", "dict_type": "input should be an object"}


def _invalid_input(error: ValidationError) -> InvalidInput:
    problems = error.errors(include_url=False)
    first = problems[0]
    field = _field_of(first)
    if first["type"] == "missing":
        return InvalidInput(f"{field} is missing; this field is required (see /apidocs)", field=field)
    # A union (a voice name or {"id": ...}) fails once per alternative: the deepest failures are the closest
    # matches (an object with a bad "id"); when all are as deep, say every way it could have been right.
    mine = [p for p in problems if _field_of(p) == field]
    deepest = max(len(p["loc"]) for p in mine)
    reasons = [
        (f"{p['loc'][-1]}: " if len(p["loc"]) > 2 else "") + _lowered(_WORDING.get(p["type"], p["msg"]))
        for p in mine
        if len(p["loc"]) == deepest
    ]
    reason = "; or ".join(dict.fromkeys(reasons))
    shown = repr(first["input"])
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return InvalidInput(f"{field} {shown} is not accepted: {reason}", field=field)


def _field_of(problem: Any) -> str:
    return str(problem["loc"][0]) if problem["loc"] else "body"


def _lowered(message: str) -> str:
    return message[:1].lower() + message[1:]


# --- synthesis --------------------------------------------------------------------------------------------------


class GenerationFields(RequestModel):
    """The sampling parameters of one synthesis (their defaults come from the server's settings)."""

    temperature: OptionalNumber = Field(None, gt=0, le=2, description="sampling temperature; default 0.8")
    top_p: OptionalNumber = Field(None, gt=0, le=1, description="nucleus sampling; default 1.0")
    top_k: OptionalWhole = Field(None, ge=0, le=65536, description="top-k sampling, 0 = off; default 50")
    repetition_penalty: OptionalNumber = Field(None, ge=0.5, le=2, description="default 1.0")
    max_audio_seconds: OptionalNumber = Field(None, ge=0.02, le=300, description="most audio per text chunk (s)")
    seed: OptionalWhole = Field(None, ge=0, le=MAX_SEED, description="same seed + same input = same audio")

    def generation_params(self) -> GenerationParams:
        return GenerationParams(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            repetition_penalty=self.repetition_penalty,
            max_audio_seconds=self.max_audio_seconds,
            seed=self.seed,
        )


class SynthesisFields(GenerationFields):
    """Generation parameters plus the quality checks (docs/quality.md)."""

    verify: bool | None = Field(
        None,
        description=(
            "transcribe every chunk and make it again when misread (VERIFY_MAX_CER, QUALITY_RETRIES); "
            "default VERIFY_DEFAULT"
        ),
    )
    captions: Annotated[Literal["srt", "vtt", "json"] | None, BeforeValidator(_lower)] = Field(
        None, description="word-timed captions of the audio: srt, vtt or json [{word, start_s, end_s}]"
    )


class TTSQuery(RequestModel):
    """The query of POST /api/tts."""

    run_async: bool = Field(False, alias="async", description="true = answer 202 with a job at once")
    response: Annotated[Literal["audio", "json"], BeforeValidator(_lower)] = Field(
        "audio", description="json = the facts and a download URL instead of the audio"
    )


class TTSBody(SynthesisFields):
    """POST /api/tts: a form (reference_audio as a file) or JSON (reference_audio as base64 text)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"text": "Hello! This is my cloned voice.", "seed": 42}]})

    text: str = Field(description="the words to speak (Chinese or English; at most MAX_TEXT_CHARS)")
    reference_audio: OptionalAudio = Field(
        None, description="voice to clone (0.5 s or more; trimmed to MAX_REFERENCE_SECONDS)"
    )
    reference_text: str | None = Field(None, description="transcript of the reference (transcribed when omitted)")
    voice: str | None = Field(None, description="a saved voice name instead of reference_audio")
    language: str | None = Field(None, description="language of the reference, for transcription: en, zh or auto")
    format: Annotated[AudioFormat, BeforeValidator(_lower)] = Field("wav", description="output format")
    sample_rate: Annotated[SampleRate | None, BeforeValidator(_int_from_text)] = Field(
        None, description="output rate in Hz, default 16000; opus takes only 8000, 12000, 16000, 24000 or 48000"
    )

    @model_validator(mode="after")
    def _format_fits_rate(self) -> TTSBody:
        # Checked before any GPU work: a 400 now, not after a synthesis (or as a failed job).
        validate_output(self.format, self.sample_rate or SAMPLE_RATE)
        return self


class VoiceRef(RequestModel):
    """A voice given as an object, as OpenAI's newer clients send it."""

    id: str | None = Field(None, description="a saved voice name")


class SpeechBody(SynthesisFields):
    """POST /v1/audio/speech (OpenAI's fields, then this service's generation fields)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"model": "tts-1", "input": "Hello.", "voice": "alloy"}]})

    model: str | None = Field(None, description="any id of GET /v1/models (all mean Llasa)", examples=["tts-1"])
    input: str = Field(description="the text to speak (at most MAX_TEXT_CHARS)")
    voice: str | VoiceRef | None = Field(
        None,
        description=(
            "a saved voice name, or an OpenAI built-in name such as alloy (the model's own voice unless a saved "
            'voice has that name), or an object {"id": "<saved voice name>"}'
        ),
        examples=["alloy"],
    )
    instructions: str | None = Field(None, description="accepted and ignored")
    response_format: OpenAIFormat = Field("mp3", description="audio format; all at 24 kHz (pcm: raw s16le mono)")
    speed: Number = Field(1.0, ge=MIN_SPEED, le=MAX_SPEED, description="tempo, same pitch")
    stream_format: Literal["audio", "sse"] | None = Field(
        None, description="audio = a raw audio stream, sse = server-sent events; omit for the whole file at once"
    )
    language: str | None = Field(None, description="language of the voice's reference, for transcription")


# --- transcription ----------------------------------------------------------------------------------------------


class TranscribeBody(RequestModel):
    """POST /api/transcribe."""

    audio: RequiredAudio = Field(description="audio file (wav, flac, mp3, ogg/opus, m4a, webm)")
    language: str | None = Field(None, description="language code such as en or zh; omit or auto to detect")


class TranscriptionsBody(RequestModel):
    """POST /v1/audio/transcriptions (OpenAI's fields)."""

    file: RequiredAudio = Field(description="audio file (wav, flac, mp3, ogg, m4a, webm)")
    model: str | None = Field(None, description="whisper-1 or any id; the configured Whisper is used")
    language: str | None = Field(None, description="ISO-639-1 code such as en or zh; omit to detect")
    response_format: TranscriptionFormat = Field("json", description="json, text, srt, vtt or verbose_json")
    prompt: str | None = Field(None, description="accepted and ignored")
    temperature: OptionalNumber = Field(None, description="accepted and ignored")


# --- voices -----------------------------------------------------------------------------------------------------


class VoiceCreateBody(RequestModel):
    """POST /v1/audio/voices."""

    name: str = Field(description="1-64 letters, digits, spaces, _ - . (the voice id)")
    audio_sample: RequiredAudio = Field(description="the reference recording (0.5 s or more)")
    transcript: str | None = Field(None, description="its words (transcribed when omitted)")
    overwrite: bool = Field(False, description="replace a voice of that name")


class VoiceUpdateBody(RequestModel):
    """PATCH /v1/audio/voices/{voice_id}."""

    transcript: str = Field(description="the words spoken in the voice's reference audio, word for word")


# --- GPU control ------------------------------------------------------------------------------------------------


class ModelChoiceBody(RequestModel):
    """POST /api/gpu/offload and /api/gpu/release: one model, or all of them."""

    # Not an enum: an unknown name is the GPU manager's 404, which names the models registered (vllm only when
    # it manages a vLLM server), the same answer MCP gives.
    model: str | None = Field(
        None, description="llasa, xcodec2, whisper (or vllm when managed); omit for all", examples=["llasa"]
    )


class TimeoutsBody(RequestModel):
    """POST /api/gpu/timeout: the fields to change (at least one)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"idle_timeout_s": 300, "evict_timeout_s": 1800}]})

    idle_timeout_s: OptionalNumber = Field(
        None, ge=-1, description="seconds idle on the GPU before offload (0 = at once, -1 = never)"
    )
    evict_timeout_s: OptionalNumber = Field(
        None, ge=-1, description="seconds idle in CPU RAM before release (0 = at once, -1 = never)"
    )
    offload_after_use: bool | None = Field(None, description="offload as soon as the last request ends")
    timeout: OptionalNumber = Field(None, ge=-1, description="older name for idle_timeout_s")
