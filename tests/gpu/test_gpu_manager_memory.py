"""Release really returns RAM: a ~320 MB model loaded through the manager, released, and RSS is back."""

from __future__ import annotations

import gc

import psutil
import torch

from gpu_manager import ManagedModel, MultiModelGPUManager, PinnedWeights, trim_process_heap
from llasa.config import Settings

MB = 1_000_000
LAYER_FEATURES = 4096  # one float32 4096 x 4096 layer = 67 MB


class BigModel:
    """Five float32 4096x4096 layers (~336 MB), every page written, behind PinnedWeights."""

    def __init__(self, device: str) -> None:
        layers = []
        for index in range(5):
            layer = torch.nn.Linear(LAYER_FEATURES, LAYER_FEATURES, bias=False, device="meta")
            layer.to_empty(device=device)
            with torch.no_grad():
                layer.weight.fill_(0.001 * (index + 1))  # touch every page so RSS really holds it
            layers.append(layer)
        self.module = torch.nn.Sequential(*layers)
        self.weights = PinnedWeights(self.module)

    def move_to(self, device: str) -> None:
        self.weights.move_to(device)

    def size_bytes(self) -> int:
        return self.weights.size_bytes()

    def close(self) -> None:
        self.weights.close()
        self.module = None


def rss_bytes() -> int:
    gc.collect()
    trim_process_heap()
    return psutil.Process().memory_info().rss


def test_release_returns_ram_to_the_os() -> None:
    settings = Settings(_env_file=None, device="cpu", model_evict_timeout=-1)
    manager = MultiModelGPUManager(settings)  # the real release path: gc, caches, malloc_trim
    loads: list[int] = []

    def loader(device: str) -> ManagedModel:
        loads.append(1)
        return BigModel(device)

    manager.register_model("big", loader)
    before = rss_bytes()
    with manager.use("big") as model:
        output = model.module(torch.ones(1, LAYER_FEATURES))
        assert output.shape == (1, LAYER_FEATURES)
        size = model.size_bytes()
    del model, output
    assert size == 5 * LAYER_FEATURES * LAYER_FEATURES * 4
    loaded = rss_bytes()
    assert loaded - before > 0.8 * size, "the model did not occupy RAM: the test would prove nothing"
    assert manager.status()["models"]["big"]["state"] == "cpu"

    assert manager.release("big")["models"] == {"big": "released"}
    after = rss_bytes()
    # Generous margin for allocator noise, but far below the 336 MB the model held.
    assert after - before < 60 * MB, (
        f"RSS before {before / MB:.0f} MB, loaded {loaded / MB:.0f}, after {after / MB:.0f}"
    )
    assert manager.status()["models"]["big"]["state"] == "unloaded"
    assert loads == [1]
