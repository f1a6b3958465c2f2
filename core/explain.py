"""Why this prediction? Approximate pictures of what a delivered model's answer rested on.

Images (and sound clips, through the spectrogram picture the network sees): Grad-CAM, from the `grad-cam` package,
on the last convolutional block of a CNN backbone (also with multi-block features: adding the tapped blocks' maps
put less of the heat on the ink of the sample digits, 49 % against 54 %, n = 30). Texts: layer integrated
gradients, from `captum`, on the word-embedding layer of the encoder, from a baseline of pad tokens (the same
sentence with every word blanked), summed over each word's pieces.

Both target the class the *delivered* model predicts (backbone + linear head; a logistic head fitted on cached
features is folded into that linear layer when the run is saved, so it is explained the same way). Both are
approximate: they show where the network looked, not proof of why. Vision transformers are refused: plain Grad-CAM
on a ViT's patch tokens is known to mislead (Chefer et al. 2021, "Transformer Interpretability Beyond Attention
Visualization"), so no picture is better than a wrong one.

Main entry points:
    `supported(spec)` -> (bool, reason): whether this backbone gets an explanation, in plain words.
    `heatmap(model, image, target_class)` -> [H, W] array in [0, 1].
    `token_attributions(model, preprocessor, text, target_class)` -> [(word, score)], scores in [-1, 1].
    `explain(model, preprocessor, item, classes)` -> `Explanation` of the delivered model's answer.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.backbones import BackboneSpec

log = logging.getLogger(__name__)

#: What every explanation is shown with, on the page and in the CLI.
APPROXIMATE_NOTE = "approximate: shows where the network looked, not proof of why"
#: Grad-CAM works on feature maps: the CNN families of `core.backbones`.
CNN_FAMILIES = ("timm_cnn", "resnet", "convnext")
#: Captum integrates over this many steps from the pad-token baseline: enough for a ranking of words, cheap on CPU.
TEXT_STEPS = 32
GRID_SIZE = 7


class ExplanationUnsupported(ValueError):
    """No explanation is offered for this model (a vision transformer, an exported bundle); the message says why."""


def supported(spec: BackboneSpec) -> tuple[bool, str]:
    """Whether a model on this backbone gets an explanation, and in plain words which one (or why not)."""
    if spec.family == "vit":
        return False, (f"{spec.title} is a vision transformer: plain Grad-CAM on its patch tokens is known to "
                       "mislead (it highlights regions that do not change the answer), so no heat map is offered. "
                       "A CNN backbone (EfficientNet, ResNet, ConvNeXt) can be explained.")
    if spec.family in ("hf_ast", "hf_speech"):
        return False, (f"{spec.title} is an audio transformer that hears through its own feature extractor: there is "
                       "no spectrogram picture and no convolutional feature map to draw a heat map over. "
                       "EfficientNet-Lite0 on spectrograms can be explained.")
    if spec.modality == "text":
        if spec.family != "hf_encoder":
            return False, f"{spec.title}: word attributions are built for Hugging Face encoders only."
        return True, (f"word attributions by integrated gradients ({TEXT_STEPS} steps from a blank sentence) on the "
                      f"word embeddings of {spec.title}")
    where = "the spectrogram picture" if spec.modality == "audio" else "the image"
    return True, f"Grad-CAM on the last convolutional block of {spec.title}, drawn over {where}"


def _spec_of(model: nn.Module) -> BackboneSpec:
    """The backbone spec of a delivered classifier; an exported bundle (TorchScript) has no layers to look into."""
    spec = getattr(getattr(model, "backbone", None), "spec", None)
    if not isinstance(spec, BackboneSpec):
        raise ExplanationUnsupported(
            "This model has no backbone to look into (an exported bundle is TorchScript): explain the run folder it "
            "was exported from instead."
        )
    ok, reason = supported(spec)
    if not ok:
        raise ExplanationUnsupported(reason)
    return spec


# --------------------------------------------------------------------------------------------------- images


def target_layers(backbone: nn.Module) -> list[nn.Module]:
    """The feature map Grad-CAM weighs: the last convolutional block (a list, as `pytorch_grad_cam` takes it).

    EfficientNet: `conv_head` + `bn2` (MobileNetV3 pools before its head conv, so its last stage); ResNet: stage 4;
    ConvNeXt: the last stage. Another CNN: its last `Conv2d`.
    """
    family = backbone.spec.family
    network = getattr(backbone, "network", None)
    if family == "timm_cnn":
        last = network.bn2 if hasattr(network, "bn2") else network.blocks[-1]
    elif family == "resnet":
        last = network.layer4
    elif family == "convnext":
        last = network.stages[-1]
    else:
        convolutions = [module for module in backbone.modules() if isinstance(module, nn.Conv2d)]
        if not convolutions:
            raise ExplanationUnsupported(f"{backbone.spec.title} has no convolution layer for Grad-CAM to look at.")
        last = convolutions[-1]
    return [last]


def heatmap(model: nn.Module, image: torch.Tensor, target_class: int) -> np.ndarray:
    """Grad-CAM of `target_class` for one preprocessed image [3, H, W]: an [H, W] array in [0, 1] (1 = most weight).

    The model's parameters get no gradients kept (they are cleared afterwards), and its hooks are removed, so a
    shared, cached model is left as it was.

    Raises:
        ExplanationUnsupported: a vision transformer, or a model without a backbone.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    _spec_of(model)
    batch = image.unsqueeze(0) if image.dim() == 3 else image
    device = next(model.parameters()).device
    cam = GradCAM(model=model, target_layers=target_layers(model.backbone))
    cam.compute_input_gradient = True  # a graph even when every parameter is frozen
    try:  # not `with cam:`, whose exit swallows an IndexError and prints it
        with torch.enable_grad():
            heat = cam(input_tensor=batch.detach().clone().to(device), targets=[ClassifierOutputTarget(target_class)])
    finally:
        cam.activations_and_grads.release()
        model.zero_grad(set_to_none=True)
    return np.nan_to_num(heat[0].astype(np.float32))


