"""Device memory: what the compute device holds and has free, and how to give memory back.

NVML where present (the numbers `nvidia-smi` shows), else torch; on the CPU the machine's RAM and this process's RSS.
`free_memory()` and `is_out_of_memory()` serve the out-of-memory recovery of the manager.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

_GB = 1e9

# Small helpers


def format_bytes(size_bytes: int | float | None) -> str:
    """Bytes as a short decimal string: 16.1 GB, 312.0 MB."""
    if size_bytes is None:
        return "size unknown"
    if abs(size_bytes) >= _GB:
        return f"{size_bytes / _GB:.1f} GB"
    if abs(size_bytes) >= 1e6:
        return f"{size_bytes / 1e6:.1f} MB"
    return f"{size_bytes / 1e3:.1f} kB"


def torch_module() -> Any:
    # torch is imported when first needed, never at import time of this module (house rule).
    import torch

    return torch


def cuda_ready() -> bool:
    """CUDA is available and already initialised (so asking it something costs nothing and starts nothing)."""
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized())


def trim_process_heap() -> bool:
    """Return freed heap pages to the OS with glibc's `malloc_trim(0)`; False where there is no glibc."""
    libc_name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(libc_name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True


def free_memory(*, collect_garbage: bool = True) -> None:
    """Collect garbage, empty torch's CUDA and pinned-host caches, and trim the C heap."""
    if collect_garbage:
        gc.collect()
    if cuda_ready():
        torch = sys.modules["torch"]
        torch.cuda.empty_cache()
        # Freed pinned blocks stay cached in torch's host allocator until this is called.
        host_empty_cache = getattr(torch._C, "_host_emptyCache", None)
        if host_empty_cache is not None:
            host_empty_cache()
    trim_process_heap()


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a device out-of-memory error: torch's OutOfMemoryError, or CTranslate2's RuntimeError.

    CTranslate2 (faster-whisper) has no exception class for it, so its message is the only signal there.
    """
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


@dataclass
class DeviceMemory:
    """Memory of the compute device. On CPU: the machine's RAM and this process's RSS."""

    total_bytes: int
    free_bytes: int
    used_bytes: int
    process_bytes: int
    source: str  # "nvml", "torch" or "psutil"

    def to_dict(self) -> dict[str, Any]:
        return {
            "total_bytes": self.total_bytes,
            "used_bytes": self.used_bytes,
            "free_bytes": self.free_bytes,
            "process_bytes": self.process_bytes,
            "source": self.source,
        }


class Nvml:
    """NVML (nvidia-ml-py) for the device behind cuda:0, found by UUID so CUDA_VISIBLE_DEVICES is respected."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handle: Any = None
        self._failed = False

    def handle(self) -> Any:
        with self._lock:
            if self._handle is not None or self._failed:
                return self._handle
            try:
                import pynvml

                pynvml.nvmlInit()
                torch = torch_module()
                uuid = str(torch.cuda.get_device_properties(0).uuid)
                if not uuid.startswith("GPU-"):
                    uuid = f"GPU-{uuid}"
                self._handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
            except Exception as exc:  # any NVML failure: fall back to torch's numbers, once
                logger.info("NVML unavailable (%s); GPU memory comes from torch.cuda.mem_get_info", exc)
                self._failed = True
            return self._handle

    def memory(self) -> DeviceMemory | None:
        handle = self.handle()
        if handle is None:
            return None
        import pynvml

        try:
            info = pynvml.nvmlDeviceGetMemoryInfo(handle)
            process_bytes = 0
            pid = os.getpid()
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == pid and proc.usedGpuMemory:
                    process_bytes = int(proc.usedGpuMemory)
        except pynvml.NVMLError as exc:
            logger.debug("NVML query failed: %s", exc)
            return None
        if not process_bytes:
            # In a container NVML reports host PIDs: fall back to what torch's allocator holds.
            process_bytes = int(torch_module().cuda.memory_reserved(0))
        return DeviceMemory(int(info.total), int(info.free), int(info.used), process_bytes, "nvml")


def probe_cuda(nvml: Nvml) -> DeviceMemory:
    found = nvml.memory()
    if found is not None:
        return found
    torch = torch_module()
    free_b, total_b = torch.cuda.mem_get_info(0)
    return DeviceMemory(int(total_b), int(free_b), int(total_b - free_b), int(torch.cuda.memory_reserved(0)), "torch")


def probe_cpu() -> DeviceMemory:
    import psutil

    ram = psutil.virtual_memory()
    rss = psutil.Process().memory_info().rss
    return DeviceMemory(int(ram.total), int(ram.available), int(ram.total - ram.available), int(rss), "psutil")


MemoryProbe = Callable[[], DeviceMemory]
