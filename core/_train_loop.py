"""The training loop: one run of `fit`, set up, trained epoch by epoch (or by the logistic head), and finished.

The loop knows nothing of charts: it keeps its counters in a `TrainState`, tells its own listeners
(`core._train_listeners`: early stopping, run recording, checkpointing) of each event with the state and the
`TrainControl` flags they set, sends typed events (`core.contracts`) to the user's callbacks, and honours a stop
flag within one batch. Writing the run (`core._train_record`) and the small-data head and estimate
(`core._train_head`) are the trainer's other two halves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from core import backbones, clip_length, smalldata, stats
from core import distributed as scale_out
from core import features as feature_cache
from core._train_cache import cached_states
from core._train_config import TrainConfig, _cache_plan, feature_taps, uses_logistic_head
from core._train_device import (
    _loader,
    _seed_everything,
    autocast_factory,
    resolve_precision,
    uses_channels_last,
)
from core._train_head import _SmallDataHead
from core._train_listeners import _Checkpointing, _EarlyStopping, _RunRecorder
from core._train_optim import _class_weights, _lr_factor, _param_groups
from core._train_record import _cpu_state, _module_prefixes, _RunRecording
from core._train_state import TrainControl, TrainListener, TrainState, _Events
from core.backbones import Backbone, Classifier
from core.contracts import EpochEnd, StepEnd, TrainBegin, TrainEnd, TrainingStopped
from core.dataset import Dataset
from core.devices import pick as pick_device
from core.devices import to_device
from core.freezing import freeze_first, set_train_mode
from core.paths import workspace_subdir
from core.preprocess import make_preprocessor
from core.store import RunStore, new_run_id

log = logging.getLogger("core.training")  # the public module's name: what callers silence or watch


class _Trainer(_RunRecording, _SmallDataHead):
    """One run of `fit`: set-up, the cache pass, the loop (or the logistic head) and the finish.

    Its two other halves are mixins over the same state: `_RunRecording` writes the run out (store, run.json,
    checkpoints, the model) and `_SmallDataHead` fits the logistic head and makes every run's estimate. Its
    listeners (`self.listeners`) decide when: early stopping, then recording, then checkpointing.
    """

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
        config = clip_length.resolve(config, dataset)  # sound: the clip length heard travels in the backbone's name
        if backbone is not None and backbone.spec.name != config.backbone:
            if backbones.base_name(backbone.spec.name) != backbones.base_name(config.backbone):
                raise ValueError(f"The backbone passed ({backbone.spec.name}) is not the run's ({config.backbone}).")
            backbone.spec = backbones.get_spec(config.backbone)  # the same network, hearing another clip length
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
        self.state, self.control = TrainState(), TrainControl()
        self.recorder = _RunRecorder(self.store)
        self.listeners: list[TrainListener] = [_EarlyStopping(config.patience), self.recorder, _Checkpointing(self)]
        self.cache_seconds = 0.0
        self.cache_reused = False
        self.status = "running"
        self.error: str | None = None
        self.test_accuracy: float | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.scaler: Any = None
        self.estimate: dict[str, Any] | None = None
        self.protocol: smalldata.Protocol | None = None

    # -- helpers ---------------------------------------------------------------------------------------------

    def notify(self, event: str, payload: Any) -> None:
        """Tell the loop's own listeners, in order, of an event (a `TrainListener` method) with the state and flags."""
        for listener in self.listeners:
            getattr(listener, event)(self.state, self.control, payload)

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
        if config.views and not (self.logistic and dataset.modality in ("image", "audio")):
            raise ValueError(
                f"Augmented views ({config.views} per example) are for images and sound clips with the logistic head "
                "(every group frozen, no augmentation): they are computed once and learnt from beside the originals. "
                "Set views to 0, or use the augmentation setting to augment while fine-tuning."
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
        self.pending_rng: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None

        # What a refit starts from: the pretrained backbone and this seed's fresh head (a resumed run rebuilds the
        # same, seeded, before its checkpoint is loaded).
        self.initial_state = _cpu_state(self._trainable_state()) if self.refit else None
        self.open_checkpoints(resuming=previous is not None)
        self.write_run_json()

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
            factor = _lr_factor(self.state.global_step - self.schedule_start, self.schedule_steps, self.warmup_steps)
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
                    f"The training loss became {float(loss)} at step {self.state.global_step + 1}; lower the learning "
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
            self.state.global_step += 1
            size = int(labels.shape[0])
            batch_loss = float(loss.detach())
            batch_correct = int((logits.detach().argmax(dim=1) == labels).sum())
            total_loss += batch_loss * size
            correct += batch_correct
            count += size
            step = StepEnd(
                phase=self.phase, step=self.state.global_step, global_step=self.state.global_step,
                total_steps=self.total_steps, epoch=epoch, batch=batch_index + 1,
                batches=self.steps_per_epoch, loss=batch_loss, train_loss=batch_loss,
                train_accuracy=batch_correct / size, lr=self.optimizer.param_groups[0]["lr"],
                examples_per_second=count / max(time.perf_counter() - epoch_started, 1e-9),
                note=self.refit_note if self.phase == "refit" else None,
            )
            self.events.emit("on_step_end", step)
            self.notify("on_step_end", step)
            self.check_stop()
        if self.distributed is not None:  # the epoch's numbers over every rank's shares (step metrics are rank 0's)
            total_loss, correct, count = self.distributed.sum([total_loss, correct, count])
        return {
            "train_loss": total_loss / max(count, 1),
            "train_accuracy": correct / max(count, 1),
            "train_seconds": time.perf_counter() - epoch_started,
        }

    def run(self) -> TrainEnd:
        self.setup()
        info = {
            "run_id": self.run_id, "run_dir": str(self.run_dir), "device": str(self.device),
            "precision": self.precision, "cache_mode": self.cache_mode, "cache_note": self.cache_note,
            "epochs": self.config.epochs, "start_epoch": self.state.start_epoch, "total_steps": self.total_steps,
            "steps_per_epoch": self.steps_per_epoch, "num_train": len(self.train_items), "num_val": len(self.val_items),
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
                    sentence_tuning_reason=self.tuning.reason if self.dataset.modality == "text" else "",
                    sentence_tuning_steps=self.tuning.steps)  # images and clips: nothing to say about text tuning
        if self.logistic:
            grid = smalldata.l2_grid(self.backbone.spec.sentence_encoder)
            info.update(epochs=len(grid), start_epoch=1, steps_per_epoch=0, total_steps=0)
        begin = TrainBegin(**info)
        self.notify("on_train_begin", begin)
        self.events.emit("on_train_begin", begin)
        cache = self.build_cache()
        if self.logistic:
            self.run_logistic(cache)
            self.status = "completed"
            return self.finish()
        self.restore_rng()  # a resumed run's generators, as its checkpoint left them
        for epoch in range(self.state.start_epoch, self.config.epochs + 1):
            self.state.epoch = epoch
            metrics = self.train_epoch(epoch, cache)
            val_loss, val_accuracy = self.evaluate("val", cache)
            self.notify("on_evaluate", val_loss if val_loss is not None else metrics["train_loss"])
            ended = EpochEnd(
                epoch=epoch, train_loss=metrics["train_loss"], train_accuracy=metrics["train_accuracy"],
                val_loss=val_loss, val_accuracy=val_accuracy, lr=self.optimizer.param_groups[0]["lr"],
                seconds=metrics["train_seconds"], best_epoch=self.state.best_epoch, is_best=self.control.should_save,
                total_epochs=self.config.epochs,
            )
            self.notify("on_epoch_end", ended)  # into the history and the store, then the checkpoint and run.json
            self.events.emit("on_epoch_end", ended)
            log.info(
                "epoch %d/%d train_loss %.4f val_loss %s val_accuracy %s",
                epoch, self.config.epochs, metrics["train_loss"],
                f"{val_loss:.4f}" if val_loss is not None else "-",
                f"{val_accuracy:.3f}" if val_accuracy is not None else "-",
            )
            if self.control.should_stop:
                log.info("Early stop: no better validation loss for %d epochs", self.state.bad_epochs)
                break
            self.check_stop()
        self.restore_best()
        temperature = None
        if self.refit and self.state.best_epoch is not None:
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
        epochs, first_items = int(self.state.best_epoch), len(self.train_items)
        self.model.load_state_dict(self.initial_state, strict=False)
        self.optimizer = torch.optim.AdamW(_param_groups(self.model, self.config), lr=self.config.lr)
        self.train_items = [*self.train_items, *self.val_items]
        self.train_labels = [*self.train_labels, *self.val_labels]
        if cache is not None:
            merged = feature_cache.concatenate([cache["train"], cache["val"]])
            cache = {**cache, "train": merged}
        self.steps_per_epoch = math.ceil(len(self.train_items) / self.config.batch_size)
        self.schedule_start, self.schedule_steps = self.state.global_step, self.steps_per_epoch * self.config.epochs
        self.warmup_steps = int(round(self.config.warmup_fraction * self.schedule_steps))
        self.total_steps = self.state.global_step + self.steps_per_epoch * epochs
        self.phase = "refit"
        self.refit_note = (f"retraining on train + validation ({len(self.train_items)} examples) for the "
                           f"{epochs} epoch{'s' if epochs > 1 else ''} early stopping chose")
        log.info("%s", self.refit_note[0].upper() + self.refit_note[1:])
        self.events.emit("on_step_end", StepEnd(phase="refit", step=self.state.global_step,
                                                global_step=self.state.global_step,
                                                total_steps=self.total_steps, note=self.refit_note))
        started = time.perf_counter()
        for epoch in range(1, epochs + 1):
            metrics = self.train_epoch(epoch, cache)
            log.info("refit epoch %d/%d train_loss %.4f", epoch, epochs, metrics["train_loss"])
        self.best_state = _cpu_state(self._trainable_state())  # the delivered model from now on, also if stopped
        self.refit_record = {"on": True, "epochs": epochs, "examples": len(self.train_items),
                             "first_examples": first_items, "seconds": time.perf_counter() - started,
                             "final_train_loss": metrics["train_loss"]}
        return temperature


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
) -> TrainEnd:
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
