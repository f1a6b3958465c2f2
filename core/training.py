"""The training engine: one `fit` for image and text classifiers, as the Train page and the CLI run it.

`fit` builds the classifier (a pretrained backbone plus a new head), freezes its first layer groups, and trains
with AdamW (linear warm-up, cosine decay, optional label smoothing, class weights, a lower learning rate for the
unfrozen backbone layers, gradient clipping), seeded and reproducible. It stops early when the validation loss
stops improving, restores the best epoch, and checkpoints every epoch so a run can be resumed.

It is fast where the freezing allows it (see `core.features`):
- every group frozen, no augmentation: the backbone runs once and only the head trains on the stored features
  (`cache_mode="features"`);
- some groups frozen, no augmentation: activations at the freeze boundary are stored and only the rest trains
  (`cache_mode="activations"`);
- otherwise (`cache_mode="none"`) each batch runs the whole network, in channels-last memory format with bfloat16
  autocast where the CPU supports it (mixed precision on CUDA).

The loop knows nothing of charts: it reports to callback objects (`on_train_begin`, `on_step_end`,
`on_epoch_end`, `on_train_end`, all optional) and honours a `threading.Event` stop flag within one batch. Every
run is recorded in the run store (`core.store`) as it goes and in its run folder (`model.safetensors`,
`run.json`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from core import audio_baseline, backbones, contrastive, ngrams, preprocess, smalldata, stats
from core import data as data_module
from core import distributed as scale_out
from core import features as feature_cache
from core.backbones import Backbone, Classifier
from core.dataset import Dataset
from core.devices import pick as pick_device
from core.devices import to_device
from core.evaluation import fit_tfidf
from core.freezing import freeze_first, set_train_mode
from core.paths import is_runs_folder, workspace_subdir
from core.preprocess import audio_settings, make_preprocessor
from core.stats import format_interval
from core.store import RunStore, new_run_id

log = logging.getLogger(__name__)

CACHE_MODES = ("features", "activations", "none")
AUGMENTATIONS = tuple(preprocess.AUGMENTATIONS)  # "none", "light", "strong": declared once, with their meaning
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MAX_VIEWS = 16  # augmented views per image for the logistic head: each is one more pass over the labelled images
STEP_FLUSH_SECONDS = 2.0
ENCODE_BATCH = 64  # texts embedded at once when features are computed outside the cache (a tuned encoder)
CHECKPOINT_DIR = "checkpoint"


# ----------------------------------------------------------------------------------------------------- config


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
        augmentation: "none", "light" or "strong" (training images only; caching needs "none").
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
        views: images with the logistic head: this many augmented views of each labelled image (random crops
            keeping at least 60 %, flips: the "light" augmentation) go once through the frozen backbone, and the
            head learns from them beside the originals (`smalldata.with_views`: a view only ever joins its own
            image's fold). 0 = off.
        lexical: texts with the logistic head: "auto" mixes a TF-IDF n-gram model into the delivered probabilities
            (`core.ngrams`: an equal vote of the two; fitted and scored on the same folds); "off" keeps the
            head alone.
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
        if problems:
            raise ValueError("Invalid training settings: " + "; ".join(problems) + ".")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Rebuild a config from `to_dict()` output, ignoring keys this version does not know."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass
class FitResult:
    """What a finished (or stopped, or failed) run reports.

    Attributes:
        status: "completed", "stopped" or "failed".
        best_epoch: the 1-based epoch whose weights were kept (lowest validation loss); None before any epoch.
        history: per-epoch metrics (`epoch`, `train_loss`, `train_accuracy`, `val_loss`, `val_accuracy`, ...).
        cache_mode: "features", "activations" or "none"; `cache_note` says why, for the UI.
        seconds: wall time of the whole run; `cache_seconds` of it went into computing the cache.
    """

    run_id: str
    run_dir: str
    status: str
    best_epoch: int | None
    epochs_completed: int
    val_accuracy: float | None
    val_loss: float | None
    test_accuracy: float | None
    history: list[dict[str, Any]]
    cache_mode: str
    cache_note: str
    device: str
    precision: str
    seconds: float
    cache_seconds: float = 0.0
    cache_reused: bool = False
    error: str | None = None
    estimate: dict[str, Any] | None = None


class TrainCallback:
    """Base class for listeners (subclassing is optional: any object with some of these methods works)."""

    def on_train_begin(self, info: dict[str, Any]) -> None:
        """Run id, device, precision, cache mode and note, steps per epoch, total steps, split sizes."""

    def on_step_end(self, step_metrics: dict[str, Any]) -> None:
        """After each optimisation step (`phase="train"`), and during caching (`phase="features"`, `progress`)."""

    def on_epoch_end(self, epoch_metrics: dict[str, Any]) -> None:
        """After each epoch's validation: losses, accuracies, learning rate, best epoch so far."""

    def on_train_end(self, result: FitResult) -> None:
        """Once, with the final result (also for stopped runs)."""


class TrainingStopped(Exception):
    """Internal: the stop flag was set."""


# ----------------------------------------------------------------------------------------------------- device


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bfloat16 maths (AVX512-BF16 / AMX), where bf16 autocast is faster than fp32."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(requested: str, device: torch.device) -> str:
    """The precision actually used: "auto" becomes bf16 on capable CPUs and CUDA GPUs, fp16 on older GPUs."""
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_supports_bf16():
        return "bf16"
    return "fp32"


def uses_channels_last(modality: str, device: torch.device) -> bool:
    """Images train in channels-last memory format (faster convolutions), except on Apple MPS."""
    return modality == "image" and device.type != "mps"


def autocast_factory(device: torch.device, precision: str) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """A zero-argument function returning the autocast context for this device and precision."""
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


# ------------------------------------------------------------------------------------------------------ data


class _Examples(torch.utils.data.Dataset):
    """(loaded example, class index) pairs through a preprocessor, for a torch DataLoader."""

    def __init__(self, items: Sequence[str], labels: Sequence[int], preprocessor: Any, train: bool) -> None:
        self.items, self.labels, self.preprocessor, self.train = list(items), list(labels), preprocessor, train

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.preprocessor.load(self.items[index], self.train), self.labels[index]


def _loader(
    items: Sequence[str], labels: Sequence[int], preprocessor: Any, train: bool, batch_size: int,
    generator: torch.Generator | None = None, shuffle: bool = False, batches: Sequence[Sequence[int]] | None = None,
) -> torch.utils.data.DataLoader:
    """A DataLoader over a preprocessor; its own generator keeps the global RNG (dropout, augmentation) untouched.

    `batches` (the indices of each batch, in order) replaces batch size and shuffling: one process's shares of a
    multi-process run.
    """
    def collate(examples: list[tuple[Any, int]]) -> tuple[Any, torch.Tensor]:
        loaded, classes = zip(*examples, strict=True)
        return preprocessor.collate(list(loaded)), torch.tensor(classes, dtype=torch.long)

    if batches is not None:
        return torch.utils.data.DataLoader(
            _Examples(items, labels, preprocessor, train), batch_sampler=batches, num_workers=0, collate_fn=collate
        )
    return torch.utils.data.DataLoader(
        _Examples(items, labels, preprocessor, train),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator if generator is not None else torch.Generator().manual_seed(0),
        num_workers=0,
        collate_fn=collate,
    )


def _batch_size_of(batch: Any) -> int:
    if isinstance(batch, dict):
        return int(next(iter(batch.values())).shape[0])
    return int(batch.shape[0])


# ---------------------------------------------------------------------------------------------- state dicts


def _module_prefixes(model: nn.Module, modules: Sequence[nn.Module]) -> list[str]:
    names = {id(module): name for name, module in model.named_modules()}
    return [names[id(module)] + "." for module in modules if id(module) in names]


