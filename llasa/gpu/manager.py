"""The GPU manager: where every model of the process lives, and when it moves.

This module assembles the registry from its parts: `table` (states, rows), `moves` (load/reload/offload/release
and the residency policy), `admission` (VRAM), `slot` (the GPU job queue), `control` (manual moves, timeouts,
the idle monitor), `status`, `pinned` (fast offload); here live the registry itself and the leases.

One `MultiModelGPUManager` per process (`get_gpu_manager()`) keeps a state table of the registered models.
Each model is in one state: `unloaded` -> `loading` -> `gpu` <-> `cpu` -> `unloaded`. State `gpu` means
"resident on the compute device" (`manager.device`), which is the CPU on a machine without CUDA; there offload
is a no-op that is still counted, and release still returns the RAM.

How the service uses it::

    manager = get_gpu_manager(settings)
    manager.register_model("llasa", load_llasa_on, estimated_bytes=16_100_000_000)
    manager.start_monitor()                       # explicit: nothing starts at import
    with manager.gpu_slot():                      # one GPU job at a time; QueueFull (429) / Busy (503)
        codes = manager.run_with_oom_retry("llasa", lambda llasa: llasa.generate_codes(...))
        with manager.use("xcodec2") as codec:     # a lease: never offloaded or released while held
            audio = codec.decode(codes)

Rules (DESIGN.md section 3, issue 3):
- `use(name)` is the way in: it loads (disk -> device) or reloads (CPU -> device) and holds a lease for the block.
  A model with a lease, or with a request waiting for it, is never offloaded or released, by the idle monitor
  or by a person; a manual `offload()` / `release()` of a busy model is deferred to its last lease end, and the
  answer says "deferred".
- After the last lease: with GPU_OFFLOAD_AFTER_USE (or GPU_IDLE_TIMEOUT=0) the model goes to CPU RAM at once,
  except inside a `gpu_slot()` job, where it stays until the job ends (the codec encodes, then decodes, without
  bouncing) and also stays when the next job is already waiting; otherwise after GPU_IDLE_TIMEOUT s idle. A model
  idle in CPU RAM for MODEL_EVICT_TIMEOUT s is released. 0 = at once, -1 = never. Neither timer touches a model
  the running `gpu_slot()` job has used: they apply again once that job ends.
- The idle monitor decides and marks a move in one critical section under the state lock; `use()` waits while a
  move is in progress and then reloads. So a model can never be revived while it is being evicted (the race of
  Ollama's scheduler): a request either keeps the model from being picked, or waits for the eviction to finish.
- Before a load or reload on CUDA: free VRAM (NVML, else torch) minus GPU_MEMORY_HEADROOM_MB minus loads in
  flight must hold the model; idle models are offloaded, least recently used first, to make room; else
  `ModelUnavailable` (503) with the numbers. A load or reload that still runs out of memory is retried once
  after every idle model is offloaded and the caches are emptied; a second OOM is `ModelUnavailable`.
- CUDA out-of-memory inside a lease: `run_with_oom_retry(name, fn)` frees the cache, offloads every idle model
  and calls `fn` once more; a second OOM becomes `ModelUnavailable`.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from llasa.config import Settings
from llasa.errors import ModelUnavailable, NotFound
from llasa.gpu.admission import AdmissionMixin
from llasa.gpu.control import ControlMixin
from llasa.gpu.memory import MemoryProbe, Nvml, cuda_ready, free_memory, is_out_of_memory, torch_module
from llasa.gpu.moves import MovesMixin
from llasa.gpu.slot import GPUSlotMixin
from llasa.gpu.status import StatusMixin
from llasa.gpu.table import Loader, ManagedModel, ModelEntry, ModelState

logger = logging.getLogger(__name__)

T = TypeVar("T")


class GPUResourceManager:
    """One model's handle inside the registry (the original design's per-model manager).

    `get_model()` takes a lease the caller must end with exactly one `release_lease()` (alias `done()`);
    until then the model is pinned to the device. Prefer `with handle.use() as model:`, which cannot forget.
    """

    def __init__(self, registry: MultiModelGPUManager, name: str) -> None:
        self._registry = registry
        self.name = name

    @property
    def state(self) -> ModelState:
        return self._registry.state_of(self.name)

    def use(self) -> contextlib.AbstractContextManager[ManagedModel]:
        """`with handle.use() as model:`: the same as `registry.use(name)`."""
        return self._registry.use(self.name)

    def get_model(self) -> ManagedModel:
        """Load or reload the model and return it under a lease. The caller owes one `release_lease()`."""
        return self._registry.acquire(self.name)

    def release_lease(self) -> None:
        """End one lease taken by `get_model()`."""
        self._registry.release_lease(self.name)

    done = release_lease

    def force_offload(self) -> dict[str, Any]:
        """Offload now, or when the last lease ends if busy ("deferred")."""
        return self._registry.offload(self.name)

    def force_release(self) -> dict[str, Any]:
        """Release now, or when the last lease ends if busy ("deferred")."""
        return self._registry.release(self.name)

    def get_status(self) -> dict[str, Any]:
        """This model's row of `registry.status()["models"]`."""
        return self._registry.model_status(self.name)

    def start_monitor(self, interval_s: float | None = None) -> None:
        """Start the registry's idle monitor (one thread watches every model)."""
        self._registry.start_monitor(interval_s)


