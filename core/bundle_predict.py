#!/usr/bin/env python3
"""Predict with a model bundle exported by Transfer Studio: `python predict.py photo.jpg other.png`.

Needs only PyTorch (and Pillow for images; numpy, scipy and soundfile for sound; or `transformers` for the
tokenizer of a text model, or the feature extractor of an audio foundation model). The bundle
holds the same classifier three ways; this script uses, by `--engine`:
  torchscript (default): `model.torchscript.pt`, run by torch alone (no model code needed);
  safetensors: rebuilds the architecture (timm `create_model(model_id, pretrained=False, num_classes=0)`, or
      Hugging Face `AutoModel.from_config`) plus the linear head, and loads `model.safetensors` into it;
  onnx: `model.onnx` with onnxruntime, when that is installed.
The preprocessing (resize, centre crop, normalisation; or the tokenizer and its token limit) is read from
`preprocessing.json`, so it is the one the model was trained with. Every file is checked against the SHA-256
sums in `manifest.json` first; `--no-verify` skips that.

Examples:
    python predict.py --top-k 3 cat.jpg dog.jpg
    python predict.py "a text to classify" "another one"        (text model)
    python predict.py --json --inputs-file items.json           (a JSON list of paths or texts)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import torch

BUNDLE_DIR = Path(__file__).resolve().parent
ENGINES = ("torchscript", "safetensors", "onnx")

# The bundle's files this script reads. The app declares them in core/_bundle_folder.py; this script ships alone,
# so it spells them itself (a test checks that they are the same).
MANIFEST_FILE = "manifest.json"
LABELS_FILE = "labels.json"
PREPROCESSING_FILE = "preprocessing.json"
ARCHITECTURE_FILE = "architecture.json"
TORCHSCRIPT_FILE = "model.torchscript.pt"
WEIGHTS_FILE = "model.safetensors"
ONNX_FILE = "model.onnx"


class BundleFileError(RuntimeError):
    """A bundle file is missing or does not match the SHA-256 sum its manifest records."""


def verify(bundle_dir: Path) -> dict:
    """Check every file against manifest.json and return the manifest; raise BundleFileError naming the first file
    that is missing or changed since export (the app's `load_bundle` runs this same check)."""
    manifest_path = bundle_dir / MANIFEST_FILE
    if not manifest_path.is_file():
        raise BundleFileError(
            f"{MANIFEST_FILE} is missing from {bundle_dir}: not a Transfer Studio bundle, or incomplete."
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
        entries = sorted(files.items())
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise BundleFileError(f"{MANIFEST_FILE} in {bundle_dir} is not a valid manifest ({error}).") from error
    for name, expected in entries:
        path = bundle_dir / name
        if not path.is_file():
            raise BundleFileError(f"{name} is missing from the bundle {bundle_dir} ({MANIFEST_FILE} lists it).")
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != (expected or {}).get("sha256"):
            raise BundleFileError(f"{name} in {bundle_dir} was changed after export: its SHA-256 does not match "
                                  f"{MANIFEST_FILE}. Export the model again, or restore the original file.")
    return manifest


def _read_json(bundle_dir: Path, name: str) -> dict:
    return json.loads((bundle_dir / name).read_text(encoding="utf-8"))


def bundle_module(bundle_dir: Path, file_name: str, module_name: str):
    """A module the bundle ships as a copy of the app's own code (audio_features.py, lexical_model.py)."""
    import importlib.util

    path = bundle_dir / file_name
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None or not path.is_file():
        raise BundleFileError(f"{path.name} is missing from the bundle {bundle_dir}.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


class ImagePreprocessor:
    """Resize the shorter side, centre-crop, scale to [0, 1] and normalise, as at evaluation time in the app."""

    def __init__(self, config: dict) -> None:
        from PIL import Image

        self.resize = int(config["resize"])
        self.crop_height, self.crop_width = (int(v) for v in config["crop"])
        self.resample = {
            "nearest": Image.NEAREST,
            "bilinear": Image.BILINEAR,
            "bicubic": Image.BICUBIC,
            "lanczos": Image.LANCZOS,
        }[config["interpolation"]]
        self.mean = torch.tensor(config["mean"], dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(config["std"], dtype=torch.float32).view(-1, 1, 1)

    def load(self, path: str) -> torch.Tensor:
        from PIL import Image

        with Image.open(path) as image:
            image = image.convert("RGB")
        width, height = image.size
        # The shorter side becomes `resize`, the longer keeps the aspect ratio (torchvision's Resize(int)).
        if width <= height:
            new_width, new_height = self.resize, int(self.resize * height / width)
        else:
            new_width, new_height = int(self.resize * width / height), self.resize
        if (new_width, new_height) != (width, height):
            image = image.resize((new_width, new_height), self.resample)
        top = int(round((new_height - self.crop_height) / 2.0))
        left = int(round((new_width - self.crop_width) / 2.0))
        image = image.crop((left, top, left + self.crop_width, top + self.crop_height))
        pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        pixels = pixels.view(self.crop_height, self.crop_width, 3).permute(2, 0, 1).float().div(255)
        return (pixels - self.mean) / self.std

    def batch(self, items: list[str]) -> tuple[torch.Tensor, ...]:
        return (torch.stack([self.load(item) for item in items]),)


class AudioPreprocessor:
    """Sound files as log-mel spectrogram pictures, by the bundle's own copy of the app's code (audio_features.py).

    An audio foundation model's bundle (AST, wav2vec 2.0, HuBERT) instead cuts the clip with that code and hands it
    to the model's own feature extractor, saved in `feature_extractor/` (needs `transformers`).
    """

    def __init__(self, config: dict, bundle_dir: Path) -> None:
        self.features = bundle_module(bundle_dir, config["features_module"], "transfer_studio_audio_features")
        self.settings = self.features.MelSettings.from_dict(config)
        self.extractor = None
        self.pad_clips = True  # a spectrogram bundle: file_pixels centres a shorter clip in silence
        if config.get("feature_extractor_dir"):  # only an audio foundation model's bundle has one
            from transformers import AutoFeatureExtractor

            self.extractor = AutoFeatureExtractor.from_pretrained(str(bundle_dir / config["feature_extractor_dir"]))
            self.pad_clips = bool(config["pad_clips"])

    def load(self, path: str) -> torch.Tensor:
        if self.extractor is None:
            return self.features.file_pixels(str(path), self.settings)
        samples = self.features.clip_waveform(str(path), self.settings, pad=self.pad_clips)
        values = self.extractor(samples, sampling_rate=self.settings.sample_rate, return_tensors="np")
        return torch.from_numpy(values["input_values"][0]).float()

    def batch(self, items: list[str]) -> tuple[torch.Tensor, ...]:
        return (torch.stack([self.load(item) for item in items]),)


class TextPreprocessor:
    """The backbone's own tokenizer (saved in `tokenizer/`), padded per batch and cut at `max_tokens`."""

    def __init__(self, config: dict, bundle_dir: Path) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(bundle_dir / config["tokenizer_dir"]))
        self.max_tokens = int(config["max_tokens"])

    def batch(self, items: list[str]) -> tuple[torch.Tensor, ...]:
        texts = [" ".join(str(item).split()) for item in items]  # whitespace collapsed, as in the app
        encoded = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        )
        return encoded["input_ids"], encoded["attention_mask"]


def pool_text(output: Any, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """A text encoder's output as one vector per text: "mean" (over real tokens), "cls" or "pooler", each
    optionally "+normalize" (unit length). The app's export tries each to find the one that matches its model."""
    if pooling == "pooler":
        return output.pooler_output
    hidden = output.last_hidden_state
    if pooling.startswith("cls"):
        pooled = hidden[:, 0]
    else:
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    if pooling.endswith("+normalize"):
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
    return pooled


def pool_audio(output: Any) -> torch.Tensor:
    """An audio foundation model's output as one vector per clip: the mean over time (tokens) of its last hidden
    state, as the app pools AST, wav2vec 2.0 and HuBERT."""
    return output.last_hidden_state.mean(dim=1)


class RebuiltClassifier(torch.nn.Module):
    """The architecture rebuilt from its library and `architecture.json`, with the weights of model.safetensors."""

    def __init__(self, bundle_dir: Path, architecture: dict) -> None:
        super().__init__()
        from safetensors.torch import load_file

        rebuild = architecture["rebuild"]
        if not rebuild:
            raise BundleFileError(
                "This bundle's architecture cannot be rebuilt from a public library "
                f"({architecture['rebuild_detail']}); use --engine torchscript."
            )
        self.source = rebuild["source"]
        self.pooling = rebuild["pooling"]
        if self.source == "timm":
            import timm

            self.backbone = timm.create_model(rebuild["model_id"], pretrained=False, num_classes=0)
        elif self.source == "transformers":
            from transformers import AutoConfig, AutoModel

            config = AutoConfig.from_pretrained(str(bundle_dir / rebuild["config_dir"]))
            self.backbone = AutoModel.from_config(config)
            if rebuild["drop_pooler"]:
                self.backbone.pooler = None  # the app mean-pools; the CLS pooler was never trained
        else:
            raise BundleFileError(f"Unknown backbone source {self.source!r} in {ARCHITECTURE_FILE}.")
        weights = load_file(str(bundle_dir / WEIGHTS_FILE))
        prefix = "backbone."
        backbone_weights = {key[len(prefix) :]: value for key, value in weights.items() if key.startswith(prefix)}
        self.backbone.load_state_dict(backbone_weights, strict=True)
        self.head = torch.nn.Linear(weights["head.weight"].shape[1], weights["head.weight"].shape[0])
        self.head.load_state_dict({"weight": weights["head.weight"], "bias": weights["head.bias"]})
        self.eval()

    def features(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.source == "timm":
            return self.backbone(inputs[0])
        if self.pooling == "time mean":  # a sound model: one input, the waveform or fbank frames
            return pool_audio(self.backbone(inputs[0]))
        input_ids, attention_mask = inputs
        output = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        return pool_text(output, attention_mask, self.pooling)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(*inputs))


class OnnxModel:
    """model.onnx run by onnxruntime (CPU), called like the torch models."""

    def __init__(self, path: Path) -> None:
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.names = [node.name for node in self.session.get_inputs()]

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        feed = {name: value.cpu().numpy() for name, value in zip(self.names, inputs, strict=True)}
        return torch.from_numpy(self.session.run(None, feed)[0])


def load_lexical(config: dict, bundle_dir: Path):
    """A text run's TF-IDF n-gram model, by the bundle's own copy of the app's code (lexical_model.py), or None."""
    if not config.get("lexical"):
        return None
    module = bundle_module(bundle_dir, config["lexical"]["module"], "transfer_studio_lexical_model")
    return module.load(bundle_dir / config["lexical"]["model"])


class BundlePredictor:
    """A loaded bundle: `predictor(items)` gives class probabilities [len(items), num_classes].

    A text run may carry a lexical model (TF-IDF n-grams, `lexical.safetensors`): its probabilities are mixed in
    with the network's at the share recorded in preprocessing.json, exactly as in the app.
    """

    def __init__(self, bundle_dir: str | Path = BUNDLE_DIR, engine: str = "torchscript", check: bool = True) -> None:
        self.bundle_dir = Path(bundle_dir).resolve()
        if check:
            verify(self.bundle_dir)
        if engine not in ENGINES:
            raise ValueError(f"Unknown engine {engine!r}: choose one of {', '.join(ENGINES)}.")
        self.engine = engine
        self.classes = list(_read_json(self.bundle_dir, LABELS_FILE)["classes"])
        self.preprocessing = _read_json(self.bundle_dir, PREPROCESSING_FILE)
        self.modality = self.preprocessing["modality"]
        if self.modality == "image":
            self.preprocessor = ImagePreprocessor(self.preprocessing)
        elif self.modality == "audio":
            self.preprocessor = AudioPreprocessor(self.preprocessing, self.bundle_dir)
        else:
            self.preprocessor = TextPreprocessor(self.preprocessing, self.bundle_dir)
        self.lexical = load_lexical(self.preprocessing, self.bundle_dir)
        if engine == "torchscript":
            self.model = torch.jit.load(str(self.bundle_dir / TORCHSCRIPT_FILE), map_location="cpu").eval()
        elif engine == "safetensors":
            self.model = RebuiltClassifier(self.bundle_dir, _read_json(self.bundle_dir, ARCHITECTURE_FILE))
        else:
            self.model = OnnxModel(self.bundle_dir / ONNX_FILE)

    @torch.inference_mode()
    def __call__(self, items: list[str], batch_size: int = 32) -> torch.Tensor:
        chunks = []
        for start in range(0, len(items), batch_size):
            logits = self.model(*self.preprocessor.batch(list(items[start : start + batch_size])))
            probabilities = torch.softmax(logits.float(), dim=-1)
            if self.lexical is not None:
                mixed = self.lexical.mix(probabilities.numpy(), list(items[start : start + batch_size]))
                probabilities = torch.from_numpy(mixed).float()
            chunks.append(probabilities)
        if not chunks:
            return torch.zeros(0, len(self.classes))
        return torch.cat(chunks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="*", help="image or sound files, or texts for a text model")
    parser.add_argument("--inputs-file", help="a JSON file holding a list of image or sound file paths, or texts")
    parser.add_argument("--engine", choices=ENGINES, default="torchscript")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print all probabilities as JSON")
    parser.add_argument("--no-verify", action="store_true", help="skip the SHA-256 check of the bundle files")
    args = parser.parse_args(argv)
    items = list(args.inputs)
    if args.inputs_file:
        items += json.loads(Path(args.inputs_file).read_text(encoding="utf-8"))
    if not items:
        parser.error("give image or sound files, or texts, to classify")
    try:
        predictor = BundlePredictor(BUNDLE_DIR, engine=args.engine, check=not args.no_verify)
        probabilities = predictor(items)
    except (BundleFileError, OSError, ValueError) as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    top_k = max(1, min(args.top_k, len(predictor.classes)))
    if args.json:
        records = [
            {
                "input": item,
                "probabilities": [float(value) for value in row.tolist()],
                "top_k": [
                    {"class": predictor.classes[index], "probability": float(row[index])}
                    for index in torch.topk(row, top_k).indices.tolist()
                ],
            }
            for item, row in zip(items, probabilities, strict=True)
        ]
        sys.stdout.write(json.dumps({"classes": predictor.classes, "engine": args.engine, "predictions": records}))
        sys.stdout.write("\n")
        return 0
    for item, row in zip(items, probabilities, strict=True):
        values, indices = torch.topk(row, top_k)
        pairs = zip(values.tolist(), indices.tolist(), strict=True)
        ranked = ", ".join(f"{predictor.classes[index]} {value:.3f}" for value, index in pairs)
        sys.stdout.write(f"{item}\t{ranked}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
