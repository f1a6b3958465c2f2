"""What a run is asked to do: `TrainConfig`, the defaults the Train page and the CLI share, and the plan it implies.

The plan is what follows from the settings alone, before any example is loaded: which cache mode applies and why
(`cache_plan`), whether the logistic head or the gradient loop trains (`uses_logistic_head`), which backbone blocks
are pooled into the features (`feature_taps`). The page shows it before a run starts; the run follows it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from core import preprocess, smalldata
from core._backbone_catalogue import CLIP_SECONDS_RANGE
from core.dataset import Dataset

CACHE_MODES = ("features", "activations", "none")
AUGMENTATIONS = tuple(preprocess.AUGMENTATIONS)  # "none", "light", "strong": declared once, with their meaning
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MAX_VIEWS = 16  # augmented views per image for the logistic head: each is one more pass over the labelled images


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides how a classifier is trained (stored with the run, so a run can be repeated).

    Attributes:
        backbone: catalogue name of the backbone (`core.backbones`).
        frozen_groups: how many of the backbone's layer groups stay frozen (0 = fine-tune everything; the number
            of groups or more = train only the head on fixed features).
        epochs: passes over the training split (early stopping may end sooner).
        batch_size: examples per optimisation step.
        lr: peak learning rate of the head (after warm-up).
        weight_decay: AdamW weight decay (not applied to biases and normalisation weights).
        warmup_fraction: share of all steps spent warming the learning rate up linearly from zero.
        label_smoothing: cross-entropy label smoothing (0 = off).
        class_weights: weight the loss by inverse class frequency, for imbalanced data.
        backbone_lr_factor: the unfrozen backbone layers learn at `lr * backbone_lr_factor` (discriminative rates).
        grad_clip: clip the gradient norm to this value (0 or None = off).
        augmentation: "none", "light" or "strong" (training images and sound clips only; caching needs "none").
        patience: stop after this many epochs without a better validation loss (0 or None = never stop early).
        seed: seeds data order, head initialisation, dropout and augmentation.
        device: "auto" (CUDA, then Apple MPS, then CPU), "cpu", "cuda", "cuda:1" or "mps".
        pretrained: start from the pretrained weights (False only for tests and experiments).
        precision: "auto" (bfloat16 autocast where the hardware supports it, AMP on CUDA), "fp32", "bf16", "fp16".
        cache: "auto" caches features / activations whenever that is exact; "off" always runs the whole network.
        protocol: "auto" (cross-validation and a refit on all labels for small data, see `core.smalldata`),
            "cross-validation" or "test split".
        folds: the most folds of the cross-validation.
        head: "auto" (logistic regression by L-BFGS on cached features when every group is frozen, else the
            gradient loop), "logistic" or "gradient".
        multi_block: with every group frozen, also pool the outputs of the backbone's declared `feature_taps`
            (its last blocks) into the features the head sees; no effect on backbones that declare none.
        sentence_tuning: with a sentence encoder and every group frozen, first fine-tune the encoder on your
            labelled texts, SetFit-style (`core.contrastive`): "auto" (where it pays, see `contrastive.plan`), "on" or
            "off".
        refit: fine-tuning (gradient loop): once early stopping has chosen the number of epochs on the validation
            split, train again from the pretrained weights on train + validation for that many epochs, and deliver
            (and score on the test split) that model. "auto" does so where the data is small (the rule under which
            feature extraction cross-validates, `core.smalldata.choose_protocol`); "on" or "off".
        views: images and sound clips with the logistic head: this many augmented views of each labelled example
            (the "light" augmentation: random crops keeping at least 60 % and flips; for clips a shifted cut and a
            gain) go once through the frozen backbone, and the head learns from them beside the originals
            (`smalldata.with_views`: a view only ever joins its own example's fold). 0 = off.
        lexical: texts with the logistic head: "auto" mixes a TF-IDF n-gram model into the delivered probabilities
            (`core.ngrams`: an equal vote of the two; fitted and scored on the same folds); "off" keeps the
            head alone.
        clip_seconds: sound clips: how many seconds of each clip the backbone hears (cut around the loudest part,
            or padded with silence); "auto" keeps the backbone's own length unless the clips are clearly longer
            (`core.clip_length`). A run records the number, and its backbone name carries it (`name@2s`).
    """

    backbone: str
    frozen_groups: int
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    label_smoothing: float = 0.0
    class_weights: bool = False
    backbone_lr_factor: float = 0.1
    grad_clip: float | None = 1.0
    augmentation: str = "none"
    patience: int | None = 3
    seed: int = 0
    device: str = "auto"
    pretrained: bool = True
    precision: str = "auto"
    cache: str = "auto"
    protocol: str = "auto"
    folds: int = 5
    head: str = "auto"
    multi_block: bool = True
    sentence_tuning: str = "auto"
    refit: str = "auto"
    lexical: str = "auto"
    views: int = 0
    clip_seconds: float | str = "auto"

    def validate(self) -> None:
        """Raise ValueError with a message a user can act on when a value is out of range."""
        problems = []
        if self.frozen_groups < 0:
            problems.append(f"frozen_groups must be 0 or more, not {self.frozen_groups}")
        if self.epochs < 1:
            problems.append(f"epochs must be at least 1, not {self.epochs}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be at least 1, not {self.batch_size}")
        if not self.lr > 0:
            problems.append(f"the learning rate must be positive, not {self.lr}")
        if self.weight_decay < 0:
            problems.append(f"weight_decay must be 0 or more, not {self.weight_decay}")
        if not 0 <= self.warmup_fraction < 1:
            problems.append(f"warmup_fraction must be in [0, 1), not {self.warmup_fraction}")
        if not 0 <= self.label_smoothing < 1:
            problems.append(f"label_smoothing must be in [0, 1), not {self.label_smoothing}")
        if self.backbone_lr_factor < 0:
            problems.append(f"backbone_lr_factor must be 0 or more, not {self.backbone_lr_factor}")
        if self.augmentation not in AUGMENTATIONS:
            problems.append(f"augmentation must be one of {', '.join(AUGMENTATIONS)}, not {self.augmentation!r}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.cache not in ("auto", "off"):
            problems.append(f"cache must be 'auto' or 'off', not {self.cache!r}")
        if self.protocol not in smalldata.PROTOCOLS:
            problems.append(f"protocol must be one of {', '.join(smalldata.PROTOCOLS)}, not {self.protocol!r}")
        if self.folds < 2:
            problems.append(f"folds must be at least 2, not {self.folds}")
        if self.head not in ("auto", "logistic", "gradient"):
            problems.append(f"head must be 'auto', 'logistic' or 'gradient', not {self.head!r}")
        if self.sentence_tuning not in ("auto", "on", "off"):
            problems.append(f"sentence_tuning must be 'auto', 'on' or 'off', not {self.sentence_tuning!r}")
        if self.refit not in ("auto", "on", "off"):
            problems.append(f"refit must be 'auto', 'on' or 'off', not {self.refit!r}")
        if self.lexical not in ("auto", "off"):
            problems.append(f"lexical must be 'auto' or 'off', not {self.lexical!r}")
        if not 0 <= self.views <= MAX_VIEWS:
            problems.append(f"views must be between 0 and {MAX_VIEWS}, not {self.views}")
        if self.clip_seconds != "auto":
            low, high = CLIP_SECONDS_RANGE
            try:
                seconds = float(self.clip_seconds)
            except (TypeError, ValueError):
                seconds = math.nan
            if not low <= seconds <= high:
                problems.append(
                    f"clip_seconds must be 'auto' or between {low:g} and {high:g}, not {self.clip_seconds!r}")
        if problems:
            raise ValueError("Invalid training settings: " + "; ".join(problems) + ".")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Rebuild a config from `to_dict()` output, ignoring keys this version does not know."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def uses_logistic_head(config: TrainConfig, cache_mode: str) -> bool:
    """Whether the run fits the logistic head by L-BFGS (one process) rather than the gradient loop."""
    return config.head == "logistic" or (config.head == "auto" and cache_mode == "features")


def _cache_plan(config: TrainConfig, frozen: int, num_groups: int) -> tuple[str, str]:
    """Which cache mode applies, and a sentence that explains it to the user."""
    if config.cache == "off":
        return "none", "Caching is switched off for this run: every epoch runs the whole network."
    if frozen == 0:
        return "none", "Every layer is fine-tuned, so nothing can be cached: each batch runs the whole network."
    if config.augmentation != "none":
        return "none", (
            f"Augmentation ({config.augmentation}) changes every training example each epoch, so the frozen layers "
            "must run again every epoch. Turn augmentation off to compute them once and train much faster."
        )
    if frozen >= num_groups:
        return "features", (
            "Every backbone layer is frozen and augmentation is off: the backbone runs once over the data and "
            "only the new head trains on the stored features."
        )
    return "activations", (
        f"The first {frozen} of {num_groups} layer groups are frozen and augmentation is off: their output is "
        "computed once and stored, and only the remaining layers and the head train."
    )


def default_views(config: TrainConfig, settings: dict[str, Any], num_groups: int) -> int:
    """The suggested views for `config` (`suggested_settings`), where its head can use them: the logistic head on
    cached features; 0 for a gradient-descent head or an augmented run."""
    cache_mode, _ = _cache_plan(config, min(config.frozen_groups, num_groups), num_groups)
    return int(settings["views"]) if uses_logistic_head(config, cache_mode) else 0


def feature_taps(spec: Any, config: TrainConfig, frozen: int, num_groups: int) -> tuple[int, ...]:
    """The groups pooled into the features (multi-block): the spec's taps, with every group frozen and when asked."""
    return tuple(spec.feature_taps) if config.multi_block and frozen >= num_groups else ()


#: Sound clips with every group frozen learn also from this many augmented views of each clip by default. On the
#: spoken-words sample (seeds 0-3, 144 clips, 5-fold CV) two views gave +1.6 points on average, and +0.6 on the same
#: words padded to 2 s; transfer's interval cleared the MFCC baseline's in 7 of 8 runs with them, 5 of 8 without.
SOUND_VIEWS = 2


def suggested_settings(dataset: Dataset, num_groups: int | None, frozen_groups: int | None) -> dict[str, Any]:
    """Hyperparameters that work for this data and freezing before the user touches anything (page and CLI share them).

    Feature extraction (every group frozen) trains only a linear head on cached features: many cheap epochs and a
    high rate (on the sample digits, 25 epochs at 1e-2 reach 87.5 % validation accuracy where 1e-3 reaches 70 %).
    Fine-tuning changes the backbone: fewer epochs, a lower rate, and the backbone learns at a tenth of the head's
    rate (a twentieth for text encoders, which forget quickly). Class weights switch on when the largest class has
    more than 3x the examples of the smallest. Sound clips with every group frozen learn also from `SOUND_VIEWS`
    augmented views of each clip (the logistic head's; a run that cannot use them gets none, see `default_views`).
    """
    counts = dataset.counts()
    per_class = counts["train"] if int(counts["train"].sum()) else counts["total"]
    train_count = int(per_class.sum())
    smallest = max(1, int(per_class.min())) if len(per_class) else 1
    imbalance = float(per_class.max()) / smallest if len(per_class) else 1.0
    feature_extraction = num_groups is not None and (frozen_groups or 0) >= num_groups
    text = dataset.modality == "text"
    batch_size = 32 if feature_extraction or not text else 16
    while batch_size > 4 and batch_size > train_count:
        batch_size //= 2
    return {
        "epochs": 25 if feature_extraction else 8,
        "batch_size": batch_size,
        "lr": 1e-2 if feature_extraction else 1e-3,
        "weight_decay": 0.01,
        "label_smoothing": 0.0 if feature_extraction else 0.1,
        "class_weights": imbalance > 3.0,
        "backbone_lr_factor": 0.05 if text else 0.1,
        "augmentation": "none",
        "views": SOUND_VIEWS if dataset.modality == "audio" and feature_extraction else 0,
        "patience": 5,
        "feature_extraction": feature_extraction,
        "imbalance": imbalance,
    }
