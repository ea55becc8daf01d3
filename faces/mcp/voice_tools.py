"""Voice library tools: list_voices, create_voice, update_voice, delete_voice."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from llasa.config import Settings

if TYPE_CHECKING:
    from llasa.service import TTSService
from faces.mcp.common import (
    ADDITIVE,
    ADDITIVE_IDEMPOTENT,
    DESTRUCTIVE,
    READ_ONLY_IDEMPOTENT,
    ToolDecorator,
    read_audio,
    tool_errors,
)
from faces.mcp.results import VoiceEntry, VoiceList

logger = logging.getLogger(__name__)


def register(tool: ToolDecorator, service: TTSService, settings: Settings) -> None:
    """Add the voice tools to the server `tool` registers on."""

    @tool(annotations=READ_ONLY_IDEMPOTENT)
    def list_voices() -> VoiceList:
        """List the saved voices that generate_speech can use by name (shared with the web UI and REST API).

        Returns JSON with `voices` (each with `name`, `transcript`, `duration_s`, `num_codes`, `created_at`) and
        `count`.
        """
        with tool_errors("list_voices"):
            voices = [VoiceEntry.model_validate(v.to_dict()) for v in service.list_voices()]
            return VoiceList(voices=voices, count=len(voices))

    @tool(annotations=ADDITIVE)
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
        with tool_errors("create_voice"):
            audio = read_audio(settings, audio_path, audio_base64, "audio_path", "audio_base64", required=True)
            assert audio is not None
            info = service.create_voice(name, audio, transcript)
            return VoiceEntry.model_validate(info.to_dict())

    @tool(annotations=ADDITIVE_IDEMPOTENT)
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
        with tool_errors("update_voice"):
            info = service.update_voice(name, transcript)
            return VoiceEntry.model_validate(info.to_dict())

    @tool(annotations=DESTRUCTIVE)
    def delete_voice(name: str) -> dict[str, Any]:
        """Delete a saved voice for good (its reference audio and transcript). Returns JSON with `deleted` (the name).

        Args:
            name: The voice's name, as list_voices shows it.
        """
        with tool_errors("delete_voice"):
            service.delete_voice(name)
            return {"deleted": name.strip()}
