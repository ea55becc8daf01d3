"""XCodec2: transformers' native `Xcodec2Model` + `Xcodec2FeatureExtractor`; 16 kHz audio <-> codes (`ManagedModel`).

Not the `xcodec2` pip package, which pins torch 2.5 and does not load under transformers 5.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from llasa.config import Settings
from llasa.errors import InvalidInput, ModelUnavailable, TTSError
from llasa.models.hub import (
    XCODEC2_FILES,
    check_loading_info,
    pinned_weights,
    resolve_model_dir,
    torch_device,
)
from llasa.types import SAMPLE_RATE, SAMPLES_PER_CODE

logger = logging.getLogger(__name__)


class XCodec2Codec:
    """XCodec2 speech codec: 16 kHz mono audio <-> one code (0..65535) per 320 samples (`ManagedModel`).

    Native API facts this class relies on (transformers 5.24): the feature extractor pads the audio by one sample
    and then up to a multiple of 320, so `encode` of N samples gives N // 320 + 1 codes (151 for 3 s), as the
    original XCodec2's `encode_code` did; `Xcodec2Model.decode(audio_codes)` returns exactly `codes * 320`
    samples (shape `(batch, 1, samples)`), so decode needs no trimming.
    """

    def __init__(self, model: Any, feature_extractor: Any, *, name: str = "xcodec2") -> None:
        self.name = name
        self.model = model
        self.feature_extractor = feature_extractor
        hop = int(model.config.hop_length)
        if hop != SAMPLES_PER_CODE or int(feature_extractor.sampling_rate) != SAMPLE_RATE:
            raise ValueError(
                f"{name}: expected {SAMPLES_PER_CODE} samples per code at {SAMPLE_RATE} Hz, the checkpoint has "
                f"{hop} at {feature_extractor.sampling_rate} Hz"
            )
        self.codebook_size = int(np.prod(model.config.quantization_levels))
        self._weights = pinned_weights(model)

    @property
    def device(self) -> str:
        return self._weights.device

    def move_to(self, device: str) -> None:
        self._weights.move_to(torch_device(device))

    def size_bytes(self) -> int:
        return int(self._weights.size_bytes())

    def close(self) -> None:
        self._weights.close()
        self.model = None

    def encode(self, samples: np.ndarray) -> list[int]:
        """Codes of float32 mono 16 kHz `samples` (50 per second; N samples -> N // 320 + 1 codes)."""
        if self.model is None:
            raise ModelUnavailable(f"{self.name} was released; load it again")
        audio = np.asarray(samples, dtype=np.float32)
        if audio.ndim != 1 or audio.size == 0:
            raise InvalidInput(f"the codec needs non-empty mono audio, got an array of shape {audio.shape}")
        features = self.feature_extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        device, dtype = self.model.device, self.model.dtype
        with torch.inference_mode():
            out = self.model.encode(
                input_values=features["input_values"].to(device=device, dtype=dtype),
                input_features=features["input_features"].to(device=device, dtype=dtype),
                input_features_mask=features["input_features_mask"].to(device),
            )
        return [int(c) for c in out.audio_codes[0, 0].tolist()]

    def decode(self, codes: Sequence[int]) -> np.ndarray:
        """Float32 mono 16 kHz audio of `codes`: exactly len(codes) * 320 samples."""
        if self.model is None:
            raise ModelUnavailable(f"{self.name} was released; load it again")
        if len(codes) == 0:
            return np.zeros(0, dtype=np.float32)
        indices = torch.as_tensor(list(codes), dtype=torch.long)
        if int(indices.min()) < 0 or int(indices.max()) >= self.codebook_size:
            raise InvalidInput(f"speech codes must be in 0..{self.codebook_size - 1}")
        with torch.inference_mode():
            out = self.model.decode(audio_codes=indices.view(1, 1, -1).to(self.model.device))
        audio = out.audio_values[0, 0].float().cpu().numpy()
        expected = len(codes) * SAMPLES_PER_CODE
        if audio.shape[0] != expected:  # the native decode is exact today; keep the contract if that changes
            audio = np.pad(audio, (0, max(0, expected - audio.shape[0])))[:expected]
        return np.ascontiguousarray(audio, dtype=np.float32)


def load_xcodec2(settings: Settings, device: str) -> XCodec2Codec:
    """Load XCODEC2_MODEL (native transformers format) onto `device`, in XCODEC2_DTYPE (float32 by default).

    float32 everywhere by default, unlike Llasa: every official path (the model card, transformers' docs and
    integration test, the scripts that extracted Llasa's training codes) runs the codec in float32, so reference
    codes computed in bf16 could differ from the ones the model learned from. With bfloat16 the native model still
    runs the quantizer (code assignment) and the iSTFT head in float32.
    """
    from transformers import AutoFeatureExtractor, Xcodec2Model

    device = torch_device(device)
    started = time.perf_counter()
    folder = resolve_model_dir(
        settings.xcodec2_model, settings, variable="XCODEC2_MODEL", what="XCodec2", allow_patterns=XCODEC2_FILES
    )
    dtype = torch.bfloat16 if settings.xcodec2_dtype == "bfloat16" else torch.float32
    # As for Llasa: whatever fails while loading, name the checkpoint and the variable.
    try:
        feature_extractor = AutoFeatureExtractor.from_pretrained(folder)
        model, info = Xcodec2Model.from_pretrained(folder, dtype=dtype, output_loading_info=True)
        model.eval()
        check_loading_info(info, what="XCodec2", reference=settings.xcodec2_model, variable="XCODEC2_MODEL")
        codec = XCodec2Codec(model, feature_extractor)
    except TTSError:
        raise
    except Exception as e:
        raise ModelUnavailable(
            f"XCodec2 checkpoint {settings.xcodec2_model} could not be loaded ({type(e).__name__}: {e}); set "
            "XCODEC2_MODEL to a folder holding a complete native transformers XCodec2 checkpoint (e.g. "
            "HKUSTAudio/xcodec2-hf), not the original xcodec2 package's format"
        ) from e
    codec.move_to(device)
    logger.info("xcodec2 loaded from %s on %s (%s) in %.2f s", folder, device, dtype, time.perf_counter() - started)
    return codec
