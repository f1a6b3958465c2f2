"""Loading a backbone: build the network with its library (timm, torchvision, transformers), put the weights found
by `core._backbone_weights` into it, and cut it into layer groups with its family.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core._backbone_catalogue import get_spec
from core._backbone_families import FAMILIES
from core._backbone_spec import Backbone, BackboneSpec, BackboneUnavailable, WeightsMismatch
from core._backbone_weights import WEIGHTS_DIR_ENV, Location, how_to, locate

log = logging.getLogger(__name__)


def _efficientnet_block_table(network: nn.Module) -> list[tuple[int, int, bool]]:
    """(stage, index, has_expansion) of each timm block, in the flat order lukemelas' `_blocks.N` uses."""
    return [
        (s, i, hasattr(block, "conv_pwl")) for s, stage in enumerate(network.blocks) for i, block in enumerate(stage)
    ]


_LUKEMELAS_TOP = {
    "_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier",
}
_LUKEMELAS_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                       "_project_conv": "conv_pwl", "_bn2": "bn3"}
_LUKEMELAS_DEPTHWISE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


def map_lukemelas_efficientnet(state: dict[str, torch.Tensor], network: nn.Module) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet(-Lite) checkpoint in lukemelas naming to timm's names, checking every tensor.

    `_conv_stem`/`_bn0` become `conv_stem`/`bn1`, `_blocks.N._depthwise_conv` becomes `blocks.S.I.conv_dw` (N
    counted over timm's stages), `_conv_head`/`_bn1`/`_fc` become `conv_head`/`bn2`/`classifier`.

    Raises:
        WeightsMismatch: a key has no counterpart in `network`, a tensor of `network` is not covered, or a
            shape differs. Nothing is loaded partially.
    """
    blocks = _efficientnet_block_table(network)
    target = network.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    for key, tensor in state.items():
        parts = key.split(".")
        try:
            if parts[0] == "_blocks":
                stage, index, expanded = blocks[int(parts[1])]
                table = _LUKEMELAS_EXPANDED if expanded else _LUKEMELAS_DEPTHWISE
                new_key = ".".join(["blocks", str(stage), str(index), table[parts[2]], *parts[3:]])
            else:
                new_key = ".".join([_LUKEMELAS_TOP[parts[0]], *parts[1:]])
        except (KeyError, IndexError, ValueError):
            problems.append(f"{key}: no counterpart in timm's {type(network).__name__}")
            continue
        if new_key not in target:
            problems.append(f"{key} -> {new_key}: not a tensor of the timm model")
        elif tuple(target[new_key].shape) != tuple(tensor.shape):
            problems.append(f"{key} -> {new_key}: shape {tuple(tensor.shape)} but the model has "
                            f"{tuple(target[new_key].shape)}")
        else:
            mapped[new_key] = tensor
    missing = sorted(set(target) - set(mapped))
    if missing and not problems:
        problems.append(f"{len(missing)} tensors of the model are not in the checkpoint: {', '.join(missing[:5])}")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise WeightsMismatch(f"The checkpoint does not fit {type(network).__name__} ({len(state)} tensors in the "
                              f"file, {len(target)} in the model): {shown}. Is it the right model size?")
    return mapped


def _load_state_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def _load_checked(network: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Load a state dict strictly, turning a mismatch into a WeightsMismatch with the first differences."""
    target = network.state_dict()
    missing = sorted(set(target) - set(state))
    extra = sorted(set(state) - set(target))
    shapes = [k for k in set(state) & set(target) if tuple(state[k].shape) != tuple(target[k].shape)]
    if missing or extra or shapes:
        raise WeightsMismatch(f"{origin} does not fit {type(network).__name__}: {len(missing)} missing "
                              f"({', '.join(missing[:3])}), {len(extra)} unexpected ({', '.join(extra[:3])}), "
                              f"{len(shapes)} of another shape ({', '.join(sorted(shapes)[:3])}).")
    network.load_state_dict(state, strict=True)


def _build_timm(spec: BackboneSpec, location: Location | None) -> nn.Module:
    import timm

    if location is None:
        return timm.create_model(spec.model_id, pretrained=False)
    if location.source == "download":
        return timm.create_model(spec.model_id, pretrained=True)
    network = timm.create_model(spec.model_id, pretrained=False)
    state = _load_state_file(location.path)
    if location.source == "package" and any(k.startswith("_blocks.") for k in state):
        state = map_lukemelas_efficientnet(state, network)
    _load_checked(network, state, str(location.path))
    return network


def _build_torchvision(spec: BackboneSpec, location: Location | None) -> nn.Module:
    import torchvision

    builder = getattr(torchvision.models, spec.model_id)
    if location is not None and location.source in ("cache", "download"):
        return builder(weights=spec.weights_tag)  # torchvision reads its own cache before downloading
    network = builder(weights=None)
    if location is not None:
        _load_checked(network, _load_state_file(location.path), str(location.path))
    return network


def _build_transformers(spec: BackboneSpec, location: Location | None, config_only: bool = False) -> Any:
    from transformers import AutoConfig, AutoModel

    where = str(location.path) if location is not None and location.path is not None else spec.model_id
    try:
        config = AutoConfig.from_pretrained(where)
    except OSError as error:
        raise BackboneUnavailable(f"The configuration of {spec.title} is not on this machine. To use it: "
                                  + how_to(spec)) from error
    if config_only:
        return config
    if location is None:
        return AutoModel.from_config(config)
    if location.path is not None and location.path.is_file():
        companion, kind = ("feature extractor", "an audio") if spec.modality == "audio" else ("tokenizer", "a text")
        raise BackboneUnavailable(
            f"{spec.name}: a single .safetensors file is not enough for {kind} model; put a Hugging Face folder "
            f"(config, {companion}, weights) at ${WEIGHTS_DIR_ENV}/{spec.name}/."
        )
    return AutoModel.from_pretrained(where, config=config)  # the family drops the CLS pooler (we mean-pool)


_BUILDERS = {"timm": _build_timm, "torchvision": _build_torchvision, "transformers": _build_transformers}


#: Held while a model library builds a network or tokenizer. transformers' lazy first import is not thread-safe
#: ("cannot import name 'AutoConfig'" when the page and a background feature warm-up load at the same moment).
LOAD_LOCK = threading.RLock()


def load_network(name: str, pretrained: bool = True) -> nn.Module:
    """The raw pretrained network of `name` as its library builds it, original classifier included.

    Raises:
        BackboneUnavailable: no weights here; the message says how to make them available.
        WeightsMismatch: the weights found do not fit the network.
    """
    with LOAD_LOCK:
        return _load_network(name, pretrained)


def _load_network(name: str, pretrained: bool) -> nn.Module:
    spec = get_spec(name)
    location = None
    if not pretrained and spec.source == "transformers":
        # A hub model's architecture (config) and tokenizer or feature extractor live with its weights: use a local
        # copy if any.
        local = locate(spec)
        if local is not None and local.path is not None:
            config = _build_transformers(spec, local, config_only=True)
            from transformers import AutoModel

            return AutoModel.from_config(config)
    if pretrained:
        location = locate(spec)
        if location is None:
            raise BackboneUnavailable(f"The weights of {spec.title} are not on this machine. To use it: "
                                      + how_to(spec))
        log.info("Loading %s weights %s", spec.name, location.detail)
    return _BUILDERS[spec.source](spec, location)


def load_backbone(name: str, pretrained: bool = True) -> Backbone:
    """The backbone `name`, cut into layer groups, in eval mode, with its original classifier removed.

    Its `spec` is the catalogue entry, unless the network found stacks another number of stages or layers (an
    operator's checkpoint of another size in the weights folder): then the spec says the network's depth and group
    count, so the backbone and its spec always count the same groups.
    """
    spec = get_spec(name)
    family = FAMILIES[spec.family]
    network = load_network(name, pretrained=pretrained)
    depth = family.network_depth(network)
    if depth != spec.depth:
        log.warning("%s: the network found stacks %d stages or layers, the catalogue's %d; its layer groups follow the "
                    "network", spec.name, depth, spec.depth)
        spec = dataclasses.replace(spec, depth=depth, num_groups=len(family.layer_groups(depth)))
    return family(spec, network).eval()


def weights_folder(name: str) -> Path | None:
    """For a hub backbone: the local folder (package, cache or operator's) with its tokenizer or feature extractor."""
    spec = get_spec(name)
    location = locate(spec)
    if location is None or location.path is None:
        return None
    return location.path if location.path.is_dir() else location.path.parent
