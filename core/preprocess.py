"""Turning one data item into model input, derived from the backbone's spec (never hard-coded twice).

Images: timm's transforms built from the spec's input size, interpolation, crop fraction and mean/std
(`timm.data.create_transform`, the same function `resolve_model_data_config` feeds). Evaluation is resize +
centre crop + normalise; training adds the chosen augmentation. Texts: the backbone's own tokenizer, padded
per batch and truncated to the spec's `max_tokens`. Sound: `core.audio`'s log-mel spectrogram picture, with the
settings the spec carries (`spec.extra["audio"]`), so a clip becomes the same [3, H, W] tensor an image does; for an
audio foundation model (AST, wav2vec 2.0, HuBERT) the clip, mono at 16 kHz and cut to length, goes through the
model's own Hugging Face feature extractor instead (fbank frames [1024, 128], or the normalised waveform). Training
clips take the chosen augmentation from `core.audio_augment` (shifted cut, gain, noise, spectrogram masks).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image, UnidentifiedImageError

from core import audio, audio_augment
from core.backbones import LOAD_LOCK, BackboneSpec, BackboneUnavailable, weights_folder

log = logging.getLogger(__name__)

Augmentation = Literal["none", "light", "strong"]
AUGMENTATIONS: dict[str, str] = {
    "none": "no changes: every epoch sees the same, centre-cropped images",
    "light": "random crops (keeping at least 60 % of the photo) and left-right flips",
    "strong": "random crops (down to 25 %), flips, colour changes and RandAugment distortions",
}  # for sound clips: `core.audio_augment.describe`


class Preprocessor:
    """Loads single examples and batches them, the way the backbone was pretrained to see them.

    Attributes:
        spec: the backbone this preprocessing belongs to.
        augmentation: "none", "light" or "strong" (applies to images and sound clips when `train=True`).
        cache_key: a short string that changes whenever evaluation-time preprocessing would change; feature
            caches key on it.
    """

    def __init__(self, spec: BackboneSpec, augmentation: Augmentation = "none") -> None:
        if augmentation not in AUGMENTATIONS:
            raise ValueError(f"Unknown augmentation {augmentation!r}; choose one of {', '.join(AUGMENTATIONS)}.")
        self.spec = spec
        self.augmentation = augmentation
        self.cache_key = _cache_key(spec)
        self._eval_transform: Any = None
        self._train_transform: Any = None
        self._tokenizer: Any = None
        self._feature_extractor: Any = None
        self.audio_settings: audio.MelSettings | None = None
        self._sound_recipe: audio_augment.SoundAugmentation | None = None
        if spec.modality == "audio":
            self.audio_settings = audio_settings(spec)
            self._sound_recipe = audio_augment.RECIPES.get(augmentation)
        if spec.modality == "image":
            self._eval_transform = _image_transform(spec, training=False)
            self._train_transform = (
                self._eval_transform if augmentation == "none" else _image_transform(spec, True, augmentation)
            )

    @property
    def modality(self) -> str:
        return self.spec.modality

    @property
    def feature_extractor(self) -> Any:
        """An audio foundation model's feature extractor, loaded on first use from the folder of its weights."""
        if self._feature_extractor is None:
            self._feature_extractor = _load_feature_extractor(self.spec)
        return self._feature_extractor

    @property
    def tokenizer(self) -> Any:
        """The text backbone's tokenizer, loaded on first use from the same local folder as the weights."""
        if self._tokenizer is None:
            self._tokenizer = _load_tokenizer(self.spec)
        return self._tokenizer

    def load(self, item: str, train: bool = False) -> Any:
        """One example ready for `collate`: an image or sound file path -> tensor [3, H, W]; a text -> the text.

        Raises:
            ValueError: the image or sound file cannot be read (the message names the file).
        """
        if self.spec.modality == "text":
            return " ".join(str(item).split())
        if self.audio_settings is not None:
            try:
                if train and self._sound_recipe is not None:
                    return self._augmented_sound(str(item), self._sound_recipe)
                if uses_feature_extractor(self.spec):
                    return self._extracted(audio.clip_waveform(str(item), self.audio_settings, pad=self._pads_clips))
                return audio.file_pixels(str(item), self.audio_settings)
            except audio.AudioReadError as error:
                raise ValueError(f"Cannot read the sound file {Path(item).name!r} ({item}): {error}") from error
        try:
            with Image.open(item) as image:
                rgb = image.convert("RGB")
        except (OSError, UnidentifiedImageError) as error:
            raise ValueError(f"Cannot read the image {Path(item).name!r} ({item}): {error}") from error
        transform = self._train_transform if train else self._eval_transform
        return transform(rgb)

    @property
    def _pads_clips(self) -> bool:
        """Whether a foundation model's shorter clips are centred in silence (AST's extractor pads its own frames)."""
        return bool(self.spec.extra["feature_extractor"].get("pad_clips", True))

    def _extracted(self, samples: Any) -> torch.Tensor:
        """A cut clip as the foundation model's input: its feature extractor's `input_values`."""
        values = self.feature_extractor(samples, sampling_rate=self.audio_settings.sample_rate, return_tensors="np")
        return torch.from_numpy(values["input_values"][0]).float()

    def _augmented_sound(self, path: str, recipe: audio_augment.SoundAugmentation) -> torch.Tensor:
        """A training view of a clip: the recipe's shifted cut, gain and noise, then the model's input; the
        spectrogram backbone's picture also gets the recipe's masks (a foundation model's extractor makes its own
        features, so it hears the waveform changes only)."""
        settings, rng = self.audio_settings, audio_augment.random_source()
        samples = audio.load_clip(path, settings.sample_rate)
        if uses_feature_extractor(self.spec):
            length = audio.cut_length(len(samples), settings, self._pads_clips)
            return self._extracted(audio_augment.augmented_clip(samples, length, recipe, rng))
        clip = audio_augment.augmented_clip(samples, settings.clip_samples, recipe, rng)
        return audio.unit_pixels(audio_augment.masked(audio.spectrogram_unit(clip, settings), recipe, rng), settings)

    def collate(self, loaded: list[Any]) -> Any:
        """A batch of loaded examples: a stacked image tensor, or a dict of `input_ids` and `attention_mask`."""
        if self.spec.modality in ("image", "audio"):
            return torch.stack(loaded)
        encoded = self.tokenizer(
            list(loaded), padding=True, truncation=True, max_length=self.spec.max_tokens, return_tensors="pt"
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def batch(self, items: list[str], train: bool = False) -> Any:
        """`collate([load(item) for item in items])`: convenient for prediction and tests."""
        return self.collate([self.load(item, train=train) for item in items])


def make_preprocessor(spec: BackboneSpec, augmentation: Augmentation = "none") -> Preprocessor:
    """The preprocessing that fits `spec`, with the chosen training augmentation."""
    return Preprocessor(spec, augmentation)


def uses_feature_extractor(spec: BackboneSpec) -> bool:
    """Whether a sound backbone hears through its own Hugging Face feature extractor, not a spectrogram picture."""
    return spec.modality == "audio" and "feature_extractor" in spec.extra


def audio_settings(spec: BackboneSpec) -> audio.MelSettings:
    """The spectrogram settings of an audio spec (sample rate, clip length, mel bands, image size, mean/std)."""
    if spec.modality != "audio" or "audio" not in spec.extra:
        raise ValueError(f"{spec.title} is not an audio backbone (it has no spectrogram settings).")
    return audio.MelSettings.from_dict(spec.extra["audio"])


def data_config(spec: BackboneSpec) -> dict[str, Any]:
    """The timm data config of an image spec (input size, interpolation, crop, mean, std)."""
    return {
        "input_size": tuple(spec.input_size),
        "interpolation": spec.interpolation,
        "crop_pct": spec.crop_pct,
        "crop_mode": "center",
        "mean": tuple(spec.mean),
        "std": tuple(spec.std),
    }


def _cache_key(spec: BackboneSpec) -> str:
    if spec.modality == "image":
        described = repr(sorted(data_config(spec).items()))
    elif uses_feature_extractor(spec):
        frontend = sorted(spec.extra["feature_extractor"].items())
        described = f"{spec.model_id}|{sorted(audio_settings(spec).to_dict().items())}|{frontend}"
    elif spec.modality == "audio":
        described = repr(sorted(audio_settings(spec).to_dict().items()))
    else:
        described = f"{spec.model_id}|{spec.max_tokens}"
    return f"{spec.name}-{hashlib.sha256(described.encode()).hexdigest()[:10]}"


def _image_transform(spec: BackboneSpec, training: bool, augmentation: str = "none") -> Any:
    from timm.data import create_transform

    config = data_config(spec)
    if not training:
        return create_transform(**config, is_training=False)
    config.pop("crop_mode")
    config.pop("crop_pct")
    if augmentation == "light":
        return create_transform(**config, is_training=True, scale=(0.6, 1.0), color_jitter=0.0)
    return create_transform(**config, is_training=True, scale=(0.25, 1.0), color_jitter=0.3,
                            auto_augment="rand-m7-mstd0.5")


def _load_tokenizer(spec: BackboneSpec) -> Any:
    folder = weights_folder(spec.name)
    where = str(folder) if folder is not None else spec.model_id
    try:
        with LOAD_LOCK:  # transformers' first import is not thread-safe (see core.backbones.LOAD_LOCK)
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(where)
    except OSError as error:
        raise BackboneUnavailable(
            f"The tokenizer of {spec.title} is not on this machine ({where}); it comes with the weights, see the "
            f"Backbone page for how to make {spec.name} available."
        ) from error


def _load_feature_extractor(spec: BackboneSpec) -> Any:
    folder = weights_folder(spec.name)
    where = str(folder) if folder is not None else spec.model_id
    try:
        with LOAD_LOCK:  # transformers' first import is not thread-safe (see core.backbones.LOAD_LOCK)
            from transformers import AutoFeatureExtractor

            extractor = AutoFeatureExtractor.from_pretrained(where)
    except OSError as error:
        raise BackboneUnavailable(
            f"The feature extractor of {spec.title} is not on this machine ({where}); it comes with the weights "
            f"(preprocessor_config.json), see the Backbone page for how to make {spec.name} available."
        ) from error
    rate = audio_settings(spec).sample_rate
    if int(getattr(extractor, "sampling_rate", rate)) != rate:
        raise BackboneUnavailable(f"The feature extractor in {where} expects {extractor.sampling_rate} Hz sound, but "
                                  f"{spec.title} is set up for {rate} Hz; is it the right model's folder?")
    return extractor
