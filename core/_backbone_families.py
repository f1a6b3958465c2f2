"""The backbone families: how each kind of pretrained network is cut into ordered layer groups.

A catalogue entry's `family` is a key of `FAMILIES`; adding a kind of network is one class here. Each class declares
its groups once, in `naming` (`Family.layer_groups(depth)` reads it), and where its network keeps the stages, blocks
or layers they are cut along, in `stack`: the catalogue counts the groups from the entry's `depth` without loading
anything, and the built backbone names them from its network's depth (the same number, unless an operator's
checkpoint is another size: see `load_backbone`).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from core._backbone_spec import Backbone, BackboneSpec, GroupNaming


class Family(Backbone):
    """A backbone family of the catalogue: it declares how it names its layer groups (`naming`) and where its network
    keeps the stages, blocks or layers they are cut along (`stack`), so the catalogue counts the groups of an entry
    from its `depth` without building anything, and the built backbone names them from its network."""

    naming: ClassVar[GroupNaming]

    @classmethod
    def layer_groups(cls, depth: int) -> list[str]:
        """The names of the layer groups a network of `depth` stages, blocks or layers is cut into, in order."""
        return cls.naming.names(depth)

    @staticmethod
    @abc.abstractmethod
    def stack(network: nn.Module) -> Sequence[nn.Module]:
        """The stages, blocks or layers `network` stacks, one layer group each (with the family's first and last)."""

    @classmethod
    def network_depth(cls, network: nn.Module) -> int:
        """How many stages, blocks or layers `network` stacks: the `depth` its `layer_groups` are named from."""
        return len(cls.stack(network))


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


class TimmCNNBackbone(Family):
    """timm EfficientNet / MobileNetV3: `conv_stem, bn1`, one group per `blocks[i]` stage, then the head.

    The head group is everything after the stages (EfficientNet: `conv_head, bn2`, pooling; MobileNetV3: pooling,
    `conv_head`, `norm_head`, activation).
    """

    channels_last = True
    naming = GroupNaming("stem", "stage", last="head")

    def __init__(self, spec: BackboneSpec, network: nn.Module) -> None:
        super().__init__()
        network.reset_classifier(0)
        self.spec = spec
        self.network = network
        self.num_features = int(getattr(network, "head_hidden_size", network.num_features))
        self.group_names = self.layer_groups(self.network_depth(network))

    @staticmethod
    def stack(network: nn.Module) -> nn.ModuleList:
        return network.blocks

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


class ResNetBackbone(Family):
    """torchvision or timm ResNet: stem (conv1, bn1, act, maxpool), stages 1-3, then stage 4 with pooling."""

    channels_last = True
    naming = GroupNaming("stem", "stage", with_last="pool")

    def __init__(self, spec: BackboneSpec, network: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.num_features = int(network.fc.in_features if isinstance(network.fc, nn.Linear) else network.num_features)
        network.fc = nn.Identity()
        self.network = network
        self.group_names = self.layer_groups(self.network_depth(network))

    @staticmethod
    def stack(network: nn.Module) -> list[nn.Module]:
        return [network.layer1, network.layer2, network.layer3, network.layer4]

    def groups(self) -> list[nn.Module]:
        net = self.network
        act = net.relu if hasattr(net, "relu") else net.act1
        pool = net.avgpool if hasattr(net, "avgpool") else net.global_pool
        stem = _Steps(net.conv1, net.bn1, act, net.maxpool)
        last = _Steps(net.layer4, pool, lambda x: torch.flatten(x, 1))
        return [stem, net.layer1, net.layer2, net.layer3, last]


class ConvNeXtBackbone(Family):
    """timm ConvNeXt: stem, stages 1-4, then the head's LayerNorm with pooling."""

    naming = GroupNaming("stem", "stage", last="head norm")

    def __init__(self, spec: BackboneSpec, network: nn.Module) -> None:
        super().__init__()
        network.reset_classifier(0)
        self.spec = spec
        self.network = network
        self.num_features = int(getattr(network, "head_hidden_size", network.num_features))
        self.group_names = self.layer_groups(self.network_depth(network))

    @staticmethod
    def stack(network: nn.Module) -> nn.ModuleList:
        return network.stages

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


class ViTBackbone(Family):
    """timm VisionTransformer: patch embedding (+ tokens, position embedding), each block, final norm + pooling."""

    naming = GroupNaming("patch embedding", "block", last="final norm")

    def __init__(self, spec: BackboneSpec, network: nn.Module) -> None:
        super().__init__()
        network.reset_classifier(0)
        self.spec = spec
        self.network = network
        self.num_features = int(getattr(network, "head_hidden_size", network.num_features))
        self.group_names = self.layer_groups(self.network_depth(network))

    @staticmethod
    def stack(network: nn.Module) -> nn.ModuleList:
        return network.blocks

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


class HFEncoderBackbone(Family):
    """A Hugging Face BERT-like encoder (BERT, RoBERTa, DistilBERT, MiniLM) with mean pooling over tokens.

    Groups: embeddings, each encoder layer; the last group also mean-pools the tokens (mask-aware), as
    sentence-transformers does, into [B, hidden_size]. Between groups the state is a dict with `hidden`
    [B, T, H] and `attention_mask` [B, T].
    """

    naming = GroupNaming("embeddings", "layer", with_last="mean pooling")

    def __init__(self, spec: BackboneSpec, network: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.network = network
        if getattr(network, "pooler", None) is not None:
            network.pooler = None  # we mean-pool; the CLS pooler is not used
        config = network.config
        self.num_features = int(config.hidden_size if hasattr(config, "hidden_size") else config.dim)
        self.group_names = self.layer_groups(self.network_depth(network))

    @staticmethod
    def stack(network: nn.Module) -> nn.ModuleList:
        if hasattr(network, "encoder"):
            return network.encoder.layer
        if hasattr(network, "transformer"):
            return network.transformer.layer
        raise TypeError(f"{type(network).__name__} has neither `encoder.layer` nor `transformer.layer`")

    def _layers(self) -> nn.ModuleList:
        return self.stack(self.network)

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


class _Loose(nn.Module):
    """Holds a network's loose parameters (named attributes, not modules) so a group can own them."""

    def __init__(self, owner: nn.Module, names: tuple[str, ...]) -> None:
        super().__init__()
        self.params = nn.ParameterList([p for n in names if isinstance(p := getattr(owner, n, None), nn.Parameter)])


def _hidden(output: Any) -> torch.Tensor:
    """A transformers layer's hidden states: the tensor itself, or the first item of an older tuple output."""
    return output[0] if isinstance(output, tuple) else output


class HFSpeechBackbone(Family):
    """A Hugging Face wav2vec 2.0 or HuBERT model on the raw waveform [B, samples], mean-pooled over time.

    Groups: the feature encoder (the convolutions, the projection and the convolutional position embedding with
    its norm; `masked_spec_embed` too, which only pre-training uses), then each transformer layer; the last group
    also applies the final norm (stable-layer-norm models), the adapter if any, and the mean over time into
    [B, hidden_size]. Between groups the state is the hidden sequence [B, frames, hidden_size]: every clip has
    the same length, so no mask is needed. Pre-training's SpecAugment masking and LayerDrop are not applied.
    """

    naming = GroupNaming("feature encoder", "layer", with_last="mean over time")

    def __init__(self, spec: BackboneSpec, network: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.network = network
        self.num_features = int(network.config.hidden_size)
        self.stable_norm = bool(getattr(network.config, "do_stable_layer_norm", False))
        self.group_names = self.layer_groups(self.network_depth(network))

    @staticmethod
    def stack(network: nn.Module) -> nn.ModuleList:
        return network.encoder.layers

    def _encode(self, waveform: torch.Tensor) -> torch.Tensor:
        net = self.network
        features = net.feature_extractor(waveform).transpose(1, 2)
        hidden = _hidden(net.feature_projection(features))  # wav2vec 2.0 also returns the normed features
        hidden = hidden + net.encoder.pos_conv_embed(hidden)
        if not self.stable_norm:
            hidden = net.encoder.layer_norm(hidden)
        return net.encoder.dropout(hidden)

    def _pool(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.stable_norm:
            hidden = self.network.encoder.layer_norm(hidden)
        if getattr(self.network, "adapter", None) is not None:
            hidden = self.network.adapter(hidden)
        return hidden.mean(dim=1)

    def groups(self) -> list[nn.Module]:
        net = self.network
        encoder = net.encoder
        loose = _Loose(net, ("masked_spec_embed",))
        first = [net.feature_extractor, net.feature_projection, encoder.pos_conv_embed, loose]
        if not self.stable_norm:
            first.append(encoder.layer_norm)
        embed = _Steps(*first)
        embed._calls = [self._encode]
        layers = []
        for layer in encoder.layers:
            step = _Steps(layer)
            step._calls = [lambda hidden, layer=layer: _hidden(layer(hidden, attention_mask=None))]
            layers.append(step)
        last = layers[-1]
        if self.stable_norm:
            last.steps.append(encoder.layer_norm)
        if getattr(net, "adapter", None) is not None:
            last.steps.append(net.adapter)
        last._calls = [*last._calls, self._pool]
        return [embed, *layers]


class HFASTBackbone(Family):
    """A Hugging Face Audio Spectrogram Transformer on its fbank features [B, frames, mel bins], mean-pooled.

    Groups: the patch embedding (with the class and distillation tokens and the position embedding), then each
    transformer layer; the last group also applies the final LayerNorm and the mean over all tokens into
    [B, hidden_size] (the mean of the last hidden state, not AST's own class/distillation-token pooler). Between
    groups the state is the token sequence [B, tokens, hidden_size].
    """

    naming = GroupNaming("patch embedding", "layer", with_last="mean pooling")

    def __init__(self, spec: BackboneSpec, network: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.network = network
        self.num_features = int(network.config.hidden_size)
        self.group_names = self.layer_groups(self.network_depth(network))

    @staticmethod
    def stack(network: nn.Module) -> nn.ModuleList:
        return network.layers if hasattr(network, "layers") else network.encoder.layer  # transformers 5 / 4 layout

    def _layers(self) -> nn.ModuleList:
        return self.stack(self.network)

    def _pool(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.network.layernorm(hidden).mean(dim=1)

    def groups(self) -> list[nn.Module]:
        layers = []
        for layer in self._layers():
            step = _Steps(layer)
            step._calls = [lambda hidden, layer=layer: _hidden(layer(hidden))]
            layers.append(step)
        last = layers[-1]
        last.steps.append(self.network.layernorm)
        last._calls = [*last._calls, self._pool]
        return [self.network.embeddings, *layers]


FAMILIES: dict[str, type[Family]] = {
    "timm_cnn": TimmCNNBackbone,
    "resnet": ResNetBackbone,
    "convnext": ConvNeXtBackbone,
    "vit": ViTBackbone,
    "hf_encoder": HFEncoderBackbone,
    "hf_speech": HFSpeechBackbone,
    "hf_ast": HFASTBackbone,
}
