"""Build the engine backend LLASA_ENGINE names: the embedded transformers engine over the GPU manager's Llasa, or a
client of one or more vLLM servers (VLLM_URL)."""

from __future__ import annotations

from typing import Any

from llasa.config import Settings
from llasa.engine.types import GenerationBackend
from llasa.errors import ModelUnavailable
from llasa.prompt import SpeechTokenIds

LLASA = "llasa"
VLLM = "vllm"


def build_backend(settings: Settings, manager: Any, token_ids: SpeechTokenIds) -> GenerationBackend:
    """The backend for `settings.llasa_engine`. The embedded one leases "llasa" from `manager` while it has work, so
    the GPU manager offloads the LM when the engine goes idle (and never while a sequence runs)."""
    if settings.llasa_engine == "vllm":
        from llasa.engine.vllm_backend import VLLMBackend

        urls = [url for url in settings.vllm_url.split(",") if url.strip()]
        if not urls:
            raise ModelUnavailable(
                "LLASA_ENGINE=vllm needs VLLM_URL: the vLLM server's URL, or several comma-separated"
            )
        # A server on this machine the GPU manager manages (llasa.models.vllm_server): sequences lease it.
        managed = VLLM in manager.model_names
        return VLLMBackend(urls, token_ids, lease=(lambda: manager.use(VLLM)) if managed else None)

    from llasa.engine.transformers_backend import TransformersEngine

    # The lease yields the service's LlasaModel; the engine takes its `.model` (transformers_backend._unwrap).
    kv_bytes = settings.engine_kv_cache_mb * 2**20 or None
    return TransformersEngine(
        lambda: manager.use(LLASA),
        token_ids,
        max_batch_sequences=settings.max_batch_sequences,
        kv_cache_bytes=kv_bytes,
    )
