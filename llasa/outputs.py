"""Generated audio files kept for download under OUTPUT_DIR, deleted after OUTPUT_TTL_HOURS.

An output id is `<32 hex>.<extension>`; anything else is refused before the disk is touched, so an id can never
name a file outside the folder. Captions (srt, vtt, json) are kept the same way, beside the audio they describe.
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from llasa.errors import NotFound

logger = logging.getLogger(__name__)

#: File extension for each output format: audio (opus travels in an Ogg container), then captions.
FORMAT_EXTENSIONS = {
    "wav": "wav",
    "flac": "flac",
    "mp3": "mp3",
    "opus": "ogg",
    "aac": "aac",
    "pcm": "pcm",
    "srt": "srt",
    "vtt": "vtt",
    "json": "json",
}
#: MIME type of each caption format (the audio formats' are `llasa.audio.AUDIO_FORMATS`).
CAPTION_MIME_TYPES = {"srt": "application/x-subrip", "vtt": "text/vtt", "json": "application/json"}
_OUTPUT_ID = re.compile(r"[0-9a-f]{32}\.(" + "|".join(sorted(set(FORMAT_EXTENSIONS.values()))) + ")")


def cleanup_interval_s(ttl_hours: float) -> float:
    """How often expired outputs (and the REST jobs that point at them) are swept: a tenth of the TTL, 1 min to 1 h.

    The one interval of the process, whichever face starts first.
    """
    return min(max(ttl_hours * 3600 / 10, 60.0), 3600.0)


@dataclass
class SavedOutput:
    id: str
    path: Path
    url: str
    format: str
    mime_type: str
    size_bytes: int

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "path": str(self.path),
            "url": self.url,
            "format": self.format,
            "mime_type": self.mime_type,
            "size_bytes": self.size_bytes,
        }


class OutputStore:
    def __init__(self, root: Path, *, ttl_hours: float, base_url: str) -> None:
        self.root = Path(root)
        self.ttl_s = ttl_hours * 3600
        self.base_url = base_url

    def save(self, data: bytes, fmt: str, mime_type: str) -> SavedOutput:
        self.root.mkdir(parents=True, exist_ok=True)
        output_id = f"{uuid.uuid4().hex}.{FORMAT_EXTENSIONS[fmt]}"
        path = self.root / output_id
        staging = self.root / f".{output_id}.part"
        staging.write_bytes(data)
        os.replace(staging, path)
        return SavedOutput(
            id=output_id,
            path=path.resolve(),
            url=f"{self.base_url}/api/outputs/{output_id}",
            format=fmt,
            mime_type=mime_type,
            size_bytes=len(data),
        )

    def save_captions(self, captions: str, fmt: str) -> SavedOutput:
        """Keep a synthesis's captions (`SynthesisResult.captions`, in `fmt`: srt, vtt or json) as a UTF-8 file."""
        return self.save(captions.encode("utf-8"), fmt, CAPTION_MIME_TYPES[fmt])

    def path_for(self, output_id: str) -> Path:
        if not isinstance(output_id, str) or not _OUTPUT_ID.fullmatch(output_id):
            raise NotFound(f"no output with id {str(output_id)[:80]!r}; ids look like '<32 hex digits>.wav'")
        path = self.root / output_id
        if not path.is_file():
            raise NotFound(f"output {output_id} does not exist or has expired (outputs are kept for a while only)")
        return path.resolve()

    def cleanup(self, now: float | None = None) -> int:
        """Delete outputs older than the TTL; return how many went."""
        if not self.root.is_dir():
            return 0
        cutoff = (time.time() if now is None else now) - self.ttl_s
        removed = 0
        for path in self.root.iterdir():
            if not (_OUTPUT_ID.fullmatch(path.name) or path.name.endswith(".part")):
                continue
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        if removed:
            logger.info("deleted %d expired outputs from %s", removed, self.root)
        return removed
