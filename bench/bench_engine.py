"""Engine benchmark: continuous batching against one-after-another generation, and streaming's first audio.

    python bench/bench_engine.py                                  # tiny checkpoints, CPU
    python bench/bench_engine.py --snr-grid                       # + streaming SNR over context / look-ahead
    python bench/bench_engine.py --device cuda --llasa-8b-shape   # random Llasa-8B-shaped model in bf16 (GPU)
    python bench/bench_engine.py --engine vllm [bench_vllm.py's options]  # against a real vLLM server

Part 1, throughput: at each concurrency N, N sequences (distinct prompts' seeds, `--new-tokens` each) submitted
at once to `TransformersEngine`, against the same sequences run one after another through
`LlasaModel.generate_codes_with_status` (HF `generate`, what the service runs today), in the same run and
interleaved. Prints aggregate tokens/s and audio seconds per wall second (50 codes = 1 s) and the ratio; the
issue's goal is >= 2.5x at 8 on the 2-core CPU. Both sides count every sampled token, the end token included.
With `--baseline-sequences K` the one-after-another side runs K sequences and its rate stands for all N (it does
not depend on N; on a GPU the 8B baseline at 64 sequences would take too long).

Part 2, streaming: one sequence of `--stream-codes` codes (500 = a 10 s chunk) through the engine into
`StreamingDecoder`, reading codes as they come: time to the first audio window / total time (goal <= 0.10).

Part 3 (`--snr-grid`): SNR of streamed audio against a one-shot decode of the same codes, on the tiny codec, over
context and look-ahead (the measurement the streaming defaults were chosen by).

Part 4 (`--hf-continuous-batching`): transformers' own `generate_batch` on the same prompts, for the choice
recorded in `llasa/engine/transformers_backend.py`.

`--llasa-8b-shape` builds `LlamaForCausalLM` with Llasa-8B's exact config (hidden 4096, 32 layers, 32 heads,
8 KV heads, intermediate 14336, vocabulary 193,800, rope theta 500000) with random bf16 weights, and the token ids
of the real Llasa tokenizer layout; the baseline is then HF `generate` with the speech-only mask (the body of
`generate_codes_with_status`), and part 2 decodes with a random XCodec2 of the real codec's shape (float32). It
refuses to run on the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from engine_subjects import (  # noqa: E402
    CODES_PER_SECOND,
    Subject,
    engine_run,
    first_window,
    llasa_8b_subject,
    sync_device,
    tiny_models,
    tiny_subject,
)


def _baseline_run(subject: Subject, n: int, new_tokens: int, round_index: int, device: str) -> tuple[int, float]:
    started = time.perf_counter()
    tokens = sum(
        subject.baseline(subject.prompts[i % len(subject.prompts)], 1000 * round_index + i, new_tokens)
        for i in range(n)
    )
    sync_device(device)
    return tokens, time.perf_counter() - started


def throughput(engine: Any, subject: Subject, args: argparse.Namespace) -> list[dict[str, float]]:
    rows = []
    for n in args.concurrency:
        engine_rates, base_rates = [], []
        for r in range(args.runs):
            base_n = args.baseline_sequences or n
            # alternate which side goes first, so neither always runs on a warmer machine
            order = ["engine", "baseline"] if r % 2 == 0 else ["baseline", "engine"]
            for side in order:
                if side == "engine":
                    tokens, seconds = engine_run(engine, subject, n, args.new_tokens, r)
                    engine_rates.append(tokens / seconds)
                else:
                    tokens, seconds = _baseline_run(subject, base_n, args.new_tokens, r, args.device)
                    base_rates.append(tokens / seconds)
        eng, base = statistics.median(engine_rates), statistics.median(base_rates)
        rows.append({"n": n, "engine": eng, "baseline": base, "ratio": eng / base})
        print(
            f"  N={n:3d}: engine {eng:8.1f} tok/s ({eng / CODES_PER_SECOND:6.2f} audio-s/s)   "
            f"one-after-another {base:8.1f} tok/s   ratio {eng / base:5.2f}",
            flush=True,
        )
    return rows


def snr_grid(subject: Subject) -> None:
    import numpy as np

    from llasa.audio import load_audio
    from llasa.engine.streaming import StreamingConfig, StreamingDecoder

    codec, reference = subject.codec, subject.reference_codes or []
    speech = codec.encode(load_audio(REPO / "tests" / "data" / "audio" / "en_long_22k.ogg")[: 10 * 16000])[:500]
    one_shot = codec.decode(reference + speech)[len(reference) * 320 :]

    def snr(config: StreamingConfig, piece: int) -> tuple[float, float]:
        decoder = StreamingDecoder(codec, reference, config)
        parts = [decoder.push(speech[i : i + piece]) for i in range(0, len(speech), piece)] + [decoder.finish()]
        streamed = np.concatenate(parts)
        error = float(np.sum((one_shot - streamed) ** 2))
        return 10 * np.log10(float(np.sum(one_shot**2)) / max(error, 1e-30)), decoder.decoded_codes / len(speech)

    print(
        "\n| context codes | look-ahead codes | SNR, codes one by one (dB) | SNR, 7 at a time (dB) | decoded / codes |"
    )
    print("|---|---|---|---|---|")
    for context in (0, 16, 32, 64, 128):
        for lookahead in (0, 2, 4, 8):
            config = StreamingConfig(context_codes=context, lookahead_codes=lookahead)
            one, cost = snr(config, 1)
            seven, _ = snr(config, 7)
            print(f"| {context} | {lookahead} | {one:.1f} | {seven:.1f} | {cost:.2f} |")
    for n in (50, 100, 200, 400):
        prefix = codec.decode(reference + speech[:n])[len(reference) * 320 :][: (n - 4) * 320]
        whole = one_shot[: (n - 4) * 320]
        limit = 10 * np.log10(np.sum(whole**2) / np.sum((whole - prefix) ** 2))
        print(f"bound: one-shot decode of the first {n} codes vs of all 500, on codes 0..{n - 5}: {limit:.1f} dB")


def hf_continuous_batching(models: Path, subject: Subject, args: argparse.Namespace) -> None:
    """transformers' own continuous batching (`generate_batch`, paged attention) on the same prompts: the
    alternative the engine's docstring weighs. It takes no per-request seed or logits mask, so this measures
    speed only (no speech mask: every token may be sampled, the end token stops)."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(models / "llasa", attn_implementation="sdpa").eval()
    end = subject.token_ids.speech_end_id
    config = GenerationConfig(
        do_sample=True, temperature=0.8, top_k=50, max_new_tokens=args.new_tokens, eos_token_id=end, pad_token_id=end
    )
    print("\ntransformers generate_batch (continuous batching, paged cache), same prompts:")
    for n in (1, max(args.concurrency)):
        prompts = [subject.prompts[i % len(subject.prompts)] for i in range(n)]
        started = time.perf_counter()
        out = model.generate_batch(prompts, generation_config=config, progress_bar=False)
        seconds = time.perf_counter() - started
        tokens = sum(len(o.generated_tokens) for o in out.values())
        print(f"  N={n:3d}: {tokens / seconds:8.1f} tok/s")


