"""Write tiny random checkpoints in the on-disk layout of the real ones (tests and offline demo).

    python tools/make_tiny_models.py OUT

writes
- `OUT/llasa/`: a 2-layer `LlamaForCausalLM` (safetensors; head_dim 32, since serving engines' CPU kernels refuse
  16) with the Llasa tokenizer built the way Llasa's training code built it: Meta's Llama-3 BPE (the ranks file
  `llama_models/llama3/tokenizer.model` of the `llama-models` package; only that file is read), the 256 Llama-3
  special tokens at ids 128000-128255, then the 8 Llasa control tokens and the 65,536 speech tokens added as
  ordinary (not special) tokens with `add_tokens`: vocabulary 193,800, `<|SPEECH_GENERATION_START|>` = 128260,
  `<|SPEECH_GENERATION_END|>` = 128261, `<|s_0|>` = 128264, as in the real checkpoints. Chat template: Llama-3.1's
  (Llasa-8B's base), in today's format (`chat_template.jinja`). The generation config is a Llama-3.x-Instruct's
  (temperature 0.6, top_p 0.9, three eos ids), so a checkpoint default that leaks into sampling shows up in tests;
- `OUT/llasa-legacy/`: the same weights with the tokenizer in the older format the published Llasa checkpoints
  use (`PreTrainedTokenizerFast`, the chat template inside `tokenizer_config.json`, pad = `<|eot_id|>`,
  `model_max_length` 2048) and Llama-3.2's template (Llasa-1B / 3B's base);
- `OUT/xcodec2/`: transformers' native `Xcodec2Model` with a tiny config (same 8 x [4] FSQ quantizer, so codes
  span 0..65535; 320 samples per code) + its `Xcodec2FeatureExtractor`;
- `OUT/whisper/`: a tiny multilingual Whisper converted to CTranslate2, written by `tools/tiny_whisper.py`.

Everything is seeded, so two runs write the same files; nothing touches the network. Pointing LLASA_MODEL,
XCODEC2_MODEL and WHISPER_MODEL at the folders runs the whole service offline (the audio is noise).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import shutil
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

SEED = 1234
NUM_SPEECH_TOKENS = 65_536
#: Chat templates shipped beside this script (Llama-3.1 for the 8B, Llama-3.2 for the 1B and 3B).
TEMPLATES_DIR = Path(__file__).with_name("chat_templates")
LLAMA31_TEMPLATE = "llama-3.1.jinja"
LLAMA32_TEMPLATE = "llama-3.2.jinja"

#: The regular expression Llama-3 splits text with before BPE (Meta's `tokenizer.py`).
LLAMA3_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
#: Llama-3.1's 256 special tokens, ids 128000-128255 in this order.
LLAMA3_NAMED_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
]
NUM_LLAMA3_SPECIALS = 256
LLAMA3_SPECIAL_TOKENS = LLAMA3_NAMED_SPECIALS + [
    f"<|reserved_special_token_{i}|>" for i in range(3, 3 + NUM_LLAMA3_SPECIALS - len(LLAMA3_NAMED_SPECIALS))
]
#: Llasa's control tokens, in the order of the real checkpoint (ids 128256..128263 there).
LLASA_CONTROL_TOKENS = [
    "<|TEXT_GENERATION_START|>",
    "<|TEXT_GENERATION_END|>",
    "<|TEXT_UNDERSTANDING_START|>",
    "<|TEXT_UNDERSTANDING_END|>",
    "<|SPEECH_GENERATION_START|>",
    "<|SPEECH_GENERATION_END|>",
    "<|SPEECH_UNDERSTANDING_START|>",
    "<|SPEECH_UNDERSTANDING_END|>",
]
BOS_TOKEN = "<|begin_of_text|>"
EOT_TOKEN = "<|eot_id|>"
#: A Llama-3.1/3.2-Instruct checkpoint's generation defaults (generation_config.json). Llasa never samples with
#: them: the service passes every sampling parameter itself.
INSTRUCT_TEMPERATURE = 0.6
INSTRUCT_TOP_P = 0.9
INSTRUCT_EOS_TOKENS = ["<|end_of_text|>", "<|eom_id|>", EOT_TOKEN]


def llama3_ranks_file() -> Path:
    """Meta's Llama-3 BPE ranks, as the `llama-models` package ships them (the package itself is not imported)."""
    spec = importlib.util.find_spec("llama_models")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "the llama-models package is not installed; it ships the Llama-3 tokenizer these checkpoints use "
            "(pip install -r requirements-tiny.txt)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "llama3" / "tokenizer.model"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: reinstall llama-models (requirements-tiny.txt)")
    return path


