"""VRAM admission: before a load or reload, reserve the model's bytes; offload idle models (LRU) to make room."""

from __future__ import annotations

import logging

from llasa.errors import ModelUnavailable
from llasa.gpu.memory import DeviceMemory, MemoryProbe, Nvml, format_bytes, probe_cpu, probe_cuda
from llasa.gpu.table import ManagerBase, ModelEntry, ModelState

logger = logging.getLogger(__name__)


class AdmissionMixin(ManagerBase):
    """Free device memory minus GPU_MEMORY_HEADROOM_MB minus loads in flight must hold a model before it loads."""

    _admission: bool
    _memory_probe: MemoryProbe | None
    _nvml: Nvml

    def _admit(self, entry: ModelEntry, need_bytes: int) -> None:
        """Reserve `need_bytes` of device memory for entry's load, offloading idle models (LRU) to make room."""
        headroom = self.settings.gpu_memory_headroom_mb * 1024 * 1024
        while True:
            memory = self.device_memory()
            with self._lock:
                others_reserved = sum(e.reserved_bytes for e in self._entries.values() if e is not entry)
                available = memory.free_bytes - headroom - others_reserved
                if need_bytes <= available:
                    entry.reserved_bytes = need_bytes
                    return
                victim = self._lru_idle_locked(exclude=entry.name)
                if victim is None:
                    in_use = [e.name for e in self._entries.values() if e is not entry and e.busy()]
                    message = (
                        f"{entry.name} needs {format_bytes(need_bytes)} of memory on {self.device} but only "
                        f"{format_bytes(memory.free_bytes)} of {format_bytes(memory.total_bytes)} is free "
                        f"({format_bytes(headroom)} kept as headroom, {format_bytes(others_reserved)} promised "
                        f"to loads in progress) and no idle model is left to offload "
                        f"(in use: {', '.join(in_use) or 'none'}). Retry when the running requests finish, or "
                        "free GPU memory used by other programs"
                    )
                    raise ModelUnavailable(message)
                victim.move = "offload"
            logger.info("%s: offloading idle %s to make room", entry.name, victim.name)
            self._run_moves([(victim, "offload")], reason=f"to make room for {entry.name}")

    def _lru_idle_locked(self, *, exclude: str | None) -> ModelEntry | None:
        idle = [
            e
            for e in self._entries.values()
            if e.name != exclude and e.state is ModelState.GPU and not e.busy() and e.pending is None
        ]
        return min(idle, key=lambda e: e.last_used_s or 0.0, default=None)

    def _offload_idle(self, *, exclude: str | None) -> list[str]:
        offloaded: list[str] = []
        while True:
            with self._lock:
                victim = self._lru_idle_locked(exclude=exclude)
                if victim is None:
                    return offloaded
                victim.move = "offload"
            self._run_moves([(victim, "offload")], reason="to free GPU memory")
            offloaded.append(victim.name)

    def device_memory(self) -> DeviceMemory:
        """Total/used/free memory of the compute device and this process's share, measured now."""
        if self._memory_probe is not None:
            return self._memory_probe()
        if self.device.startswith("cuda"):
            return probe_cuda(self._nvml)
        return probe_cpu()