def _cpu_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy safe for safetensors: contiguous, on CPU, no shared storage between entries."""
    return {key: value.detach().to("cpu").contiguous().clone() for key, value in state.items()}


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    return value


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{index}"] = state
    numpy_state = np.random.get_state()
    plain = {
        "python": _json_ready(random.getstate()),
        "numpy": [numpy_state[0], numpy_state[1].tolist(), int(numpy_state[2]), int(numpy_state[3]),
                  float(numpy_state[4])],
    }
    return tensors, plain


def _set_rng_state(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng/cuda/"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def _optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {"param_groups": _json_ready(state["param_groups"]), "state": {}}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{index}/{name}"] = value
            else:
                plain["state"].setdefault(str(index), {})[name] = _json_ready(value)
    return tensors, plain


def _load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], plain: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, index, name = key.split("/", 2)
            state.setdefault(int(index), {})[name] = value
    for index, values in plain.get("state", {}).items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": plain["param_groups"]})


# ------------------------------------------------------------------------------------------------ the engine


class _Events:
    def __init__(self, callbacks: Sequence[Any]) -> None:
        self.callbacks = list(callbacks)

    def emit(self, name: str, payload: Any) -> None:
        for callback in self.callbacks:
            method = getattr(callback, name, None)
            if callable(method):
                method(payload)


def _class_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def _lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warm-up from ~0 to 1 over `warmup_steps`, then cosine decay to 0 at `total_steps`."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _param_groups(model: Classifier, config: TrainConfig) -> list[dict[str, Any]]:
    """Head at `lr`, unfrozen backbone at `lr * backbone_lr_factor`; no weight decay on biases and norms."""
    groups = []
    for part, factor in ((model.head, 1.0), (model.backbone, config.backbone_lr_factor)):
        decay = [p for p in part.parameters() if p.requires_grad and p.dim() > 1]
        no_decay = [p for p in part.parameters() if p.requires_grad and p.dim() <= 1]
        lr = config.lr * factor
        for params, weight_decay in ((decay, config.weight_decay), (no_decay, 0.0)):
            if params and lr > 0:
                groups.append({"params": params, "lr": lr, "initial_lr": lr, "weight_decay": weight_decay})
    return groups


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
            f"Augmentation ({config.augmentation}) changes every training image each epoch, so the frozen layers "
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


class _Trainer:
    """One run of `fit`; split into methods so each phase reads on its own."""

    def __init__(
        self,
        dataset: Dataset,
        config: TrainConfig,
        run_dir: str | Path | None,
        backbone: Backbone | None,
        callbacks: Sequence[Any],
        stop_event: threading.Event | None,
        resume: bool,
        store: RunStore | None,
        distributed: scale_out.Distributed | None = None,
    ) -> None:
        config.validate()
        self.dataset, self.config = dataset, config
        self.fingerprint = dataset.fingerprint
        self.distributed = distributed
        if distributed is not None and resume:
            raise ValueError("A multi-process run cannot resume yet; resume it in one process.")
        recording = distributed is None or distributed.is_main
        self.events = _Events(callbacks if recording else ())
        self.stop_event = stop_event
        self.resume = resume
        self.run_dir = Path(run_dir) if run_dir is not None else None
        if not recording:  # rank 0 alone records; the others write the same things to a scratch folder
            store, self.run_dir = RunStore(distributed.scratch / "runs.sqlite"), distributed.scratch / "run"
        self.store = store or RunStore()
        self.started = time.perf_counter()
        self.backbone = backbone
        self.run_id = ""
        self.history: list[dict[str, Any]] = []
        self.pending_steps: list[tuple[int, int, dict[str, Any]]] = []
        self.last_flush = time.monotonic()
        self.cache_seconds = 0.0
        self.cache_reused = False
        self.status = "running"
        self.error: str | None = None
        self.test_accuracy: float | None = None
        self.best_epoch: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.scaler: Any = None
        self.estimate: dict[str, Any] | None = None
        self.protocol: smalldata.Protocol | None = None

    # -- helpers ---------------------------------------------------------------------------------------------

    def stop_requested(self) -> bool:
        return self.stop_event is not None and self.stop_event.is_set()

    def check_stop(self, lockstep: bool = True) -> None:
        """Raise TrainingStopped when the stop flag is set.

        With several processes, any rank's flag stops all of them, at the same step: the ranks agree where they are in
        lockstep (after each step and epoch); in a sharded evaluation (`lockstep=False`) they do not look.
        """
        if self.distributed is None:
            if self.stop_requested():
                raise TrainingStopped
        elif lockstep and self.distributed.sum([self.stop_requested()])[0] > 0:
            raise TrainingStopped

    def flush_steps(self, force: bool = False) -> None:
        if self.pending_steps and (force or time.monotonic() - self.last_flush > STEP_FLUSH_SECONDS):
            self.store.log_steps(self.run_id, self.pending_steps)
            self.pending_steps = []
            self.last_flush = time.monotonic()

    # -- set-up ----------------------------------------------------------------------------------------------

    def setup(self) -> None:

        config, dataset = self.config, self.dataset
        self.device = pick_device(config.device) if self.distributed is None else self.distributed.device
        self.precision = resolve_precision(config.precision, self.device)
        self.autocast = autocast_factory(self.device, self.precision)
        self.channels_last = uses_channels_last(dataset.modality, self.device)
        previous = self._read_run_json() if self.resume else None
        self.num_groups, self.frozen = 0, config.frozen_groups
        self.cache_mode, self.cache_note = "none", ""
        if self.run_dir is None:
            self.run_dir = workspace_subdir("runs") / new_run_id()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if previous is not None:
            self.run_id = previous["run_id"]
            self.store.mark_running(self.run_id)
        else:
            self.run_id = self._create_record()

        _seed_everything(config.seed)
        if self.backbone is None:

            self.backbone = backbones.load_backbone(config.backbone, pretrained=config.pretrained)
        if self.backbone.spec.modality != dataset.modality:
            raise ValueError(
                f"The backbone {config.backbone!r} is for {self.backbone.spec.modality} data but the data set "
                f"{dataset.name!r} holds {dataset.modality}s; pick a {dataset.modality} backbone."
            )
        self.num_groups = len(self.backbone.group_names)
        self.frozen = min(config.frozen_groups, self.num_groups)
        self.backbone.set_feature_taps(feature_taps(self.backbone.spec, config, self.frozen, self.num_groups))
        self.model = Classifier(self.backbone, dataset.num_classes)
        freeze_first(self.model, self.frozen)
        self.model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)

        self.train_items, self.train_labels = dataset.split("train")
        self.val_items, self.val_labels = dataset.split("val")
        self.test_items, self.test_labels = dataset.split("test")
        if not self.train_items:
            raise ValueError(
                f"The data set {dataset.name!r} has no training examples; check the split on the Data step."
            )
        self.train_preprocessor = make_preprocessor(self.backbone.spec, config.augmentation)
        self.eval_preprocessor = make_preprocessor(self.backbone.spec, "none")
        self.cache_mode, self.cache_note = _cache_plan(config, self.frozen, self.num_groups)
        self.check_cache_budget()
        self.logistic = uses_logistic_head(config, self.cache_mode)
        if self.logistic and self.cache_mode != "features":
            raise ValueError("The logistic-regression head needs cached features: freeze every group, no augmentation.")
        if config.views and not (self.logistic and dataset.modality == "image"):
            raise ValueError(
                f"Augmented views ({config.views} per image) are for images with the logistic head (every group "
                "frozen, no augmentation): they are computed once and learnt from beside the originals. Set views to "
                "0, or use the augmentation setting to augment while fine-tuning."
            )
        if self.distributed is not None:
            if self.logistic:
                raise ValueError(
                    "The logistic head is a full-batch convex fit (L-BFGS on cached features) that runs in one "
                    "process; train it without --processes, or choose the gradient head (--head gradient)."
                )
            scale_out.check_split(len(self.train_items), config.batch_size, self.distributed.world_size)
        self.protocol = smalldata.choose_protocol(
            [str(label) for label in dataset.table["label"]], dataset.split_given, config.protocol, config.folds
        )
        small = self.protocol.name == "cross-validation"
        if small and not self.logistic:
            self.protocol = smalldata.Protocol(
                "test split", 0, False,
                "Scores come from the held-out test split: cross-validation is built for feature extraction "
                "(every group frozen) only, not yet for fine-tuning.",
            )
        self.refit = not self.logistic and bool(self.val_items) and self.distributed is None and (
            config.refit == "on" or (config.refit == "auto" and small))
        if self.refit:
            both = len(self.train_items) + len(self.val_items)
            self.protocol = dataclasses.replace(self.protocol, reason=self.protocol.reason + (
                f" The validation split ({len(self.val_items)} examples) only chooses the number of epochs: the "
                f"delivered model is then trained again on train + validation ({both} examples) for that many "
                "epochs, and that model is the one scored on the test split."))

        self.tuning = self.plan_tuning()

        weights = _class_weights(self.train_labels, dataset.num_classes) if config.class_weights else None
        self.loss_weights = weights.to(self.device) if weights is not None else None
        self.optimizer = torch.optim.AdamW(_param_groups(self.model, config), lr=config.lr)
        if self.precision == "fp16" and self.device.type == "cuda":
            self.scaler = torch.amp.GradScaler("cuda")  # fp16 gradients underflow without loss scaling
        # Several processes: DDP over the model as the loop calls it; each takes a share of every global batch
        self.train_forward = self.forward
        if self.distributed is not None:
            self.train_forward = self.distributed.wrap(self.model, self.forward)
        self.steps_per_epoch = math.ceil(len(self.train_items) / config.batch_size)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.warmup_steps = int(round(config.warmup_fraction * self.total_steps))
        self.schedule_start, self.schedule_steps = 0, self.total_steps  # the learning-rate schedule's own steps
        self.phase, self.refit_record = "train", None
        self.frozen_prefixes = _module_prefixes(self.model, self.backbone.groups()[: self.frozen])
        self.start_epoch, self.global_step = 1, 0
        self.best_val_loss, self.best_epoch, self.bad_epochs = math.inf, None, 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.pending_rng: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None

        # What a refit starts from: the pretrained backbone and this seed's fresh head (a resumed run rebuilds the
        # same, seeded, before its checkpoint is loaded).
        self.initial_state = _cpu_state(self._trainable_state()) if self.refit else None
        if previous is not None:
            self._load_checkpoint()
        elif self.frozen_prefixes:
            save_file(_cpu_state(self._frozen_state()), self.checkpoint_dir / "frozen.safetensors")
        self.write_run_json()

    def plan_tuning(self) -> contrastive.TuningPlan:
        """Whether the sentence encoder is tuned on the labels first (`core.contrastive.plan`), for this run."""
        return _tuning_plan(self.dataset, self.protocol, self.config.sentence_tuning,
                            self.backbone.spec.sentence_encoder, self.logistic)

    @property
    def checkpoint_dir(self) -> Path:
        path = self.run_dir / CHECKPOINT_DIR
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _create_record(self) -> str:
        wanted = self.run_dir.name if is_runs_folder(self.run_dir.resolve().parent) else None
        arguments = dict(
            backbone=self.config.backbone, modality=self.dataset.modality, dataset_name=self.dataset.name,
            dataset_fingerprint=self.fingerprint, frozen_groups=self.frozen, config=self.config.to_dict(),
            classes=self.dataset.classes, run_dir=str(self.run_dir),
        )
        try:
            return self.store.create_run(run_id=wanted, **arguments)
        except sqlite3.IntegrityError:
            return self.store.create_run(**arguments)

    def _read_run_json(self) -> dict[str, Any]:
        if self.run_dir is None or not (self.run_dir / "run.json").exists():
            raise FileNotFoundError(f"Cannot resume: {self.run_dir} holds no run.json; start a new run instead.")
        if not (self.run_dir / CHECKPOINT_DIR / "last.json").exists():
            raise FileNotFoundError(
                f"Cannot resume: {self.run_dir} has no epoch checkpoint (the run stopped before its first epoch)."
            )
        return json.loads((self.run_dir / "run.json").read_text())

    def _frozen_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.model.state_dict().items() if k.startswith(tuple(self.frozen_prefixes))}

    def _trainable_state(self) -> dict[str, torch.Tensor]:
        prefixes = tuple(self.frozen_prefixes)
        return {k: v for k, v in self.model.state_dict().items() if not (prefixes and k.startswith(prefixes))}

    # -- checkpoints -----------------------------------------------------------------------------------------

    def save_checkpoint(self, epoch: int) -> None:
        """Model (trainable part), optimizer, RNG and loop state after `epoch`: enough to resume exactly."""
        tensors = {f"model/{k}": v for k, v in self._trainable_state().items()}
        optim_tensors, optim_plain = _optimizer_state(self.optimizer)
        rng_tensors, rng_plain = _rng_state()
        tensors.update(optim_tensors)
        tensors.update(rng_tensors)
        plain = {
            "epoch": epoch, "global_step": self.global_step, "best_val_loss": self.best_val_loss,
            "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs, "history": self.history,
            "optimizer": optim_plain, "rng": rng_plain, "cache_mode": self.cache_mode,
        }
        directory = self.checkpoint_dir
        save_file(_cpu_state(tensors), directory / "last.tmp")
        (directory / "last.json.tmp").write_text(json.dumps(plain))
        (directory / "last.tmp").replace(directory / "last.safetensors")
        (directory / "last.json.tmp").replace(directory / "last.json")
        self.store.log_checkpoint(self.run_id, epoch, directory / "last.safetensors")

    def _load_checkpoint(self) -> None:
        directory = self.checkpoint_dir
        if (directory / "frozen.safetensors").exists():
            self.model.load_state_dict(load_file(directory / "frozen.safetensors"), strict=False)
        tensors = load_file(directory / "last.safetensors")
        plain = json.loads((directory / "last.json").read_text())
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")}, strict=False)
        _load_optimizer_state(self.optimizer, tensors, plain["optimizer"])
        self.pending_rng = (tensors, plain["rng"])  # applied just before training resumes
        self.start_epoch = int(plain["epoch"]) + 1
        self.global_step = int(plain["global_step"])
        self.best_val_loss = float(plain["best_val_loss"])
        self.best_epoch = plain["best_epoch"]
        self.bad_epochs = int(plain["bad_epochs"])
        self.history = list(plain["history"])
        if (directory / "best.safetensors").exists():
            self.best_state = load_file(directory / "best.safetensors")
        log.info("Resuming run %s at epoch %d", self.run_dir, self.start_epoch)

    def write_run_json(self) -> None:
        best = next((m for m in self.history if m["epoch"] == self.best_epoch), None)
        info = {
            "run_id": self.run_id,
            "backbone": self.config.backbone,
            "modality": self.dataset.modality,
            "classes": list(self.dataset.classes),
            "frozen_groups": self.frozen,
            "num_groups": self.num_groups,
            "feature_taps": list(self.backbone.tap_groups),
            "config": self.config.to_dict(),
            "dataset_name": self.dataset.name,
            "dataset_fingerprint": self.fingerprint,
            "status": self.status,
            "error": self.error,
            "cache_mode": self.cache_mode,
            "cache_note": self.cache_note,
            "device": str(getattr(self, "device", "")),
            "precision": getattr(self, "precision", ""),
            "metrics": {
                "history": self.history,
                "best_epoch": self.best_epoch,
                "val_accuracy": best.get("val_accuracy") if best else None,
                "val_loss": best.get("val_loss") if best else None,
                "test_accuracy": self.test_accuracy,
                "estimate": self.estimate,
            },
            "protocol": self.protocol.name if self.protocol else None,
            "protocol_reason": self.protocol.reason if self.protocol else None,
            "sentence_tuning": self.tuning_record(),
            "refit": getattr(self, "refit_record", None),
            "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        temporary = self.run_dir / "run.json.tmp"
        temporary.write_text(json.dumps(info, indent=2, default=str))
        temporary.replace(self.run_dir / "run.json")

    def save_model(self) -> None:
        """The kept weights (best epoch if any, else the current ones) as the run's `model.safetensors`."""
        state = self.model.state_dict()
        temporary = self.run_dir / "model.tmp"
        save_file(_cpu_state(state), temporary)
        temporary.replace(self.run_dir / "model.safetensors")
        if getattr(self, "lexical", None) is not None:
            self.lexical.save(self.run_dir / ngrams.FILE)

    # -- caching ---------------------------------------------------------------------------------------------

    def build_cache(self) -> dict[str, feature_cache.CachedStates] | None:
        if self.cache_mode == "none":
            return None
        started = time.perf_counter()
        splits = {
            "train": (self.train_items, self.train_labels),
            "val": (self.val_items, self.val_labels),
            "test": (self.test_items, self.test_labels),
        }
        result, self.cache_reused = cached_states(
            self.backbone, splits, self.frozen, self.eval_preprocessor, self.fingerprint, self.device,
            self.precision, self.channels_last, to_disk=self.cache_mode == "features",
            stop_requested=self.stop_requested, emit=self.events.emit, distributed=self.distributed,
        )
        if result is None:
            raise TrainingStopped
        self.cache_seconds = time.perf_counter() - started
        if not self.cache_reused:
            log.info("Cached %s in %.1f s", self.cache_mode, self.cache_seconds)
        return result

    def augmented_views(self, items: list[str], labels: torch.Tensor) -> torch.Tensor | None:
        """`config.views` augmented views of each image (light: crops and flips), through the frozen backbone once:
        [N, views, D], row i the views of items[i]. Each view is seeded and cached on disk like the features, so a
        second run on the same data reuses them."""
        if not self.config.views:
            return None

        preprocessor = make_preprocessor(self.backbone.spec, "light")
        views = []
        for view in range(self.config.views):
            seed = self.config.seed * 1009 + view
            with torch.random.fork_rng(devices=[]):
                state = random.getstate()
                random.seed(seed)
                torch.manual_seed(seed)
                try:
                    result, _ = cached_states(
                        self.backbone, {"view": (items, labels.tolist())}, self.frozen, preprocessor,
                        f"{self.fingerprint}|{self.protocol.name}|view {view} seed {seed}", self.device, self.precision,
                        self.channels_last, to_disk=True, stop_requested=self.stop_requested, emit=self.events.emit,
                        train=True,
                    )
                finally:
                    random.setstate(state)
            if result is None:
                raise TrainingStopped
            views.append(result["view"].states.float().cpu())
        log.info("Learning from %d augmented views of each of %d images", self.config.views, len(items))
        return torch.stack(views, dim=1)

    def check_cache_budget(self) -> None:
        """Fall back to no caching (and say why) when the stored states would not fit the memory cache."""
        if self.cache_mode == "none":
            return
        examples = len(self.train_items) + len(self.val_items) + len(self.test_items)
        estimate = self._estimate_state_bytes(self.frozen, self.cache_mode == "features") * examples
        if estimate > feature_cache.MEMORY.budget:
            self.cache_mode = "none"
            self.cache_note = (
                f"The activations at the freeze boundary would need {estimate / 1024**3:.1f} GiB, more than the "
                f"{feature_cache.MEMORY.budget / 1024**3:.1f} GiB cache; freeze more layer groups (or all) to cache."
            )
            log.info(self.cache_note)

    def _estimate_state_bytes(self, boundary: int, is_features: bool) -> int:
        loaded = self.eval_preprocessor.collate([self.eval_preprocessor.load(self.train_items[0], False)])
        with torch.inference_mode(), self.autocast():
            out = self.backbone.eval().forward_groups(to_device(loaded, self.device, self.channels_last), 0, boundary)
        tensors = out.values() if isinstance(out, dict) else [out]
        per_value = 4 if is_features or self.precision == "fp32" else 2
        return sum(t.numel() * (per_value if t.is_floating_point() else t.element_size()) for t in tensors)

    # -- the loop --------------------------------------------------------------------------------------------

    def forward(self, batch: Any) -> torch.Tensor:
        if self.cache_mode == "features":
            return self.model.head(batch.float() if batch.dtype != torch.float32 else batch)
        if self.cache_mode == "activations":
            state = self.model.backbone.forward_groups(batch, self.frozen, self.num_groups)
            return self.model.head(state)
        return self.model(batch)

    def train_batches(self, epoch: int, cache: dict | None) -> Iterator[tuple[Any, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        if self.distributed is not None:  # the same global batches as one process; this rank takes its share of each
            size, batch = len(self.train_items), self.config.batch_size
            order = torch.randperm(size, generator=generator)
            shares = [self.distributed.batch_share(order[start : start + batch], order)
                      for start in range(0, size, batch)]
            if cache is not None:
                for indices in shares:
                    yield cache["train"].batch(indices), cache["train"].labels.index_select(0, indices)
                return
            yield from _loader(self.train_items, self.train_labels, self.train_preprocessor, True, batch,
                               batches=[share.tolist() for share in shares])
            return
        if cache is not None:
            split = cache["train"]
            order = torch.randperm(len(split), generator=generator)
            for start in range(0, len(split), self.config.batch_size):
                indices = order[start : start + self.config.batch_size]
                yield split.batch(indices), split.labels.index_select(0, indices)
            return
        yield from _loader(
            self.train_items, self.train_labels, self.train_preprocessor, True, self.config.batch_size, generator,
            shuffle=True,
        )

    def eval_batches(
        self, split_name: str, cache: dict | None, sharded: bool = False
    ) -> Iterator[tuple[Any, torch.Tensor]]:
        items, labels = {"val": (self.val_items, self.val_labels), "test": (self.test_items, self.test_labels)}[
            split_name
        ]
        if sharded and self.distributed is not None:  # this rank's every N-th example
            share = self.distributed.eval_share(len(items)).tolist()
            items, labels = [items[index] for index in share], [labels[index] for index in share]
            if cache is not None and cache.get(split_name) is not None:
                split, indices = cache[split_name], torch.tensor(share, dtype=torch.long)
                for start in range(0, len(indices), 512):
                    chunk = indices[start : start + 512]
                    yield split.batch(chunk), split.labels.index_select(0, chunk)
                return
        if cache is not None:
            split = cache.get(split_name)
            if split is None:
                return
            size = 512
            for start in range(0, len(split), size):
                indices = torch.arange(start, min(start + size, len(split)))
                yield split.batch(indices), split.labels.index_select(0, indices)
            return
        yield from _loader(items, labels, self.eval_preprocessor, False, max(self.config.batch_size, 64))

    def set_train_mode(self) -> None:

        set_train_mode(self.model)

    def evaluate(self, split_name: str, cache: dict | None) -> tuple[float | None, float | None]:
        """Mean cross-entropy (unweighted, no smoothing) and accuracy on a split; None, None when it is empty.

        Several processes share the split and sum their parts, with rank 0's BatchNorm statistics, so each reads the
        same numbers (and stops early at the same epoch).
        """
        if self.distributed is not None:
            self.distributed.sync_buffers(self.model)
        self.model.eval()
        total_loss, correct, count = 0.0, 0, 0
        for batch, labels in self.eval_batches(split_name, cache, sharded=True):
            with torch.inference_mode(), self.autocast():
                logits = self.forward(to_device(batch, self.device, self.channels_last)).float()
            labels = labels.to(self.device)
            total_loss += float(F.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(dim=1) == labels).sum())
            count += int(labels.shape[0])
            self.check_stop(lockstep=False)
        if self.distributed is not None:
            total_loss, correct, count = self.distributed.sum([total_loss, correct, count])
        if count == 0:
            return None, None
        return total_loss / count, correct / count

    def train_epoch(self, epoch: int, cache: dict | None) -> dict[str, Any]:
        self.set_train_mode()
        trainable = [p for group in self.optimizer.param_groups for p in group["params"]]
        total_loss, correct, count = 0.0, 0, 0
        epoch_started = time.perf_counter()
        for batch_index, (batch, labels) in enumerate(self.train_batches(epoch, cache)):
            factor = _lr_factor(self.global_step - self.schedule_start, self.schedule_steps, self.warmup_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
            batch = to_device(batch, self.device, self.channels_last)
            labels = labels.to(self.device)
            with self.autocast():
                logits = self.train_forward(batch)
            loss = F.cross_entropy(
                logits.float(), labels, weight=self.loss_weights, label_smoothing=self.config.label_smoothing
            )
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"The training loss became {float(loss)} at step {self.global_step + 1}; lower the learning "
                    "rate or turn on gradient clipping."
                )
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)
            else:
                loss.backward()
            if self.config.grad_clip:
                torch.nn.utils.clip_grad_norm_(trainable, self.config.grad_clip)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.global_step += 1
            size = int(labels.shape[0])
            batch_loss = float(loss.detach())
            batch_correct = int((logits.detach().argmax(dim=1) == labels).sum())
            total_loss += batch_loss * size
            correct += batch_correct
            count += size
            metrics = {
                "phase": self.phase, "step": self.global_step, "global_step": self.global_step,
                "total_steps": self.total_steps, "epoch": epoch, "batch": batch_index + 1,
                "batches": self.steps_per_epoch, "loss": batch_loss, "train_loss": batch_loss,
                "train_accuracy": batch_correct / size, "lr": self.optimizer.param_groups[0]["lr"],
                "examples_per_second": count / max(time.perf_counter() - epoch_started, 1e-9),
            }
            if self.phase == "refit":
                metrics["note"] = self.refit_note
            self.events.emit("on_step_end", metrics)
            self.pending_steps.append(
                (self.global_step, epoch, {k: metrics[k] for k in ("loss", "train_accuracy", "lr")})
            )
            self.flush_steps()
            self.check_stop()
        if self.distributed is not None:  # the epoch's numbers over every rank's shares (step metrics are rank 0's)
            total_loss, correct, count = self.distributed.sum([total_loss, correct, count])
        return {
            "train_loss": total_loss / max(count, 1),
            "train_accuracy": correct / max(count, 1),
            "train_seconds": time.perf_counter() - epoch_started,
        }

    def run(self) -> FitResult:
        self.setup()
        info = {
            "run_id": self.run_id, "run_dir": str(self.run_dir), "device": str(self.device),
            "precision": self.precision, "cache_mode": self.cache_mode, "cache_note": self.cache_note,
            "epochs": self.config.epochs, "start_epoch": self.start_epoch, "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps, "num_train": len(self.train_items), "num_val": len(self.val_items),
            "num_test": len(self.test_items), "classes": list(self.dataset.classes), "frozen_groups": self.frozen,
            "num_groups": self.num_groups, "backbone": self.config.backbone,
            "trainable_params": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
            "total_params": sum(p.numel() for p in self.model.parameters()),
        }
        self.store.update_summary(
            self.run_id, **{k: info[k] for k in ("device", "precision", "cache_mode", "cache_note")}
        )
        info.update(protocol=self.protocol.name, protocol_reason=self.protocol.reason, folds=self.protocol.folds,
                    head="logistic" if self.logistic else "gradient", sentence_tuning=self.tuning.on,
                    sentence_tuning_reason=self.tuning.reason, sentence_tuning_steps=self.tuning.steps)
        if self.logistic:
            grid = smalldata.l2_grid(self.backbone.spec.sentence_encoder)
            info.update(epochs=len(grid), start_epoch=1, steps_per_epoch=0, total_steps=0)
        self.events.emit("on_train_begin", info)
        cache = self.build_cache()
        if self.logistic:
            self.run_logistic(cache)
            self.status = "completed"
            return self.finish()
        if self.pending_rng is not None:
            _set_rng_state(*self.pending_rng)
            self.pending_rng = None
        for epoch in range(self.start_epoch, self.config.epochs + 1):
            metrics = self.train_epoch(epoch, cache)
            val_loss, val_accuracy = self.evaluate("val", cache)
            monitored = val_loss if val_loss is not None else metrics["train_loss"]
            is_best = monitored < self.best_val_loss
            if is_best:
                self.best_val_loss, self.best_epoch, self.bad_epochs = monitored, epoch, 0
                self.best_state = _cpu_state(self._trainable_state())
                save_file(self.best_state, self.checkpoint_dir / "best.safetensors")
            else:
                self.bad_epochs += 1
            record = {
                "epoch": epoch, "train_loss": metrics["train_loss"], "train_accuracy": metrics["train_accuracy"],
                "val_loss": val_loss, "val_accuracy": val_accuracy, "lr": self.optimizer.param_groups[0]["lr"],
                "seconds": metrics["train_seconds"], "best_epoch": self.best_epoch, "is_best": is_best,
                "total_epochs": self.config.epochs,
            }
            self.history.append(record)
            self.flush_steps(force=True)
            self.store.log_epoch(self.run_id, epoch, record)
            self.save_checkpoint(epoch)
            self.write_run_json()
            self.events.emit("on_epoch_end", dict(record))
            log.info(
                "epoch %d/%d train_loss %.4f val_loss %s val_accuracy %s",
                epoch, self.config.epochs, metrics["train_loss"],
                f"{val_loss:.4f}" if val_loss is not None else "-",
                f"{val_accuracy:.3f}" if val_accuracy is not None else "-",
            )
            if self.config.patience and self.bad_epochs >= self.config.patience:
                log.info("Early stop: no better validation loss for %d epochs", self.bad_epochs)
                break
            self.check_stop()
        self.restore_best()
        temperature = None
        if self.refit and self.best_epoch is not None:
            temperature = self.refit_on_train_and_val(cache)
        if self.distributed is not None:  # every rank takes part in the summed pass; rank 0 then writes the estimate
            _, self.test_accuracy = self.evaluate("test", cache)
        if self.distributed is None or self.distributed.is_main:
            self.estimate_on_test_split(cache, temperature)  # sets test_accuracy: the test split is scored once
        self.status = "completed"
        return self.finish()

    def refit_on_train_and_val(self, cache: dict | None) -> float:
        """Train again from the starting weights on train + validation for the epochs early stopping chose.

        The learning-rate schedule is the first run's (same length, so its first `best_epoch` epochs are the same
        shape), over the larger set. Returns the temperature fitted on the validation split with the first model:
        the retrained one has learned from those examples, so they cannot calibrate it. A stop request during the
        retraining keeps the first model (the best epoch), as any stop does.
        """

        val_logits, val_labels = self.split_logits("val", cache)
        temperature = stats.fit_temperature(val_logits, val_labels)
        epochs, first_items = int(self.best_epoch), len(self.train_items)
        self.model.load_state_dict(self.initial_state, strict=False)
        self.optimizer = torch.optim.AdamW(_param_groups(self.model, self.config), lr=self.config.lr)
        self.train_items = [*self.train_items, *self.val_items]
        self.train_labels = [*self.train_labels, *self.val_labels]
        if cache is not None:
            merged = feature_cache.concatenate([cache["train"], cache["val"]])
            cache = {**cache, "train": merged}
        self.steps_per_epoch = math.ceil(len(self.train_items) / self.config.batch_size)
        self.schedule_start, self.schedule_steps = self.global_step, self.steps_per_epoch * self.config.epochs
        self.warmup_steps = int(round(self.config.warmup_fraction * self.schedule_steps))
        self.total_steps = self.global_step + self.steps_per_epoch * epochs
        self.phase = "refit"
        self.refit_note = (f"retraining on train + validation ({len(self.train_items)} examples) for the "
                           f"{epochs} epoch{'s' if epochs > 1 else ''} early stopping chose")
        log.info("%s", self.refit_note[0].upper() + self.refit_note[1:])
        self.events.emit("on_step_end", {"phase": "refit", "step": self.global_step, "global_step": self.global_step,
                                         "total_steps": self.total_steps, "note": self.refit_note})
        started = time.perf_counter()
        for epoch in range(1, epochs + 1):
            metrics = self.train_epoch(epoch, cache)
            log.info("refit epoch %d/%d train_loss %.4f", epoch, epochs, metrics["train_loss"])
        self.best_state = _cpu_state(self._trainable_state())  # the delivered model from now on, also if stopped
        self.refit_record = {"on": True, "epochs": epochs, "examples": len(self.train_items),
                             "first_examples": first_items, "seconds": time.perf_counter() - started,
                             "final_train_loss": metrics["train_loss"]}
        return temperature

    # -- small data: the logistic head and the estimate ------------------------------------------------------

    def split_logits(self, split_name: str, cache: dict | None) -> tuple[np.ndarray, np.ndarray]:
        """Logits and labels of one split with the current model (empty arrays for an empty split)."""
        self.model.eval()
        logits, labels = [], []
        for batch, batch_labels in self.eval_batches(split_name, cache):
            with torch.inference_mode(), self.autocast():
                logits.append(self.forward(to_device(batch, self.device, self.channels_last)).float().cpu())
            labels.append(batch_labels)
        if not logits:
            return np.zeros((0, self.dataset.num_classes)), np.zeros(0, dtype=np.int64)
        return torch.cat(logits).numpy(), torch.cat(labels).numpy()

    def estimate_on_test_split(self, cache: dict | None, temperature: float | None = None) -> None:
        """Test-split numbers with intervals; probabilities calibrated by a temperature fitted on validation (by
        the caller, when the model has since learned from the validation split)."""

        test_logits, test_labels = self.split_logits("test", cache)
        if len(test_labels) == 0:
            return
        if temperature is None:
            val_logits, val_labels = self.split_logits("val", cache)
            temperature = stats.fit_temperature(val_logits, val_labels) if len(val_labels) else 1.0
        lexical = getattr(self, "lexical", None)
        probabilities, uncalibrated = self.mix_lexical(
            stats.softmax(test_logits, temperature), stats.softmax(test_logits), test_labels,
            lexical.probabilities(list(self.test_items)) if lexical is not None else None,
        )
        self.record_estimate(
            test_labels, probabilities, uncalibrated,
            items=self.test_items, where=["test"] * len(test_labels), temperature=temperature,
        )

    def record_estimate(
        self, labels: np.ndarray, probabilities: np.ndarray, uncalibrated: np.ndarray, items: Sequence[str],
        where: Sequence[str], temperature: float,
    ) -> None:
        """The estimate (metrics.json contract) and the examples it rests on, written to the run folder."""
        self.estimate = smalldata.estimate(labels, probabilities, uncalibrated, self.protocol, self.dataset.classes)
        self.estimate["temperature"] = temperature
        if getattr(self, "refit_record", None):
            self.estimate["refit"] = self.refit_record
        if getattr(self, "lexical_record", None):
            self.estimate["lexical"] = self.lexical_record
        self.test_accuracy = self.estimate["accuracy"]
        examples = {
            "protocol": self.protocol.name,
            "classes": list(self.dataset.classes),
            "items": [str(item) for item in items],
            "labels": [int(label) for label in labels],
            "where": list(where),
            "probabilities": np.round(np.asarray(probabilities, dtype=np.float64), 6).tolist(),
            "dataset_fingerprint": self.fingerprint,
        }
        temporary = self.run_dir / "examples.json.tmp"
        temporary.write_text(json.dumps(examples))
        temporary.replace(self.run_dir / "examples.json")

    def run_logistic(self, cache: dict[str, feature_cache.CachedStates]) -> None:
        """Feature extraction for real: logistic regression by L-BFGS, L2 by inner CV, estimated by the protocol.

        The chart sees what really happens: one "epoch" per L2 strength tried (its cross-validated loss and
        accuracy; the chosen one is the best epoch), and the loss of every L-BFGS iteration of the final fit.
        """

        names = [name for name in ("train", "val", "test") if name in cache]
        if self.protocol.name == "cross-validation":
            fit_names = names
        else:
            fit_names = [name for name in names if name != "test"]
        examples = feature_cache.concatenate([cache[name] for name in fit_names])
        features, labels = examples.states.float().cpu(), examples.labels.long().cpu()
        items = [item for name in fit_names for item in self.dataset.split(name)[0]]
        grid_size = len(smalldata.l2_grid(self.backbone.spec.sentence_encoder))

        def iteration(index: int, loss: float) -> None:
            self.global_step = index
            self.events.emit("on_step_end", {
                "phase": "train", "step": index, "global_step": index, "epoch": grid_size,
                "loss": loss, "train_loss": loss, "lr": 0.0, "progress": 0.95,
            })

        def progress(done: int, total: int) -> None:
            self.events.emit("on_step_end", {
                "phase": "train", "step": 0, "global_step": 0, "epoch": 0, "progress": 0.9 * done / max(total, 1),
                "note": f"cross-validation fold {min(done + 1, total)} of {total}",
            })

        balanced = self.config.class_weights
        names = self.class_name_embeddings()  # the pretrained encoder's: the zero-shot baseline (and the prior)
        views = self.augmented_views(items, labels)
        featurize = self.tuned_features(items, labels.numpy()) if self.tuning.on else None
        try:
            if self.protocol.name == "cross-validation":
                result = smalldata.cross_validate_head(
                    features, labels, self.dataset.num_classes, self.protocol.folds, seed=self.config.seed,
                    balanced=balanced, progress=progress, on_iteration=iteration, stop_requested=self.stop_requested,
                    class_embeddings=names, featurize=featurize, views=views,
                )
                fitted, temperature = result.final, result.temperature
            else:
                head_features, head_names = featurize(np.ones(len(labels), bool)) if featurize else (features, names)
                fitted = smalldata.select_and_fit(
                    head_features, labels, self.dataset.num_classes, seed=self.config.seed, balanced=balanced,
                    on_iteration=iteration, stop_requested=self.stop_requested, class_embeddings=head_names,
                    views=views,
                )
                temperature = stats.fit_temperature(fitted.oof_logits, labels.numpy())
        except (InterruptedError, contrastive.TuningStopped):
            raise TrainingStopped from None
        fitted.head.to_linear(self.model.head[-1], temperature)
        chosen = next((i for i, point in enumerate(fitted.grid, 1) if point.l2 == fitted.head.l2), None)
        self.best_epoch = chosen
        for index, point in enumerate(fitted.grid, 1):
            record = {
                "epoch": index, "train_loss": point.train_loss, "train_accuracy": None, "val_loss": point.log_loss,
                "val_accuracy": point.accuracy, "lr": 0.0, "l2": point.l2, "toward_names": point.toward_names,
                "seconds": 0.0, "best_epoch": chosen, "is_best": index == chosen, "total_epochs": len(fitted.grid),
            }
            self.history.append(record)
            self.store.log_epoch(self.run_id, index, record)
            self.events.emit("on_epoch_end", dict(record))
        self.flush_steps(force=True)
        cross_validated = self.protocol.name == "cross-validation"
        lexical_oof = self.fit_lexical(items, labels.numpy(), result.fold_of if cross_validated else None)
        if cross_validated:
            probabilities, uncalibrated = self.mix_lexical(
                result.oof_probabilities, stats.softmax(result.oof_logits), labels.numpy(), lexical_oof)
            self.record_estimate(
                labels.numpy(), probabilities, uncalibrated, items,
                where=[f"fold {fold + 1}" for fold in result.fold_of], temperature=temperature,
            )
        else:
            self.estimate_on_test_split(None if self.tuning.on else cache)  # tuning makes cached features stale
        if self.estimate is not None:
            self.estimate["sentence_tuning"] = self.tuning_record()
        if names is not None and self.estimate is not None:
            # The class-name classifier scored on the same examples as the estimate: "0 examples -> x %".
            scored_features, scored_labels = features, labels
            if self.protocol.name != "cross-validation":
                test = cache["test"]
                scored_features, scored_labels = test.batch(torch.arange(len(test))).float().cpu(), test.labels
            self.estimate["zero_shot"] = smalldata.zero_shot_score(scored_features, scored_labels.numpy(), names)
            self.estimate["head_prior"] = "class names" if fitted.head.toward_names else "zero"
        log.info("Logistic head: L2 %.4g towards %s, temperature %.2f, %s accuracy %.3f", fitted.head.l2,
                 "the class names" if fitted.head.toward_names else "zero", temperature, self.protocol.name,
                 self.test_accuracy or 0.0)

    def fit_lexical(self, items: Sequence[str], labels: np.ndarray, fold_of: np.ndarray | None) -> np.ndarray | None:
        """The TF-IDF n-gram model mixed into a text run's probabilities (`core.ngrams`), fitted like the head.

        Under cross-validation each fold's model learns from the other folds only (the same folds as the head), so
        the mixed out-of-fold probabilities stay an honest estimate; they are returned. The delivered model then
        learns from every example of `items`. None (and no lexical model) for other data, or when turned off.
        """
        self.lexical = None
        if self.dataset.modality != "text" or self.config.lexical == "off":
            return None

        texts = [str(item) for item in items]
        folds = sorted(set(fold_of.tolist())) if fold_of is not None else []
        oof = np.zeros((len(texts), self.dataset.num_classes)) if fold_of is not None else None
        for step, fold in enumerate([*folds, None]):
            self.check_stop(lockstep=False)
            self.events.emit("on_step_end", {
                "phase": "train", "step": 0, "global_step": self.global_step, "epoch": 0, "progress": 0.95,
                "note": f"TF-IDF n-gram model {step + 1} of {len(folds) + 1}",
            })
            learn = np.ones(len(texts), bool) if fold is None else fold_of != fold
            pipeline, recipe = fit_tfidf([texts[i] for i in np.flatnonzero(learn)], labels[learn], self.config.seed)
            model = ngrams.from_pipeline(pipeline, self.dataset.num_classes, recipe)
            if fold is None:
                self.lexical = model
            else:
                held = np.flatnonzero(~learn)
                oof[held] = model.probabilities([texts[i] for i in held])
        self.lexical_record = {
            "share": self.lexical.share, "recipe": self.lexical.recipe, "method": "TF-IDF n-grams + logistic "
            "regression, mixed into the probabilities", "file": ngrams.FILE,
        }
        self.model.lexical = self.lexical
        log.info("Lexical model (%s) mixed in at %.0f %%", self.lexical.recipe, 100 * self.lexical.share)
        return oof

    def mix_lexical(
        self, probabilities: np.ndarray, uncalibrated: np.ndarray, labels: np.ndarray, lexical: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The estimate's probabilities (calibrated and not) with the lexical model's mixed in, recording what the
        network and the lexical model each scored alone on the same examples; unchanged without a lexical model."""
        if lexical is None or getattr(self, "lexical", None) is None:
            return probabilities, uncalibrated
        self.lexical_record["network_accuracy"] = float((probabilities.argmax(1) == labels).mean())
        self.lexical_record["alone_accuracy"] = float((lexical.argmax(1) == labels).mean())
        share = self.lexical.share
        return ngrams.mix(probabilities, lexical, share), ngrams.mix(uncalibrated, lexical, share)

    def tuning_record(self) -> dict[str, Any] | None:
        """What run.json and metrics.json say about tuning the sentence encoder (None before it is planned)."""
        plan = getattr(self, "tuning", None)
        if plan is None:
            return None
        record: dict[str, Any] = {"on": plan.on, "reason": plan.reason}
        if plan.on:
            record.update(tunings=plan.tunings, steps=plan.steps, recipe=dataclasses.asdict(contrastive.RECIPE),
                          method="contrastive (SetFit-style, sentence-transformers batch-all triplet loss)")
        return record

    def tuned_features(self, items: Sequence[str], labels: np.ndarray) -> smalldata.Featurize:
        """Features from the encoder tuned on the examples a mask allows, each tuning from the pretrained weights.

        Each call (a cross-validation fold, then all examples) starts from the pretrained encoder, tunes it on the
        allowed examples only, and returns every example's features and the class names' embeddings from it; the
        last call's encoder is the one delivered.
        """

        folder = backbones.weights_folder(self.config.backbone)
        if folder is None:
            raise FileNotFoundError(
                f"Tuning {self.config.backbone} on pairs needs its tokenizer and config files in a local folder; "
                "none was found (install its offline package or turn tuning off)."
            )
        pretrained = contrastive.encoder_state(self.backbone)
        tunings, total_steps = max(self.tuning.tunings, 1), max(self.tuning.steps, 1)
        done = {"tunings": 0, "steps": 0}

        def on_step(step: int, steps: int, loss: float | None) -> None:
            overall = done["steps"] + step
            self.events.emit("on_step_end", {
                "phase": "tuning", "step": overall, "global_step": overall, "epoch": 0, "tuning_loss": loss,
                "lr": contrastive.RECIPE.learning_rate,
                "progress": 0.9 * min(overall / total_steps, 1.0),
                "note": f"tuning the encoder on pairs of your texts ({done['tunings'] + 1} of {tunings}), "
                        f"step {step} of {steps}",
            })

        def featurize(allowed: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
            contrastive.restore_encoder(self.backbone, pretrained)
            chosen = np.flatnonzero(allowed)
            contrastive.tune_encoder(
                self.backbone, str(folder), [items[i] for i in chosen], labels[chosen].tolist(),
                seed=self.config.seed + done["tunings"], device=self.device, on_step=on_step,
                stop_requested=self.stop_requested,
            )
            done["tunings"] += 1
            done["steps"] += contrastive.steps_per_tuning(len(chosen))
            self.backbone.eval()
            return self.encode(items), self.class_name_embeddings()

        return featurize

    def encode(self, items: Sequence[str]) -> torch.Tensor:
        """The backbone's features of `items` (float32, CPU), computed now (not from the cache)."""
        self.backbone.eval()
        chunks = []
        with torch.inference_mode(), self.autocast():
            for start in range(0, len(items), ENCODE_BATCH):
                batch = self.eval_preprocessor.batch(list(items[start:start + ENCODE_BATCH]))
                chunks.append(self.backbone(to_device(batch, self.device, self.channels_last)).float().cpu())
        return torch.cat(chunks)

    def class_name_embeddings(self) -> torch.Tensor | None:
        """A sentence encoder's features of each class name (underscores and dashes read as spaces), else None."""
        if not self.backbone.spec.sentence_encoder:
            return None
        self.model.eval()
        with torch.inference_mode(), self.autocast():
            texts = smalldata.class_name_texts(self.dataset.classes)
            batch = to_device(self.eval_preprocessor.batch(texts), self.device, self.channels_last)
            return self.model.backbone(batch).float().cpu()

    def restore_best(self) -> None:
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state, strict=False)

    def finish(self) -> FitResult:
        """Write the model, run.json and the store record for the final status; build the result."""
        if self.run_id:
            try:
                if hasattr(self, "model"):
                    self.save_model()
                self.write_run_json()
                self.flush_steps(force=True)
            except (OSError, RuntimeError, sqlite3.Error) as error:  # the store record below must still close
                log.exception("Could not write the run folder %s", self.run_dir)
                if self.status != "failed":
                    self.status, self.error = "failed", f"Could not write the run folder: {error}"
        best = next((m for m in self.history if m["epoch"] == self.best_epoch), None)
        result = FitResult(
            run_id=self.run_id,
            run_dir=str(self.run_dir) if self.run_dir is not None else "",
            status=self.status,
            best_epoch=self.best_epoch,
            epochs_completed=len(self.history),
            val_accuracy=best.get("val_accuracy") if best else None,
            val_loss=best.get("val_loss") if best else None,
            test_accuracy=self.test_accuracy,
            history=list(self.history),
            cache_mode=getattr(self, "cache_mode", "none"),
            cache_note=getattr(self, "cache_note", ""),
            device=str(getattr(self, "device", "")),
            precision=getattr(self, "precision", ""),
            seconds=time.perf_counter() - self.started,
            cache_seconds=self.cache_seconds,
            cache_reused=self.cache_reused,
            error=self.error,
            estimate=self.estimate,
        )
        if self.run_id:
            self.store.finish(
                self.run_id, self.status, error=self.error, best_epoch=result.best_epoch,
                val_accuracy=result.val_accuracy, val_loss=result.val_loss, test_accuracy=result.test_accuracy,
                epochs_completed=result.epochs_completed, seconds=result.seconds, cache_mode=result.cache_mode,
                cache_note=result.cache_note,
            )
        return result


