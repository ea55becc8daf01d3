"""Whisper: faster-whisper (CTranslate2) for reference transcripts (`ManagedModel`)."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from llasa.config import Settings
from llasa.errors import ModelUnavailable, TTSError
from llasa.models.hub import (
    WHISPER_FILES,
    resolve_model_dir,
    torch_device,
    weights_bytes,
)
from llasa.types import Segment, TranscriptionResult

logger = logging.getLogger(__name__)


def _whisper_compute_type(setting: str, device: str) -> str:
    if setting and setting != "auto":
        return setting
    return "float16" if device.startswith("cuda") else "int8"


def _is_cuda_runtime_error(error: BaseException) -> bool:
    """CTranslate2 failing to start on the GPU (missing CUDA 12 cuBLAS/cuDNN, no driver, no device)."""
    text = str(error).lower()
    return any(word in text for word in ("cuda", "cublas", "cudnn", "libcu", "gpu", "driver"))


class WhisperTranscriber:
    """faster-whisper with the voice-activity filter on (`ManagedModel`).

    Offload uses CTranslate2's own `unload_model(to_cpu=True)` / `load_model()`. When CTranslate2 cannot run on
    the GPU (its CUDA 12 libraries are missing, say) it falls back to the CPU once, with one log line, rather than
    fail requests.
    """

    def __init__(self, folder: Path, device: str, compute_type_setting: str = "auto", *, name: str = "whisper") -> None:
        self.name = name
        self.folder = folder
        self._compute_type_setting = compute_type_setting
        self._lock = threading.Lock()
        self.model: Any = None
        self.device = "cpu"
        self.compute_type = ""
        self.fell_back_to_cpu = False
        self._open(torch_device(device))

    def _open(self, device: str) -> None:
        from faster_whisper import WhisperModel

        compute_type = _whisper_compute_type(self._compute_type_setting, device)
        if device.startswith("cuda"):
            index = int(device.split(":", 1)[1]) if ":" in device else 0
            try:
                self.model = WhisperModel(
                    str(self.folder), device="cuda", device_index=index, compute_type=compute_type
                )
                self.device, self.compute_type = device, compute_type
                return
            except (RuntimeError, ValueError, OSError) as e:
                self._note_fallback(e)
                compute_type = _whisper_compute_type(self._compute_type_setting, "cpu")
                if compute_type == "float16":
                    compute_type = "int8"  # CPUs have no efficient float16 path
        self.model = WhisperModel(str(self.folder), device="cpu", compute_type=compute_type, cpu_threads=_cpu_threads())
        self.device, self.compute_type = "cpu", compute_type

    def _note_fallback(self, error: BaseException) -> None:
        self.fell_back_to_cpu = True
        logger.warning(
            "whisper: CTranslate2 cannot run on the GPU (%s); transcribing on the CPU instead. Install CUDA 12 "
            "cuBLAS and cuDNN 9 for GPU transcription",
            error,
        )

    def move_to(self, device: str) -> None:
        device = torch_device(device)
        if self.model is None or self.device == "cpu":
            return  # a CPU model (or one that fell back) has nowhere to move
        with self._lock:
            if device == "cpu":
                self._unload_to_cpu()
            elif not self.model.model.model_is_loaded:
                self.model.model.load_model()

    def _unload_to_cpu(self) -> None:
        # CTranslate2's unload_model() silently does nothing while one of its worker threads still holds the
        # model, which it does for a moment after a transcription returns. Ask again until it takes (bounded).
        ct2 = self.model.model
        deadline = time.monotonic() + _WHISPER_UNLOAD_WAIT_S
        while ct2.model_is_loaded:
            ct2.unload_model(to_cpu=True)
            if not ct2.model_is_loaded:
                return
            if time.monotonic() > deadline:
                logger.warning(
                    "%s: CTranslate2 kept the model on %s; it stays there until the next offload",
                    self.name,
                    self.device,
                )
                return
            time.sleep(0.01)

    def size_bytes(self) -> int:
        return weights_bytes(self.folder, ["model.bin"])

    def close(self) -> None:
        with self._lock:
            self.model = None

    def transcribe(
        self,
        samples: np.ndarray,
        language: str | None = None,
        *,
        max_new_tokens: int | None = None,
        words: bool = False,
    ) -> TranscriptionResult:
        """Transcribe float32 mono 16 kHz `samples`; `language` None = detect; `words` adds word timings
        (faster-whisper's cross-attention alignment). Segments are read to the end here, so the model is free
        again when this returns."""
        if self.model is None:
            raise ModelUnavailable(f"{self.name} was released; load it again")
        audio = np.asarray(samples, dtype=np.float32)
        try:
            return self._transcribe(audio, language, max_new_tokens, words)
        except RuntimeError as e:
            if self.device == "cpu" or not _is_cuda_runtime_error(e):
                raise
            # CTranslate2 loads cuBLAS lazily: a missing library shows up at the first GPU computation.
            with self._lock:
                self._note_fallback(e)
                self.model = None
                self._open("cpu")
            return self._transcribe(audio, language, max_new_tokens, words)

    def _transcribe(
        self, audio: np.ndarray, language: str | None, max_new_tokens: int | None, words: bool
    ) -> TranscriptionResult:
        segments, info = self.model.transcribe(
            audio, language=language or None, vad_filter=True, max_new_tokens=max_new_tokens, word_timestamps=words
        )
        duration_s = float(info.duration)
        found: list[Segment] = []
        timed: list[tuple[str, float, float]] = []
        for segment in segments:
            # faster-whisper does not clamp timestamps: a segment can claim to end past the audio.
            start, end = min(float(segment.start), duration_s), min(float(segment.end), duration_s)
            found.append(Segment(start_s=start, end_s=end, text=segment.text.strip()))
            timed.extend(
                (w.word.strip(), min(float(w.start), duration_s), min(float(w.end), duration_s))
                for w in segment.words or ()
            )
        return TranscriptionResult(
            text=_join_segments([s.text for s in found]),
            language=str(info.language),
            duration_s=duration_s,
            segments=found,
            words=timed,
        )


_WHISPER_UNLOAD_WAIT_S = 5.0


def _cpu_threads() -> int:
    """CTranslate2 threads on the CPU: the cores this process may use (its default, 4, oversubscribes small boxes)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _join_segments(texts: list[str]) -> str:
    """Join segment texts: a space between Latin-script pieces, nothing between CJK ones."""
    out = ""
    for text in (t for t in texts if t):
        if out and (out[-1].isascii() or text[0].isascii()):
            out += " "
        out += text
    return out


def _whisper_repo(reference: str) -> str | None:
    """The hub repository faster-whisper uses for a size name (large-v3-turbo...), None if not a size name."""
    from faster_whisper import utils

    if "/" in reference:
        return None
    # faster-whisper keeps its size -> repository table in this module-level dict.
    return getattr(utils, "_MODELS", {}).get(reference)


def load_whisper(settings: Settings, device: str) -> WhisperTranscriber:
    """Load WHISPER_MODEL (a size name, a hub id of a CTranslate2 conversion, or a local folder) onto `device`."""
    started = time.perf_counter()
    reference = settings.whisper_model.strip()
    repo = _whisper_repo(reference)
    if repo is None and reference and "/" not in reference and not Path(reference).expanduser().exists():
        raise ModelUnavailable(
            f"WHISPER_MODEL={reference} is neither a folder nor a faster-whisper size name; set WHISPER_MODEL to "
            "a size (tiny, base, small, medium, large-v3, large-v3-turbo), a hub id or a local CTranslate2 folder"
        )
    folder = resolve_model_dir(
        reference, settings, variable="WHISPER_MODEL", what="Whisper", allow_patterns=WHISPER_FILES, repo_id=repo
    )
    if not (folder / "model.bin").is_file():
        raise ModelUnavailable(
            f"Whisper folder {folder} has no model.bin; set WHISPER_MODEL to a CTranslate2 (faster-whisper) folder"
        )
    if not (folder / "tokenizer.json").is_file():
        # faster-whisper would try to download one from the hub
        raise ModelUnavailable(
            f"Whisper folder {folder} has no tokenizer.json; add it or set WHISPER_MODEL to a complete folder"
        )
    try:
        whisper = WhisperTranscriber(folder, device, settings.whisper_compute_type)
    except TTSError:
        raise
    except Exception as e:  # CTranslate2 raises RuntimeError/ValueError, the tokenizers library a bare Exception
        raise ModelUnavailable(
            f"Whisper checkpoint {reference} could not be loaded ({type(e).__name__}: {e}); set WHISPER_MODEL to "
            "a complete CTranslate2 (faster-whisper) folder or size name, and check WHISPER_COMPUTE_TYPE"
        ) from e
    logger.info(
        "whisper loaded from %s on %s (%s) in %.2f s",
        folder,
        whisper.device,
        whisper.compute_type,
        time.perf_counter() - started,
    )
    return whisper
