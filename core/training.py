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

The loop knows nothing of charts: it reports typed events (`core.contracts`) to callback objects
(`on_train_begin`, `on_step_end`, `on_epoch_end`, `on_train_end`, all optional) and honours a `threading.Event`
stop flag within one batch. Every run is recorded in the run store (`core.store`) as it goes and in its run folder
(`model.safetensors`, `run.json`).

This module is the engine's public face; its parts live in private modules, lowest first: `core.contracts` (the
typed events), `core._train_config` (the settings and the plan they imply), `core._train_device` (precision,
loaders), `core._train_cache` (the frozen states), `core._train_optim` (parameter groups, the learning-rate
schedule), `core._train_state` (the loop's counters, control flags and the listener base), `core._train_record`
(store, run.json, checkpoints), `core._train_listeners` (early stopping, recording and checkpointing, hearing the
loop), `core._train_head` (small data: the logistic head and the estimate), `core._train_loop` (the trainer and
`fit`) and `core._train_cli` (`python -m core train`).
Every name below is importable from here as before.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from core import backbones, ngrams
from core._run_folder import CHECKPOINT_DIR, LEXICAL, MODEL, RUN_INFO
from core._train_cache import _gathered_states, cached_states, frozen_features, prepare_features
from core._train_cli import (
    NOT_ON_THE_COMMAND_LINE,
    _audio_baseline,
    _fit_and_report,
    _LogProgress,
    _write_cli_job_file,
    config_from_args,
    main_train,
    train_arguments,
)
from core._train_config import (
    AUGMENTATIONS,
    CACHE_MODES,
    MAX_VIEWS,
    PRECISIONS,
    SOUND_VIEWS,
    TrainConfig,
    _cache_plan,
    default_views,
    feature_taps,
    suggested_settings,
    uses_logistic_head,
)
from core._train_device import (
    _batch_size_of,
    _Examples,
    _loader,
    _seed_everything,
    autocast_factory,
    cpu_supports_bf16,
    resolve_precision,
    uses_channels_last,
)
from core._train_head import ENCODE_BATCH, _tuning_plan, sentence_tuning_plan
from core._train_loop import _Events, _Trainer, fit
from core._train_optim import _class_weights, _lr_factor, _param_groups
from core._train_record import STEP_FLUSH_SECONDS
from core.backbones import Backbone, Classifier
from core.contracts import EpochEnd, StepEnd, TrainBegin, TrainCallback, TrainEnd, TrainingStopped
from core.cpus import available_threads as available_threads
from core.devices import pick as pick_device
from core.preprocess import make_preprocessor

#: What `fit` returns: the `on_train_end` event (`core.contracts.TrainEnd`).
FitResult = TrainEnd


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
    info_path, model_path = run_dir / RUN_INFO, run_dir / MODEL
    if not info_path.exists() or not model_path.exists():
        raise FileNotFoundError(
            f"{run_dir} is not a finished run folder: it needs {RUN_INFO} and {MODEL}. Train a model first."
        )
    run_info = json.loads(info_path.read_text())
    if backbone is None:
        backbone = backbones.load_backbone(run_info["backbone"], pretrained=False)
    backbone.set_feature_taps(run_info["feature_taps"])
    model = Classifier(backbone, len(run_info["classes"]))
    missing, unexpected = model.load_state_dict(load_file(model_path), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"The weights in {model_path} do not fit backbone {run_info['backbone']!r} "
            f"(missing {len(missing)}, unexpected {len(unexpected)} tensors), e.g. {(missing or unexpected)[:3]}."
        )
    if (run_dir / LEXICAL).is_file():  # texts: the TF-IDF model mixed into the probabilities
        model.lexical = ngrams.load(run_dir / LEXICAL)
    model.to(device).eval()
    return model, make_preprocessor(backbone.spec, "none"), run_info



__all__ = [
    "AUGMENTATIONS",
    "CACHE_MODES",
    "CHECKPOINT_DIR",
    "ENCODE_BATCH",
    "MAX_VIEWS",
    "SOUND_VIEWS",
    "NOT_ON_THE_COMMAND_LINE",
    "PRECISIONS",
    "STEP_FLUSH_SECONDS",
    "EpochEnd",
    "FitResult",
    "StepEnd",
    "TrainBegin",
    "TrainCallback",
    "TrainConfig",
    "TrainEnd",
    "TrainingStopped",
    "_Events",
    "_Examples",
    "_LogProgress",
    "_Trainer",
    "_audio_baseline",
    "_batch_size_of",
    "_cache_plan",
    "_class_weights",
    "_fit_and_report",
    "_gathered_states",
    "_loader",
    "_lr_factor",
    "_param_groups",
    "_seed_everything",
    "_tuning_plan",
    "_write_cli_job_file",
    "autocast_factory",
    "available_threads",
    "cached_states",
    "config_from_args",
    "cpu_supports_bf16",
    "feature_taps",
    "fit",
    "frozen_features",
    "load_trained",
    "main_train",
    "pick_device",
    "prepare_features",
    "resolve_precision",
    "sentence_tuning_plan",
    "default_views",
    "suggested_settings",
    "train_arguments",
    "uses_channels_last",
    "uses_logistic_head",
]