def _tuning_plan(dataset: Dataset, protocol: smalldata.Protocol, setting: str, sentence_encoder: bool,
                 logistic: bool) -> contrastive.TuningPlan:
    cross_validated = protocol.name == "cross-validation"
    learned_from = dataset.table if cross_validated else dataset.table[dataset.table["split"] != "test"]
    counts = learned_from["label"].value_counts().reindex(dataset.classes, fill_value=0)
    return contrastive.plan(setting, sentence_encoder, logistic, [int(count) for count in counts],
                            protocol.folds if cross_validated else 0)


def sentence_tuning_plan(dataset: Dataset, config: TrainConfig) -> contrastive.TuningPlan:
    """Before a run starts: will it tune its sentence encoder on the labels, why, and at what cost (the Train page).

    The same decision the run makes, for a feature-extraction run with the logistic head.
    """

    protocol = smalldata.choose_protocol(
        [str(label) for label in dataset.table["label"]], dataset.split_given, config.protocol, config.folds
    )
    spec = backbones.get_spec(config.backbone)
    cache_mode, _ = _cache_plan(config, min(config.frozen_groups, spec.num_groups), spec.num_groups)
    return _tuning_plan(dataset, protocol, config.sentence_tuning, spec.sentence_encoder,
                        uses_logistic_head(config, cache_mode))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cached_states(
    backbone: Backbone,
    splits: dict[str, tuple[list[str], list[int]]],
    boundary: int,
    preprocessor: Any,
    fingerprint: str,
    device: torch.device,
    precision: str,
    channels_last: bool,
    to_disk: bool,
    stop_requested: Callable[[], bool] | None = None,
    emit: Callable[[str, dict[str, Any]], None] | None = None,
    distributed: scale_out.Distributed | None = None,
    train: bool = False,
) -> tuple[dict[str, feature_cache.CachedStates] | None, bool]:
    """The states after the first `boundary` groups for every split: from the cache, else computed and stored.

    `train` loads the examples as for training (the preprocessor's augmentation): augmented views, whose
    `fingerprint` must then name the view and its seed (the caller seeds the random generators).

    One computation per key at a time: a caller that finds another one computing the same key (the background
    warm-up of `prepare_features`, a second session) waits for it and reuses its result instead of doing it again.
    Returns (states, reused), or (None, False) when `stop_requested()` turned true.

    With several processes (`distributed`), every rank calls this alike: each computes every N-th example of each
    split and the shares are gathered, so every rank holds all the states; the first process on each machine writes
    them to disk. There is no stopping half-way then (the other ranks would wait for a share that never comes).
    """
    taps = backbone.tap_groups if boundary >= len(backbone.group_names) else ()
    key = feature_cache.cache_key(
        fingerprint,
        f"{backbone.spec.source}:{backbone.spec.name}" + (f"+taps{','.join(map(str, taps))}" if taps else ""),
        feature_cache.weights_digest(backbone.groups()[:boundary]),
        boundary,
        str(getattr(preprocessor, "cache_key", "")),
        precision,
    )
    with feature_cache.key_lock(key):
        cached = feature_cache.load_cached(key)
        if distributed is not None and distributed.sum([cached is None])[0] > 0:
            cached = None  # all ranks compute their shares unless every one of them has the states already
        if cached is not None:
            return cached, True
        total_examples = sum(len(items) for items, _ in splits.values())
        if distributed is not None:  # each rank counts its own shares
            stop_requested = None
            total_examples = sum(len(distributed.eval_share(len(items))) for items, _ in splits.values())
        batch_size = 64 if backbone.spec.modality == "image" else 128
        autocast = autocast_factory(device, precision)
        done = 0
        result: dict[str, feature_cache.CachedStates] = {}
        for name, (items, labels) in splits.items():
            if not items:
                continue
            count = len(items)
            if distributed is not None:  # this rank's share: every N-th example
                share = distributed.eval_share(count).tolist()
                items, labels = [items[index] for index in share], [labels[index] for index in share]
            loader = _loader(items, labels, preprocessor, train=train, batch_size=batch_size)

            def progress(
                index: int, _total: int, offset: int = done, size: int = len(items), split: str = name
            ) -> None:
                if emit is not None:
                    finished = min(offset + index * batch_size, offset + size)
                    emit("on_step_end", {"phase": "features", "progress": finished / total_examples,
                                         "done": finished, "total": total_examples, "split": split})

            states = feature_cache.compute_states(
                backbone, loader, boundary, device, autocast=autocast, channels_last=channels_last,
                keep_float32=to_disk or precision == "fp32", stop_requested=stop_requested, progress=progress,
            ) if items else None
            if distributed is not None:
                states = _gathered_states(distributed, states, count)
            if states is None:
                return None, False
            result[name] = states
            done += len(items)
        on_disk = to_disk and (distributed is None or distributed.is_local_main)  # one writer for each machine
        feature_cache.store_cached(key, result, to_disk=on_disk)
        return result, False