def _build_tokenizer() -> object:
    """The Llasa tokenizer (a transformers fast tokenizer), built as Llasa's training code built it."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(
        vocab_file=str(llama3_ranks_file()),
        pattern=LLAMA3_SPLIT_PATTERN,
        extra_special_tokens=LLAMA3_SPECIAL_TOKENS,
    ).converted()
    bos_id = backend.token_to_id(BOS_TOKEN)
    # As Meta's tokenizer.json: byte-level offsets, then one BOS in front of every encoded text.
    backend.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS_TOKEN}:0 $A:0",
                pair=f"{BOS_TOKEN}:0 $A:0 {BOS_TOKEN}:1 $B:1",
                special_tokens=[(BOS_TOKEN, bos_id)],
            ),
        ]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOT_TOKEN,
        model_max_length=131072,  # Llama-3.1's; Llasa's own 2048-token budget is enforced by llasa.models
        clean_up_tokenization_spaces=False,
    )
    # train_tts.py: `tokenizer.add_tokens(Start_End_tokens + new_speech_tokens)`: plain strings, so ordinary
    # (non-special) added tokens.
    added = tokenizer.add_tokens(LLASA_CONTROL_TOKENS + [f"<|s_{i}|>" for i in range(NUM_SPEECH_TOKENS)])
    if added != len(LLASA_CONTROL_TOKENS) + NUM_SPEECH_TOKENS:
        raise RuntimeError(f"added {added} Llasa tokens, expected {len(LLASA_CONTROL_TOKENS) + NUM_SPEECH_TOKENS}")
    return tokenizer


def _write_legacy_tokenizer(tokenizer: object, out_dir: Path) -> None:
    """Save `tokenizer` in the older layout of the published Llasa checkpoints, with Llama-3.2's template."""
    tokenizer.save_pretrained(out_dir)
    (out_dir / "chat_template.jinja").unlink(missing_ok=True)
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("backend", None)  # written by transformers 5 only
    config.update(
        {
            # transformers 4 listed every added token here as well as in tokenizer.json
            "added_tokens_decoder": {
                str(token_id): {
                    "content": token.content,
                    "lstrip": token.lstrip,
                    "normalized": token.normalized,
                    "rstrip": token.rstrip,
                    "single_word": token.single_word,
                    "special": token.special,
                }
                for token_id, token in sorted(tokenizer.added_tokens_decoder.items())
            },
            "model_input_names": ["input_ids", "attention_mask"],
            "tokenizer_class": "PreTrainedTokenizerFast",
            "chat_template": (TEMPLATES_DIR / LLAMA32_TEMPLATE).read_text(),
            "pad_token": EOT_TOKEN,
            "model_max_length": 2048,
            "padding_side": "right",
        }
    )
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def _build_llasa(out_dir: Path, legacy_dir: Path) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer()
    tokenizer.chat_template = (TEMPLATES_DIR / LLAMA31_TEMPLATE).read_text()
    tokenizer.save_pretrained(out_dir)
    bos_id = tokenizer.convert_tokens_to_ids(BOS_TOKEN)
    eos_ids = tokenizer.convert_tokens_to_ids(INSTRUCT_EOS_TOKENS)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,  # grouped-query attention, as the real 1B / 3B / 8B have
        head_dim=32,  # the smallest head size vLLM's CPU attention accepts
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=bos_id,
        eos_token_id=eos_ids,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=bos_id,
        eos_token_id=eos_ids,
        do_sample=True,
        temperature=INSTRUCT_TEMPERATURE,
        top_p=INSTRUCT_TOP_P,
    )
    model.save_pretrained(out_dir, safe_serialization=True)

    legacy_dir.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copyfile(out_dir / name, legacy_dir / name)
    _write_legacy_tokenizer(tokenizer, legacy_dir)


