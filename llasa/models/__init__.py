"""The three models behind the service, each a `ManagedModel` the GPU manager moves between GPU and CPU RAM.

- `LlasaModel`: Llasa (a plain `LlamaForCausalLM`) + its tokenizer; turns a prompt into speech codes.
- `XCodec2Codec`: transformers' native `Xcodec2Model` + `Xcodec2FeatureExtractor` (not the `xcodec2` pip package,
  which pins torch 2.5 and does not load under transformers 5); 16 kHz audio <-> codes, 320 samples per code.
- `WhisperTranscriber`: faster-whisper (CTranslate2) for reference transcripts.

Loaders take a hub id (or a faster-whisper size name) or a local folder, from LLASA_MODEL / XCODEC2_MODEL /
WHISPER_MODEL, honour HF_TOKEN / HF_ENDPOINT / HF_HOME, and raise `ModelUnavailable` naming the model and the
variable to set when the weights cannot be found, downloaded or loaded, or when the checkpoint lacks weights the
architecture needs (transformers would fill those with random values and only print a table). Llasa's weights are
bf16 on CUDA and fp32 on the CPU; XCodec2's are XCODEC2_DTYPE (fp32 by default) everywhere.
One module per model (`llasa_lm`, `xcodec2`, `whisper`) and `hub` (where the weights come from).
Nothing is loaded at import; `register_models()` only registers loaders with the manager.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from llasa.config import Settings
from llasa.models.hub import estimate_bytes, resolve_model_dir
from llasa.models.llasa_lm import (
    LLASA_CONTEXT_TOKENS,
    CancelCriteria,
    GeneratedCodes,
    LlasaModel,
    SpeechOnlyLogitsProcessor,
    load_llasa,
    load_llasa_tokenizer,
)
from llasa.models.vllm_server import VLLM, load_vllm_server, reserved_bytes, vllm_managed
from llasa.models.whisper import WhisperTranscriber, load_whisper
from llasa.models.xcodec2 import XCodec2Codec, load_xcodec2
from llasa.types import MODEL_NAMES

if TYPE_CHECKING:
    from llasa.gpu import MultiModelGPUManager

logger = logging.getLogger(__name__)


__all__ = [
    "LLASA_CONTEXT_TOKENS",
    "MODEL_NAMES",
    "CancelCriteria",
    "GeneratedCodes",
    "LlasaModel",
    "SpeechOnlyLogitsProcessor",
    "WhisperTranscriber",
    "XCodec2Codec",
    "load_llasa",
    "load_llasa_tokenizer",
    "load_whisper",
    "load_xcodec2",
    "register_models",
    "resolve_model_dir",
]


def register_models(manager: MultiModelGPUManager, settings: Settings) -> None:
    """Register the loaders of "llasa", "xcodec2" and "whisper" with `manager`; nothing loads until first use.
    With LLASA_ENGINE=vllm and a server the manager manages (VLLM_MANAGED, `llasa.models.vllm_server`), also "vllm":
    its offload puts the server to sleep, its reload wakes it.

    A name the manager already knows (a second service on the process-wide manager, or a test's own loader)
    keeps its registration.
    """
    loaders: dict[str, tuple[Callable[[str], Any], int | None]] = {
        "llasa": (
            lambda device: load_llasa(settings, device),
            estimate_bytes(settings.llasa_model, ["*.safetensors"]),
        ),
        "xcodec2": (
            lambda device: load_xcodec2(settings, device),
            estimate_bytes(settings.xcodec2_model, ["*.safetensors"]),
        ),
        "whisper": (
            lambda device: load_whisper(settings, device),
            estimate_bytes(settings.whisper_model, ["model.bin"]),
        ),
    }
    managed, why = vllm_managed(settings)
    if managed:
        # No estimate for the first load: the server already holds its memory when it is first asked (awake);
        # from then on its reservation is the size admission counts when it wakes.
        loaders[VLLM] = (
            lambda device: load_vllm_server(settings, reserved_bytes(settings, manager.device_memory().total_bytes)),
            None,
        )
    elif settings.llasa_engine == "vllm":
        logger.info("the vLLM server is not managed by the GPU manager: %s", why)
    known = set(manager.model_names)
    for name, (loader, estimated_bytes) in loaders.items():
        if name in known:
            logger.info("%s is already registered with the GPU manager; keeping that registration", name)
            continue
        manager.register_model(name, loader, estimated_bytes=estimated_bytes)
