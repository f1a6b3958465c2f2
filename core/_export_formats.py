"""The classifier in the bundle's formats: TorchScript, ONNX, safetensors in a documented layout, and the
preprocessing in plain numbers, with the recipe `predict.py` rebuilds the architecture by (verified here).

The ONNX file is written by the TorchScript-based exporter (`torch.onnx.export(..., dynamo=False)`): it handles
both timm CNNs and Hugging Face encoders with a dynamic batch (and token) axis and needs no `onnxscript`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core import bundle_predict
from core._bundle_folder import AUDIO_FEATURES_FILE, BACKBONE_CONFIG_DIR, FEATURE_EXTRACTOR_DIR, TOKENIZER_DIR
from core._export_bundle import ExportError
from core.preprocess import audio_settings, uses_feature_extractor

ONNX_OPSET = 17


class _ImageExport(nn.Module):
    """The classifier with a tensor signature: pixels [B, 3, H, W] -> logits [B, classes]."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.classifier(pixels)


class _TextExport(nn.Module):
    """The classifier with a tensor signature: (input_ids, attention_mask) [B, T] -> logits [B, classes]."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.classifier({"input_ids": input_ids, "attention_mask": attention_mask})


def export_module(model: nn.Module, modality: str) -> nn.Module:
    """The classifier in eval mode with the tensor signature TorchScript and ONNX record."""
    return (_TextExport(model) if modality == "text" else _ImageExport(model)).eval()  # sound: spectrogram pixels


def export_torchscript(module: nn.Module, example: tuple[torch.Tensor, ...], path: Path) -> Path:
    """Trace `module` on `example` inputs (CPU) and save it; the saved model needs only torch to run."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, example, check_trace=False, strict=False)
        torch.jit.save(traced, str(path))
    return path


def input_names(spec: Any) -> list[str]:
    """The exported models' input names: `pixels` (images, spectrogram pictures), `input_values` (an audio
    foundation model's waveform or fbank frames), or `input_ids` and `attention_mask` (text)."""
    if spec.modality == "text":
        return ["input_ids", "attention_mask"]
    return ["input_values"] if uses_feature_extractor(spec) else ["pixels"]