def _gathered_states(
    distributed: scale_out.Distributed, share: feature_cache.CachedStates | None, count: int
) -> feature_cache.CachedStates:
    """Every rank's share of one split's states (every N-th example each), put back in the split's order."""
    shares = distributed.gather(share)
    positions = torch.cat([distributed.eval_share(count, rank) for rank, part in enumerate(shares) if part is not None])
    present = [part for part in shares if part is not None]
    states = feature_cache._stack([part.states for part in present])
    labels = torch.cat([part.labels for part in present])
    back = torch.argsort(positions)  # row i of the split is row back[i] of the stacked shares
    if isinstance(states, dict):
        return feature_cache.CachedStates({k: v.index_select(0, back) for k, v in states.items()}, labels[back])
    return feature_cache.CachedStates(states.index_select(0, back), labels[back])


def feature_taps(spec: Any, config: TrainConfig, frozen: int, num_groups: int) -> tuple[int, ...]:
    """The groups pooled into the features (multi-block): the spec's taps, with every group frozen and when asked."""
    return tuple(spec.feature_taps) if config.multi_block and frozen >= num_groups else ()


def prepare_features(
    dataset: Dataset, backbone_name: str, device: str = "auto", stop_event: threading.Event | None = None
) -> bool:
    """Compute and cache the frozen backbone's features for `dataset` ahead of training (feature extraction).

    The app calls this in the background as soon as data and backbone are chosen, so that pressing Train with every
    group frozen finds the features ready and draws its first point within seconds. It computes exactly what `fit`
    would (same key, precision, memory format), so `fit` reuses it. Returns True when the features are cached.
    """
    return frozen_features(dataset, backbone_name, device, stop_event) is not None


