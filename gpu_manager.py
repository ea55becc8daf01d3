"""The GPU manager: where every model of the process lives, and when it moves.

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
import ctypes
import ctypes.util
import gc
import logging
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from llasa.config import Settings
from llasa.errors import Busy, Cancelled, InvalidInput, ModelUnavailable, NotFound, QueueFull, TTSError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

T = TypeVar("T")

_GB = 1e9
_PAGE_BYTES = 4096
# Each tensor inside the flat pinned buffer starts on this boundary: enough for every dtype's alignment.
_TENSOR_ALIGN_BYTES = 256


class ModelState(StrEnum):
    """Where a model is. `gpu` = resident on the compute device (the CPU when there is no CUDA)."""

    UNLOADED = "unloaded"
    LOADING = "loading"
    GPU = "gpu"
    CPU = "cpu"


@runtime_checkable
class ManagedModel(Protocol):
    """What a loader returns: a model that can move between the compute device and CPU RAM."""

    def move_to(self, device: str) -> None:
        """Move the weights: "cpu" = offload, "cuda:0" = reload. Must be fast (a pinned copy, see PinnedWeights)."""

    def size_bytes(self) -> int:
        """Bytes of weights (what the model occupies on the device)."""

    def close(self) -> None:
        """Drop every reference to the weights, so that release returns the memory."""


Loader = Callable[[str], ManagedModel]
"""Gets the target device ("cuda:0" or "cpu") and returns the model already on it."""

MemoryProbe = Callable[[], "DeviceMemory"]


# --------------------------------------------------------------------------------------------------------------
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


def _torch() -> Any:
    # torch is imported when first needed, never at import time of this module (house rule).
    import torch

    return torch


def _cuda_ready() -> bool:
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
    if _cuda_ready():
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


def _iso(wall_s: float | None) -> str | None:
    if wall_s is None:
        return None
    return datetime.fromtimestamp(wall_s, tz=UTC).isoformat(timespec="seconds")


def _lease_word(count: int) -> str:
    return f"{count} lease" if count == 1 else f"{count} leases"


# --------------------------------------------------------------------------------------------------------------
# Device memory


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


class _Nvml:
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
                torch = _torch()
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
            process_bytes = int(_torch().cuda.memory_reserved(0))
        return DeviceMemory(int(info.total), int(info.free), int(info.used), process_bytes, "nvml")


def _probe_cuda(nvml: _Nvml) -> DeviceMemory:
    found = nvml.memory()
    if found is not None:
        return found
    torch = _torch()
    free_b, total_b = torch.cuda.mem_get_info(0)
    return DeviceMemory(int(total_b), int(free_b), int(total_b - free_b), int(torch.cuda.memory_reserved(0)), "torch")


def _probe_cpu() -> DeviceMemory:
    import psutil

    ram = psutil.virtual_memory()
    rss = psutil.Process().memory_info().rss
    return DeviceMemory(int(ram.total), int(ram.available), int(ram.total - ram.available), int(rss), "psutil")


# --------------------------------------------------------------------------------------------------------------
# Pinned weights


class PinnedWeights:
    """Fast offload/reload of a torch module: one pinned CPU copy of its parameters and buffers, made once.

    Offload points every parameter and buffer at its pinned copy and drops the device tensors (no copy back:
    weights are read-only at inference; a change made on the device is lost at offload). Reload is one
    host-to-device copy per tensor (non_blocking from pinned memory, then one synchronize). The pinned copy is
    a single flat buffer registered with `cudaHostRegister`, so it costs exactly the model's bytes (torch's
    pinned allocator rounds every block up to a power of two); tied parameters stay tied (the same Parameter
    object gets its `.data` swapped). Without CUDA nothing is copied or pinned and `move_to("cpu")` is a no-op.

    Hand the module over on the device (the loader loaded it there) or on the CPU; either way the host copy is
    made once here. Satisfies `ManagedModel` itself, so a loader may return it directly or delegate to it.
    """

    def __init__(self, module: torch.nn.Module, *, host_copy: bool | None = None) -> None:
        """`host_copy`: make the flat host copy (None = only when CUDA is available; it is pinned only then)."""
        torch = _torch()
        self.module: Any = module
        # Per distinct tensor, the (submodule, key, is_param) places that hold it (tied weights: several).
        # Only places and dtypes are kept, never the original tensors: holding a buffer's first tensor would
        # keep its device memory alive after an offload.
        tensors: list[Any] = []
        self._slots: list[list[tuple[Any, str, bool]]] = []
        by_id: dict[int, int] = {}
        for submodule in module.modules():
            for is_param, table in ((True, submodule._parameters), (False, submodule._buffers)):
                for key, tensor in table.items():
                    if tensor is None:
                        continue
                    index = by_id.get(id(tensor))
                    if index is None:
                        by_id[id(tensor)] = index = len(tensors)
                        tensors.append(tensor)
                        self._slots.append([])
                    self._slots[index].append((submodule, key, is_param))
        self._dtypes = [tensor.dtype for tensor in tensors]
        devices = {str(tensor.device) for tensor in tensors}
        if len(devices) > 1:
            raise ValueError(f"PinnedWeights needs a module on one device; this one spans {sorted(devices)}")
        self.device: str = self._normalise(devices.pop() if devices else "cpu")
        self._size_bytes = sum(tensor.nelement() * tensor.element_size() for tensor in tensors)
        self.pinned = False
        self._registered_ptr: int | None = None
        self._flat: Any = None
        self.moves = 0  # move_to calls, no-ops included
        cuda = torch.cuda.is_available()
        if not (cuda if host_copy is None else host_copy):
            # CPU only: the module's own tensors are the "host copy"; pinning needs a CUDA context.
            self._host = [tensor.detach() for tensor in tensors]
            return
        self._host = self._make_host_copy(torch, tensors, pin=cuda)
        del tensors
        if self.device == "cpu":
            self._point_at(self._host)  # the pageable originals are freed now; the pinned copy is the weights

    @staticmethod
    def _normalise(device: str) -> str:
        return "cuda:0" if device == "cuda" else device

    def _make_host_copy(self, torch: Any, tensors: list[Any], *, pin: bool) -> list[Any]:
        offsets: list[int] = []
        total = 0
        for tensor in tensors:
            offsets.append(total)
            nbytes = tensor.nelement() * tensor.element_size()
            total += -(-nbytes // _TENSOR_ALIGN_BYTES) * _TENSOR_ALIGN_BYTES
        total = max(total, _PAGE_BYTES)
        raw = torch.empty(total + _PAGE_BYTES, dtype=torch.uint8)
        shift = (-raw.data_ptr()) % _PAGE_BYTES
        flat = raw[shift : shift + total]
        if pin:
            rc = torch.cuda.cudart().cudaHostRegister(flat.data_ptr(), total, 0)
            if int(rc) == 0:
                self._registered_ptr = flat.data_ptr()
            else:
                logger.warning(
                    "cudaHostRegister of %s failed (error %s); using torch's pinned allocator instead",
                    format_bytes(total),
                    int(rc),
                )
                del raw, flat
                flat = torch.empty(total, dtype=torch.uint8, pin_memory=True)
        self._flat = flat
        self.pinned = pin
        host: list[Any] = []
        for tensor, offset in zip(tensors, offsets, strict=True):
            nbytes = tensor.nelement() * tensor.element_size()
            view = flat[offset : offset + nbytes].view(tensor.dtype).view(tensor.shape)
            view.copy_(tensor.detach())
            host.append(view)
        return host

    def _point_at(self, tensors: list[Any]) -> None:
        for slots, new in zip(self._slots, tensors, strict=True):
            for submodule, key, is_param in slots:
                if is_param:
                    submodule._parameters[key].data = new
                else:
                    submodule._buffers[key] = new

    def move_to(self, device: str) -> None:
        """Offload ("cpu") or reload ("cuda:0"); a no-op when already there (and always without CUDA)."""
        self.moves += 1
        device = self._normalise(device)
        if device == self.device:
            return
        torch = _torch()
        if device != "cpu" and (self._flat is None or not torch.cuda.is_available()):
            raise RuntimeError(f"cannot move weights to {device}: CUDA is not available in this process")
        if device == "cpu":
            self._point_at(self._host)
        else:
            # Copy everything before pointing anything at it: a reload that fails half-way (OOM) leaves the
            # module wholly on the host copy, and the partial device copies are freed with this list.
            on_device = [host.to(device, non_blocking=True) for host in self._host]
            torch.cuda.synchronize(device)
            self._point_at(on_device)
        self.device = device

    def size_bytes(self) -> int:
        """Bytes of the distinct parameters and buffers."""
        return self._size_bytes

    def close(self) -> None:
        """Release every tensor: the module is left with empty tensors, so a stray reference to it holds nothing."""
        torch = _torch()
        empty = [torch.empty(0, dtype=dtype) for dtype in self._dtypes]
        self._point_at(empty)
        self._host = []
        self._slots = []
        if self._registered_ptr is not None:
            torch.cuda.cudart().cudaHostUnregister(self._registered_ptr)
            self._registered_ptr = None
        self._flat = None
        self.module = None


# --------------------------------------------------------------------------------------------------------------
# The state table


@dataclass
class _Entry:
    """One model's row in the state table. Every field is guarded by the manager's state lock."""

    name: str
    loader: Loader
    estimated_bytes: int | None
    state: ModelState = ModelState.UNLOADED
    model: ManagedModel | None = None
    size_bytes: int | None = None
    leases: int = 0
    waiting: int = 0  # use() calls that want this model and have no lease yet
    move: str | None = None  # "load" | "reload" | "offload" | "release" while one runs outside the lock
    pending: str | None = None  # a manual "offload" / "release" deferred to the last lease end
    reserved_bytes: int = 0  # VRAM promised to this model's load in flight
    last_used_s: float | None = None  # manager clock, end of the last lease (or its start while leased)
    last_used_wall_s: float | None = None
    on_cpu_since_s: float | None = None
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(("load", "reload", "offload", "release"), 0))
    last_s: dict[str, float | None] = field(
        default_factory=lambda: dict.fromkeys(("load", "reload", "offload", "release"))
    )
    load_failures: int = 0
    oom_errors: int = 0
    last_error: str | None = None

    def busy(self) -> bool:
        return self.leases > 0 or self.waiting > 0 or self.move is not None


_PAST = {"load": "loaded", "reload": "reloaded", "offload": "offloaded", "release": "released"}


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


class MultiModelGPUManager:
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
        self._nvml = _Nvml()
        self._collect_garbage = collect_garbage

        # Lock order (see the class docstring): _lock and _slot_lock are never held together, and nothing slow
        # runs under _lock. Waiting for a model's move is a wait on _changed, which releases _lock.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._entries: dict[str, _Entry] = {}
        self._offload_after_use = settings.gpu_offload_after_use
        self._idle_timeout_s = float(settings.gpu_idle_timeout)
        self._evict_timeout_s = float(settings.model_evict_timeout)
        self._job_active = False
        # Models leased while the current gpu_slot() job runs: their idle and evict timers wait for the job's end,
        # so one request that uses a model twice (the codec: encode, then decode) never bounces it in between.
        self._job_models: set[str] = set()
        self._closed = False

        self._slot_lock = threading.Lock()
        self._slot_busy = False
        self._slot_owner: int | None = None
        self._slot_depth = 0
        self._slot_waiters: deque[_SlotWaiter] = deque()
        self._job_started_s = 0.0
        self._job_durations_s: deque[float] = deque(maxlen=20)

        self._monitor_thread: threading.Thread | None = None
        self._monitor_stop = threading.Event()
        self._monitor_interval_s = float(settings.gpu_monitor_interval)

    @staticmethod
    def _resolve_device(wanted: str) -> str:
        if wanted == "cpu":
            return "cpu"
        cuda = _torch().cuda.is_available()
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
            self._entries[name] = _Entry(name=name, loader=loader, estimated_bytes=estimated_bytes)
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

    def _entry(self, name: str) -> _Entry:
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
        if _cuda_ready():
            sys.modules["torch"].cuda.empty_cache()

    # ---------------------------------------------------------------------------------------------- moves

    def _load_or_reload(self, entry: _Entry, kind: str, previous: ModelState) -> None:
        """Run a load or reload marked in the table; always clears the mark (the next use() retries).

        An out-of-memory error from the loader or the reload is retried once, after every idle model was moved
        to CPU RAM and the caches emptied; a second one becomes ModelUnavailable.
        """
        name = entry.name
        source = "disk" if kind == "load" else "cpu"
        started = time.perf_counter()
        model: ManagedModel | None = entry.model
        need: int | None = None
        offloaded: list[str] = []
        for attempt in (1, 2):
            try:
                with self._lock:
                    need = entry.size_bytes or entry.estimated_bytes
                if self._admission and need:
                    self._admit(entry, need)
                if kind == "load":
                    model = entry.loader(self.device)
                    size = int(model.size_bytes())
                else:
                    assert model is not None
                    model.move_to(self.device)
                    size = entry.size_bytes or int(model.size_bytes())
                break
            except BaseException as exc:
                out_of_memory = is_out_of_memory(exc)
                if out_of_memory:
                    self._note_oom(name, exc)
                if attempt == 2 or not out_of_memory:
                    self._fail_load(entry, kind, previous, model, exc, time.perf_counter() - started)
                    if out_of_memory:
                        raise ModelUnavailable(
                            f"{name} ran out of memory on {self.device} while being {_PAST[kind]} "
                            f"({format_bytes(need)}), twice, even after moving the idle models to CPU RAM "
                            f"(offloaded: {', '.join(offloaded) or 'none'}). Retry when the running requests "
                            "finish, or free GPU memory used by other programs"
                        ) from exc
                    if isinstance(exc, TTSError) or not isinstance(exc, Exception):
                        raise
                    raise ModelUnavailable(
                        f"{name} could not be {_PAST[kind]} on {self.device}: {exc}. "
                        "The next request will try again; check the model path and the logs"
                    ) from exc
                logger.warning(
                    "%s ran out of memory while being %s on %s (%s); freeing memory and retrying once",
                    name,
                    _PAST[kind],
                    self.device,
                    exc,
                )
            # Recover outside the except block: the exception's traceback holds the loader's frames and so any
            # tensors it had made; only once it is gone can their memory really be returned.
            model = self._undo_partial_load(entry, kind, previous, model, time.perf_counter() - started)
            try:
                offloaded = self._offload_idle(exclude=name)
                free_memory(collect_garbage=self._collect_garbage)
            except BaseException as exc:
                # Never leave the load mark behind: every use() of this model would wait for it forever.
                self._fail_load(entry, kind, previous, model, exc, time.perf_counter() - started)
                raise
            logger.info("%s: offloaded %s after running out of memory", name, ", ".join(offloaded) or "nothing")
        duration_s = time.perf_counter() - started
        with self._changed:
            entry.model = model
            entry.size_bytes = size
            entry.state = ModelState.GPU
            entry.move = None
            entry.reserved_bytes = 0
            entry.counts[kind] += 1
            entry.last_s[kind] = duration_s
            entry.last_error = None
            entry.on_cpu_since_s = None
            leases = entry.leases
            self._changed.notify_all()
        logger.info(
            "%s %s %s->%s in %.2f s (%s, %s)",
            name,
            _PAST[kind],
            source,
            self.device,
            duration_s,
            format_bytes(size),
            _lease_word(leases),
        )

    def _undo_partial_load(
        self, entry: _Entry, kind: str, previous: ModelState, model: ManagedModel | None, duration_s: float
    ) -> ManagedModel | None:
        """Before a retry: drop what a failed load returned, or move a half-reloaded model back to CPU RAM."""
        if kind == "load":
            if model is not None:
                with contextlib.suppress(Exception):
                    model.close()
            return None
        assert model is not None
        try:
            model.move_to("cpu")
        except Exception as exc:
            self._fail_load(entry, kind, previous, model, exc, duration_s)
            raise ModelUnavailable(
                f"{entry.name} ran out of memory on {self.device} while being reloaded and could not be moved "
                f"back to CPU RAM ({exc}); the next request tries again. Free GPU memory used by other programs"
            ) from exc
        return model

    def _fail_load(
        self,
        entry: _Entry,
        kind: str,
        previous: ModelState,
        model: ManagedModel | None,
        exc: BaseException,
        duration_s: float,
    ) -> None:
        state = ModelState.UNLOADED
        if kind == "load" and model is not None:
            # The loader returned but the model failed afterwards (size_bytes): do not leak it.
            with contextlib.suppress(Exception):
                model.close()
        elif kind == "reload" and model is not None:
            # Put a half-moved model back in CPU RAM so the next use() reloads it cleanly.
            try:
                model.move_to("cpu")
                state = previous
            except Exception:
                logger.exception("%s: could not move back to cpu after a failed reload; releasing it", entry.name)
                with contextlib.suppress(Exception):
                    model.close()
        with self._changed:
            entry.state = state
            if state is ModelState.UNLOADED:
                entry.model = None
                entry.on_cpu_since_s = None
            elif entry.on_cpu_since_s is None:
                entry.on_cpu_since_s = self._clock()
            entry.move = None
            entry.reserved_bytes = 0
            entry.load_failures += 1
            entry.last_error = f"{kind} failed: {exc}"
            if entry.state is ModelState.UNLOADED:
                entry.pending = None  # nothing left to offload or release
            self._changed.notify_all()
        del model
        free_memory(collect_garbage=self._collect_garbage)
        logger.warning(
            "%s %s failed on %s after %.2f s, now %s: %s", entry.name, kind, self.device, duration_s, state, exc
        )

    def _admit(self, entry: _Entry, need_bytes: int) -> None:
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

    def _lru_idle_locked(self, *, exclude: str | None) -> _Entry | None:
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

    def _next_action_locked(self, entry: _Entry, now: float) -> str | None:
        """The move an idle model is due for now, marked in the table; None when it stays. Lock held."""
        if entry.busy():
            return None
        action: str | None = None
        if entry.pending is not None:
            action, entry.pending = entry.pending, None
            if entry.state is ModelState.UNLOADED or (action == "offload" and entry.state is ModelState.CPU):
                action = None
        elif entry.state is ModelState.GPU:
            if self._offload_immediately_locked():
                if not self._job_active:
                    action = "offload"
            elif entry.name in self._job_models:
                pass  # the running job used it and may use it again: its idle timer waits for the job's end
            elif self._idle_timeout_s >= 0 and now - (entry.last_used_s or now) >= self._idle_timeout_s:
                action = "offload"
        elif entry.name in self._job_models:
            pass  # in RAM but used by the running job (moved out to make room): not released mid-job
        elif entry.state is ModelState.CPU and self._evict_timeout_s >= 0:
            since = entry.on_cpu_since_s if entry.on_cpu_since_s is not None else now
            if now - since >= self._evict_timeout_s:
                action = "release"
        if action is not None:
            entry.move = action
        return action

    def _offload_immediately_locked(self) -> bool:
        return self._offload_after_use or self._idle_timeout_s == 0

    def _run_moves(self, moves: list[tuple[_Entry, str]], *, reason: str = "") -> None:
        """Perform offloads/releases already marked in the table, then any move each one makes due."""
        queue = deque(moves)
        while queue:
            entry, action = queue.popleft()
            follow_up = self._offload(entry, reason) if action == "offload" else self._release(entry, reason)
            if follow_up is not None:
                queue.append((entry, follow_up))

    def _offload(self, entry: _Entry, reason: str) -> str | None:
        model = entry.model
        assert model is not None
        started = time.perf_counter()
        try:
            model.move_to("cpu")
        except Exception as exc:
            logger.exception("%s offload failed; releasing it instead", entry.name)
            with self._lock:
                entry.last_error = f"offload failed: {exc}"
            return self._release(entry, "after a failed offload")
        if self.device != "cpu" and _cuda_ready():
            sys.modules["torch"].cuda.empty_cache()
        duration_s = time.perf_counter() - started
        with self._changed:
            entry.state = ModelState.CPU
            entry.move = None
            entry.on_cpu_since_s = self._clock()
            entry.counts["offload"] += 1
            entry.last_s["offload"] = duration_s
            leases = entry.leases
            follow_up = self._next_action_locked(entry, self._clock())
            self._changed.notify_all()
        logger.info(
            "%s offloaded %s->cpu in %.2f s (%s, %s)%s",
            entry.name,
            self.device,
            duration_s,
            format_bytes(entry.size_bytes),
            _lease_word(leases),
            f" {reason}" if reason else "",
        )
        return follow_up

    def _release(self, entry: _Entry, reason: str) -> str | None:
        with self._lock:
            model, entry.model = entry.model, None
            source = self.device if entry.state is ModelState.GPU else "cpu"
        started = time.perf_counter()
        if model is not None:
            try:
                model.close()
            except Exception:
                logger.exception("%s close() failed; dropping it anyway", entry.name)
        del model
        free_memory(collect_garbage=self._collect_garbage)
        duration_s = time.perf_counter() - started
        with self._changed:
            entry.state = ModelState.UNLOADED
            entry.move = None
            entry.pending = None
            entry.on_cpu_since_s = None
            entry.counts["release"] += 1
            entry.last_s["release"] = duration_s
            leases = entry.leases
            self._changed.notify_all()
        logger.info(
            "%s released %s->none in %.2f s (%s freed, %s)%s",
            entry.name,
            source,
            duration_s,
            format_bytes(entry.size_bytes),
            _lease_word(leases),
            f" {reason}" if reason else "",
        )

    # ---------------------------------------------------------------------------------------------- manual

    def offload(self, name: str | None = None) -> dict[str, Any]:
        """Move `name` (None = every model) to CPU RAM now; a busy one when its last lease ends.

        Returns {"action": "offload", "models": {name: "offloaded" | "deferred" | "already on cpu" |
        "not loaded"}}.
        """
        return self._manual("offload", name)

    def release(self, name: str | None = None) -> dict[str, Any]:
        """Release `name` (None = every model) from GPU and RAM now; a busy one when its last lease ends.

        Returns {"action": "release", "models": {name: "released" | "deferred" | "not loaded"}}.
        """
        return self._manual("release", name)

    def offload_all(self) -> dict[str, Any]:
        """`offload(None)`."""
        return self.offload(None)

    def release_all(self) -> dict[str, Any]:
        """`release(None)`."""
        return self.release(None)

    def _manual(self, action: str, name: str | None) -> dict[str, Any]:
        entries = [self._entry(name)] if name is not None else list(self._entries.values())
        outcomes: dict[str, str] = {}
        moves: list[tuple[_Entry, str]] = []
        with self._lock:
            for entry in entries:
                if entry.busy():
                    if entry.state is ModelState.UNLOADED and entry.move is None:
                        outcomes[entry.name] = "not loaded"
                        continue
                    # A pending release wins over an offload asked for later.
                    if entry.pending != "release":
                        entry.pending = action
                    outcomes[entry.name] = "deferred"
                elif entry.state is ModelState.UNLOADED:
                    outcomes[entry.name] = "not loaded"
                elif action == "offload" and entry.state is ModelState.CPU:
                    outcomes[entry.name] = "already on cpu"
                else:
                    entry.move = action
                    moves.append((entry, action))
                    outcomes[entry.name] = _PAST[action]
        self._run_moves(moves, reason="on request")
        deferred = [n for n, outcome in outcomes.items() if outcome == "deferred"]
        if deferred:
            logger.info("%s of %s deferred until the last lease ends", action, ", ".join(deferred))
        return {"action": action, "models": outcomes}

    def set_timeouts(
        self,
        *,
        idle_timeout_s: float | None = None,
        evict_timeout_s: float | None = None,
        offload_after_use: bool | None = None,
    ) -> dict[str, Any]:
        """Change the residency policy at run time (None = keep); applies it at once. Returns the settings.

        Seconds: 0 = at once, -1 = never. Anything below -1 is an InvalidInput.
        """
        for field_name, value in (("idle_timeout_s", idle_timeout_s), ("evict_timeout_s", evict_timeout_s)):
            if value is not None and (value < -1 or math.isnan(value)):
                raise InvalidInput(
                    f"{field_name} must be -1 (never), 0 (at once) or a number of seconds; got {value}",
                    field=field_name,
                )
        with self._lock:
            if idle_timeout_s is not None:
                self._idle_timeout_s = float(idle_timeout_s)
            if evict_timeout_s is not None:
                self._evict_timeout_s = float(evict_timeout_s)
            if offload_after_use is not None:
                self._offload_after_use = bool(offload_after_use)
            current = self._settings_locked()
        logger.info("GPU manager timeouts now %s", current)
        self.run_monitor_once()
        return current

    # ---------------------------------------------------------------------------------------------- monitor

    def run_monitor_once(self) -> list[tuple[str, str]]:
        """One pass of the idle monitor: offload/release every idle model that is due. Returns (name, action).

        The choice and the mark happen in one critical section, so no lease can slip in between.
        """
        return self._settle(on_device_only=False)

    def _settle(self, *, on_device_only: bool) -> list[tuple[str, str]]:
        with self._lock:
            now = self._clock()
            due = [
                (e, a)
                for e in self._entries.values()
                if not (on_device_only and e.state is not ModelState.GPU) and (a := self._next_action_locked(e, now))
            ]
        self._run_moves(due, reason="by the idle monitor")
        return [(entry.name, action) for entry, action in due]

    def start_monitor(self, interval_s: float | None = None) -> None:
        """Start the idle monitor, a daemon thread that runs `run_monitor_once()` every GPU_MONITOR_INTERVAL s.

        Idempotent; `shutdown()` stops it.
        """
        with self._lock:
            if interval_s is not None:
                if interval_s <= 0:
                    raise ValueError("the monitor interval must be > 0 seconds")
                self._monitor_interval_s = float(interval_s)
            if self._monitor_thread is not None and self._monitor_thread.is_alive():
                return
            self._monitor_stop.clear()
            self._monitor_thread = threading.Thread(target=self._monitor_loop, name="gpu-manager-monitor", daemon=True)
            self._monitor_thread.start()

    def stop_monitor(self, timeout_s: float = 10.0) -> None:
        """Stop the idle monitor thread and wait for it (up to timeout_s)."""
        self._monitor_stop.set()
        thread = self._monitor_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
        self._monitor_thread = None

    def _monitor_loop(self) -> None:
        while not self._monitor_stop.wait(self._monitor_interval_s):
            try:
                self.run_monitor_once()
            except Exception:
                # The monitor must survive a failing model: log and try again next pass.
                logger.exception("GPU manager monitor pass failed")

    # ---------------------------------------------------------------------------------------------- GPU slot

    @contextlib.contextmanager
    def gpu_slot(self, *, timeout_s: float | None = None, cancel: threading.Event | None = None) -> Iterator[None]:
        """Hold the process's one GPU job slot for the block; waiters are served first come, first served.

        QueueFull (429) at once when MAX_QUEUE requests already wait; Busy (503) after waiting GPU_WAIT_TIMEOUT s
        (or `timeout_s`); Cancelled as soon as `cancel` is set while waiting (a client that hung up leaves the
        queue at once instead of holding a place and then doing work nobody reads). Re-entrant in the thread that
        holds it. Models used inside the job are not offloaded after use until the job ends, and not at all when
        the next job is already waiting.
        """
        me = threading.get_ident()
        wait_s = self.settings.gpu_wait_timeout if timeout_s is None else timeout_s
        waiter: _SlotWaiter | None = None
        with self._slot_lock:
            if self._slot_busy and self._slot_owner == me:
                self._slot_depth += 1
                reentered = True
            else:
                reentered = False
                if not self._slot_busy and not self._slot_waiters:
                    self._take_slot_locked(me)
                else:
                    if len(self._slot_waiters) >= self.settings.max_queue:
                        raise QueueFull(
                            f"{len(self._slot_waiters)} requests already wait for the GPU "
                            f"(MAX_QUEUE={self.settings.max_queue}); retry later",
                            retry_after_s=self._retry_after_locked(len(self._slot_waiters) + 1),
                        )
                    waiter = _SlotWaiter(me)
                    self._slot_waiters.append(waiter)
        if reentered:
            try:
                yield
            finally:
                with self._slot_lock:
                    self._slot_depth -= 1
            return
        if waiter is not None:
            try:
                granted = self._wait_for_slot(waiter, wait_s, cancel)
            except BaseException:
                # Only an exception raised by the wait itself (KeyboardInterrupt, SystemExit) lands here, never
                # one the caller was already handling when it entered. Decide under the lock: the slot may have
                # been handed to this waiter between the interruption and here.
                with self._slot_lock:
                    granted = waiter.granted.is_set()
                    if not granted:
                        self._slot_waiters.remove(waiter)
                if granted:
                    self._end_job()  # interrupted just as the slot arrived: pass it on
                raise
            if not granted:
                # Timed out, but the slot may be handed over just now: the flag under the lock is the truth.
                with self._slot_lock:
                    granted = waiter.granted.is_set()
                    if not granted:
                        self._slot_waiters.remove(waiter)
                        retry_after_s = self._retry_after_locked(len(self._slot_waiters) + 1)
            if granted and cancel is not None and cancel.is_set():
                self._end_job()  # the slot arrived as the caller gave up: pass it on
                granted = False
            if not granted:
                if cancel is not None and cancel.is_set():
                    raise Cancelled("the request was cancelled while it waited for the GPU")
                raise Busy(
                    f"the GPU stayed busy for {wait_s:g} s (GPU_WAIT_TIMEOUT) with another request; retry later",
                    retry_after_s=retry_after_s,
                )
        try:
            with self._lock:
                self._job_active = True
            yield
        finally:
            self._end_job()

    @staticmethod
    def _wait_for_slot(waiter: _SlotWaiter, wait_s: float, cancel: threading.Event | None) -> bool:
        """Wait until the slot is handed to `waiter` (True), the wait times out or `cancel` is set (False)."""
        if cancel is None:
            return waiter.granted.wait(wait_s)
        deadline = time.monotonic() + wait_s
        while not cancel.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            # Short waits so a cancel is seen within 50 ms; the grant itself still wakes the wait at once.
            if waiter.granted.wait(min(remaining, 0.05)):
                return True
        return False

    def _take_slot_locked(self, owner: int) -> None:
        self._slot_busy = True
        self._slot_owner = owner
        self._slot_depth = 1
        self._job_started_s = time.monotonic()

    def _end_job(self) -> None:
        with self._slot_lock:
            self._job_durations_s.append(time.monotonic() - self._job_started_s)
            next_waiting = bool(self._slot_waiters)
        with self._lock:
            self._job_active = False
            self._job_models.clear()
        if not next_waiting:
            # Nobody waits: apply offload-after-use to the models this job kept on the device. A waiting job
            # finds them still there (and settles them when it ends). Timed releases of models already in RAM
            # are left to the monitor thread, so they never lengthen a request.
            try:
                self._settle(on_device_only=True)
            except Exception:
                logger.exception("offload after a GPU job failed")
        with self._slot_lock:
            if self._slot_waiters:
                waiter = self._slot_waiters.popleft()
                self._take_slot_locked(waiter.owner)
                waiter.granted.set()
            else:
                self._slot_busy = False
                self._slot_owner = None
                self._slot_depth = 0

    def _retry_after_locked(self, position: int) -> float:
        if not self._job_durations_s:
            return 5.0
        mean_s = sum(self._job_durations_s) / len(self._job_durations_s)
        return round(min(max(mean_s * position, 1.0), 600.0), 1)

    @property
    def queue_depth(self) -> int:
        """Requests waiting for the GPU slot (the running one not counted)."""
        with self._slot_lock:
            return len(self._slot_waiters)

    # ---------------------------------------------------------------------------------------------- status

    def device_memory(self) -> DeviceMemory:
        """Total/used/free memory of the compute device and this process's share, measured now."""
        if self._memory_probe is not None:
            return self._memory_probe()
        if self.device.startswith("cuda"):
            return _probe_cuda(self._nvml)
        return _probe_cpu()

    def _settings_locked(self) -> dict[str, Any]:
        return {
            "offload_after_use": self._offload_after_use,
            "idle_timeout_s": self._idle_timeout_s,
            "evict_timeout_s": self._evict_timeout_s,
            "memory_headroom_mb": self.settings.gpu_memory_headroom_mb,
            "wait_timeout_s": self.settings.gpu_wait_timeout,
            "monitor_interval_s": self._monitor_interval_s,
            "max_queue": self.settings.max_queue,
        }

    def _model_status_locked(self, entry: _Entry, now: float) -> dict[str, Any]:
        where = {
            ModelState.GPU: self.device,
            ModelState.CPU: "cpu",
            ModelState.LOADING: self.device,
            ModelState.UNLOADED: None,
        }[entry.state]
        idle_s = None
        if entry.leases == 0 and entry.last_used_s is not None:
            idle_s = round(max(now - entry.last_used_s, 0.0), 3)
        return {
            "state": str(entry.state),
            "device": where,
            "size_bytes": entry.size_bytes if entry.size_bytes is not None else entry.estimated_bytes,
            "leases": entry.leases,
            "waiting": entry.waiting,
            "moving": entry.move,
            "pending": entry.pending,
            "last_used": _iso(entry.last_used_wall_s),
            "idle_s": idle_s,
            "loads": entry.counts["load"],
            "reloads": entry.counts["reload"],
            "offloads": entry.counts["offload"],
            "releases": entry.counts["release"],
            "load_failures": entry.load_failures,
            "oom_errors": entry.oom_errors,
            "last_load_s": entry.last_s["load"],
            "last_reload_s": entry.last_s["reload"],
            "last_offload_s": entry.last_s["offload"],
            "last_release_s": entry.last_s["release"],
            "last_error": entry.last_error,
        }

    def model_status(self, name: str) -> dict[str, Any]:
        """One model's status (see `status()`)."""
        entry = self._entry(name)
        with self._lock:
            return self._model_status_locked(entry, self._clock())

    def status(self) -> dict[str, Any]:
        """Everything a status surface shows: {"device", "models", "settings", "queue", "monitor_running"}.

        device: name, kind ("cuda"/"cpu") and total/used/free/process bytes (NVML where present, else torch;
        on CPU the RAM and this process's RSS). models: per model its state, device, size_bytes, leases,
        last_used (ISO), idle_s, load/reload/offload/release counts and last durations (s), errors.
        """
        memory: dict[str, Any]
        try:
            memory = self.device_memory().to_dict()
        except Exception as exc:  # status must answer even when the device does not
            memory = {"error": str(exc)}
        with self._lock:
            now = self._clock()
            models = {name: self._model_status_locked(e, now) for name, e in self._entries.items()}
            current = self._settings_locked()
        with self._slot_lock:
            queue = {"busy": self._slot_busy, "depth": len(self._slot_waiters)}
        queue["max_queue"] = self.settings.max_queue
        device = {"name": self.device, "kind": "cuda" if self.device.startswith("cuda") else "cpu", **memory}
        thread = self._monitor_thread
        return {
            "device": device,
            "models": models,
            "settings": current,
            "queue": queue,
            "monitor_running": bool(thread is not None and thread.is_alive()),
        }

    def get_all_status(self) -> dict[str, Any]:
        """`status()` (the original design's name)."""
        return self.status()

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


@dataclass
class _SlotWaiter:
    owner: int
    granted: threading.Event = field(default_factory=threading.Event)


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
