"""One exception hierarchy for the whole service.

The core raises these; each front end maps them once (a Flask error handler returning
`{"error": {"code", "message"}}` with `status_code`, `gr.Error` in Gradio, `ToolError` in FastMCP).
Front ends branch on the class or on `code`, never on message text. A message says what was wrong and what
to do about it.
"""

from __future__ import annotations


class TTSError(Exception):
    """Base of every error the service reports to a client."""

    status_code: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict[str, object]:
        error: dict[str, object] = {"code": self.code, "message": self.message}
        if self.field:
            error["field"] = self.field
        return {"error": error}


class InvalidInput(TTSError):
    """A parameter or text the caller can fix (HTTP 400). `field` names the offending parameter."""

    status_code = 400
    code = "invalid_input"


class AudioTooShort(InvalidInput):
    """Reference audio shorter than MIN_REFERENCE_SECONDS, or silent."""

    code = "audio_too_short"


class SilentAudio(InvalidInput):
    """Audio that holds no signal at all."""

    code = "silent_audio"


class Unauthorized(TTSError):
    """Missing or wrong API key (HTTP 401)."""

    status_code = 401
    code = "unauthorized"


class NotFound(TTSError):
    """An output file, job or other resource that does not exist (HTTP 404)."""

    status_code = 404
    code = "not_found"


class VoiceNotFound(NotFound):
    """A saved voice name that is not in the library (HTTP 404)."""

    code = "voice_not_found"


class VoiceExists(TTSError):
    """Creating a voice under a name that is taken (HTTP 409)."""

    status_code = 409
    code = "voice_exists"


class VoiceDamaged(TTSError):
    """A saved voice whose files on disk cannot be read (HTTP 500): it must be deleted and saved again."""

    status_code = 500
    code = "voice_damaged"


class PayloadTooLarge(TTSError):
    """An upload over MAX_UPLOAD_MB (HTTP 413)."""

    status_code = 413
    code = "payload_too_large"


class UnsupportedAudio(TTSError):
    """Bytes that no decoder understands, or a truncated/corrupt file (HTTP 415)."""

    status_code = 415
    code = "unsupported_audio"


class PathNotAllowed(TTSError):
    """A file path outside the allowed folders (HTTP 403)."""

    status_code = 403
    code = "path_not_allowed"


class Cancelled(TTSError):
    """The caller cancelled the request or disconnected (HTTP 499, nginx's 'client closed request')."""

    status_code = 499
    code = "cancelled"


class Busy(TTSError):
    """The GPU stayed busy longer than GPU_WAIT_TIMEOUT (HTTP 503). Retry later."""

    status_code = 503
    code = "busy"

    def __init__(self, message: str, *, retry_after_s: float = 5.0, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.retry_after_s = retry_after_s


class QueueFull(Busy):
    """More than MAX_QUEUE requests already wait for the GPU (HTTP 429 with Retry-After)."""

    status_code = 429
    code = "queue_full"


class ModelUnavailable(TTSError):
    """A model could not be loaded: weights missing, download failed, or not enough GPU memory (HTTP 503)."""

    status_code = 503
    code = "model_unavailable"


class GenerationFailed(TTSError):
    """The model ran but produced nothing usable (HTTP 500)."""

    status_code = 500
    code = "generation_failed"
