"""Status: what every surface shows about the device, the models, the policy and the queue (`llasa.types`)."""

from __future__ import annotations

import threading
from dataclasses import asdict
from typing import Any

from llasa.gpu.table import ManagerBase, ModelEntry, ModelState, iso_time
from llasa.types import DeviceStatus, GPUStatus, ModelStatus, QueueStatus, ResidencyPolicy


class StatusMixin(ManagerBase):
    """`snapshot()` (typed) and `status()` / `model_status()` (JSON-ready): read under the locks, never waiting
    behind a move."""

    _monitor_thread: threading.Thread | None

    def _policy_locked(self) -> ResidencyPolicy:
        return ResidencyPolicy(
            offload_after_use=self._offload_after_use,
            idle_timeout_s=self._idle_timeout_s,
            evict_timeout_s=self._evict_timeout_s,
            memory_headroom_mb=self.settings.gpu_memory_headroom_mb,
            wait_timeout_s=self.settings.gpu_wait_timeout,
            monitor_interval_s=self._monitor_interval_s,
            max_queue=self.settings.max_queue,
        )

    def _settings_locked(self) -> dict[str, Any]:
        return asdict(self._policy_locked())

    def _model_status_locked(self, entry: ModelEntry, now: float) -> ModelStatus:
        where = {
            ModelState.GPU: self.device,
            ModelState.CPU: "cpu",
            ModelState.LOADING: self.device,
            ModelState.UNLOADED: None,
        }[entry.state]
        idle_s = None
        if entry.leases == 0 and entry.last_used_s is not None:
            idle_s = round(max(now - entry.last_used_s, 0.0), 3)
        return ModelStatus(
            state=str(entry.state),
            device=where,
            size_bytes=entry.size_bytes if entry.size_bytes is not None else entry.estimated_bytes,
            leases=entry.leases,
            waiting=entry.waiting,
            moving=entry.move,
            pending=entry.pending,
            last_used=iso_time(entry.last_used_wall_s),
            idle_s=idle_s,
            loads=entry.counts["load"],
            reloads=entry.counts["reload"],
            offloads=entry.counts["offload"],
            releases=entry.counts["release"],
            load_failures=entry.load_failures,
            oom_errors=entry.oom_errors,
            last_load_s=entry.last_s["load"],
            last_reload_s=entry.last_s["reload"],
            last_offload_s=entry.last_s["offload"],
            last_release_s=entry.last_s["release"],
            last_error=entry.last_error,
        )

    def model_status(self, name: str) -> dict[str, Any]:
        """One model's status (see `status()`)."""
        entry = self._entry(name)
        with self._lock:
            return asdict(self._model_status_locked(entry, self._clock()))

    def _device_status(self) -> DeviceStatus:
        kind = "cuda" if self.device.startswith("cuda") else "cpu"
        try:
            memory = self.device_memory()
        except Exception as exc:  # status must answer even when the device does not
            return DeviceStatus(name=self.device, kind=kind, error=str(exc))
        return DeviceStatus(
            name=self.device,
            kind=kind,
            total_bytes=memory.total_bytes,
            used_bytes=memory.used_bytes,
            free_bytes=memory.free_bytes,
            process_bytes=memory.process_bytes,
            source=memory.source,
        )

    def snapshot(self) -> GPUStatus:
        """Everything a status surface shows, typed (`llasa.types.GPUStatus`).

        device: name, kind ("cuda"/"cpu") and total/used/free/process bytes (NVML where present, else torch;
        on CPU the RAM and this process's RSS). models: per model its state, device, size_bytes, leases,
        last_used (ISO), idle_s, load/reload/offload/release counts and last durations (s), errors.
        """
        device = self._device_status()
        with self._lock:
            now = self._clock()
            models = {name: self._model_status_locked(e, now) for name, e in self._entries.items()}
            policy = self._policy_locked()
        with self._slot_lock:
            queue = QueueStatus(
                busy=bool(self._slot_holders),
                depth=len(self._slot_waiters),
                max_queue=self.settings.max_queue,
                running=len(self._slot_holders),
                slots=self.slot_capacity,
            )
        thread = self._monitor_thread
        return GPUStatus(
            device=device,
            models=models,
            settings=policy,
            queue=queue,
            monitor_running=bool(thread is not None and thread.is_alive()),
        )

    def status(self) -> dict[str, Any]:
        """`snapshot()` as JSON-ready dicts: {"device", "models", "settings", "queue", "monitor_running"}."""
        return self.snapshot().to_dict()

    def get_all_status(self) -> dict[str, Any]:
        """`status()` (the original design's name)."""
        return self.status()
