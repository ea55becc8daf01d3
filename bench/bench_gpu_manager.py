"""Benchmark the GPU manager's moves: first load, offload, reload, release, against the copy floor.

    python bench/bench_gpu_manager.py --size-gb 1           # synthetic bf16 layers of about 1 GB
    python bench/bench_gpu_manager.py --llasa-8b-shape      # random LlamaForCausalLM with Llasa-8B's config

On CUDA it also measures, in the same run, a plain pinned host-to-device copy of the same number of bytes into
memory allocated beforehand (the floor that reload should approach; goal: reload / floor <= 1.25), and the VRAM
the process still holds after an offload compared with its bare CUDA context. On CPU it reports process RSS
before load, after load and after release (offload and reload are no-ops there, timed anyway).
Weights are random: nothing is downloaded. Prints a markdown table (paste it into bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import math
import os
import platform
import sys
import time
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine_subjects import LLASA_8B_CONFIG

from gpu_manager import (
    DeviceMemory,
    MultiModelGPUManager,
    PinnedWeights,
    format_bytes,
    trim_process_heap,
)
from llasa.config import Settings

GB = 1e9
LAYER_DIM = 8192  # one synthetic bf16 layer = 8192 x 8192 x 2 B = 134 MB


class BenchModel:
    """A torch module behind PinnedWeights: what a production loader returns."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.weights = PinnedWeights(module)

    def move_to(self, device: str) -> None:
        self.weights.move_to(device)

    def size_bytes(self) -> int:
        return self.weights.size_bytes()

    def close(self) -> None:
        self.weights.close()
        self.module = None  # type: ignore[assignment]


def build_synthetic(size_gb: float, device: str) -> torch.nn.Module:
    layer_bytes = LAYER_DIM * LAYER_DIM * 2
    count = max(1, math.ceil(size_gb * GB / layer_bytes))
    with torch.device("meta"):
        module = torch.nn.Sequential(
            *(torch.nn.Linear(LAYER_DIM, LAYER_DIM, bias=False, dtype=torch.bfloat16) for _ in range(count))
        )
    module.to_empty(device=device)
    with torch.no_grad():
        for index, param in enumerate(module.parameters()):
            param.fill_(0.001 * (index % 7 + 1))  # every page written: RSS and VRAM really hold it
    return module


def build_llasa_8b(device: str) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = LlamaConfig(**LLASA_8B_CONFIG)
    with torch.device("meta"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.02, generator=generator)
    # to_empty leaves buffers uninitialised: rebuild the rotary tables the way the model computes them.
    model.model.rotary_emb = LlamaRotaryEmbedding(config=config).to(device)
    return model.eval()


def seconds(value: float) -> str:
    return f"{value:.2f} s" if value >= 0.1 else f"{value * 1000:.3f} ms"


