"""Synthesis benchmark: per-stage medians through TTSService, and our generation loop against plain generate().

    python bench/bench_synthesis.py                      # tiny checkpoints (built once, cached)
    python bench/bench_synthesis.py --models DIR         # DIR/llasa, DIR/xcodec2, DIR/whisper
    python bench/bench_synthesis.py --llasa HKUSTAudio/Llasa-1B --xcodec2 ... --whisper ... --device cuda

Part 1 runs the whole pipeline N times (reference without transcript, so every stage runs) and prints the median
of each stage. Part 2 measures generation alone: `LlasaModel.generate_codes` (speech-only logits mask, cancel
check, seeded RNG fork) against a plain `model.generate` on the same prompt with the same sampling settings,
interleaved in the same run, and prints tokens/s of each and their ratio (goal: ours >= 0.95 of plain).
Part 3 loads XCodec2 in each XCODEC2_DTYPE (float32, bfloat16) and prints the median encode time of the reference,
decode time of its codes, peak VRAM of each (CUDA only) and how many reference codes the two dtypes agree on.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from engine_subjects import tiny_models  # noqa: E402

from llasa.types import SynthesisRequest  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, help="folder with llasa/, xcodec2/, whisper/ (default: tiny ones)")
    parser.add_argument("--llasa", help="LLASA_MODEL (hub id or folder); overrides --models")
    parser.add_argument("--xcodec2", help="XCODEC2_MODEL; overrides --models")
    parser.add_argument("--whisper", help="WHISPER_MODEL; overrides --models")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=100, help="speech tokens per generation (50 = 1 s)")
    parser.add_argument("--reference", type=Path, default=REPO / "tests" / "data" / "audio" / "en_16k_mono.wav")
    args = parser.parse_args()

    import torch

    from llasa.config import Settings
    from llasa.service import TTSService
    from llasa.types import GenerationParams

    models = args.models or (None if (args.llasa and args.xcodec2 and args.whisper) else tiny_models())
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-synthesis-{os.getpid()}"
    settings = Settings(
        _env_file=None,
        llasa_model=args.llasa or str(models / "llasa"),
        xcodec2_model=args.xcodec2 or str(models / "xcodec2"),
        whisper_model=args.whisper or str(models / "whisper"),
        device=args.device,
        gpu_offload_after_use=False,  # measure the stages, not offload/reload (bench_gpu_manager does that)
        output_dir=scratch / "outputs",
        temp_dir=scratch / "temp",
        voices_dir=scratch / "voices",
    )
    service = TTSService(settings)
    params = GenerationParams(max_audio_seconds=args.new_tokens / 50, seed=0)

    # Warm-up: loads every model, so part 1 measures steady-state requests.
    service.synthesize(SynthesisRequest("Warm up.", reference_audio=args.reference, params=params))

    stages: dict[str, list[float]] = {}
    for run in range(args.runs):
        params.seed = run
        result = service.synthesize(
            SynthesisRequest("The benchmark reads this sentence aloud.", reference_audio=args.reference, params=params)
        )
        for stage, seconds in result.timings_s.items():
            stages.setdefault(stage, []).append(seconds)
        stages.setdefault("audio seconds", []).append(result.duration_s)

    # Part 2: generation alone, ours against plain generate(), interleaved.
    with service.manager.use("llasa") as llasa:
        prepared_codes = list(range(0, 65536, 65536 // 250))[:250]  # a 5 s reference's worth of codes
        prompt_ids = llasa.build_prompt_ids("The benchmark reads this sentence aloud.", "A reference.", prepared_codes)
        end_id = llasa.token_ids.speech_end_id
        input_ids = torch.tensor([prompt_ids], device=llasa.model.device)
        sampling = {"temperature": 0.8, "top_p": 1.0, "top_k": 50, "repetition_penalty": 1.0}
        ours: list[float] = []
        plain: list[float] = []

        def run_ours(seed: int) -> float:
            started = time.perf_counter()
            codes, hit_limit = llasa.generate_codes_with_status(
                prompt_ids, max_new_tokens=args.new_tokens, seed=seed, should_stop=lambda: False, **sampling
            )
            # Count every generated token, the end token included, as the baseline does.
            return (len(codes) + (0 if hit_limit else 1)) / (time.perf_counter() - started)

        def run_plain(seed: int) -> float:
            torch.manual_seed(seed)
            started = time.perf_counter()
            with torch.inference_mode():
                output = llasa.model.generate(
                    input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    do_sample=True,
                    max_new_tokens=args.new_tokens,
                    eos_token_id=end_id,
                    pad_token_id=end_id,
                    **sampling,
                )
            return (output.shape[1] - input_ids.shape[1]) / (time.perf_counter() - started)

        for run in range(args.runs):
            # Alternate which goes first, so warm caches and clock ramps favour neither.
            if run % 2 == 0:
                ours.append(run_ours(run))
                plain.append(run_plain(run))
            else:
                plain.append(run_plain(run))
                ours.append(run_ours(run))
    service.shutdown()
    codec_rows = _codec_dtypes(settings, args.reference, args.runs)

    stamp = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    print(f"\n# bench_synthesis  {stamp}  {platform.node()}  device={service.manager.device}")
    print(f"# llasa={settings.llasa_model}  runs={args.runs}  new tokens={args.new_tokens}  torch={torch.__version__}")
    print(f"# cpu cores={os.cpu_count()}  prompt tokens={len(prompt_ids)}\n")
    print("| stage | median (s) | min (s) | max (s) |")
    print("|---|---|---|---|")
    for stage, values in stages.items():
        print(f"| {stage} | {statistics.median(values):.3f} | {min(values):.3f} | {max(values):.3f} |")
    ours_median, plain_median = statistics.median(ours), statistics.median(plain)
    print("\n| generation | tokens/s (median) | min | max |")
    print("|---|---|---|---|")
    print(f"| ours: generate_codes | {ours_median:.1f} | {min(ours):.1f} | {max(ours):.1f} |")
    print(f"| baseline: plain model.generate | {plain_median:.1f} | {min(plain):.1f} | {max(plain):.1f} |")
    print(f"\nratio ours / plain = {ours_median / plain_median:.3f}  (goal >= 0.95)")
    print("\n| XCODEC2_DTYPE | encode (s, median) | decode (s, median) | peak VRAM | codes equal to float32's |")
    print("|---|---|---|---|---|")
    for row in codec_rows:
        print(f"| {row['dtype']} | {row['encode']:.4f} | {row['decode']:.4f} | {row['peak']} | {row['agree']} |")


def _codec_dtypes(base: Any, reference: Path, runs: int) -> list[dict[str, Any]]:
    """Encode/decode medians and peak VRAM of XCodec2 loaded in each dtype, on the benchmark's device."""
    import torch

    from llasa.audio import load_audio
    from llasa.models import load_xcodec2

    samples = load_audio(reference, max_seconds=base.max_reference_seconds)
    cuda = base.device != "cpu" and torch.cuda.is_available()
    rows: list[dict[str, Any]] = []
    float32_codes: list[int] = []
    for dtype in ("float32", "bfloat16"):
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        codec = load_xcodec2(base.model_copy(update={"xcodec2_dtype": dtype}), "cuda" if cuda else "cpu")
        encode_s, decode_s = [], []
        codes: list[int] = []
        for _ in range(runs):
            started = time.perf_counter()
            codes = codec.encode(samples)
            if cuda:
                torch.cuda.synchronize()
            encode_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            codec.decode(codes)
            if cuda:
                torch.cuda.synchronize()
            decode_s.append(time.perf_counter() - started)
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if cuda else "n/a (CPU)"
        if dtype == "float32":
            float32_codes = codes
        same = sum(a == b for a, b in zip(codes, float32_codes, strict=False))
        rows.append(
            {
                "dtype": dtype,
                "encode": statistics.median(encode_s),
                "decode": statistics.median(decode_s),
                "peak": peak,
                "agree": f"{same}/{len(codes)}",
            }
        )
        codec.close()
        del codec
    return rows


if __name__ == "__main__":
    main()
