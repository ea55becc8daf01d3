"""The GPU manager package: residency and leases, moves and pinned weights, VRAM admission, the job slot, status.

`get_gpu_manager()` is the one place the process-wide manager exists; the root `gpu_manager.py` re-exports these.
"""

from llasa.gpu.manager import GPUResourceManager, MultiModelGPUManager, get_gpu_manager
from llasa.gpu.memory import DeviceMemory, MemoryProbe, format_bytes, free_memory, is_out_of_memory, trim_process_heap
from llasa.gpu.pinned import PinnedWeights
from llasa.gpu.table import Loader, ManagedModel, ModelState

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
