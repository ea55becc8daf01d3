"""The saved-voice library on disk, shared by the UI, REST and MCP.

A voice is a folder `VOICES_DIR/<name>/` holding `reference.wav` (16 kHz mono, already trimmed and normalised)
and `voice.json` (name, transcript, XCodec2 codes, the codec that made them, duration, creation time). Codes are
stored so that using a voice skips transcription and encoding. Writes are atomic: a voice is built in a hidden
temporary folder and renamed into place, so a crash never leaves half a voice; deletion renames the folder away
before removing it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import soundfile

from llasa.errors import InvalidInput, VoiceDamaged, VoiceExists, VoiceNotFound
from llasa.types import SAMPLE_RATE

logger = logging.getLogger(__name__)

MAX_VOICE_NAME_CHARS = 64
# Letters and digits of any script (so Chinese names work), plus space, '_', '-', '.'; must start with a letter
# or digit, so names like '.', '..' or '.hidden' cannot be made. No separators, so a name is always one folder.
_VOICE_NAME = re.compile(r"^[^\W_][\w .-]*$")
_REFERENCE_FILE = "reference.wav"
_META_FILE = "voice.json"


@dataclass
class VoiceInfo:
    """What the library knows about one saved voice. `name` is its id."""

    name: str
    transcript: str
    duration_s: float
    num_codes: int
    created_at: str
    codec_model: str = ""
    codes: list[int] = field(default_factory=list, repr=False)
    warnings: list[str] = field(default_factory=list)
    """Not stored: what the caller of create/update should know (e.g. a transcript redone after a trim)."""

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data.pop("codes")
        return data


def validate_voice_name(name: object) -> str:
    """Return the name stripped, or raise InvalidInput saying what a valid name looks like."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidInput("voice name is empty; give 1-64 letters, digits, spaces, '_', '-' or '.'", field="name")
    cleaned = name.strip()
    if len(cleaned) > MAX_VOICE_NAME_CHARS:
        raise InvalidInput(
            f"voice name is {len(cleaned)} characters long; use at most {MAX_VOICE_NAME_CHARS}", field="name"
        )
    if not _VOICE_NAME.match(cleaned) or ".." in cleaned:
        raise InvalidInput(
            f"voice name {cleaned!r} is not allowed; start with a letter or digit and use only letters, digits, "
            "spaces, '_', '-' or '.' (no slashes or '..')",
            field="name",
        )
    return cleaned


class VoiceLibrary:
    """Saved voices under one folder. Thread-safe; every method re-reads the disk, so several processes agree."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()

    def _folder(self, name: str) -> Path:
        return self.root / validate_voice_name(name)

    def list(self) -> list[VoiceInfo]:
        if not self.root.is_dir():
            return []
        voices = []
        for folder in sorted(self.root.iterdir()):
            if folder.name.startswith(".") or not folder.is_dir():
                continue
            try:
                voices.append(self._read(folder))
            except (OSError, ValueError, KeyError, TypeError) as e:
                logger.warning("skipping unreadable voice folder %s: %s", folder, e)
        return voices

    def get(self, name: str) -> VoiceInfo:
        folder = self._folder(name)
        if not (folder / _META_FILE).is_file():
            known = ", ".join(v.name for v in self.list()) or "none saved yet"
            raise VoiceNotFound(f"voice {name!r} does not exist; known voices: {known}", field="voice")
        try:
            return self._read(folder)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise VoiceDamaged(
                f"the saved voice {name!r} is damaged on disk ({type(e).__name__}: {e}); delete it and save it again"
            ) from e

    def reference_path(self, name: str) -> Path:
        self.get(name)
        return self._folder(name) / _REFERENCE_FILE

    def load_reference(self, name: str) -> np.ndarray:
        samples, _ = soundfile.read(self.reference_path(name), dtype="float32")
        return samples

    def save(
        self,
        name: str,
        samples: np.ndarray,
        transcript: str,
        codes: list[int],
        *,
        codec_model: str,
        overwrite: bool = False,
    ) -> VoiceInfo:
        """Store a voice atomically. Raise VoiceExists unless overwrite."""
        name = validate_voice_name(name)
        info = VoiceInfo(
            name=name,
            transcript=transcript,
            duration_s=round(len(samples) / SAMPLE_RATE, 3),
            num_codes=len(codes),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            codec_model=codec_model,
            codes=[int(c) for c in codes],
        )
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".tmp-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            soundfile.write(staging / _REFERENCE_FILE, samples, SAMPLE_RATE, subtype="PCM_16")
            meta = asdict(info)
            meta.pop("warnings")
            (staging / _META_FILE).write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
            with self._lock:
                target = self.root / name
                trash = None
                if target.exists():
                    if not overwrite:
                        raise VoiceExists(
                            f"a voice named {name!r} already exists; delete it first or choose another name",
                            field="name",
                        )
                    # Old out of the way, new into place, then delete the old: a crash leaves one of the two.
                    trash = self.root / f".trash-{uuid.uuid4().hex}"
                    os.rename(target, trash)
                os.rename(staging, target)
            if trash is not None:
                shutil.rmtree(trash, ignore_errors=True)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        logger.info("voice %r saved (%.1f s, %d codes)", name, info.duration_s, info.num_codes)
        return info

    def update_codes(self, name: str, codes: list[int], *, codec_model: str) -> None:
        """Replace a voice's stored codes (after the codec model changed), atomically."""
        self._update_meta(name, codes=[int(c) for c in codes], num_codes=len(codes), codec_model=codec_model)

    def update_transcript(self, name: str, transcript: str) -> VoiceInfo:
        """Replace a voice's transcript (it must match the reference audio word for word), atomically."""
        self._update_meta(name, transcript=transcript)
        return self.get(name)

    def _update_meta(self, name: str, **changes: object) -> None:
        self.get(name)  # VoiceNotFound / VoiceDamaged with their messages
        folder = self._folder(name)
        with self._lock:
            meta = json.loads((folder / _META_FILE).read_text(encoding="utf-8"))
            meta.update(changes)
            staging = folder / f".{_META_FILE}.{uuid.uuid4().hex}"
            staging.write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
            os.replace(staging, folder / _META_FILE)

    def delete(self, name: str) -> None:
        folder = self._folder(name)
        with self._lock:
            if not (folder / _META_FILE).is_file():
                raise VoiceNotFound(f"voice {name!r} does not exist", field="voice")
            self._remove(folder)
        logger.info("voice %r deleted", name)

    def _remove(self, folder: Path) -> None:
        # Rename first so a reader never sees a half-deleted voice.
        trash = self.root / f".trash-{uuid.uuid4().hex}"
        os.rename(folder, trash)
        shutil.rmtree(trash, ignore_errors=True)

    @staticmethod
    def _read(folder: Path) -> VoiceInfo:
        meta = json.loads((folder / _META_FILE).read_text(encoding="utf-8"))
        return VoiceInfo(
            name=meta["name"],
            transcript=meta["transcript"],
            duration_s=float(meta["duration_s"]),
            num_codes=int(meta["num_codes"]),
            created_at=meta["created_at"],
            codec_model=meta.get("codec_model", ""),
            codes=[int(c) for c in meta.get("codes", [])],
        )
