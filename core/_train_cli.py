"""`python -m core train`: train exactly as the Train page does, and write metrics.json and the model to --out.

`train_arguments` turns a `TrainConfig` into the command line the Train page shows; `config_from_args` reads it back.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any

from core import audio_baseline, backbones, clip_length, smalldata
from core import data as data_module
from core import distributed as scale_out
from core._job_file import JobFile, this_host, write_job_file
from core._run_folder import write_metrics
from core._train_config import TrainConfig, _cache_plan, default_views, suggested_settings, uses_logistic_head
from core._train_loop import fit
from core.backbones import Backbone
from core.contracts import StepEnd, TrainBegin
from core.dataset import Dataset
from core.preprocess import audio_settings
from core.stats import format_interval

log = logging.getLogger("core.training")  # the public module's name: what callers silence or watch


class _LogProgress:
    """The command line's listener: what the run is, then caching and tuning progress at most every 5 s."""

    def __init__(self) -> None:
        self.last = 0.0

    def on_train_begin(self, info: TrainBegin) -> None:
        log.info(
            "Training %s on %s (%s, %s): %d train / %d val / %d test examples, cache: %s",
            info.backbone, info.device, info.precision, f"{info.frozen_groups}/{info.num_groups} groups frozen",
            info.num_train, info.num_val, info.num_test, info.cache_mode,
        )
        log.info(info.cache_note)
        if info.sentence_tuning_reason:
            log.info(info.sentence_tuning_reason)

    def on_step_end(self, metrics: StepEnd) -> None:
        if metrics.phase == "features" and time.monotonic() - self.last > 5:
            self.last = time.monotonic()
            log.info("Caching: %d/%d examples", metrics.done, metrics.total)
        elif metrics.phase == "tuning" and time.monotonic() - self.last > 5:
            self.last = time.monotonic()
            log.info("%.0f%%: %s", 100 * metrics.progress, metrics.note)


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
    parts += ["--views", str(config.views)]  # always: its default depends on the data (two views for sound)
    for name in ("folds", "sentence_tuning", "refit", "lexical", "clip_seconds"):
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
    config = TrainConfig(
        backbone=backbone_name, frozen_groups=frozen, seed=args.seed, device=args.device,
        protocol=getattr(args, "protocol", None) or "auto", folds=getattr(args, "folds", None) or 5,
        head=getattr(args, "head", None) or "auto", multi_block=getattr(args, "multi_block", True),
        sentence_tuning=getattr(args, "sentence_tuning", None) or "auto", refit=getattr(args, "refit", None) or "auto",
        lexical=getattr(args, "lexical", None) or "auto", views=0,
        clip_seconds=getattr(args, "clip_seconds", None) or "auto", **chosen,
    )
    views = getattr(args, "views", None)
    return dataclasses.replace(config, views=default_views(config, settings, num_groups) if views is None else views)


def main_train(args: argparse.Namespace) -> int:
    """`python -m core train`: train exactly as the Train page does; write metrics.json and the model to --out."""

    options = {k: v for k, v in (("text_column", args.text_column), ("label_column", args.label_column)) if v}
    dataset = data_module.load_path(args.data, **options)[0]  # a file, a folder or a sample ("sample-images")
    backbone_name = args.backbone or backbones.default_backbone(dataset.modality)
    try:  # sound: the clip length heard travels in the name (`core.clip_length`)
        backbone_name = clip_length.backbone_for(dataset, backbone_name, getattr(args, "clip_seconds", "auto"))
    except ValueError as error:
        log.error("%s", error)
        return 2
    backbone = backbones.load_backbone(backbone_name, pretrained=True)
    config = config_from_args(args, dataset, backbone_name, len(backbone.group_names))  # fit resolves the length
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
    """The `job.json` a worker run has (`core._job_file.JobFile`), so `train --resume OUT` can continue this run too.

    No worker pid: a server that starts meanwhile must not take the command for a worker it can follow.
    """
    job = JobFile(dataset=dataset, config=config.to_dict(), label=f"command line: {config.backbone}, "
                  f"{config.frozen_groups} frozen", host=this_host(), started_at=time.time())
    write_job_file(out, job)


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
    baseline = None
    if result.estimate and dataset.modality == "audio":  # what pretraining adds: the same head on MFCC statistics
        baseline = _audio_baseline(dataset, config, backbone, result.estimate)
    write_metrics(out, result, processes=distributed.world_size if distributed is not None else 1, baseline=baseline)
    if result.estimate:

        estimate = result.estimate
        log.info("%s", estimate["protocol_reason"])
        if dataset.modality == "text" and (estimate.get("sentence_tuning") or {}).get("reason"):
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