def checksums(module: torch.nn.Module) -> list[float]:
    params = list(module.parameters())
    picks = [params[0], params[len(params) // 2], params[-1]]
    return [float(p.detach().float().sum().item()) for p in picks]


def rss() -> int:
    gc.collect()
    trim_process_heap()
    return psutil.Process().memory_info().rss


def copy_floor_s(size_bytes: int, device: str, repeats: int) -> float:
    """Best time of a pinned host-to-device copy of size_bytes into device memory allocated beforehand."""
    chunk = 1 << 30  # 1 GiB pinned chunks: torch's pinned allocator rounds to powers of two, so no waste
    sources = []
    remaining = size_bytes
    while remaining > 0:
        n = min(chunk, remaining)
        sources.append(torch.empty(n, dtype=torch.uint8, pin_memory=True).fill_(1))
        remaining -= n
    targets = [torch.empty(s.numel(), dtype=torch.uint8, device=device) for s in sources]
    torch.cuda.synchronize(device)
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        for src, dst in zip(sources, targets, strict=True):
            dst.copy_(src, non_blocking=True)
        torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - started)
    del sources, targets
    gc.collect()
    torch.cuda.empty_cache()
    torch._C._host_emptyCache()
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--size-gb", type=float, help="synthetic model of about this many GB (bf16 layers)")
    which.add_argument("--llasa-8b-shape", action="store_true", help="random model with Llasa-8B's exact config")
    parser.add_argument("--repeats", type=int, default=3, help="offload/reload cycles (best is reported)")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    args = parser.parse_args()

    settings = Settings(
        _env_file=None,
        device=args.device,
        gpu_offload_after_use=False,
        gpu_idle_timeout=-1,
        model_evict_timeout=-1,
    )
    manager = MultiModelGPUManager(settings)
    device = manager.device
    cuda = device.startswith("cuda")
    rows: list[tuple[str, str]] = []

    rss_start = rss()
    bare_context: DeviceMemory | None = None
    if cuda:
        torch.zeros(1, device=device)  # create the CUDA context, and nothing else
        torch.cuda.synchronize(device)
        bare_context = manager.device_memory()

    def loader(target: str) -> BenchModel:
        module = build_llasa_8b(target) if args.llasa_8b_shape else build_synthetic(args.size_gb, target)
        return BenchModel(module)

    name = "llasa-8b-shape" if args.llasa_8b_shape else f"synthetic-{args.size_gb:g}gb"
    manager.register_model(name, loader)
    with manager.use(name) as model:
        size = model.size_bytes()
        before = checksums(model.module)
    status = manager.model_status(name)
    rows.append(("model", f"{name}, {format_bytes(size)} ({size:,} B)"))
    rows.append(
        (
            "first load (random weights built on the device; + pinned host copy on CUDA)",
            seconds(status["last_load_s"]),
        )
    )
    rss_loaded = rss()

    offloads: list[float] = []
    reloads: list[float] = []
    vram_after_offload: DeviceMemory | None = None
    for _ in range(args.repeats):
        manager.offload(name)
        offloads.append(manager.model_status(name)["last_offload_s"])
        if cuda and vram_after_offload is None:
            vram_after_offload = manager.device_memory()
        with manager.use(name) as model:
            after = checksums(model.module)
        reloads.append(manager.model_status(name)["last_reload_s"])
    rows.append(("offload (best / worst)", f"{seconds(min(offloads))} / {seconds(max(offloads))}"))
    rows.append(("reload (best / worst)", f"{seconds(min(reloads))} / {seconds(max(reloads))}"))
    if cuda:
        rows.append(("reload bandwidth (best)", f"{size / min(reloads) / GB:.1f} GB/s"))
    else:
        rows.append(("note", "no CUDA: offload and reload are the manager's no-op moves (counted, not copied)"))
    rows.append(("weights identical after reload (3 tensors)", "yes" if before == after else f"NO {before} {after}"))

    if cuda:
        manager.offload(name)
        floor = copy_floor_s(size, device, args.repeats)
        rows.append(
            ("floor: plain pinned H2D copy, same bytes (best)", f"{seconds(floor)} ({size / floor / GB:.1f} GB/s)")
        )
        rows.append(("reload / floor (goal <= 1.25)", f"{min(reloads) / floor:.2f}"))
        assert bare_context is not None
        assert vram_after_offload is not None
        rows.append(("device used, bare CUDA context", format_bytes(bare_context.used_bytes)))
        rows.append(("device used, after offload", format_bytes(vram_after_offload.used_bytes)))
        rows.append(
            (
                "held after offload beyond bare context",
                format_bytes(vram_after_offload.used_bytes - bare_context.used_bytes),
            )
        )
        rows.append(("this process on the device after offload", format_bytes(vram_after_offload.process_bytes)))

    manager.release(name)
    release_s = manager.model_status(name)["last_release_s"]
    rows.append(("release", seconds(release_s)))
    rss_released = rss()
    rows.append(("RSS before load", format_bytes(rss_start)))
    rows.append(("RSS after load", format_bytes(rss_loaded)))
    rows.append(
        ("RSS after release", f"{format_bytes(rss_released)} ({format_bytes(rss_released - rss_start)} above start)")
    )

    gpu = torch.cuda.get_device_name(0) if cuda else "no GPU"
    print(f"command: python bench/bench_gpu_manager.py {' '.join(sys.argv[1:])}")
    print(
        f"machine: {os.cpu_count()} CPU cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, {gpu}; "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )
    print(f"date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}; device: {device}")
    print()
    width = max(len(metric) for metric, _ in rows)
    print(f"| {'metric'.ljust(width)} | value |")
    print(f"|{'-' * (width + 2)}|-------|")
    for metric, value in rows:
        print(f"| {metric.ljust(width)} | {value} |")
    manager.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
