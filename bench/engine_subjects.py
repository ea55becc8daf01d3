"""What the engine benchmarks run: the tiny checkpoints or a random model of Llasa-8B's shape with its prompts, a
one-at-a-time baseline and a codec (a `Subject`), and the timed runs both `bench_engine.py` and `bench_vllm.py` make
through any engine (`engine_run`, `first_window`).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CODES_PER_SECOND = 50


def tiny_models() -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import build_cached_tiny_models

    return build_cached_tiny_models(Path(os.environ.get("LLASA_CACHE_DIR", Path.home() / ".cache" / "llasa-tts")))


@dataclass
class Subject:
    """What the benchmark runs: the HF model, its speech ids, prompts, and the one-at-a-time baseline."""

    model: Any
    token_ids: Any
    prompts: list[list[int]]
    baseline: Callable[[list[int], int, int], int]
    """baseline(prompt, seed, max_new_tokens) -> tokens sampled (end token included)."""
    codec: Any = None
    reference_codes: list[int] | None = None


def tiny_subject(models: Path, device: str) -> Subject:
    from llasa.audio import load_audio
    from llasa.config import Settings
    from llasa.models import load_llasa, load_xcodec2

    settings = Settings(
        _env_file=None, llasa_model=str(models / "llasa"), xcodec2_model=str(models / "xcodec2"), device=device
    )
    llasa = load_llasa(settings, device)
    codec = load_xcodec2(settings, device)
    reference = codec.encode(load_audio(REPO / "tests" / "data" / "audio" / "en_16k_mono.wav")[: 3 * 16000])
    texts = ["The benchmark reads this sentence aloud.", "A second voice says something else.", "第三个句子。"]
    prompts = [llasa.build_prompt_ids(t, "The quick brown fox jumps over the lazy dog.", reference) for t in texts]

    def baseline(prompt_ids: list[int], seed: int, max_new_tokens: int) -> int:
        codes, hit_limit = llasa.generate_codes_with_status(
            prompt_ids,
            max_new_tokens=max_new_tokens,
            temperature=0.8,
            top_p=1.0,
            top_k=50,
            repetition_penalty=1.0,
            seed=seed,
        )
        return len(codes) + (0 if hit_limit else 1)

    return Subject(llasa.model, llasa.token_ids, prompts, baseline, codec, reference)


# Llasa-8B = Llama-3.1-8B-Instruct dimensions with the vocabulary extended by 65,536 speech tokens + controls.
LLASA_8B_CONFIG: dict[str, Any] = {
    "vocab_size": 193800,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_act": "silu",
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "mlp_bias": False,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "rope_parameters": {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
}


def llasa_8b_config() -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(**LLASA_8B_CONFIG)


def llasa_8b_subject(device: str) -> Subject:
    import torch
    from transformers import LlamaForCausalLM, LogitsProcessorList

    from llasa.models import SpeechOnlyLogitsProcessor
    from llasa.prompt import SpeechTokenIds

    if not device.startswith("cuda"):
        raise SystemExit("--llasa-8b-shape needs --device cuda: 16 GB of bf16 weights is not a CPU benchmark")
    with torch.device(device):
        model = LlamaForCausalLM._from_config(llasa_8b_config(), dtype=torch.bfloat16).eval()
    # The real Llasa tokenizer's layout (DESIGN.md): a random model has no tokenizer to look them up in.
    ids = SpeechTokenIds(speech_start_id=128_260, speech_end_id=128_261, first_speech_id=128_264)
    generator = torch.Generator().manual_seed(0)
    # ~ the size of a real prompt: 3 s of reference codes (150) after ~100 text and template tokens
    prompts = []
    for _ in range(3):
        text = torch.randint(0, 128_000, (100,), generator=generator).tolist()
        reference = (ids.first_speech_id + torch.randint(0, 65_536, (150,), generator=generator)).tolist()
        prompts.append([*text, ids.speech_start_id, *reference])
    mask = torch.full((193_800,), float("-inf"), device=device)
    mask[ids.first_speech_id : ids.last_speech_id + 1] = 0
    mask[ids.speech_end_id] = 0

    def baseline(prompt_ids: list[int], seed: int, max_new_tokens: int) -> int:
        input_ids = torch.tensor([prompt_ids], device=device)
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=True,
                temperature=0.8,
                top_p=1.0,
                top_k=50,
                max_new_tokens=max_new_tokens,
                eos_token_id=ids.speech_end_id,
                pad_token_id=ids.speech_end_id,
                logits_processor=LogitsProcessorList([SpeechOnlyLogitsProcessor(mask)]),
            )
        return int(out.shape[1] - input_ids.shape[1])

    # A random XCodec2 of the real checkpoint's shape (the default config: decoder hidden 1024, 12 layers), in
    # float32 as the service runs it: for the time to first audio, not for sound.
    from transformers import Xcodec2Config, Xcodec2Model

    with torch.device(device):
        codec_model = Xcodec2Model(Xcodec2Config()).eval()
    reference = torch.randint(0, 65_536, (150,), generator=generator).tolist()
    return Subject(model, ids, prompts, baseline, RawCodec(codec_model), reference)


class RawCodec:
    """`decode(codes)` straight on a native `Xcodec2Model` (what `XCodec2Codec.decode` does, minus its checks)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def decode(self, codes: list[int]) -> Any:
        import torch

        device = next(self.model.parameters()).device
        with torch.inference_mode():
            indices = torch.tensor(codes, dtype=torch.long, device=device).view(1, 1, -1)
            return self.model.decode(audio_codes=indices).audio_values[0, 0].float().cpu().numpy()


def sync_device(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def engine_run(engine: Any, subject: Subject, n: int, new_tokens: int, round_index: int) -> tuple[int, float]:
    from llasa.engine.types import FinishReason, SamplingParams

    started = time.perf_counter()
    streams = [
        engine.submit(
            subject.prompts[i % len(subject.prompts)],
            SamplingParams(temperature=0.8, top_k=50, seed=1000 * round_index + i, max_new_tokens=new_tokens),
        )
        for i in range(n)
    ]
    tokens = 0
    for stream in streams:
        reason = stream.wait()
        if reason is FinishReason.ERROR:
            raise RuntimeError(f"engine sequence failed: {stream.error}")
        tokens += len(stream.codes) + (1 if reason is FinishReason.END_TOKEN else 0)
    return tokens, time.perf_counter() - started


def first_window(engine: Any, subject: Subject, codes: int, concurrency: int) -> dict[str, float]:
    """Time to the first streamed audio window / total, for one `codes`-long sequence (others alongside)."""
    from llasa.engine.streaming import StreamingDecoder
    from llasa.engine.types import SamplingParams

    others = [
        engine.submit(subject.prompts[1], SamplingParams(seed=50 + i, max_new_tokens=codes))
        for i in range(concurrency - 1)
    ]
    decoder = StreamingDecoder(subject.codec, subject.reference_codes or [])
    started = time.perf_counter()
    stream = engine.submit(subject.prompts[0], SamplingParams(seed=7, max_new_tokens=codes))
    first_s = None
    samples = 0
    index = 0
    while batch := stream.read_from(index):
        index += len(batch)
        audio = decoder.push(batch)
        if len(audio) and first_s is None:
            first_s = time.perf_counter() - started
        samples += len(audio)
    samples += len(decoder.finish())
    total_s = time.perf_counter() - started
    for other in others:
        other.cancel()
        other.wait()
    return {"first_s": first_s or total_s, "total_s": total_s, "audio_s": samples / 16000, "windows": decoder.windows}
