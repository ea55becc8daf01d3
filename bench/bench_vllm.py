"""The embedded engine against a real vLLM server on the same model, and vLLM's prefix caching on a repeated voice.

    LLASA_VLLM_PYTHON=/path/to/vllm-venv/bin/python python bench/bench_vllm.py          # tiny checkpoints, CPU

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
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import statistics
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

from bench_engine import CODES_PER_SECOND, _engine_run, _tiny_models, _tiny_subject, first_window  # noqa: E402


def throughput_rows(engines: dict[str, Any], subject: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for n in args.concurrency:
        rates: dict[str, list[float]] = {name: [] for name in engines}
        firsts: dict[str, list[float]] = {name: [] for name in engines}
        for r in range(args.runs):
            order = list(engines) if r % 2 == 0 else list(reversed(engines))
            for name in order:
                tokens, seconds = _engine_run(engines[name], subject, n, args.new_tokens, r)
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


def prefill_latencies(url: str, tokenizer: Any, token_ids: Any, args: argparse.Namespace) -> dict[str, float]:
    """Median latency (s) of a max_tokens=1 completion: cold, the same prompt again, the same voice with new text."""
    from llasa.prompt import NUM_SPEECH_CODES, build_prompt_ids

    model = requests.get(f"{url}/v1/models", timeout=30).json()["data"][0]["id"]
    rng = random.Random(7)

    def voice() -> list[int]:
        return [rng.randrange(NUM_SPEECH_CODES) for _ in range(args.reference_codes)]

    def prefill(prompt_ids: list[int]) -> float:
        body = {
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


def start_server(models: Path, log_dir: Path, *, prefix_caching: bool) -> Any:
    from vllm_server import VLLMServer

    name = "prefix" if prefix_caching else "no-prefix"
    server = VLLMServer(models / "llasa", log_dir / f"{name}.log", prefix_caching=prefix_caching, nice=0).start()
    started = time.perf_counter()
    server.wait_healthy()
    print(f"  vLLM ({name} caching) answered /health after {time.perf_counter() - started:.0f} s", flush=True)
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, help="folder with llasa/ and xcodec2/ (default: the tiny ones)")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 16])
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--reference-codes", type=int, default=1500, help="reference length for the prefill part")
    parser.add_argument("--prefill-runs", type=int, default=5)
    args = parser.parse_args()
    if not os.environ.get("LLASA_VLLM_PYTHON"):
        sys.exit("set LLASA_VLLM_PYTHON to the python of vLLM's virtualenv (scripts/vllm_venv.sh installs it)")

    import torch

    from llasa.config import Settings
    from llasa.engine.transformers_backend import TransformersEngine
    from llasa.engine.vllm_backend import VLLMBackend
    from llasa.models import load_llasa_tokenizer

    models = args.models or _tiny_models()
    subject = _tiny_subject(models, "cpu")
    tokenizer = load_llasa_tokenizer(Settings(_env_file=None, llasa_model=str(models / "llasa")))
    print(f"# bench_vllm {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"command: python {' '.join(sys.argv)}")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, no GPU, torch {torch.__version__}, "
        f"load average {os.getloadavg()[0]:.2f}; vLLM: {os.environ['LLASA_VLLM_PYTHON']}"
    )
    log_dir = Path(tempfile.mkdtemp(prefix="bench-vllm-"))
    embedded = TransformersEngine(lambda: contextlib.nullcontext(subject.model), subject.token_ids)
    server = start_server(models, log_dir, prefix_caching=True)
    try:
        vllm = VLLMBackend([server.url], subject.token_ids)
        engines = {"embedded": embedded, "vllm": vllm}
        for engine in engines.values():
            _engine_run(engine, subject, 2, 8, 99)  # warm-up
        subject.codec.decode((subject.reference_codes or [])[:20] + [0] * 40)
        print(f"\nthroughput ({args.new_tokens} new tokens per sequence, median of {args.runs} runs):")
        rows = throughput_rows(engines, subject, args)
        print(
            "\n| concurrent | embedded audio-s/s | vLLM audio-s/s | embedded first audio (s) | vLLM first audio (s) |"
        )
        print("|---|---|---|---|---|")
        for row in rows:
            print(
                f"| {row['n']} | {row['embedded'][0]:.2f} | {row['vllm'][0]:.2f} | "
                f"{row['embedded'][1]:.3f} | {row['vllm'][1]:.3f} |"
            )
        vllm.shutdown()
        embedded.shutdown()
        cached = prefill_latencies(server.url, tokenizer, subject.token_ids, args)
    finally:
        server.stop()
    server = start_server(models, log_dir, prefix_caching=False)
    try:
        uncached = prefill_latencies(server.url, tokenizer, subject.token_ids, args)
    finally:
        server.stop()
    print(
        f"\nprefill ({cached['prompt_tokens']} prompt tokens, max_tokens=1, median of {args.prefill_runs}; "
        "latency of the whole request):"
    )
    print("\n| server | new voice (s) | same prompt again (s) | same voice, new text (s) |")
    print("|---|---|---|---|")
    for name, r in (("--enable-prefix-caching", cached), ("--no-enable-prefix-caching", uncached)):
        print(f"| {name} | {r['cold']:.3f} | {r['same']:.3f} | {r['new_text']:.3f} |")


if __name__ == "__main__":
    main()
