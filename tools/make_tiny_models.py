"""Write tiny random checkpoints in the on-disk layout of the real ones (tests and offline demo).

    python tools/make_tiny_models.py OUT

writes
- `OUT/llasa/`: a 2-layer `LlamaForCausalLM` (safetensors) + a byte-level BPE fast tokenizer with Llama-3 special
  tokens, the 8 Llasa control tokens (special) and all 65,536 `<|s_N|>` speech tokens (ordinary added tokens, as
  in the real Llasa tokenizer), and a Llama-3.x style chat template;
- `OUT/xcodec2/`: transformers' native `Xcodec2Model` with a tiny config (same 8 x [4] FSQ quantizer, so codes
  span 0..65535; 320 samples per code) + its `Xcodec2FeatureExtractor`;
- `OUT/whisper/`: a tiny multilingual Whisper converted to CTranslate2, written by `tools/tiny_whisper.py` when
  that module is present.

Everything is seeded, so two runs write the same weights; nothing touches the network. Pointing LLASA_MODEL,
XCODEC2_MODEL and WHISPER_MODEL at the three folders runs the whole service offline (the audio is noise).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

SEED = 1234
NUM_SPEECH_TOKENS = 65_536

#: Llama-3 style special tokens, in the order the real vocabulary has them (ids are whatever follows the BPE vocab).
LLAMA3_SPECIAL_TOKENS = [
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
#: Llasa's control tokens, in the order of the real checkpoint (there they are ids 128256..128263).
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

# A Llama-3.x layout, written for this project: BOS, a system block carrying the knowledge cut-off and
# "Today Date" (taken from `date_string`, else today's date like the 3.2 templates), then one header block per
# message with trimmed content closed by <|eot_id|>.
LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token }}\n"
    "{%- if date_string is not defined %}\n"
    "    {%- if strftime_now is defined %}\n"
    '        {%- set date_string = strftime_now("%d %b %Y") %}\n'
    "    {%- else %}\n"
    '        {%- set date_string = "26 Jul 2024" %}\n'
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content'] | trim %}\n"
    "    {%- set messages = messages[1:] %}\n"
    "{%- else %}\n"
    '    {%- set system_message = "" %}\n'
    "{%- endif %}\n"
    '{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}\n'
    '{{- "Cutting Knowledge Date: December 2023\\n" }}\n'
    '{{- "Today Date: " + date_string + "\\n\\n" }}\n'
    "{{- system_message }}\n"
    '{{- "<|eot_id|>" }}\n'
    "{%- for message in messages %}\n"
    "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}\n"
    "    {{- message['content'] | trim + '<|eot_id|>' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}\n"
)

# Enough English and Chinese for a BPE with useful merges; byte-level BPE encodes anything else byte by byte.
_CORPUS = [
    "Convert the text to speech:",
    "The quick brown fox jumps over the lazy dog. Hello world, this is a test of the speech system.",
    "Voice cloning reads any text in the voice of a short reference recording.",
    "It was a bright cold day in April, and the clocks were striking thirteen.",
    "Please call Stella. Ask her to bring these things with her from the store.",
    "Numbers like 1, 2, 3, 42 and 2048 appear in text too; so do questions? And exclamations!",
    "今天天气很好，我们一起去公园散步吧。",
    "语音合成系统可以用参考音频克隆声音，并朗读任意中文或英文文本。",
    "你好，世界！这是一个测试。请把这段文字转换成语音。",
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
    "人工智能正在改变我们的生活和工作方式。",
]


def _build_tokenizer(out_dir: Path) -> int:
    """Train the tiny byte-level BPE, add every special and speech token, save it; return len(tokenizer)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        min_frequency=1,
        show_progress=False,
        # every byte is in the base alphabet, so no text ever needs an unknown token
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tokenizer.train_from_iterator(_CORPUS * 4, trainer=trainer)

    specials = [AddedToken(t, special=True, normalized=False) for t in LLAMA3_SPECIAL_TOKENS + LLASA_CONTROL_TOKENS]
    tokenizer.add_special_tokens(specials)
    # Speech tokens are ordinary added tokens in the real checkpoint: decode() keeps them, skip_special_tokens
    # does not drop them.
    speech = [AddedToken(f"<|s_{i}|>", special=False, normalized=False) for i in range(NUM_SPEECH_TOKENS)]
    tokenizer.add_tokens(speech)
    bos = "<|begin_of_text|>"
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.token_to_id(bos))]
    )

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=bos,
        eos_token="<|eot_id|>",
        model_max_length=131072,  # Llama-3's; Llasa's own 2048-token budget is enforced by llasa.models
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = LLAMA3_CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return len(fast)


def _build_llasa(out_dir: Path) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out_dir.mkdir(parents=True, exist_ok=True)
    vocab_size = _build_tokenizer(out_dir)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    bos_id = tokenizer.convert_tokens_to_ids("<|begin_of_text|>")
    eos_id = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(bos_token_id=bos_id, eos_token_id=eos_id, do_sample=True)
    model.save_pretrained(out_dir, safe_serialization=True)


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
    """Write `out/llasa`, `out/xcodec2` (and `out/whisper` when tools/tiny_whisper.py exists); return `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _build_llasa(out / "llasa")
    _build_xcodec2(out / "xcodec2")
    built = ["llasa", "xcodec2"]
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
