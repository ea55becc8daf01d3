"""The embedded engine against a real vLLM server on the same model, vLLM's prefix caching on a repeated voice, and
vLLM's sleep mode against the GPU manager's own offload and reload.

    LLASA_VLLM_PYTHON=/path/to/vllm-venv/bin/python python bench/bench_vllm.py          # tiny checkpoints, CPU
    LLASA_VLLM_PYTHON=/path/to/vllm-gpu-venv/bin/python python bench/bench_vllm.py --device cuda --llasa-8b-shape
    python bench/bench_engine.py --engine vllm ...                                      # the same benchmark

Part 1, throughput: at each concurrency N (1/8/16), N sequences (`--new-tokens` each, seeds distinct) submitted at
once, through `TransformersEngine` (in this process) and through `VLLMBackend` (HTTP, a vLLM server started here
with the speech-only logits processor and prefix caching), in the same run, alternating which goes first. Prints
aggregate audio seconds per wall second (50 codes = 1 s) and the time to the first streamed audio window of one
sequence with N-1 others alongside (codes read as they come through `StreamingDecoder`, as the service does).

Part 2, prefix caching: one `max_tokens=1` completion is a prefill; its latency, median of `--prefill-runs`, for a
prompt with a long reference (`--reference-codes` codes, ~1,550 tokens): cold (a new voice each time), the same
prompt again (a retry of a chunk with another seed), and the same voice with new text (the Llasa prompt puts the
text before the reference codes, so only the instruction and transcript are shared). On a server with
`--enable-prefix-caching` and one with `--no-enable-prefix-caching`, one after the other.

vLLM's CPU build is a separate virtualenv (`scripts/vllm_venv.sh`, as `./test_all.sh` installs it); the server is
`tests/engine/vllm_server.py`'s, the one the tests start.

Part 3, sleep mode: `--sleep-cycles` rounds of `POST /sleep?level=1` and `POST /wake_up` on the server (the GPU
manager's offload and reload of a managed vLLM), each followed by a one-token completion (the first request after
a wake), with the device memory in use (nvidia-smi) awake and asleep. On a GPU the same model shape then goes
through the GPU manager's own offload and reload (`PinnedWeights`, as the embedded engine's Llasa is moved), for
comparison. On the CPU, sleep frees nothing (vLLM's CPU build has no sleep allocator): the call times only.

`--device cuda` runs vLLM's GPU build (`LLASA_VLLM_PYTHON` then names a virtualenv with `vllm==0.32.0`) with CUDA
graphs, sleep mode and `--gpu-memory-utilization` (default 0.5, so the embedded engine fits beside it for the
comparison); concurrency defaults to 1/32/64. `--llasa-8b-shape` serves Llasa-8B's exact config with random weights
(`--load-format dummy`: a folder with the config and the Llasa tokenizer, no weights written) and runs the embedded
side on a random bf16 model of the same shape (`bench_engine.py --llasa-8b-shape`). `--dummy-weights` does the same
for the tiny config, which is how this path is checked on the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests" / "engine"))

from engine_subjects import (  # noqa: E402
    CODES_PER_SECOND,
    LLASA_8B_CONFIG,
    engine_run,
    first_window,
    llasa_8b_subject,
    tiny_models,
    tiny_subject,
)


def throughput_rows(engines: dict[str, Any], subject: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for n in args.concurrency:
        rates: dict[str, list[float]] = {name: [] for name in engines}
        firsts: dict[str, list[float]] = {name: [] for name in engines}
        for r in range(args.runs):
            order = list(engines) if r % 2 == 0 else list(reversed(engines))
            for name in order:
                tokens, seconds = engine_run(engines[name], subject, n, args.new_tokens, r)
                rates[name].append(tokens / seconds / CODES_PER_SECOND)
                firsts[name].append(first_window(engines[name], subject, args.new_tokens, n)["first_s"])
        row: dict[str, Any] = {"n": n}
        for name in engines:
            row[name] = (statistics.median(rates[name]), statistics.median(firsts[name]))
        rows.append(row)
        print(
            f"  N={n:3d}: "
            + "   ".join(f"{name} {row[name][0]:6.2f} audio-s/s, first audio {row[name][1]:.3f} s" for name in engines),
            flush=True,
        )
    return rows


def one_token_request(model: str, prompt_ids: list[int], token_ids: Any) -> dict[str, Any]:
    """A `/v1/completions` body sampling one speech token (a prefill), with the speech-only logits processor on."""
    from llasa.prompt import NUM_SPEECH_CODES

    return {
        "model": model,
        "prompt": prompt_ids,
        "max_tokens": 1,
        "seed": 1,
        "vllm_xargs": {
            "llasa_first_speech_id": token_ids.first_speech_id,
            "llasa_num_speech": NUM_SPEECH_CODES,
            "llasa_end_id": token_ids.speech_end_id,
        },
    }


def prefill_latencies(url: str, tokenizer: Any, token_ids: Any, args: argparse.Namespace) -> dict[str, float]:
    """Median latency (s) of a max_tokens=1 completion: cold, the same prompt again, the same voice with new text."""
    from llasa.prompt import NUM_SPEECH_CODES, build_prompt_ids

    model = requests.get(f"{url}/v1/models", timeout=30).json()["data"][0]["id"]
    rng = random.Random(7)

    def voice() -> list[int]:
        return [rng.randrange(NUM_SPEECH_CODES) for _ in range(args.reference_codes)]

    def prefill(prompt_ids: list[int]) -> float:
        body = one_token_request(model, prompt_ids, token_ids)
        started = time.perf_counter()
        response = requests.post(f"{url}/v1/completions", json=body, timeout=120)
        response.raise_for_status()
        return time.perf_counter() - started

    transcript = "The quick brown fox jumps over the lazy dog."
    cold, same, new_text = [], [], []
    prefill(build_prompt_ids(tokenizer, "Warm-up.", transcript, voice()))
    tokens = 0
    for i in range(args.prefill_runs):
        codes = voice()  # a voice never seen before
        prompt = build_prompt_ids(tokenizer, f"Sentence {i} of the benchmark.", transcript, codes)
        tokens = len(prompt)
        cold.append(prefill(prompt))
        same.append(prefill(prompt))
        new_text.append(prefill(build_prompt_ids(tokenizer, f"Another sentence, number {i}.", transcript, codes)))
    return {
        "prompt_tokens": tokens,
        "cold": statistics.median(cold),
        "same": statistics.median(same),
        "new_text": statistics.median(new_text),
    }


#: Tokenizer files copied beside a config-only checkpoint (`--load-format dummy` reads no weights).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)


def config_only_checkpoint(tiny_llasa: Path, config: dict[str, Any], folder: Path) -> Path:
    """A checkpoint folder vLLM serves with `--load-format dummy`: `config` (a model shape) and the tiny Llasa's
    tokenizer, which has the real Llasa vocabulary (193,800 ids, the same control and speech token ids)."""
    folder.mkdir(parents=True, exist_ok=True)
    base = json.loads((tiny_llasa / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**base, **config}, indent=2))
    for name in TOKENIZER_FILES:
        if (tiny_llasa / name).exists():
            shutil.copy2(tiny_llasa / name, folder / name)
    return folder


def start_server(model_dir: Path, log_dir: Path, args: argparse.Namespace, *, prefix_caching: bool) -> Any:
    from vllm_server import VLLMServer

    name = "prefix" if prefix_caching else "no-prefix"
    extra = ["--load-format", "dummy"] if args.dummy_weights or args.llasa_8b_shape else []
    if args.device == "cuda":
        extra += ["--gpu-memory-utilization", str(args.gpu_memory_utilization)]
    server = VLLMServer(
        model_dir, log_dir / f"{name}.log", prefix_caching=prefix_caching, nice=0, device=args.device, extra_args=extra
    ).start()
    started = time.perf_counter()
    server.wait_healthy(deadline_s=900)
    print(f"  vLLM ({name} caching) answered /health after {time.perf_counter() - started:.0f} s", flush=True)
    return server


def device_memory_used_mib() -> float | None:
    """Memory in use on GPU 0 as nvidia-smi reports it (every process's), or None without one."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        return float(out.strip().splitlines()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def sleep_wake_rows(url: str, token_ids: Any, prompt_ids: list[int], cycles: int) -> list[tuple[str, str]]:
    """Time vLLM's sleep (level 1: weights to CPU RAM, KV cache dropped) and wake_up, and the first request after
    a wake; device memory awake and asleep."""
    model = requests.get(f"{url}/v1/models", timeout=30).json()["data"][0]["id"]
    body = one_token_request(model, prompt_ids, token_ids)

    def timed(method: str, path: str, **kwargs: Any) -> float:
        started = time.perf_counter()
        response = requests.request(method, f"{url}{path}", timeout=600, **kwargs)
        response.raise_for_status()
        return time.perf_counter() - started

    def is_sleeping() -> bool:
        return bool(requests.get(f"{url}/is_sleeping", timeout=30).json()["is_sleeping"])

    timed("POST", "/v1/completions", json=body)  # warm
    sleeps, wakes, firsts = [], [], []
    awake_mib = asleep_mib = None
    for _ in range(cycles):
        awake_mib = device_memory_used_mib()
        sleeps.append(timed("POST", "/sleep", params={"level": "1"}))
        if not is_sleeping():
            raise RuntimeError("vLLM says it is awake right after /sleep")
        asleep_mib = device_memory_used_mib()
        wakes.append(timed("POST", "/wake_up"))
        if is_sleeping():
            raise RuntimeError("vLLM says it is asleep right after /wake_up")
        firsts.append(timed("POST", "/v1/completions", json=body))
    rows = [
        ("vLLM sleep level 1 (best / worst)", f"{min(sleeps):.3f} / {max(sleeps):.3f} s"),
        ("vLLM wake_up (best / worst)", f"{min(wakes):.3f} / {max(wakes):.3f} s"),
        ("first one-token request after a wake (median)", f"{statistics.median(firsts):.3f} s"),
    ]
    if awake_mib is None or asleep_mib is None:
        rows.append(("device memory awake / asleep", "n/a (no nvidia-smi: on the CPU, sleep frees nothing)"))
    else:
        rows.append(
            (
                "device memory in use awake / asleep (nvidia-smi, all processes)",
                f"{awake_mib / 1024:.2f} / {asleep_mib / 1024:.2f} GiB (freed {(awake_mib - asleep_mib) / 1024:.2f})",
            )
        )
    return rows


def manager_reload_rows(llasa_8b_shape: bool, cycles: int) -> list[tuple[str, str]]:
    """The GPU manager's own offload and reload of the same model shape (pinned host copy), on the GPU."""
    import torch
    from bench_gpu_manager import BenchModel, build_llasa_8b

    from llasa.config import Settings
    from llasa.gpu import MultiModelGPUManager

    if not llasa_8b_shape:
        return [("GPU manager offload / reload", "n/a: measured with --llasa-8b-shape (bench_gpu_manager.py)")]
    settings = Settings(
        _env_file=None, device="cuda", gpu_offload_after_use=False, gpu_idle_timeout=-1, model_evict_timeout=-1
    )
    manager = MultiModelGPUManager(settings)
    manager.register_model("llasa-8b-shape", lambda target: BenchModel(build_llasa_8b(target)))
    try:
        with manager.use("llasa-8b-shape"):
            pass
        offloads, reloads = [], []
        for _ in range(cycles):
            manager.offload("llasa-8b-shape")
            offloads.append(manager.model_status("llasa-8b-shape")["last_offload_s"])
            with manager.use("llasa-8b-shape"):
                pass
            reloads.append(manager.model_status("llasa-8b-shape")["last_reload_s"])
    finally:
        manager.release("llasa-8b-shape")
        manager.shutdown()
        torch.cuda.empty_cache()
    return [
        ("GPU manager offload of the 8B shape (best / worst)", f"{min(offloads):.3f} / {max(offloads):.3f} s"),
        ("GPU manager reload of the 8B shape (best / worst)", f"{min(reloads):.3f} / {max(reloads):.3f} s"),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, help="folder with llasa/ and xcodec2/ (default: the tiny ones)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--llasa-8b-shape", action="store_true", help="Llasa-8B's shape, random weights (GPU)")
    parser.add_argument("--dummy-weights", action="store_true", help="vLLM serves the model's config, random weights")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=None)
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--reference-codes", type=int, default=1500, help="reference length for the prefill part")
    parser.add_argument("--prefill-runs", type=int, default=5)
    parser.add_argument("--sleep-cycles", type=int, default=3)
    args = parser.parse_args(argv)
    gpu = args.device == "cuda"
    args.concurrency = args.concurrency or ([1, 32, 64] if gpu else [1, 8, 16])
    if not os.environ.get("LLASA_VLLM_PYTHON"):
        sys.exit("set LLASA_VLLM_PYTHON to the python of vLLM's virtualenv (scripts/vllm_venv.sh installs it)")
    if args.llasa_8b_shape and not gpu:
        sys.exit("--llasa-8b-shape needs --device cuda: 16 GB of bf16 weights is not a CPU benchmark")

    import torch

    from llasa.config import Settings
    from llasa.engine.transformers_backend import TransformersEngine
    from llasa.engine.vllm_backend import VLLMBackend
    from llasa.models import load_llasa_tokenizer

    models = args.models or tiny_models()
    log_dir = Path(tempfile.mkdtemp(prefix="bench-vllm-"))
    served = models / "llasa"
    if args.llasa_8b_shape:
        served = config_only_checkpoint(tiny_models() / "llasa", LLASA_8B_CONFIG, log_dir / "llasa-8b-shape")
    tokenizer = load_llasa_tokenizer(Settings(_env_file=None, llasa_model=str(served)))
    gpu_name = torch.cuda.get_device_name(0) if gpu else "no GPU"
    print(f"# bench_vllm {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"command: python {' '.join(sys.argv)}")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {gpu_name}, torch {torch.__version__}, "
        f"load average {os.getloadavg()[0]:.2f}; vLLM: {os.environ['LLASA_VLLM_PYTHON']}"
    )
    server = start_server(served, log_dir, args, prefix_caching=True)
    try:
        # sleep mode first, while this process holds nothing on the device (nvidia-smi counts every process)
        from llasa.prompt import NUM_SPEECH_CODES, SpeechTokenIds, build_prompt_ids, lookup_token_ids

        token_ids: SpeechTokenIds = lookup_token_ids(tokenizer)
        rng = random.Random(3)
        reference = [rng.randrange(NUM_SPEECH_CODES) for _ in range(150)]
        prompt = build_prompt_ids(tokenizer, "A sentence to wake up to.", "A short reference.", reference)
        sleep_rows = sleep_wake_rows(server.url, token_ids, prompt, args.sleep_cycles)

        device = "cuda:0" if gpu else "cpu"
        subject = llasa_8b_subject(device) if args.llasa_8b_shape else tiny_subject(models, device)
        model = subject.model
        embedded = TransformersEngine(lambda: contextlib.nullcontext(model), subject.token_ids, max_batch_sequences=64)
        vllm = VLLMBackend([server.url], subject.token_ids)
        engines = {"embedded": embedded, "vllm": vllm}
        for engine in engines.values():
            engine_run(engine, subject, 2, 8, 99)  # warm-up
        subject.codec.decode((subject.reference_codes or [])[:20] + [0] * 40)
        print(f"\nthroughput ({args.new_tokens} new tokens per sequence, median of {args.runs} runs):")
        rows = throughput_rows(engines, subject, args)
        vllm.shutdown()
        embedded.shutdown()
        cached = prefill_latencies(server.url, tokenizer, token_ids, args)
    finally:
        server.stop()
    server = start_server(served, log_dir, args, prefix_caching=False)
    try:
        uncached = prefill_latencies(server.url, tokenizer, token_ids, args)
    finally:
        server.stop()
    if gpu:
        sleep_rows += manager_reload_rows(args.llasa_8b_shape, args.sleep_cycles)

    print("\n| concurrent | embedded audio-s/s | vLLM audio-s/s | embedded first audio (s) | vLLM first audio (s) |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['n']} | {row['embedded'][0]:.2f} | {row['vllm'][0]:.2f} | "
            f"{row['embedded'][1]:.3f} | {row['vllm'][1]:.3f} |"
        )
    print(
        f"\nprefill ({cached['prompt_tokens']} prompt tokens, max_tokens=1, median of {args.prefill_runs}; "
        "latency of the whole request):"
    )
    print("\n| server | new voice (s) | same prompt again (s) | same voice, new text (s) |")
    print("|---|---|---|---|")
    for name, r in (("--enable-prefix-caching", cached), ("--no-enable-prefix-caching", uncached)):
        print(f"| {name} | {r['cold']:.3f} | {r['same']:.3f} | {r['new_text']:.3f} |")
    print(f"\nsleep mode ({args.sleep_cycles} cycles):\n")
    print("| metric | value |\n|---|---|")
    for metric, value in sleep_rows:
        print(f"| {metric} | {value} |")


if __name__ == "__main__":
    main()