def export_onnx(
    module: nn.Module, example: tuple[torch.Tensor, ...], path: Path, modality: str, names: Sequence[str] = ("pixels",)
) -> Path:
    """Write `module` as ONNX with a dynamic batch axis (and token axis for text); output `logits`."""
    if modality in ("image", "audio"):
        names = [names[0]]
        axes: dict[str, dict[int, str]] = {names[0]: {0: "batch"}, "logits": {0: "batch"}}
    else:
        names = ["input_ids", "attention_mask"]
        axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}}
        axes["logits"] = {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example,
            str(path),
            input_names=list(names),
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return path


# ------------------------------------------------------------------------------ weights and rebuild recipe


def _source_module(backbone: nn.Module) -> tuple[str, nn.Module] | None:
    """The library model inside our Backbone wrapper (timm model / HF PreTrainedModel) and its qualified name."""
    spec = getattr(backbone, "spec", None)
    source = getattr(spec, "source", "")
    for name, module in backbone.named_modules():
        if source == "timm" and type(module).__module__.startswith("timm.") and hasattr(module, "forward_features"):
            return name, module
        if source == "transformers":
            try:
                from transformers import PreTrainedModel
            except ImportError:
                return None
            if isinstance(module, PreTrainedModel):
                return name, module
    return None


def rebuild_recipe(model: nn.Module, example: tuple[torch.Tensor, ...], bundle_dir: Path) -> dict[str, Any]:
    """How predict.py rebuilds the architecture from its library, verified here on the example batch.

    The recipe is only written when a freshly built library model with our weights reproduces the
    backbone's features; otherwise `rebuild` is None and `rebuild_detail` says why (predict.py then uses
    TorchScript only).
    """
    backbone = model.backbone
    spec = backbone.spec
    found = _source_module(backbone)
    if found is None:
        return {"rebuild": None, "rebuild_detail": f"backbone source '{spec.source}' is not timm or transformers"}
    _, source = found
    with torch.no_grad():
        features = backbone(
            example[0] if spec.modality != "text" else dict(zip(("input_ids", "attention_mask"), example, strict=True))
        )
        try:
            if spec.source == "timm":
                import timm

                rebuilt = timm.create_model(spec.model_id, pretrained=False, num_classes=0).eval()
                rebuilt.load_state_dict(source.state_dict(), strict=True)
                candidates = {"model": lambda: rebuilt(example[0])}
                recipe: dict[str, Any] = {"source": "timm", "model_id": spec.model_id}
            else:
                from transformers import AutoModel

                config_dir = bundle_dir / BACKBONE_CONFIG_DIR
                source.config.save_pretrained(str(config_dir))
                rebuilt = AutoModel.from_config(source.config).eval()
                drop_pooler = getattr(source, "pooler", "absent") is None
                if drop_pooler:
                    rebuilt.pooler = None
                rebuilt.load_state_dict(source.state_dict(), strict=True)
                if spec.modality == "audio":  # AST, wav2vec 2.0, HuBERT: the last hidden state's mean over time
                    output = rebuilt(example[0])
                    candidates = {"time mean": lambda: bundle_predict.pool_audio(output)}
                else:
                    output = rebuilt(input_ids=example[0], attention_mask=example[1])
                    candidates = {
                        pooling: (lambda pooling=pooling: bundle_predict.pool_text(output, example[1], pooling))
                        for pooling in ("mean", "mean+normalize", "cls", "cls+normalize", "pooler")
                    }
                recipe = {"source": "transformers", "model_id": spec.model_id, "config_dir": BACKBONE_CONFIG_DIR}
                recipe["drop_pooler"] = drop_pooler
        except (RuntimeError, ValueError, KeyError, ImportError, OSError) as error:
            return {"rebuild": None, "rebuild_detail": f"rebuilding {spec.model_id} failed: {error}"}
        for pooling, compute in candidates.items():
            try:
                candidate = compute()
            except (AttributeError, RuntimeError, TypeError):
                continue
            if (
                candidate is not None
                and candidate.shape == features.shape
                and torch.allclose(candidate, features, atol=1e-5, rtol=1e-4)
            ):
                return {"rebuild": {**recipe, "pooling": pooling}, "rebuild_detail": "verified at export"}
    return {"rebuild": None, "rebuild_detail": "no standard pooling of the library model reproduces the backbone"}


def bundle_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Weights in the bundle's documented layout: `backbone.<library model key>` and `head.weight`/`head.bias`."""
    found = _source_module(model.backbone)
    source = found[1] if found is not None else model.backbone
    linears = [module for module in model.head.modules() if isinstance(module, nn.Linear)]
    if len(linears) != 1:
        raise ExportError(f"The classifier head must hold exactly one Linear layer, it holds {len(linears)}.")
    weights = {f"backbone.{key}": value for key, value in source.state_dict().items()}
    weights["head.weight"] = linears[0].weight
    weights["head.bias"] = linears[0].bias
    return {key: value.detach().cpu().contiguous().clone() for key, value in weights.items()}


def preprocessing_config(spec: Any, preprocessor: Any = None) -> dict[str, Any]:
    """The evaluation-time preprocessing in plain numbers, as predict.py applies it (derived from the spec)."""
    if spec.modality == "image":
        _, height, width = spec.input_size
        crop_pct = float(spec.crop_pct or 1.0)
        return {
            "modality": "image",
            "input_size": list(spec.input_size),
            "resize": math.floor(height / crop_pct),
            "crop": [height, width],
            "crop_pct": crop_pct,
            "interpolation": spec.interpolation,
            "mean": list(spec.mean),
            "std": list(spec.std),
            "channel_order": "RGB",
            "scale": "pixels / 255, then (x - mean) / std",
            "steps": [
                f"resize the shorter side to {math.floor(height / crop_pct)} px ({spec.interpolation})",
                f"centre-crop {height}x{width}",
                "scale to [0, 1]",
                "normalise with mean and std",
            ],
            "cache_key": str(getattr(preprocessor, "cache_key", "")),
        }
    if uses_feature_extractor(spec):
        settings = audio_settings(spec)
        pad = bool(spec.extra["feature_extractor"]["pad_clips"])  # every hub sound entry says (catalogue)
        return {
            "modality": "audio",
            "sample_rate": settings.sample_rate,
            "clip_seconds": settings.clip_seconds,
            "pad_clips": pad,
            "input_size": list(spec.input_size),
            "features_module": AUDIO_FEATURES_FILE,
            "feature_extractor_dir": FEATURE_EXTRACTOR_DIR,
            "steps": [
                f"decode, average the channels, resample to {settings.sample_rate} Hz",
                f"cut the loudest {settings.clip_seconds:g} s"
                + (" (or centre a shorter clip in silence)" if pad else " (a shorter clip keeps its length)"),
                f"the model's own feature extractor (`{FEATURE_EXTRACTOR_DIR}/`, transformers' AutoFeatureExtractor)",
            ],
            "cache_key": str(getattr(preprocessor, "cache_key", "")),
        }
    if spec.modality == "audio":
        settings = audio_settings(spec)
        return {
            "modality": "audio",
            **settings.to_dict(),
            "input_size": list(spec.input_size),
            "features_module": AUDIO_FEATURES_FILE,
            "steps": [
                f"decode, average the channels, resample to {settings.sample_rate} Hz",
                f"cut the loudest {settings.clip_seconds:g} s (or centre a shorter clip in silence)",
                f"log-mel spectrogram ({settings.n_mels} bands, {settings.fmin:g}-{settings.fmax:g} Hz, window "
                f"{settings.win_length}, hop {settings.hop_length}), dB below the clip's peak floored at "
                f"-{settings.top_db:g}, scaled to [0, 1]",
                f"bilinear resize to {settings.image_size[0]}x{settings.image_size[1]}, normalise with mean and std, "
                "the same picture in 3 channels",
            ],
            "cache_key": str(getattr(preprocessor, "cache_key", "")),
        }
    max_tokens = int(getattr(spec, "max_tokens", 0) or (spec.input_size[0] if spec.input_size else 128))
    return {
        "modality": "text",
        "max_tokens": max_tokens,
        "tokenizer_dir": TOKENIZER_DIR,
        "padding": "longest in batch",
        "whitespace": "runs of whitespace collapsed to one space",
        "truncation": True,
        "steps": [f"tokenize with the backbone's tokenizer, truncate to {max_tokens} tokens, pad to the longest"],
        "cache_key": str(getattr(preprocessor, "cache_key", "")),
    }


def save_tokenizer(preprocessor: Any, model: nn.Module, folder: Path) -> None:
    """Write the text backbone's tokenizer into the bundle, so predict.py tokenizes as the app did."""
    for owner in (preprocessor, model.backbone, getattr(preprocessor, "backbone", None)):
        tokenizer = getattr(owner, "tokenizer", None) if owner is not None else None
        if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(str(folder))
            return
    raise ExportError(
        "The text preprocessor exposes no tokenizer (expected `preprocessor.tokenizer` with save_pretrained), "
        "so the bundle could not include it."
    )


def save_feature_extractor(preprocessor: Any, folder: Path) -> None:
    """Write an audio foundation model's feature extractor into the bundle, so predict.py hears as the app did."""
    extractor = getattr(preprocessor, "feature_extractor", None)
    if extractor is None or not hasattr(extractor, "save_pretrained"):
        raise ExportError("The sound preprocessor exposes no feature extractor (expected `preprocessor."
                          "feature_extractor` with save_pretrained), so the bundle could not include it.")
    extractor.save_pretrained(str(folder))


def trace_items(items: Sequence[str], modality: str) -> list[str]:
    """Two examples to trace on; for text, of different lengths, so the traced graph keeps the padding mask.

    Tracing records the branch taken on the example: a batch without padding lets the attention-mask path be
    skipped, and the traced model would then ignore padding on every later batch.
    """
    if modality != "text":
        return list(items[:2])
    longest = max(items, key=lambda text: len(str(text).split()))
    return [str(longest), "ok"] if len(str(longest).split()) > 1 else [str(longest) + " " + str(longest), "ok"]
