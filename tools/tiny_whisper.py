"""Write a tiny random multilingual Whisper in faster-whisper's local-folder layout (CTranslate2).

The result holds ``model.bin``, ``config.json``, ``vocabulary.*``, ``tokenizer.json`` and
``preprocessor_config.json``: exactly what ``faster_whisper.WhisperModel(folder)`` reads, so the production
loader runs on it with no hub access. The weights are random (the "transcript" is noise), but every code path
(multilingual prompt, language detection, timestamps, VAD, offload/reload) is the real one. The decoder is
shaped so that speech gives a short, readable, repeatable transcript (one timestamp and four text tokens,
then the end) and silence, filtered by VAD, an empty one.

Everything is built offline and deterministically: the byte-level BPE is trained on a small built-in
English + Chinese corpus and the model is initialised from a fixed seed.

Usage: ``python tools/tiny_whisper.py OUT_DIR``
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SEED = 1234
# An upper bound: the small corpus runs out of merges first (about 830 text tokens).
BPE_VOCAB_SIZE = 1024
NUM_MEL_BINS = 80
D_MODEL = 64
NUM_LAYERS = 2
NUM_HEADS = 4
FFN_DIM = 128
# 30 s of audio = 3000 mel frames, halved by the second convolution: Whisper's fixed encoder length.
MAX_SOURCE_POSITIONS = 1500
# faster-whisper decodes at most 448 tokens (its max_length); the decoder needs that many positions.
MAX_TARGET_POSITIONS = 448
# The decoder is random but shaped so decoding is short and repeatable, as a trained Whisper's is (see
# _shape_decoder): logits are sharpened so beam search is confident (no temperature fallback, hence no random
# sampling), and from this decoder position on, the hidden state points at <|endoftext|>. With the 3-token
# prompt <|startoftranscript|><|lang|><|transcribe|> that gives one timestamp, four text tokens, then the end.
EOT_FROM_POSITION = 7
LOGIT_SHARPNESS = 40.0
EOT_WEIGHT = 0.15
# Whisper's timestamp tokens: <|0.00|> .. <|30.00|> in steps of 0.02 s.
NUM_TIMESTAMPS = 1501

# Whisper's language tokens, in Whisper's own order (the ids are positional: <|en|> comes right after
# <|startoftranscript|>). This is the large-v3 list (100 languages, ending with Cantonese), which is the
# set faster-whisper accepts as language codes.
WHISPER_LANGUAGES: tuple[str, ...] = (
    "en", "zh", "de", "es", "ru", "ko", "fr", "ja", "pt", "tr", "pl", "ca", "nl", "ar", "sv", "it", "id",
    "hi", "fi", "vi", "he", "uk", "el", "ms", "cs", "ro", "da", "hu", "ta", "no", "th", "ur", "hr", "bg",
    "lt", "la", "mi", "ml", "cy", "sk", "te", "fa", "lv", "bn", "sr", "az", "sl", "kn", "et", "mk", "br",
    "eu", "is", "hy", "ne", "mn", "bs", "kk", "sq", "sw", "gl", "mr", "pa", "si", "km", "sn", "yo", "so",
    "af", "oc", "ka", "be", "tg", "sd", "gu", "am", "yi", "lo", "uz", "fo", "ht", "ps", "tk", "nn", "mt",
    "sa", "lb", "my", "bo", "tl", "mg", "as", "tt", "haw", "ln", "ha", "ba", "jw", "su", "yue",
)  # fmt: skip

# Our own small training text (English + Chinese), enough for a BPE with common merges of both scripts.
_CORPUS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "Hello, this is a short test of the speech recognition system.",
    "Please read the following sentence clearly and slowly.",
    "We are building a text to speech service that clones a voice from a few seconds of audio.",
    "The weather today is sunny, with a light wind from the west.",
    "One, two, three, four, five, six, seven, eight, nine, ten.",
    "She said that the meeting would start at nine o'clock in the morning.",
    "Numbers like 2024 and 3.14 appear in many transcripts, as do names and places.",
    "What time is it? It is half past four. Thank you very much!",
    "Speech recognition turns spoken words into written text.",
    "今天天气很好，我们一起去公园散步吧。",
    "你好，这是一个语音识别系统的简单测试。",
    "请清楚而缓慢地朗读下面的句子。",
    "我们正在构建一个文本转语音服务，只需几秒钟的音频就能克隆声音。",
    "一二三四五六七八九十，百千万。",
    "他说会议将在早上九点开始。",
    "语音识别把说出的话变成文字。",
    "中文和英文混合的句子也很常见，比如 hello 世界。",
    "谢谢大家！再见。",
)


def special_tokens() -> list[str]:
    """Whisper's special tokens after the text vocabulary, in id order (timestamps not included).

    ``<|notimestamps|>`` is last on purpose: CTranslate2 and faster-whisper take the first timestamp token
    to be ``<|notimestamps|>`` + 1.
    """
    return [
        "<|endoftext|>",
        "<|startoftranscript|>",
        *(f"<|{code}|>" for code in WHISPER_LANGUAGES),
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nospeech|>",
        "<|notimestamps|>",
    ]


def timestamp_tokens() -> list[str]:
    """``<|0.00|>`` .. ``<|30.00|>``, Whisper's 1501 timestamp tokens."""
    return [f"<|{i * 0.02:.2f}|>" for i in range(NUM_TIMESTAMPS)]