def frozen_features(
    dataset: Dataset, backbone_name: str, device: str = "auto", stop_event: threading.Event | None = None,
    emit: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, feature_cache.CachedStates] | None:
    """The features feature extraction trains on, per split: from the cache when a run or the warm-up made them.

    None when the backbone is for another modality or `stop_event` was set while computing. `emit` hears the
    computation's progress ("on_step_end" with done / total examples); it is not called when the cache had them.
    """

    backbone = backbones.load_backbone(backbone_name, pretrained=True)
    if backbone.spec.modality != dataset.modality:
        return None
    num_groups = len(backbone.group_names)
    default = TrainConfig(backbone_name, frozen_groups=num_groups)  # what the Train page runs for feature extraction
    backbone.set_feature_taps(feature_taps(backbone.spec, default, num_groups, num_groups))
    torch_device = pick_device(device)
    precision = resolve_precision("auto", torch_device)
    channels_last = uses_channels_last(dataset.modality, torch_device)
    backbone.to(torch_device)
    if channels_last:
        backbone.to(memory_format=torch.channels_last)
    splits = {name: dataset.split(name) for name in ("train", "val", "test")}
    states, _ = cached_states(
        backbone, splits, len(backbone.group_names), make_preprocessor(backbone.spec, "none"), dataset.fingerprint,
        torch_device, precision, channels_last, to_disk=True,
        stop_requested=(stop_event.is_set if stop_event is not None else None), emit=emit,
    )
    return states


