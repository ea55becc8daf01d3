"""Pinned weights: one page-locked CPU copy of a torch module's weights, so offload is free and reload is one copy."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from llasa.gpu.memory import format_bytes, torch_module

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

_PAGE_BYTES = 4096
# Each tensor inside the flat pinned buffer starts on this boundary: enough for every dtype's alignment.
_TENSOR_ALIGN_BYTES = 256


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
        torch = torch_module()
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
        torch = torch_module()
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
        torch = torch_module()
        empty = [torch.empty(0, dtype=dtype) for dtype in self._dtypes]
        self._point_at(empty)
        self._host = []
        self._slots = []
        if self._registered_ptr is not None:
            torch.cuda.cudart().cudaHostUnregister(self._registered_ptr)
            self._registered_ptr = None
        self._flat = None
        self.module = None
