"""The three models behind the service, each a `ManagedModel` the GPU manager moves between GPU and CPU RAM.

- `LlasaModel`: Llasa (a plain `LlamaForCausalLM`) + its tokenizer; turns a prompt into speech codes.
- `XCodec2Codec`: transformers' native `Xcodec2Model` + `Xcodec2FeatureExtractor` (not the `xcodec2` pip package,
  which pins torch 2.5 and does not load under transformers 5); 16 kHz audio <-> codes, 320 samples per code.
- `WhisperTranscriber`: faster-whisper (CTranslate2) for reference transcripts.

Loaders take a hub id (or a faster-whisper size name) or a local folder, from LLASA_MODEL / XCODEC2_MODEL /
WHISPER_MODEL, honour HF_TOKEN / HF_ENDPOINT / HF_HOME, and raise `ModelUnavailable` naming the model and the
variable to set when the weights cannot be found, downloaded or loaded, or when the checkpoint lacks weights the
architecture needs (transformers would fill those with random values and only print a table). Llasa's weights are
bf16 on CUDA and fp32 on the CPU; XCodec2's are XCODEC2_DTYPE (fp32 by default) everywhere.
Nothing is loaded at import; `register_models()` only registers loaders with the manager.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from llasa import prompt
from llasa.config import Settings
from llasa.errors import InvalidInput, ModelUnavailable, TTSError
from llasa.types import SAMPLE_RATE, SAMPLES_PER_CODE, Segment, TranscriptionResult

if TYPE_CHECKING:
    from gpu_manager import MultiModelGPUManager

logger = logging.getLogger(__name__)

LLASA_CONTEXT_TOKENS = 2048
"""Llasa was trained on 2048-token sequences: prompt + reference codes + new codes must fit."""

LLASA_FILES = ["*.json", "*.safetensors", "*.jinja", "tokenizer*"]
XCODEC2_FILES = ["*.json", "*.safetensors"]
WHISPER_FILES = ["config.json", "preprocessor_config.json", "model.bin", "tokenizer.json", "vocabulary.*"]


# --------------------------------------------------------------------------------------------------------------
# Where the weights come from


def _torch_device(device: str) -> str:
    return "cuda:0" if device == "cuda" else device


def _looks_like_path(reference: str) -> bool:
    """A hub id is `owner/name` (or a bare faster-whisper size); anything else names a folder on disk."""
    return reference.startswith(("/", ".", "~")) or "\\" in reference or reference.count("/") > 1


def resolve_model_dir(
    reference: str,
    settings: Settings,
    *,
    variable: str,
    what: str,
    allow_patterns: list[str],
    repo_id: str | None = None,
) -> Path:
    """Local folder holding the checkpoint `reference` (a folder, or a hub id downloaded into the HF cache).

    `repo_id` overrides the hub id to fetch (faster-whisper size names map to a repository). Raises
    ModelUnavailable naming `variable` when the folder is missing or the download fails; a checkpoint already in
    the cache is used without the network.
    """
    reference = reference.strip()
    if not reference:
        raise ModelUnavailable(f"{variable} is empty: set it to a hub id or a local {what} folder")
    local = Path(reference).expanduser()
    if local.is_dir():
        return local
    if local.exists() or (repo_id is None and _looks_like_path(reference)):
        raise ModelUnavailable(
            f"{what} folder {reference} does not exist or is not a folder: set {variable} to a local {what} "
            "checkpoint folder or to a Hugging Face hub id"
        )
    from huggingface_hub import snapshot_download

    hub_id = repo_id or reference
    try:
        path = snapshot_download(
            hub_id,
            allow_patterns=allow_patterns,
            token=settings.hf_token or None,
            endpoint=settings.hf_endpoint or None,
            cache_dir=Path(settings.hf_home).expanduser() / "hub" if settings.hf_home else None,
        )
    except Exception as e:
        raise ModelUnavailable(
            f"{what} {hub_id} is not a local folder, could not be downloaded and is not in the Hugging Face "
            f"cache ({type(e).__name__}: {e}). Set {variable} to a local folder holding the checkpoint, or make "
            "the hub reachable (HF_ENDPOINT for a mirror, HF_TOKEN for gated models, HF_HOME for the cache folder)"
        ) from e
    return Path(path)


def _weights_bytes(folder: Path, patterns: Sequence[str]) -> int:
    return sum(p.stat().st_size for pattern in patterns for p in folder.glob(pattern) if p.is_file())


def _estimate_bytes(reference: str, patterns: Sequence[str]) -> int | None:
    """Size on disk of a local checkpoint's weights (the manager's first VRAM admission); None for a hub id."""
    folder = Path(reference).expanduser()
    if not folder.is_dir():
        return None
    return _weights_bytes(folder, patterns) or None


def _pinned(module: torch.nn.Module) -> Any:
    from gpu_manager import PinnedWeights

    return PinnedWeights(module)


def _check_loading_info(info: dict[str, Any], *, what: str, reference: str, variable: str) -> None:
    """Refuse a checkpoint that lacks weights, or holds some of the wrong shape (`from_pretrained`'s loading info).

    transformers initialises such weights at random and only prints a report, so an incomplete checkpoint would
    load and produce noise. Keys it expects to be absent (a tied `lm_head.weight`, `_keys_to_ignore_on_load_missing`)
    are already left out of `missing_keys` by transformers.
    """
    missing = sorted(info.get("missing_keys") or ())
    # entries are (key, checkpoint shape, model shape)
    mismatched = sorted(str(k[0]) if isinstance(k, tuple) else str(k) for k in info.get("mismatched_keys") or ())
    unexpected = sorted(info.get("unexpected_keys") or ())
    if unexpected:
        logger.warning(
            "%s checkpoint %s has %d weights the model does not use (e.g. %s); ignoring them",
            what,
            reference,
            len(unexpected),
            unexpected[0],
        )
    if not missing and not mismatched:
        return

    def some(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")

    problems = []
    if missing:
        problems.append(f"{len(missing)} weights missing, e.g. {some(missing)}")
    if mismatched:
        problems.append(f"{len(mismatched)} weights of the wrong shape, e.g. {some(mismatched)}")
    raise ModelUnavailable(
        f"{what} checkpoint {reference} is incomplete ({'; '.join(problems)}): loading it would fill them with "
        f"random values. Set {variable} to a complete checkpoint (re-download it, or point it at the right folder)"
    )


# The tokenizer of a Llasa checkpoint takes seconds to load (transformers copies 65,536 added-token records in
# Python), and a read-only tokenizer is safe to share: keep one per folder for the life of the process, so a
# model evicted and loaded again does not pay it twice.
_TOKENIZERS: dict[tuple[str, int], Any] = {}
_TOKENIZERS_LOCK = threading.Lock()


def _load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    marker = folder / "tokenizer.json"
    key = (str(folder.resolve()), marker.stat().st_mtime_ns if marker.exists() else 0)
    with _TOKENIZERS_LOCK:
        cached = _TOKENIZERS.get(key)
        if cached is None:
            cached = AutoTokenizer.from_pretrained(folder)
            _TOKENIZERS[key] = cached
        return cached


# --------------------------------------------------------------------------------------------------------------
# Llasa


class SpeechOnlyLogitsProcessor(LogitsProcessor):
    """Only speech tokens and the end token may be sampled: adds a precomputed 0 / -inf row to the logits.

    The row is built once per device and dtype, so each step costs one vector add (the generation loop stays as
    fast as plain `model.generate`).
    """

    def __init__(self, mask: torch.Tensor) -> None:
        self.mask = mask

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return scores + self.mask[: scores.shape[-1]]


class CancelCriteria(StoppingCriteria):
    """Stops generation as soon as `should_stop()` returns True (a cancelled request)."""

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self.should_stop = should_stop

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        stop = bool(self.should_stop())
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class GeneratedCodes(NamedTuple):
    """What `LlasaModel.generate_codes_with_status` returns (unpacks as `codes, hit_limit`)."""

    codes: list[int]
    """Speech codes 0..65535, without the end token."""
    hit_limit: bool
    """True when generation stopped at the token limit (`max_new_tokens` or the context) without sampling the end
    token: the speech was cut off. False when the end token came, or `should_stop()` stopped it earlier."""


class LlasaModel:
    """Llasa: a Llama-3 causal LM that continues a chat prompt with XCodec2 speech tokens (`ManagedModel`)."""

    def __init__(self, model: Any, tokenizer: Any, *, name: str = "llasa") -> None:
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.token_ids = prompt.lookup_token_ids(tokenizer)
        vocab_size = int(model.get_output_embeddings().weight.shape[0])
        if vocab_size <= self.token_ids.last_speech_id:
            raise ModelUnavailable(
                f"{name}: the model's vocabulary ({vocab_size}) does not cover its tokenizer's speech tokens "
                f"(up to id {self.token_ids.last_speech_id}); the weights and tokenizer do not belong together"
            )
        allowed = torch.full((vocab_size,), float("-inf"), dtype=torch.float32)
        allowed[self.token_ids.first_speech_id : self.token_ids.last_speech_id + 1] = 0.0
        allowed[self.token_ids.speech_end_id] = 0.0
        self._mask_cpu = allowed
        self._masks: dict[tuple[str, torch.dtype], torch.Tensor] = {}
        self._weights = _pinned(model)

    @property
    def device(self) -> str:
        return self._weights.device

    # --- ManagedModel ------------------------------------------------------------------------------------------

    def move_to(self, device: str) -> None:
        """Offload to "cpu" or reload onto "cuda:0" (pinned host copy: one host-to-device copy)."""
        self._weights.move_to(_torch_device(device))
        self._masks.clear()  # the masks of the old device are not needed there any more

    def size_bytes(self) -> int:
        return int(self._weights.size_bytes())

    def close(self) -> None:
        """Drop the weights; the object is unusable afterwards."""
        self._weights.close()
        self._masks.clear()
        self.model = None

    # --- prompt ------------------------------------------------------------------------------------------------

    def count_text_tokens(self, text: str) -> int:
        """Tokens `text` takes in a prompt (no BOS)."""
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def build_prompt_ids(self, text: str, reference_text: str | None, reference_codes: Sequence[int]) -> list[int]:
        """Token ids of the Llasa prompt for `text`, conditioned on the reference transcript and codes if given."""
        return prompt.build_prompt_ids(self.tokenizer, text, reference_text, reference_codes)

    # --- generation --------------------------------------------------------------------------------------------

    def _mask(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (str(device), dtype)
        mask = self._masks.get(key)
        if mask is None:
            mask = self._mask_cpu.to(device=device, dtype=dtype)
            self._masks[key] = mask
        return mask

    def generate_codes(
        self,
        prompt_ids: list[int],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        top_k: int,
        repetition_penalty: float,
        seed: int | None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[int]:
        """Sample speech codes (0..65535) continuing `prompt_ids`, until <|SPEECH_GENERATION_END|>,
        `max_new_tokens`, the 2048-token context, or `should_stop()`.

        Only speech tokens and the end token can be sampled. The same `seed` gives the same codes (the seed is
        applied to a forked RNG state, so the process's global RNG is left as it was); `seed=None` is random.
        `generate_codes_with_status` also says whether the end token was reached.
        """
        return self.generate_codes_with_status(
            prompt_ids,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            repetition_penalty=repetition_penalty,
            seed=seed,
            should_stop=should_stop,
        ).codes

    def generate_codes_with_status(
        self,
        prompt_ids: list[int],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        top_k: int,
        repetition_penalty: float,
        seed: int | None,
        should_stop: Callable[[], bool] | None = None,
    ) -> GeneratedCodes:
        """`generate_codes`, plus whether it stopped at the token limit without the end token.

        Returns `GeneratedCodes(codes, hit_limit)`; `hit_limit` is True when `max_new_tokens` (or the room left in
        the 2048-token context) ran out before <|SPEECH_GENERATION_END|>, i.e. the speech was cut off.
        """
        if self.model is None:
            raise ModelUnavailable(f"{self.name} was released; load it again")
        if not prompt_ids:
            raise InvalidInput("the prompt is empty")
        room = LLASA_CONTEXT_TOKENS - len(prompt_ids)
        if room < 1:
            raise InvalidInput(
                f"the prompt takes {len(prompt_ids)} tokens, the whole {LLASA_CONTEXT_TOKENS}-token context; "
                "use a shorter reference or text"
            )
        max_new_tokens = min(int(max_new_tokens), room)
        if max_new_tokens < 1:
            return GeneratedCodes([], hit_limit=True)  # a zero budget cuts off whatever was to be said
        device = self.model.device
        input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
        processors = LogitsProcessorList([SpeechOnlyLogitsProcessor(self._mask(device, torch.float32))])
        criteria = StoppingCriteriaList([CancelCriteria(should_stop)] if should_stop is not None else [])
        end_id = self.token_ids.speech_end_id
        kwargs: dict[str, Any] = {
            "attention_mask": torch.ones_like(input_ids),
            "max_new_tokens": max_new_tokens,
            "do_sample": True,
            "temperature": float(temperature),
            "top_p": float(top_p),
            "top_k": int(top_k),
            "repetition_penalty": float(repetition_penalty),
            "eos_token_id": end_id,
            "pad_token_id": end_id,
            "logits_processor": processors,
            "stopping_criteria": criteria,
        }
        fork_devices = [device] if device.type == "cuda" else []
        with torch.inference_mode(), torch.random.fork_rng(devices=fork_devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(int(seed))
            output = self.model.generate(input_ids, **kwargs)
        new_ids = output[0, input_ids.shape[1] :].tolist()
        # A cancelled run stops short of the limit; one that sampled the end token has it in new_ids.
        hit_limit = end_id not in new_ids and len(new_ids) >= max_new_tokens
        return GeneratedCodes(prompt.parse_speech_ids(new_ids, self.token_ids), hit_limit)


def load_llasa(settings: Settings, device: str) -> LlasaModel:
    """Load LLASA_MODEL onto `device` ("cuda:0" in bf16, "cpu" in fp32)."""
    from transformers import AutoModelForCausalLM

    device = _torch_device(device)
    started = time.perf_counter()
    folder = resolve_model_dir(
        settings.llasa_model, settings, variable="LLASA_MODEL", what="Llasa", allow_patterns=LLASA_FILES
    )
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    # Any failure in here (a corrupt safetensors header, a config of the wrong shape, a state-dict shape error
    # raised as RuntimeError...) is the checkpoint's fault: say which variable points at it.
    try:
        tokenizer = _load_tokenizer(folder)
        # Loaded on the CPU first: PinnedWeights keeps that host copy for fast offload/reload.
        model, info = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, output_loading_info=True)
        model.eval()
        _check_loading_info(info, what="Llasa", reference=settings.llasa_model, variable="LLASA_MODEL")
    except TTSError:
        raise
    except Exception as e:
        raise ModelUnavailable(
            f"Llasa checkpoint {settings.llasa_model} could not be loaded ({type(e).__name__}: {e}); set "
            "LLASA_MODEL to a folder holding a complete Llasa checkpoint (config.json, *.safetensors, "
            "tokenizer.json) or to its hub id"
        ) from e
    try:
        llasa = LlasaModel(model, tokenizer)
    except TTSError:
        raise
    except ValueError as e:
        raise ModelUnavailable(f"{settings.llasa_model} is not a Llasa checkpoint ({e}); check LLASA_MODEL") from e
    except Exception as e:
        raise ModelUnavailable(
            f"Llasa checkpoint {settings.llasa_model} could not be prepared ({type(e).__name__}: {e}); check "
            "LLASA_MODEL"
        ) from e
    llasa.move_to(device)
    logger.info("llasa loaded from %s on %s (%s) in %.2f s", folder, device, dtype, time.perf_counter() - started)
    return llasa


# --------------------------------------------------------------------------------------------------------------
# XCodec2


class XCodec2Codec:
    """XCodec2 speech codec: 16 kHz mono audio <-> one code (0..65535) per 320 samples (`ManagedModel`).

    Native API facts this class relies on (transformers 5.24): the feature extractor pads the audio by one sample
    and then up to a multiple of 320, so `encode` of N samples gives N // 320 + 1 codes (151 for 3 s), as the
    original XCodec2's `encode_code` did; `Xcodec2Model.decode(audio_codes)` returns exactly `codes * 320`
    samples (shape `(batch, 1, samples)`), so decode needs no trimming.
    """

    def __init__(self, model: Any, feature_extractor: Any, *, name: str = "xcodec2") -> None:
        self.name = name
        self.model = model
        self.feature_extractor = feature_extractor
        hop = int(model.config.hop_length)
        if hop != SAMPLES_PER_CODE or int(feature_extractor.sampling_rate) != SAMPLE_RATE:
            raise ValueError(
                f"{name}: expected {SAMPLES_PER_CODE} samples per code at {SAMPLE_RATE} Hz, the checkpoint has "
                f"{hop} at {feature_extractor.sampling_rate} Hz"
            )
        self.codebook_size = int(np.prod(model.config.quantization_levels))
        self._weights = _pinned(model)

    @property
    def device(self) -> str:
        return self._weights.device

    def move_to(self, device: str) -> None:
        self._weights.move_to(_torch_device(device))

    def size_bytes(self) -> int:
        return int(self._weights.size_bytes())

    def close(self) -> None:
        self._weights.close()
        self.model = None

    def encode(self, samples: np.ndarray) -> list[int]:
        """Codes of float32 mono 16 kHz `samples` (50 per second; N samples -> N // 320 + 1 codes)."""
        if self.model is None:
            raise ModelUnavailable(f"{self.name} was released; load it again")
        audio = np.asarray(samples, dtype=np.float32)
        if audio.ndim != 1 or audio.size == 0:
            raise InvalidInput(f"the codec needs non-empty mono audio, got an array of shape {audio.shape}")
        features = self.feature_extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        device, dtype = self.model.device, self.model.dtype
        with torch.inference_mode():
            out = self.model.encode(
                input_values=features["input_values"].to(device=device, dtype=dtype),
                input_features=features["input_features"].to(device=device, dtype=dtype),
                input_features_mask=features["input_features_mask"].to(device),
            )
        return [int(c) for c in out.audio_codes[0, 0].tolist()]

    def decode(self, codes: Sequence[int]) -> np.ndarray:
        """Float32 mono 16 kHz audio of `codes`: exactly len(codes) * 320 samples."""
        if self.model is None:
            raise ModelUnavailable(f"{self.name} was released; load it again")
        if len(codes) == 0:
            return np.zeros(0, dtype=np.float32)
        indices = torch.as_tensor(list(codes), dtype=torch.long)
        if int(indices.min()) < 0 or int(indices.max()) >= self.codebook_size:
            raise InvalidInput(f"speech codes must be in 0..{self.codebook_size - 1}")
        with torch.inference_mode():
            out = self.model.decode(audio_codes=indices.view(1, 1, -1).to(self.model.device))
        audio = out.audio_values[0, 0].float().cpu().numpy()
        expected = len(codes) * SAMPLES_PER_CODE
        if audio.shape[0] != expected:  # the native decode is exact today; keep the contract if that changes
            audio = np.pad(audio, (0, max(0, expected - audio.shape[0])))[:expected]
        return np.ascontiguousarray(audio, dtype=np.float32)


def load_xcodec2(settings: Settings, device: str) -> XCodec2Codec:
    """Load XCODEC2_MODEL (native transformers format) onto `device`, in XCODEC2_DTYPE (float32 by default).

    float32 everywhere by default, unlike Llasa: every official path (the model card, transformers' docs and
    integration test, the scripts that extracted Llasa's training codes) runs the codec in float32, so reference
    codes computed in bf16 could differ from the ones the model learned from. With bfloat16 the native model still
    runs the quantizer (code assignment) and the iSTFT head in float32.
    """
    from transformers import AutoFeatureExtractor, Xcodec2Model

    device = _torch_device(device)
    started = time.perf_counter()
    folder = resolve_model_dir(
        settings.xcodec2_model, settings, variable="XCODEC2_MODEL", what="XCodec2", allow_patterns=XCODEC2_FILES
    )
    dtype = torch.bfloat16 if settings.xcodec2_dtype == "bfloat16" else torch.float32
    # As for Llasa: whatever fails while loading, name the checkpoint and the variable.
    try:
        feature_extractor = AutoFeatureExtractor.from_pretrained(folder)
        model, info = Xcodec2Model.from_pretrained(folder, dtype=dtype, output_loading_info=True)
        model.eval()
        _check_loading_info(info, what="XCodec2", reference=settings.xcodec2_model, variable="XCODEC2_MODEL")
        codec = XCodec2Codec(model, feature_extractor)
    except TTSError:
        raise
    except Exception as e:
        raise ModelUnavailable(
            f"XCodec2 checkpoint {settings.xcodec2_model} could not be loaded ({type(e).__name__}: {e}); set "
            "XCODEC2_MODEL to a folder holding a complete native transformers XCodec2 checkpoint (e.g. "
            "HKUSTAudio/xcodec2-hf), not the original xcodec2 package's format"
        ) from e
    codec.move_to(device)
    logger.info("xcodec2 loaded from %s on %s (%s) in %.2f s", folder, device, dtype, time.perf_counter() - started)
    return codec


# --------------------------------------------------------------------------------------------------------------
# Whisper


def _whisper_compute_type(setting: str, device: str) -> str:
    if setting and setting != "auto":
        return setting
    return "float16" if device.startswith("cuda") else "int8"


def _is_cuda_runtime_error(error: BaseException) -> bool:
    """CTranslate2 failing to start on the GPU (missing CUDA 12 cuBLAS/cuDNN, no driver, no device)."""
    text = str(error).lower()
    return any(word in text for word in ("cuda", "cublas", "cudnn", "libcu", "gpu", "driver"))


class WhisperTranscriber:
    """faster-whisper with the voice-activity filter on (`ManagedModel`).

    Offload uses CTranslate2's own `unload_model(to_cpu=True)` / `load_model()`. When CTranslate2 cannot run on
    the GPU (its CUDA 12 libraries are missing, say) it falls back to the CPU once, with one log line, rather than
    fail requests.
    """

    def __init__(self, folder: Path, device: str, compute_type_setting: str = "auto", *, name: str = "whisper") -> None:
        self.name = name
        self.folder = folder
        self._compute_type_setting = compute_type_setting
        self._lock = threading.Lock()
        self.model: Any = None
        self.device = "cpu"
        self.compute_type = ""
        self.fell_back_to_cpu = False
        self._open(_torch_device(device))

    def _open(self, device: str) -> None:
        from faster_whisper import WhisperModel

        compute_type = _whisper_compute_type(self._compute_type_setting, device)
        if device.startswith("cuda"):
            index = int(device.split(":", 1)[1]) if ":" in device else 0
            try:
                self.model = WhisperModel(
                    str(self.folder), device="cuda", device_index=index, compute_type=compute_type
                )
                self.device, self.compute_type = device, compute_type
                return
            except (RuntimeError, ValueError, OSError) as e:
                self._note_fallback(e)
                compute_type = _whisper_compute_type(self._compute_type_setting, "cpu")
                if compute_type == "float16":
                    compute_type = "int8"  # CPUs have no efficient float16 path
        self.model = WhisperModel(str(self.folder), device="cpu", compute_type=compute_type, cpu_threads=_cpu_threads())
        self.device, self.compute_type = "cpu", compute_type

    def _note_fallback(self, error: BaseException) -> None:
        self.fell_back_to_cpu = True
        logger.warning(
            "whisper: CTranslate2 cannot run on the GPU (%s); transcribing on the CPU instead. Install CUDA 12 "
            "cuBLAS and cuDNN 9 for GPU transcription",
            error,
        )

    def move_to(self, device: str) -> None:
        device = _torch_device(device)
        if self.model is None or self.device == "cpu":
            return  # a CPU model (or one that fell back) has nowhere to move
        with self._lock:
            if device == "cpu":
                self._unload_to_cpu()
            elif not self.model.model.model_is_loaded:
                self.model.model.load_model()

    def _unload_to_cpu(self) -> None:
        # CTranslate2's unload_model() silently does nothing while one of its worker threads still holds the
        # model, which it does for a moment after a transcription returns. Ask again until it takes (bounded).
        ct2 = self.model.model
        deadline = time.monotonic() + _WHISPER_UNLOAD_WAIT_S
        while ct2.model_is_loaded:
            ct2.unload_model(to_cpu=True)
            if not ct2.model_is_loaded:
                return
            if time.monotonic() > deadline:
                logger.warning(
                    "%s: CTranslate2 kept the model on %s; it stays there until the next offload",
                    self.name,
                    self.device,
                )
                return
            time.sleep(0.01)

    def size_bytes(self) -> int:
        return _weights_bytes(self.folder, ["model.bin"])

    def close(self) -> None:
        with self._lock:
            self.model = None

    def transcribe(
        self, samples: np.ndarray, language: str | None = None, *, max_new_tokens: int | None = None
    ) -> TranscriptionResult:
        """Transcribe float32 mono 16 kHz `samples`; `language` None = detect. Segments are read to the end here,
        so the model is free again when this returns."""
        if self.model is None:
            raise ModelUnavailable(f"{self.name} was released; load it again")
        audio = np.asarray(samples, dtype=np.float32)
        try:
            return self._transcribe(audio, language, max_new_tokens)
        except RuntimeError as e:
            if self.device == "cpu" or not _is_cuda_runtime_error(e):
                raise
            # CTranslate2 loads cuBLAS lazily: a missing library shows up at the first GPU computation.
            with self._lock:
                self._note_fallback(e)
                self.model = None
                self._open("cpu")
            return self._transcribe(audio, language, max_new_tokens)

    def _transcribe(self, audio: np.ndarray, language: str | None, max_new_tokens: int | None) -> TranscriptionResult:
        segments, info = self.model.transcribe(
            audio, language=language or None, vad_filter=True, max_new_tokens=max_new_tokens
        )
        duration_s = float(info.duration)
        # faster-whisper does not clamp timestamps: a segment can claim to end past the audio.
        found = [
            Segment(start_s=min(float(s.start), duration_s), end_s=min(float(s.end), duration_s), text=s.text.strip())
            for s in segments
        ]
        return TranscriptionResult(
            text=_join_segments([s.text for s in found]),
            language=str(info.language),
            duration_s=duration_s,
            segments=found,
        )


_WHISPER_UNLOAD_WAIT_S = 5.0


def _cpu_threads() -> int:
    """CTranslate2 threads on the CPU: the cores this process may use (its default, 4, oversubscribes small boxes)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _join_segments(texts: list[str]) -> str:
    """Join segment texts: a space between Latin-script pieces, nothing between CJK ones."""
    out = ""
    for text in (t for t in texts if t):
        if out and (out[-1].isascii() or text[0].isascii()):
            out += " "
        out += text
    return out


def _whisper_repo(reference: str) -> str | None:
    """The hub repository faster-whisper uses for a size name (large-v3-turbo...), None if not a size name."""
    from faster_whisper import utils

    if "/" in reference:
        return None
    # faster-whisper keeps its size -> repository table in this module-level dict.
    return getattr(utils, "_MODELS", {}).get(reference)


def load_whisper(settings: Settings, device: str) -> WhisperTranscriber:
    """Load WHISPER_MODEL (a size name, a hub id of a CTranslate2 conversion, or a local folder) onto `device`."""
    started = time.perf_counter()
    reference = settings.whisper_model.strip()
    repo = _whisper_repo(reference)
    if repo is None and reference and "/" not in reference and not Path(reference).expanduser().exists():
        raise ModelUnavailable(
            f"WHISPER_MODEL={reference} is neither a folder nor a faster-whisper size name; set WHISPER_MODEL to "
            "a size (tiny, base, small, medium, large-v3, large-v3-turbo), a hub id or a local CTranslate2 folder"
        )
    folder = resolve_model_dir(
        reference, settings, variable="WHISPER_MODEL", what="Whisper", allow_patterns=WHISPER_FILES, repo_id=repo
    )
    if not (folder / "model.bin").is_file():
        raise ModelUnavailable(
            f"Whisper folder {folder} has no model.bin; set WHISPER_MODEL to a CTranslate2 (faster-whisper) folder"
        )
    if not (folder / "tokenizer.json").is_file():
        # faster-whisper would try to download one from the hub
        raise ModelUnavailable(
            f"Whisper folder {folder} has no tokenizer.json; add it or set WHISPER_MODEL to a complete folder"
        )
    try:
        whisper = WhisperTranscriber(folder, device, settings.whisper_compute_type)
    except TTSError:
        raise
    except Exception as e:  # CTranslate2 raises RuntimeError/ValueError, the tokenizers library a bare Exception
        raise ModelUnavailable(
            f"Whisper checkpoint {reference} could not be loaded ({type(e).__name__}: {e}); set WHISPER_MODEL to "
            "a complete CTranslate2 (faster-whisper) folder or size name, and check WHISPER_COMPUTE_TYPE"
        ) from e
    logger.info(
        "whisper loaded from %s on %s (%s) in %.2f s",
        folder,
        whisper.device,
        whisper.compute_type,
        time.perf_counter() - started,
    )
    return whisper


# --------------------------------------------------------------------------------------------------------------
# Registration


def register_models(manager: MultiModelGPUManager, settings: Settings) -> None:
    """Register the loaders of "llasa", "xcodec2" and "whisper" with `manager`; nothing loads until first use.

    A name the manager already knows (a second service on the process-wide manager, or a test's own loader)
    keeps its registration.
    """
    loaders: dict[str, tuple[Callable[[str], Any], int | None]] = {
        "llasa": (
            lambda device: load_llasa(settings, device),
            _estimate_bytes(settings.llasa_model, ["*.safetensors"]),
        ),
        "xcodec2": (
            lambda device: load_xcodec2(settings, device),
            _estimate_bytes(settings.xcodec2_model, ["*.safetensors"]),
        ),
        "whisper": (
            lambda device: load_whisper(settings, device),
            _estimate_bytes(settings.whisper_model, ["model.bin"]),
        ),
    }
    known = set(manager.model_names)
    for name, (loader, estimated_bytes) in loaders.items():
        if name in known:
            logger.info("%s is already registered with the GPU manager; keeping that registration", name)
            continue
        manager.register_model(name, loader, estimated_bytes=estimated_bytes)