def main() -> None:
    if "--engine" in sys.argv:
        # `--engine vllm`: the embedded engine against a vLLM server on the same model (bench_vllm.py, its options)
        position = sys.argv.index("--engine")
        engine = sys.argv[position + 1] if position + 1 < len(sys.argv) else ""
        if engine == "vllm":
            import bench_vllm

            bench_vllm.main(sys.argv[1:position] + sys.argv[position + 2 :])
            return
        del sys.argv[position : position + 2]
        if engine != "transformers":
            sys.exit(f"--engine: transformers (default) or vllm, not {engine!r}")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, help="folder with llasa/ and xcodec2/ (default: the tiny ones)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--llasa-8b-shape", action="store_true", help="random bf16 model of Llasa-8B's shape")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=None)
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--baseline-sequences", type=int, default=0, help="0 = as many as the engine side")
    parser.add_argument("--max-batch-sequences", type=int, default=64)
    parser.add_argument("--stream-codes", type=int, default=500)
    parser.add_argument("--stream-concurrency", type=lambda s: [int(x) for x in s.split(",")], default=None)
    parser.add_argument("--snr-grid", action="store_true")
    parser.add_argument("--hf-continuous-batching", action="store_true", help="also time transformers' generate_batch")
    parser.add_argument(
        "--attn-implementation",
        help="e.g. sdpa (default), eager, flex_attention: on a GPU, SDPA with a padding mask expands the 8 KV heads "
        "to 32 every step (transformers' repeat_kv), so the batched decode may prefer another kernel",
    )
    args = parser.parse_args()
    gpu = args.device == "cuda"
    args.concurrency = args.concurrency or ([1, 8, 32, 64] if gpu else [1, 4, 8, 16])
    args.stream_concurrency = args.stream_concurrency or ([1, 32] if gpu else [1])

    import torch
    import transformers

    from llasa.engine.transformers_backend import TransformersEngine

    device = "cuda:0" if gpu else "cpu"
    subject = llasa_8b_subject(device) if args.llasa_8b_shape else tiny_subject(args.models or tiny_models(), device)
    if args.attn_implementation:
        subject.model.set_attn_implementation(args.attn_implementation)
    engine = TransformersEngine(
        lambda: contextlib.nullcontext(subject.model), subject.token_ids, max_batch_sequences=args.max_batch_sequences
    )
    print(f"# bench_engine {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"command: python {' '.join(sys.argv)}")
    gpu_name = torch.cuda.get_device_name(0) if gpu else "no GPU"
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {gpu_name}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, OMP threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.2f}, attention {subject.model.config._attn_implementation}"
    )
    engine_run(engine, subject, 2, 8, 99)  # warm-up: the first forward allocates
    subject.baseline(subject.prompts[0], 0, 8)
    print(f"\nthroughput ({args.new_tokens} new tokens per sequence, median of {args.runs} runs):")
    rows = throughput(engine, subject, args)
    print("\n| concurrent sequences | engine tok/s | engine audio-s/s | one-after-another tok/s | ratio |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['n']} | {row['engine']:.0f} | {row['engine'] / CODES_PER_SECOND:.2f} | "
            f"{row['baseline']:.0f} | **{row['ratio']:.2f}x** |"
        )
    if subject.codec is not None:
        subject.codec.decode((subject.reference_codes or [])[:20] + [0] * 40)  # warm-up: first-call kernel setup
        print(f"\nstreaming ({args.stream_codes} codes = {args.stream_codes / CODES_PER_SECOND:g} s of speech):")
        for n in args.stream_concurrency:
            r = first_window(engine, subject, args.stream_codes, n)
            print(
                f"  {n} concurrent: first window {r['first_s']:.3f} s, total {r['total_s']:.3f} s, "
                f"first/total {r['first_s'] / r['total_s']:.3f}, {r['audio_s']:.2f} s audio in {r['windows']} windows"
            )
    if args.snr_grid and not args.llasa_8b_shape:
        snr_grid(subject)
    if args.hf_continuous_batching and not args.llasa_8b_shape:
        hf_continuous_batching(args.models or tiny_models(), subject, args)
    engine.shutdown()
    threading.enumerate()  # the engine's thread is joined by shutdown()


if __name__ == "__main__":
    main()