def _build_xcodec2(out_dir: Path) -> None:
    import torch
    from transformers import Wav2Vec2BertConfig, Xcodec2Config, Xcodec2FeatureExtractor, Xcodec2Model

    out_dir.mkdir(parents=True, exist_ok=True)
    semantic = Wav2Vec2BertConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        feature_projection_input_dim=160,  # 80 mel bins x stride 2, what Xcodec2FeatureExtractor produces
        conv_depthwise_kernel_size=3,
    )
    # 64 wide: the decoder's GroupNorm has 32 groups, so 64 channels keep one-code decodes valid (as in the real one)
    hidden_size = 64
    config = Xcodec2Config(
        hidden_size=hidden_size,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        encoder_hidden_size=4,
        downsampling_ratios=[2, 2, 4, 4, 5],  # 320 samples per code, as the real codec
        semantic_model_config=semantic,
        # the quantizer projects the concatenated acoustic + semantic features (see ENVIRONMENT.md)
        quantization_dim=hidden_size + semantic.hidden_size,
        quantization_levels=[4] * 8,  # 4**8 = 65,536 codes
    )
    torch.manual_seed(SEED)
    model = Xcodec2Model(config).eval()
    with torch.no_grad():
        # Random weights at the default init scale put every frame in the same FSQ cell (one code for all
        # audio); a wider input projection spreads frames over the codebook, so tests see varied codes.
        model.quantizer.project_in.weight.mul_(200.0)
        # The ISTFT head's first half is log-magnitude: at the default init the decoded noise sits at -45.6 dBFS,
        # on the dead-air guard's threshold. +ln(10) scales it by 10 (about -26 dBFS), the level of normalised
        # speech, so a take of the tiny codec reads as sound and tests that want silence make it on purpose.
        bins = model.acoustic_decoder.head.linear.bias.shape[0] // 2
        model.acoustic_decoder.head.linear.bias[:bins].add_(math.log(10.0))
    model.save_pretrained(out_dir, safe_serialization=True)
    Xcodec2FeatureExtractor(hop_length=config.hop_length).save_pretrained(out_dir)


def _build_whisper(out_dir: Path) -> bool:
    """Write OUT/whisper with the teammate's tools/tiny_whisper.py; False when that module does not exist yet."""
    path = Path(__file__).with_name("tiny_whisper.py")
    if not path.exists():
        logger.warning("tools/tiny_whisper.py not found; skipping the tiny Whisper")
        return False
    spec = importlib.util.spec_from_file_location("tiny_whisper", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.write_tiny_whisper(out_dir)
    return True


def build_tiny_models(out: Path) -> Path:
    """Write `out/llasa`, `out/llasa-legacy`, `out/xcodec2` (and `out/whisper`); return `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _build_llasa(out / "llasa", out / "llasa-legacy")
    _build_xcodec2(out / "xcodec2")
    built = ["llasa", "llasa-legacy", "xcodec2"]
    if _build_whisper(out / "whisper"):
        built.append("whisper")
    (out / "tiny_models.json").write_text(json.dumps({"seed": SEED, "models": built}, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write llasa/, xcodec2/ and whisper/ into")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = build_tiny_models(args.out)
    print(f"tiny models written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
