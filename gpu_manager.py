"""Entry point name the design card keeps: `from gpu_manager import get_gpu_manager` and friends.

The GPU manager itself lives in the core, `llasa/gpu/` (see its `manager.py` for the rules it keeps).
"""

from llasa.gpu import (
    DeviceMemory,
    GPUResourceManager,
    Loader,
    ManagedModel,
    MemoryProbe,
    ModelState,
    MultiModelGPUManager,
    PinnedWeights,
    format_bytes,
    free_memory,
    get_gpu_manager,
    is_out_of_memory,
    trim_process_heap,
)

__all__ = [
    "DeviceMemory",
    "GPUResourceManager",
    "Loader",
    "ManagedModel",
    "MemoryProbe",
    "ModelState",
    "MultiModelGPUManager",
    "PinnedWeights",
    "format_bytes",
    "free_memory",
    "get_gpu_manager",
    "is_out_of_memory",
    "trim_process_heap",
]