def suggested_settings(dataset: Dataset, num_groups: int | None, frozen_groups: int | None) -> dict[str, Any]:
    """Hyperparameters that work for this data and freezing before the user touches anything (page and CLI share them).

    Feature extraction (every group frozen) trains only a linear head on cached features: many cheap epochs and a
    high rate (on the sample digits, 25 epochs at 1e-2 reach 87.5 % validation accuracy where 1e-3 reaches 70 %).
    Fine-tuning changes the backbone: fewer epochs, a lower rate, and the backbone learns at a tenth of the head's
    rate (a twentieth for text encoders, which forget quickly). Class weights switch on when the largest class has
    more than 3x the examples of the smallest.
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
        "patience": 5,
        "feature_extraction": feature_extraction,
        "imbalance": imbalance,
    }


def fit(
    dataset: Dataset,
    config: TrainConfig,
    run_dir: str | Path | None = None,
    backbone: Backbone | None = None,
    callbacks: Sequence[Any] = (),
    stop_event: threading.Event | None = None,
    resume: bool = False,
    store: RunStore | None = None,
    distributed: scale_out.Distributed | None = None,
) -> FitResult:
    """Train a classifier on `dataset` as `config` says, recording the run as it goes.

    Args:
        dataset: the split data set (train / val / test).
        config: the training settings.
        run_dir: the run folder (created); default `workspace/runs/<new run id>/`. With `resume=True`, a folder a
            stopped or crashed run left, to continue from its last epoch checkpoint.
        backbone: an already-built `Backbone` to train (it is changed in place: pass a copy of a shared one);
            default `load_backbone(config.backbone, pretrained=config.pretrained)`.
        callbacks: listener objects with any of `on_train_begin`, `on_step_end`, `on_epoch_end`, `on_train_end`.
        stop_event: when set, training stops after the current batch; the best epoch so far is kept.
        resume: continue the run in `run_dir` instead of starting a new one.
        store: the run store to record into (default: the workspace's `runs.sqlite`).
        distributed: this process's rank in a multi-process run (`core.distributed.from_environment`); every rank
            calls `fit` alike, and only rank 0 records the run and reports to `callbacks`. The gradient loop only.

    Returns:
        The result; `status` is "completed" or "stopped". A failure is recorded as "failed" (store, run.json)
        and then raised.
    """
    trainer = _Trainer(dataset, config, run_dir, backbone, callbacks, stop_event, resume, store, distributed)
    try:
        result = trainer.run()
    except TrainingStopped:
        log.info("Run %s stopped by request", trainer.run_id or "(not started)")
        trainer.restore_best()
        trainer.status = "stopped"
        result = trainer.finish()
    except Exception as error:
        trainer.status = "failed"
        trainer.error = f"{type(error).__name__}: {error}"
        log.exception("Run %s failed", trainer.run_id or "(not started)")
        if trainer.run_id:
            with contextlib.suppress(Exception):
                trainer.restore_best()
                trainer.finish()
        raise
    trainer.events.emit("on_train_end", result)
    return result


# ------------------------------------------------------------------------------------------------ loading back


def load_trained(
    run_dir: str | Path, backbone: Backbone | None = None, device: str | torch.device = "cpu"
) -> tuple[Classifier, Any, dict[str, Any]]:
    """Rebuild a trained classifier from its run folder, ready to predict.

    Args:
        run_dir: a run folder with `run.json` and `model.safetensors`.
        backbone: a freshly built backbone of the same architecture (tests pass the tiny one); default
            `load_backbone(run.json's backbone, pretrained=False)` (the saved weights replace the initial ones).
        device: where to put the model.

    Returns:
        (classifier in eval mode, the evaluation preprocessor, the run information from run.json).
    """

    run_dir = Path(run_dir)
    info_path, model_path = run_dir / "run.json", run_dir / "model.safetensors"
    if not info_path.exists() or not model_path.exists():
        raise FileNotFoundError(
            f"{run_dir} is not a finished run folder: it needs run.json and model.safetensors. Train a model first."
        )
    info = json.loads(info_path.read_text())
    if backbone is None:

        backbone = backbones.load_backbone(info["backbone"], pretrained=False)
    backbone.set_feature_taps(info.get("feature_taps") or ())  # runs from before multi-block features have none
    model = Classifier(backbone, len(info["classes"]))
    missing, unexpected = model.load_state_dict(load_file(model_path), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"The weights in {model_path} do not fit backbone {info['backbone']!r} "
            f"(missing {len(missing)}, unexpected {len(unexpected)} tensors), e.g. {(missing or unexpected)[:3]}."
        )
    if (run_dir / ngrams.FILE).is_file():  # texts: the TF-IDF model mixed into the probabilities
        model.lexical = ngrams.load(run_dir / ngrams.FILE)
    model.to(device).eval()
    return model, make_preprocessor(backbone.spec, "none"), info


# ----------------------------------------------------------------------------------------------------- CLI


class _LogProgress:
    def __init__(self) -> None:
        self.last = 0.0

    def on_train_begin(self, info: dict[str, Any]) -> None:
        log.info(
            "Training %s on %s (%s, %s): %d train / %d val / %d test examples, cache: %s",
            info["backbone"], info["device"], info["precision"], f"{info['frozen_groups']}/{info['num_groups']} "
            "groups frozen", info["num_train"], info["num_val"], info["num_test"], info["cache_mode"],
        )
        log.info(info["cache_note"])
        if info.get("sentence_tuning_reason"):
            log.info(info["sentence_tuning_reason"])

    def on_step_end(self, metrics: dict[str, Any]) -> None:
        if metrics.get("phase") == "features" and time.monotonic() - self.last > 5:
            self.last = time.monotonic()
            log.info("Caching: %d/%d examples", metrics["done"], metrics["total"])
        elif metrics.get("phase") == "tuning" and time.monotonic() - self.last > 5:
            self.last = time.monotonic()
            log.info("%.0f%%: %s", 100 * metrics["progress"], metrics["note"])


#: TrainConfig fields `python -m core train` has no option for (it uses their defaults).
NOT_ON_THE_COMMAND_LINE = ("warmup_fraction", "grad_clip", "pretrained", "precision", "cache")


def train_arguments(config: TrainConfig, data: str, out: str, text_column: str | None = None,
                    label_column: str | None = None) -> list[str]:
    """The `python -m core train` arguments that train exactly `config` on `data` (the Train page shows them).

    `config_from_args` reads them back to the same TrainConfig (a test checks), except `NOT_ON_THE_COMMAND_LINE`.
    """
    parts = ["--data", data]
    for flag, value in (("--text-column", text_column), ("--label-column", label_column)):
        if value:
            parts += [flag, value]
    parts += ["--backbone", str(config.backbone), "--frozen-groups", str(config.frozen_groups)]
    parts += ["--epochs", str(config.epochs), "--batch-size", str(config.batch_size), "--lr", f"{config.lr:g}"]
    parts += ["--weight-decay", f"{config.weight_decay:g}", "--label-smoothing", f"{config.label_smoothing:g}"]
    parts.append("--class-weights" if config.class_weights else "--no-class-weights")
    parts += ["--backbone-lr-factor", f"{config.backbone_lr_factor:g}", "--augmentation", str(config.augmentation)]
    parts += ["--patience", str(config.patience or 0)]  # 0: no early stopping
    parts += ["--seed", str(config.seed), "--device", str(config.device)]
    parts += ["--head", str(config.head), "--protocol", str(config.protocol)]
    defaults = TrainConfig(config.backbone, config.frozen_groups)
    for name in ("folds", "sentence_tuning", "refit", "lexical", "views"):
        if getattr(config, name) != getattr(defaults, name):
            parts += [f"--{name.replace('_', '-')}", str(getattr(config, name))]
    if not config.multi_block:
        parts.append("--no-multi-block")
    return [*parts, "--out", out]


def config_from_args(args: argparse.Namespace, dataset: Dataset, backbone_name: str, num_groups: int) -> TrainConfig:
    """The TrainConfig `python -m core train` trains: its options, and the Train page's defaults for the rest."""
    frozen = args.frozen_groups if args.frozen_groups is not None else num_groups
    settings = suggested_settings(dataset, num_groups, frozen)  # the Train page's defaults
    names = ("epochs", "batch_size", "lr", "weight_decay", "label_smoothing", "backbone_lr_factor", "augmentation",
             "patience")
    chosen = {name: getattr(args, name, None) if getattr(args, name, None) is not None else settings[name]
              for name in names}
    class_weights = getattr(args, "class_weights", None)
    chosen["class_weights"] = settings["class_weights"] if class_weights is None else bool(class_weights)
    return TrainConfig(
        backbone=backbone_name, frozen_groups=frozen, seed=args.seed, device=args.device,
        protocol=getattr(args, "protocol", None) or "auto", folds=getattr(args, "folds", None) or 5,
        head=getattr(args, "head", None) or "auto", multi_block=getattr(args, "multi_block", True),
        sentence_tuning=getattr(args, "sentence_tuning", None) or "auto", refit=getattr(args, "refit", None) or "auto",
        lexical=getattr(args, "lexical", None) or "auto", views=getattr(args, "views", None) or 0, **chosen,
    )


def main_train(args: argparse.Namespace) -> int:
    """`python -m core train`: train exactly as the Train page does; write metrics.json and the model to --out."""

    options = {k: v for k, v in (("text_column", args.text_column), ("label_column", args.label_column)) if v}
    dataset = data_module.load_path(args.data, **options)[0]  # a file, a folder or a sample ("sample-images")
    backbone_name = args.backbone or backbones.default_backbone(dataset.modality)
    backbone = backbones.load_backbone(backbone_name, pretrained=True)
    config = config_from_args(args, dataset, backbone_name, len(backbone.group_names))
    out = Path(args.out)
    if scale_out.launched():  # one of several processes that `--processes` (or a launcher) started
        with scale_out.from_environment(config.device) as distributed:
            if not distributed.is_main:
                logging.getLogger("core").setLevel(logging.WARNING)  # rank 0 speaks for the run
            status = _fit_and_report(dataset, config, backbone, out, distributed)
            if status != 0:
                raise SystemExit(status)  # leave at once: the other ranks are stopped by the launcher
            return status
    processes, accelerate_config = getattr(args, "processes", None), getattr(args, "accelerate_config", None)
    if processes is not None and processes < 1:
        log.error("--processes must be 1 or more, not %d.", processes)
        return 2
    if (processes or 1) > 1 or accelerate_config:
        cache_mode, _ = _cache_plan(config, config.frozen_groups, len(backbone.group_names))
        if uses_logistic_head(config, cache_mode):
            log.warning(
                "The logistic head is a full-batch convex fit (L-BFGS on cached features) that runs in one process: "
                "training in one process. --head gradient trains the head by gradient descent over several processes."
            )
        else:
            try:
                scale_out.check_split(len(dataset.split("train")[0]), config.batch_size, processes or 1)
                if not accelerate_config:  # one machine: its own GPUs (a config file describes several)
                    scale_out.check_devices(processes or 1, config.device)
            except ValueError as error:
                log.error("%s", error)
                return 2
            return scale_out.launch(processes, getattr(args, "argv", sys.argv[1:]), accelerate_config)
    return _fit_and_report(dataset, config, backbone, out, None)


def _write_cli_job_file(dataset: Dataset, config: TrainConfig, out: Path) -> None:
    """The `job.json` a worker run has (`core.workers.JobFile`), so `train --resume OUT` can continue this run too.

    No worker pid: a server that starts meanwhile must not take the command for a worker it can follow.
    """
    from core import workers

    job = workers.JobFile(dataset=dataset, config=config.to_dict(), label=f"command line: {config.backbone}, "
                          f"{config.frozen_groups} frozen", host=workers.this_host(), started_at=time.time())
    workers.write_job_file(out, job)


def _fit_and_report(
    dataset: Dataset, config: TrainConfig, backbone: Backbone, out: Path, distributed: scale_out.Distributed | None
) -> int:
    """Train, then (rank 0 or a single process) write metrics.json and log the outcome; the exit status."""
    recording = distributed is None or distributed.is_main
    if recording:
        _write_cli_job_file(dataset, config, out)
    try:
        result = fit(dataset, config, out, backbone=backbone, callbacks=(_LogProgress(),) if recording else (),
                     distributed=distributed)
    except (ValueError, FileNotFoundError, FloatingPointError) as error:
        log.error("%s", error)
        return 2
    if not recording:
        return 0 if result.status == "completed" else 1
    metrics = {
        "run_id": result.run_id, "status": result.status, "history": result.history,
        "best_epoch": result.best_epoch, "val_accuracy": result.val_accuracy, "val_loss": result.val_loss,
        "test_accuracy": result.test_accuracy, "cache_mode": result.cache_mode, "device": result.device,
        "precision": result.precision, "seconds": round(result.seconds, 2),
        "processes": distributed.world_size if distributed is not None else 1,
    }
    if result.estimate:  # the contract: protocol, folds, n, accuracy and macro-F1 with their 95 % intervals, ...
        metrics.update(result.estimate)
        if dataset.modality == "audio":  # what pretraining adds: the same head on MFCC statistics, same protocol
            metrics["baseline"] = _audio_baseline(dataset, config, backbone, result.estimate)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if result.estimate:

        estimate = result.estimate
        log.info("%s", estimate["protocol_reason"])
        if (estimate.get("sentence_tuning") or {}).get("reason"):
            log.info("%s", estimate["sentence_tuning"]["reason"])
        log.info(
            "Done: accuracy %s, macro-F1 %s, n = %d (%s%s), calibration error %.1f%% (%.1f%% before) -> %s",
            format_interval(estimate["accuracy"], estimate["accuracy_interval95"]),
            format_interval(estimate["macro_f1"], estimate["macro_f1_interval95"], percent=False),
            estimate["n"], estimate["protocol"], "; fewer than 30 examples, read with care"
            if estimate["small_sample"] else "", 100 * estimate["calibration_error"],
            100 * estimate["calibration_error_before"], out,
        )
        if "zero_shot" in estimate:
            zero_shot = estimate["zero_shot"]
            log.info("0 examples (the class names alone) -> %s; your %d examples -> %s",
                     format_interval(zero_shot["accuracy"], zero_shot["accuracy_interval95"]),
                     len(dataset.table), format_interval(estimate["accuracy"], estimate["accuracy_interval95"]))
    else:
        log.info(
            "Done: best epoch %s, val accuracy %s, test accuracy %s -> %s",
            result.best_epoch, result.val_accuracy, result.test_accuracy, out,
        )
    return 0 if result.status == "completed" else 1


def _audio_baseline(dataset: Dataset, config: TrainConfig, backbone: Backbone, estimate: dict[str, Any]) -> dict:
    """The MFCC baseline of a sound run under the run's protocol, logged beside the transfer result."""

    protocol = smalldata.Protocol(estimate["protocol"], int(estimate["folds"]), bool(estimate["refit_on_all"]),
                                  str(estimate["protocol_reason"]))
    baseline = audio_baseline.mfcc_baseline(dataset, protocol, seed=config.seed, balanced=config.class_weights,
                                            settings=audio_settings(backbone.spec))
    log.info("%s", audio_baseline.comparison(estimate, baseline))
    return baseline


def available_threads() -> int:
    """CPU cores this process may use (respects affinity / container limits where the OS reports them)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


__all__ = [
    "CACHE_MODES",
    "FitResult",
    "TrainCallback",
    "TrainConfig",
    "available_threads",
    "cached_states",
    "prepare_features",
    "suggested_settings",
    "cpu_supports_bf16",
    "fit",
    "load_trained",
    "main_train",
    "pick_device",
    "resolve_precision",
]
