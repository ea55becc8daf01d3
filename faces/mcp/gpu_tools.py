"""GPU tools: get_gpu_status, offload_gpu, release_gpu, update_gpu_timeout."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from llasa.config import Settings

if TYPE_CHECKING:
    from llasa.service import TTSService
from faces.mcp.common import (
    ADDITIVE_IDEMPOTENT,
    READ_ONLY_IDEMPOTENT,
    ModelName,
    TimeoutSeconds,
    ToolDecorator,
    tool_errors,
)

logger = logging.getLogger(__name__)


def register(tool: ToolDecorator, service: TTSService, settings: Settings) -> None:
    """Add the gpu tools to the server `tool` registers on."""

    @tool(annotations=READ_ONLY_IDEMPOTENT)
    def get_gpu_status() -> dict[str, Any]:
        """Show where each model is and what the GPU holds.

        Returns JSON with `device` (the GPU's total/used/free memory, or the CPU), `models` (per model: state
        'unloaded' | 'loading' | 'gpu' | 'cpu', bytes, idle seconds, active requests, load/offload counts) and
        `settings` (the offload and eviction timeouts in force). Changes nothing.
        """
        with tool_errors("get_gpu_status"):
            return service.gpu_status().to_dict()

    @tool(annotations=ADDITIVE_IDEMPOTENT)
    def offload_gpu(model: ModelName = None) -> dict[str, Any]:
        """Move models from GPU memory to CPU RAM now, freeing VRAM; the next request moves them back quickly.

        A model that is serving a request is moved when that request ends (the result says so). Returns JSON
        describing what was offloaded or deferred. Nothing is lost.

        Args:
            model: 'llasa', 'xcodec2' or 'whisper'. Default: all models.
        """
        with tool_errors("offload_gpu"):
            return service.offload(model)

    @tool(annotations=ADDITIVE_IDEMPOTENT)
    def release_gpu(model: ModelName = None) -> dict[str, Any]:
        """Unload models from GPU memory and CPU RAM altogether; the next request loads them from disk (slower).

        A model that is serving a request is released when that request ends (the result says so). Saved voices
        and generated files are not touched. Returns JSON describing what was released or deferred.

        Args:
            model: 'llasa', 'xcodec2' or 'whisper'. Default: all models.
        """
        with tool_errors("release_gpu"):
            return service.release(model)

    @tool(annotations=ADDITIVE_IDEMPOTENT)
    def update_gpu_timeout(
        idle_timeout_s: TimeoutSeconds = None,
        evict_timeout_s: TimeoutSeconds = None,
        offload_after_use: bool | None = None,
    ) -> dict[str, Any]:
        """Change when idle models leave the GPU and RAM (until the server restarts). Give at least one argument.

        Returns JSON with the settings now in force.

        Args:
            idle_timeout_s: Seconds a model may stay idle on the GPU before moving to CPU RAM, when
                offload_after_use is false. 0 = at once, -1 = never.
                Server default {gpu_idle_timeout:g} (GPU_IDLE_TIMEOUT).
            evict_timeout_s: Seconds a model may stay idle in CPU RAM before it is unloaded altogether.
                0 = at once, -1 = never. Server default {model_evict_timeout:g} (MODEL_EVICT_TIMEOUT).
            offload_after_use: true = move each model to CPU RAM as soon as its request ends (frees the GPU for
                other programs); false = keep it on the GPU for idle_timeout_s. Server default {gpu_offload_after_use}.
        """
        with tool_errors("update_gpu_timeout"):
            # An empty change and the ranges are the service's to check: its message reaches the caller unchanged.
            return service.set_timeouts(
                idle_timeout_s=idle_timeout_s,
                evict_timeout_s=evict_timeout_s,
                offload_after_use=offload_after_use,
            )
