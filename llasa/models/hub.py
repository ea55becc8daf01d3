"""Where a model's weights come from (a local folder or the Hugging Face hub) and whether they are complete."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llasa.config import Settings
from llasa.errors import ModelUnavailable

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

LLASA_FILES = ["*.json", "*.safetensors", "*.jinja", "tokenizer*"]
XCODEC2_FILES = ["*.json", "*.safetensors"]
WHISPER_FILES = ["config.json", "preprocessor_config.json", "model.bin", "tokenizer.json", "vocabulary.*"]


def torch_device(device: str) -> str:
    return "cuda:0" if device == "cuda" else device


def looks_like_path(reference: str) -> bool:
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
    if local.exists() or (repo_id is None and looks_like_path(reference)):
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


def weights_bytes(folder: Path, patterns: Sequence[str]) -> int:
    return sum(p.stat().st_size for pattern in patterns for p in folder.glob(pattern) if p.is_file())


def estimate_bytes(reference: str, patterns: Sequence[str]) -> int | None:
    """Size on disk of a local checkpoint's weights (the manager's first VRAM admission); None for a hub id."""
    folder = Path(reference).expanduser()
    if not folder.is_dir():
        return None
    return weights_bytes(folder, patterns) or None


def pinned_weights(module: torch.nn.Module) -> Any:
    from llasa.gpu import PinnedWeights

    return PinnedWeights(module)


def check_loading_info(info: dict[str, Any], *, what: str, reference: str, variable: str) -> None:
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