def build_tokenizer() -> Any:
    """Train a small byte-level BPE and add Whisper's specials; returns a ``tokenizers.Tokenizer``.

    Layout (as in OpenAI's multilingual vocabulary): text tokens, then the empty-string token ``""``
    (CTranslate2 needs it to treat the vocabulary as multilingual), then the special tokens, then the
    timestamp tokens.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    draft = Tokenizer(models.BPE())
    draft.pre_tokenizer = byte_level
    draft.train_from_iterator(list(_CORPUS), trainer=trainer)

    # Rebuild the BPE with "" appended to its vocabulary: it cannot be trained, and as an added token an
    # empty string would match everywhere. As a plain vocabulary entry it is inert, as in OpenAI's files.
    trained = _bpe_model_json(draft)
    vocab: dict[str, int] = dict(trained["vocab"])
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    vocab[""] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in special_tokens()])
    # Timestamps are added but not "special", like the hub's Whisper tokenizers: decode() keeps them.
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in timestamp_tokens()])
    return tokenizer


def _bpe_model_json(tokenizer: Any) -> dict[str, Any]:
    """The BPE model section (vocab, merges) of a ``tokenizers.Tokenizer``'s JSON form."""
    return json.loads(tokenizer.to_str())["model"]


def _hf_tokenizer(tokenizer: Any) -> Any:
    """Wrap the ``tokenizers.Tokenizer`` so transformers (and so CTranslate2's converter) can save/load it."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=MAX_TARGET_POSITIONS,
    )


def write_hf_whisper(hf_dir: Path) -> None:
    """Write the tiny random ``WhisperForConditionalGeneration`` + tokenizer + feature extractor (HF layout)."""
    import torch
    from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    tokenizer = build_tokenizer()
    token_id = tokenizer.token_to_id
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    eot = token_id("<|endoftext|>")
    sot = token_id("<|startoftranscript|>")
    no_timestamps = token_id("<|notimestamps|>")
    assert token_id(timestamp_tokens()[0]) == no_timestamps + 1, "timestamps must follow <|notimestamps|>"
    assert token_id(timestamp_tokens()[-1]) == vocab_size - 1, "timestamps must end the vocabulary"
    # Whisper suppresses a leading space or an immediate end of text at the first sampled position.
    begin_suppress = [token_id("Ġ"), eot]

    config = WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=NUM_MEL_BINS,
        d_model=D_MODEL,
        encoder_layers=NUM_LAYERS,
        decoder_layers=NUM_LAYERS,
        encoder_attention_heads=NUM_HEADS,
        decoder_attention_heads=NUM_HEADS,
        encoder_ffn_dim=FFN_DIM,
        decoder_ffn_dim=FFN_DIM,
        max_source_positions=MAX_SOURCE_POSITIONS,
        max_target_positions=MAX_TARGET_POSITIONS,
        decoder_start_token_id=sot,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        begin_suppress_tokens=begin_suppress,
        suppress_tokens=[],
        # An output projection of its own (not the embedding matrix) lets _shape_decoder give <|endoftext|>
        # a direction no input token has.
        tie_word_embeddings=False,
    )
    torch.manual_seed(SEED)
    model = WhisperForConditionalGeneration(config).eval()
    # Byte fragments (half a UTF-8 character), "" and bare spaces would make an unreadable transcript.
    unreadable = [i for i in range(eot) if "\ufffd" in tokenizer.decode([i]) or not tokenizer.decode([i]).strip()]
    _shape_decoder(model, eot, unreadable)

    lang_to_id = {f"<|{code}|>": token_id(f"<|{code}|>") for code in WHISPER_LANGUAGES}
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_length=MAX_TARGET_POSITIONS,
        begin_suppress_tokens=begin_suppress,
        suppress_tokens=[],
        is_multilingual=True,
        lang_to_id=lang_to_id,
        task_to_id={"transcribe": token_id("<|transcribe|>"), "translate": token_id("<|translate|>")},
        no_timestamps_token_id=no_timestamps,
        prev_sot_token_id=token_id("<|startofprev|>"),
        # Word timestamps read cross-attention of the last decoder layer's heads.
        alignment_heads=[[NUM_LAYERS - 1, head] for head in range(NUM_HEADS)],
    )
    model.save_pretrained(hf_dir)
    _hf_tokenizer(tokenizer).save_pretrained(hf_dir)
    # Overwrite with the tokenizers library's own serialisation: the exact file faster-whisper reads.
    tokenizer.save(str(hf_dir / "tokenizer.json"))
    WhisperFeatureExtractor(feature_size=NUM_MEL_BINS).save_pretrained(hf_dir)


def _shape_decoder(model: Any, eot: int, unreadable: list[int]) -> None:
    """Make the random decoder end its transcript after a few tokens, deterministically.

    A plain random Whisper almost never emits <|endoftext|>: it decodes to the 224-token limit in every window
    and, its log-probabilities being poor, once more per temperature fallback (six times, sampling at random).
    That makes each call slow and its text random, and the service rejects a reference whose transcript
    comes out empty. Here a direction `u` is reserved for <|endoftext|>: no token embedding has a component
    along it, while every decoder position from EOT_FROM_POSITION on is dominated by it, so the final layer
    norm turns those states into "end of text". A large layer-norm gain makes every choice confident.
    Tokens in `unreadable` get a zero output row, so they are never the most likely.
    """
    import torch

    decoder = model.model.decoder
    width = decoder.embed_tokens.weight.shape[1]
    generator = torch.Generator().manual_seed(SEED + 1)
    u = torch.randn(width, generator=generator)
    u -= u.mean()  # layer norm removes the mean: keep the direction intact through it
    u /= u.norm()
    with torch.no_grad():
        embed = decoder.embed_tokens.weight
        embed -= torch.outer(embed @ u, u)
        positions = decoder.embed_positions.weight
        positions[:EOT_FROM_POSITION] -= torch.outer(positions[:EOT_FROM_POSITION] @ u, u)
        # Unit variance per dimension: far larger than token embeddings (std 0.02), so u dominates.
        positions[EOT_FROM_POSITION:] = u * width**0.5
        projection = model.proj_out.weight
        projection.copy_(embed)
        projection[eot] = EOT_WEIGHT * u
        projection[unreadable] = 0.0
        decoder.layer_norm.weight.fill_(LOGIT_SHARPNESS)


def write_tiny_whisper(out_dir: Path) -> None:
    """Write a tiny random multilingual Whisper as a CTranslate2 folder that faster-whisper loads offline.

    ``out_dir`` is created (or replaced if it holds an earlier build). The intermediate transformers
    checkpoint lives in a temporary folder that is removed afterwards.
    """
    import ctranslate2

    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="tiny-whisper-hf-") as tmp:
        hf_dir = Path(tmp) / "hf"
        write_hf_whisper(hf_dir)
        converter = ctranslate2.converters.TransformersConverter(
            str(hf_dir), copy_files=["tokenizer.json", "preprocessor_config.json"]
        )
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        converter.convert(str(out_dir), quantization="int8")
    logger.info("wrote tiny Whisper (CTranslate2, int8) to %s", out_dir)


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python tools/tiny_whisper.py OUT_DIR``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder to write (replaced if it exists)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    write_tiny_whisper(args.out_dir)
    print(args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