def _picture(image: torch.Tensor, spec: BackboneSpec) -> np.ndarray:
    """The preprocessed input as the network saw it (normalisation undone): [H, W, 3] floats in [0, 1]."""
    mean = torch.tensor(spec.mean or (0.0, 0.0, 0.0)).view(-1, 1, 1)
    std = torch.tensor(spec.std or (1.0, 1.0, 1.0)).view(-1, 1, 1)
    return (image.detach().cpu().float() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def heat_grid(heat: np.ndarray, size: int = GRID_SIZE) -> list[list[float]]:
    """The heat map averaged into a `size` x `size` grid (rows top to bottom), rounded: small enough for JSON."""
    rows = np.array_split(np.arange(heat.shape[0]), size)
    columns = np.array_split(np.arange(heat.shape[1]), size)
    return [[round(float(heat[np.ix_(row, column)].mean()), 3) for column in columns] for row in rows]


# --------------------------------------------------------------------------------------------------- texts


def token_attributions(
    model: nn.Module, preprocessor: Any, text: str, target_class: int, n_steps: int = TEXT_STEPS
) -> list[tuple[str, float]]:
    """How much each word of `text` moved the score of `target_class`, from a blank (pad-token) sentence.

    Layer integrated gradients on the word embeddings, summed over the embedding and over each word's word pieces
    (a fast tokenizer says which pieces make a word), scaled so the largest magnitude is 1: positive = evidence for
    the class, negative = against. Special tokens ([CLS], [SEP]) keep their embeddings in the baseline and are left
    out.

    Raises:
        ExplanationUnsupported: not a Hugging Face encoder, or a model without a backbone.
    """
    from captum.attr import LayerIntegratedGradients

    spec = _spec_of(model)
    if spec.modality != "text":
        raise ExplanationUnsupported(f"{spec.title} reads {spec.modality}, not text: explain it with a heat map.")
    tokenizer = preprocessor.tokenizer
    text = preprocessor.load(text)
    encoded = tokenizer([text], truncation=True, max_length=spec.max_tokens, return_tensors="pt",
                        return_offsets_mapping=bool(getattr(tokenizer, "is_fast", False)))
    device = next(model.parameters()).device
    input_ids, mask = encoded["input_ids"].to(device), encoded["attention_mask"].to(device)
    special = torch.tensor(tokenizer.get_special_tokens_mask(encoded["input_ids"][0].tolist(),
                                                             already_has_special_tokens=True), dtype=torch.bool)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    baseline = torch.where(special.to(device), input_ids, torch.full_like(input_ids, pad_id))

    def logits(ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return model({"input_ids": ids, "attention_mask": attention_mask})

    embeddings = model.backbone.network.embeddings.word_embeddings
    try:
        with torch.enable_grad():
            attributions, delta = LayerIntegratedGradients(logits, embeddings).attribute(
                input_ids, baselines=baseline, target=int(target_class), additional_forward_args=(mask,),
                n_steps=n_steps, internal_batch_size=n_steps, return_convergence_delta=True,
            )
    finally:
        model.zero_grad(set_to_none=True)
    log.info("Integrated gradients for %r: completeness gap %.3g over %d steps", text[:40], float(delta.sum()), n_steps)
    scores = attributions.sum(dim=-1)[0].detach().cpu().double().numpy()
    words = _words(tokenizer, encoded, text, scores, special.numpy())
    largest = max((abs(score) for _, score in words), default=0.0)
    return [(word, round(score / largest, 4) if largest > 0 else 0.0) for word, score in words]


def _words(tokenizer: Any, encoded: Any, text: str, scores: np.ndarray, special: np.ndarray) -> list[tuple[str, float]]:
    """Token scores merged into the text's words (fast tokenizers know each piece's word and place in the text)."""
    tokens = encoded["input_ids"][0].tolist()
    if "offset_mapping" not in encoded:  # a slow tokenizer: word pieces as they are
        return [(tokenizer.convert_ids_to_tokens(token), float(score))
                for token, score, skip in zip(tokens, scores, special, strict=True) if not skip]
    offsets = encoded["offset_mapping"][0].tolist()
    merged: dict[int, list[float]] = {}
    for position, word in enumerate(encoded.word_ids(0)):
        if word is None or special[position]:
            continue
        start, end = offsets[position]
        span = merged.setdefault(word, [start, end, 0.0])
        span[0], span[1], span[2] = min(span[0], start), max(span[1], end), span[2] + float(scores[position])
    return [(text[int(start):int(end)], score) for start, end, score in merged.values()]


# --------------------------------------------------------------------------------------------------- together


@dataclass
class Explanation:
    """The delivered model's answer for one input and what it rested on.

    Attributes:
        item: the input (a file path, or the text).
        predicted_class: index of the class the model predicts (the one explained).
        class_name: its name.
        probability: the model's probability for it.
        method: which method, in plain words.
        heat: images and sound: the Grad-CAM map [H, W] in [0, 1] over `picture`; None for texts.
        picture: images and sound: the input as the network saw it (cropped, resized) [H, W, 3] in [0, 1].
        words: texts: (word, score) in reading order, scores in [-1, 1] (positive = for the class).
    """

    item: str
    predicted_class: int
    class_name: str
    probability: float
    method: str
    heat: np.ndarray | None = None
    picture: np.ndarray | None = None
    words: list[tuple[str, float]] = field(default_factory=list)
    note: str = APPROXIMATE_NOTE

    @property
    def flat(self) -> bool:
        """True when nothing stood out (an all-zero heat map, or every word scored 0): there is no picture to read."""
        if self.heat is not None:
            return float(self.heat.max(initial=0.0)) <= 0.0
        return all(score == 0 for _, score in self.words)

    def overlay(self, weight: float = 0.5) -> np.ndarray:
        """The heat map (jet colours) blended over the picture: an RGB uint8 image to show."""
        from pytorch_grad_cam.utils.image import show_cam_on_image

        if self.heat is None or self.picture is None:
            raise ValueError("Only an image or sound explanation has a heat map to overlay.")
        return show_cam_on_image(self.picture.astype(np.float32), self.heat, use_rgb=True, image_weight=weight)

    def to_dict(self, grid_size: int = GRID_SIZE) -> dict[str, Any]:
        """A JSON-ready summary: prediction, probability, method, note, and the heat grid or the word scores."""
        record: dict[str, Any] = {
            "input": self.item, "prediction": self.class_name, "probability": round(self.probability, 6),
            "method": self.method, "note": self.note,
        }
        if self.heat is not None:
            record["heatmap"] = {"rows": grid_size, "columns": grid_size, "grid": heat_grid(self.heat, grid_size)}
        else:
            record["tokens"] = [{"word": word, "score": score} for word, score in self.words]
        return record


def explain(model: nn.Module, preprocessor: Any, item: str, classes: Sequence[str]) -> Explanation:
    """Explain the delivered model's own answer for one image or sound file, or one text.

    Raises:
        ExplanationUnsupported: a vision transformer or an exported bundle (the message says why).
        ValueError: the file cannot be read.
    """
    from core.evaluation import predict_proba

    spec = _spec_of(model)
    # The answer exactly as the page and `predict` give it (a text model's mixed-in TF-IDF model included).
    probabilities = predict_proba(model, preprocessor, [item], device=next(model.parameters()).device)[0]
    predicted = int(probabilities.argmax())
    name = classes[predicted] if predicted < len(classes) else str(predicted)
    method = supported(spec)[1]
    lexical = getattr(model, "lexical", None)
    if lexical is not None:
        share = getattr(lexical, "share", None)
        method += (" (the network's part only: a TF-IDF word model adds "
                   + (f"{share:.0%} of" if isinstance(share, float) else "its share to") + " the probabilities)")
    loaded = preprocessor.load(item, train=False)
    common = {"item": str(item), "predicted_class": predicted, "class_name": str(name),
              "probability": float(probabilities[predicted]), "method": method}
    if spec.modality == "text":
        return Explanation(**common, words=token_attributions(model, preprocessor, item, predicted))
    return Explanation(**common, heat=heatmap(model, loaded, predicted), picture=_picture(loaded, spec))


# --------------------------------------------------------------------------------------------------- CLI

_SHADES = " .:-=+*#%@"


def _text_report(explanation: Explanation) -> str:
    lines = [f"{explanation.item}: {explanation.class_name} ({explanation.probability:.1%})",
             f"{explanation.method} ({explanation.note})"]
    if explanation.heat is not None:
        lines.append("heat map, top of the picture first (' ' = no weight, '@' = most):")
        lines += ["  " + "".join(_SHADES[min(int(value * len(_SHADES)), len(_SHADES) - 1)] * 2 for value in row)
                  for row in heat_grid(explanation.heat, GRID_SIZE * 2)]
    else:
        lines += [f"  {score:+.2f}  {word}" for word, score in explanation.words]
    return "\n".join(lines)


def main_explain(args: argparse.Namespace) -> int:
    """`python -m core explain --model RUN_DIR --input FILE_OR_TEXT [--json]`: why the model answers what it does."""
    from core import evaluation

    try:
        model, preprocessor, run_info = evaluation.load_model(args.model)
        spec = _spec_of(model)
        classes = list(run_info["classes"])
        item = str(args.input)
        if spec.modality == "text":
            file = Path(item)
            if file.suffix.lower() == ".txt" and file.is_file():
                item = file.read_text(encoding="utf-8").strip()
            if not item.strip():
                raise evaluation.PredictionInputError("The text to explain is empty.")
        elif spec.modality == "audio":
            item = evaluation.check_audio_files([item])[0]
        else:
            item = evaluation.check_image_files([item])[0]
        explanation = explain(model, preprocessor, item, classes)
    except (evaluation.ModelLoadError, evaluation.PredictionInputError, OSError, ValueError, RuntimeError) as error:
        # ExplanationUnsupported is a ValueError: a ViT or a bundle is refused with its reason.
        sys.stderr.write(f"error: {error}\n")
        return 2
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(explanation.to_dict(), indent=2) + "\n")
    else:
        sys.stdout.write(_text_report(explanation) + "\n")
    return 0


__all__ = [
    "APPROXIMATE_NOTE", "Explanation", "ExplanationUnsupported", "explain", "heat_grid", "heatmap", "main_explain",
    "supported", "target_layers", "token_attributions",
]