class MultiModelGPUManager(ControlMixin, MovesMixin, AdmissionMixin, GPUSlotMixin, StatusMixin):
    """The registry of every model in the process, their residency, and the one GPU job slot.

    Lock order: two locks, never held together. `_lock` (with its condition `_changed`) guards the state table
    and the timeouts; it is held only for bookkeeping: no loader, move, close, gc, CUDA call or log I/O of a move
    runs under it, so `status()` never waits behind a 16 GB copy. `_slot_lock` guards the GPU job slot and its
    queue. A move is marked in the table (`entry.move`) under `_lock` and performed outside it; everyone who
    needs that model waits on `_changed` until the mark is cleared, which is what makes a lease and an eviction
    mutually exclusive.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        device: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        memory_probe: MemoryProbe | None = None,
        collect_garbage: bool = True,
    ) -> None:
        """`device` overrides settings.device; `clock` (monotonic seconds) and `memory_probe` are for tests.

        With a `memory_probe` the VRAM admission runs on any device (tests drive it on the CPU); without one
        it runs on CUDA only, against NVML or torch. `collect_garbage=False` skips the full `gc.collect()` of
        each release (~0.2 s with torch loaded), for tests that release thousands of times.
        """
        self.settings = settings
        self.device = self._resolve_device(device or settings.device)
        self._clock = clock
        self._memory_probe = memory_probe
        self._admission = memory_probe is not None or self.device.startswith("cuda")
        self._nvml = Nvml()
        self._collect_garbage = collect_garbage

        # Lock order (see the class docstring): _lock and _slot_lock are never held together, and nothing slow
        # runs under _lock. Waiting for a model's move is a wait on _changed, which releases _lock.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._entries: dict[str, ModelEntry] = {}
        self._offload_after_use = settings.gpu_offload_after_use
        self._idle_timeout_s = float(settings.gpu_idle_timeout)
        self._evict_timeout_s = float(settings.model_evict_timeout)
        self._job_active = False
        # Models leased while the current gpu_slot() job runs: their idle and evict timers wait for the job's end,
        # so one request that uses a model twice (the codec: encode, then decode) never bounces it in between.
        self._job_models: set[str] = set()
        self._closed = False

        self._slot_lock = threading.Lock()
        self._slot_holders = {}
        self._slot_started_s = {}
        self._slot_waiters = deque()
        self._job_durations_s: deque[float] = deque(maxlen=20)

        self._monitor_thread: threading.Thread | None = None
        self._monitor_stop = threading.Event()
        self._monitor_interval_s = float(settings.gpu_monitor_interval)

    @staticmethod
    def _resolve_device(wanted: str) -> str:
        if wanted == "cpu":
            return "cpu"
        cuda = torch_module().cuda.is_available()
        if wanted == "auto":
            return "cuda:0" if cuda else "cpu"
        if not cuda:
            raise ModelUnavailable(
                f"DEVICE={wanted} but this process sees no CUDA device; check the NVIDIA runtime and "
                "NVIDIA_VISIBLE_DEVICES, or set DEVICE=auto to fall back to the CPU"
            )
        return "cuda:0" if wanted == "cuda" else wanted

    # ---------------------------------------------------------------------------------------------- registry

    def register_model(self, name: str, loader: Loader, *, estimated_bytes: int | None = None) -> GPUResourceManager:
        """Register a model by name with its loader; nothing loads until the first `use()`.

        `estimated_bytes` lets the first load pass VRAM admission (later loads use the measured size).
        """
        with self._lock:
            if name in self._entries:
                raise ValueError(f"a model named {name!r} is already registered")
            self._entries[name] = ModelEntry(name=name, loader=loader, estimated_bytes=estimated_bytes)
        return GPUResourceManager(self, name)

    def model(self, name: str) -> GPUResourceManager:
        """The per-model handle of a registered model."""
        self._entry(name)
        return GPUResourceManager(self, name)

    @property
    def model_names(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def state_of(self, name: str) -> ModelState:
        entry = self._entry(name)
        with self._lock:
            return entry.state

    def _entry(self, name: str) -> ModelEntry:
        entry = self._entries.get(name)
        if entry is None:
            known = ", ".join(self._entries) or "none"
            raise NotFound(f"no model named {name!r} is registered (registered: {known})", field="model")
        return entry

    # ---------------------------------------------------------------------------------------------- leases

    @contextlib.contextmanager
    def use(self, name: str) -> Iterator[ManagedModel]:
        """Hold a lease on `name` for the block, loading or reloading it first; the only safe way in.

        Raises ModelUnavailable when it cannot load or does not fit. A CUDA out-of-memory error raised in the
        block frees the allocator cache and propagates; `run_with_oom_retry` is the variant that retries.
        """
        model = self.acquire(name)
        try:
            yield model
        except BaseException as exc:
            if is_out_of_memory(exc):
                self._note_oom(name, exc)
            raise
        finally:
            self.release_lease(name)

    def acquire(self, name: str) -> ManagedModel:
        """Take a lease (loading or reloading as needed). The caller owes exactly one `release_lease(name)`."""
        entry = self._entry(name)
        with self._changed:
            if self._closed:
                raise ModelUnavailable(f"{name} is not available: the service is shutting down")
            entry.waiting += 1
        try:
            while True:
                with self._changed:
                    # Wait out any move in progress (another request's load, the monitor's eviction).
                    while entry.move is not None:
                        self._changed.wait()
                    if entry.state is ModelState.GPU:
                        entry.leases += 1
                        if self._job_active:
                            self._job_models.add(name)
                        entry.last_used_s = self._clock()
                        entry.last_used_wall_s = time.time()
                        assert entry.model is not None
                        return entry.model
                    kind = "load" if entry.state is ModelState.UNLOADED else "reload"
                    previous = entry.state
                    entry.move = kind
                    entry.state = ModelState.LOADING
                self._load_or_reload(entry, kind, previous)
        finally:
            with self._changed:
                entry.waiting -= 1

    def release_lease(self, name: str) -> None:
        """End one lease; the last one applies a deferred manual action or the offload-after-use policy."""
        entry = self._entry(name)
        with self._changed:
            if entry.leases <= 0:
                raise RuntimeError(f"release_lease({name!r}) without a lease")
            entry.leases -= 1
            entry.last_used_s = self._clock()
            entry.last_used_wall_s = time.time()
            action = self._next_action_locked(entry, self._clock())
        if action is not None:
            self._run_moves([(entry, action)])

    def run_with_oom_retry(self, name: str, fn: Callable[[ManagedModel], T]) -> T:
        """Call `fn(model)` under a lease; on CUDA out-of-memory free what can be freed and call it once more.

        Recovery between the tries: the lease is ended, the allocator cache emptied, every idle model offloaded
        (least recently used first). `fn` must be safe to call twice (generation is: it is seeded). A second
        OOM raises ModelUnavailable (503) chained to the original error.
        """
        for attempt in (1, 2):
            try:
                with self.use(name) as model:
                    return fn(model)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                if attempt == 2:
                    raise ModelUnavailable(
                        f"{name} ran out of GPU memory twice, even after the other models were moved out; "
                        "retry with shorter text, or free GPU memory used by other programs"
                    ) from exc
            # Recover outside the except block: the exception's traceback holds fn's frames and so their
            # activation tensors; only once it is gone can the cache really be emptied.
            freed = self.recover_from_oom(exclude=name)
            logger.warning("%s ran out of GPU memory; offloaded %s and retrying once", name, freed or "none")
        raise AssertionError("unreachable")  # pragma: no cover

    def recover_from_oom(self, *, exclude: str | None = None) -> list[str]:
        """Free GPU memory after an out-of-memory error: offload every idle model, empty caches.

        Returns the names offloaded. For callers that write their own retry loop.
        """
        offloaded = self._offload_idle(exclude=exclude)
        free_memory(collect_garbage=self._collect_garbage)
        return offloaded

    def _note_oom(self, name: str, exc: BaseException) -> None:
        entry = self._entries[name]
        with self._lock:
            entry.oom_errors += 1
            entry.last_error = f"out of memory: {exc}"
        if cuda_ready():
            sys.modules["torch"].cuda.empty_cache()

    # ---------------------------------------------------------------------------------------------- shutdown

    def shutdown(self, *, wait_s: float = 10.0) -> dict[str, Any]:
        """Stop the monitor, refuse new leases and release every model; busy ones when their lease ends.

        Waits up to `wait_s` for those; returns the release answer plus "still_busy" (names).
        """
        self.stop_monitor()
        with self._lock:
            self._closed = True
        answer = self.release_all()
        deadline = time.monotonic() + wait_s
        with self._changed:
            while True:
                busy = [e.name for e in self._entries.values() if e.state is not ModelState.UNLOADED]
                remaining = deadline - time.monotonic()
                if not busy or remaining <= 0:
                    break
                self._changed.wait(remaining)
        if busy:
            logger.warning("shutdown: %s still in use after %.0f s", ", ".join(busy), wait_s)
        answer["still_busy"] = busy
        return answer


_manager: MultiModelGPUManager | None = None
_manager_lock = threading.Lock()


def get_gpu_manager(settings: Settings | None = None) -> MultiModelGPUManager:
    """The process's one GPU manager, built on first call (from `settings`, else `Settings()` from the env).

    Later calls return the same instance; their `settings` are ignored. Tests construct their own managers.
    """
    global _manager
    with _manager_lock:
        if _manager is None:
            _manager = MultiModelGPUManager(settings if settings is not None else Settings())
        return _manager
