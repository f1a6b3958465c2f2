"""What a run writes: the run store's record, `run.json`, epoch checkpoints and the kept model.

When it writes them during the loop is its listeners' part (`core._train_listeners`: recording, checkpointing).

A checkpoint holds everything a resumed run needs to continue exactly as if it had never stopped: the trainable
weights, the optimizer's state, every random generator's state and the loop's counters (`checkpoint/last.*`); the
frozen layers are written once (`checkpoint/frozen.safetensors`) and the best epoch's weights beside them. The
folder's files are declared in `core._run_folder`.
"""

from __future__ import annotations

import json
import logging
import random
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from core._run_folder import (
    BEST_WEIGHTS,
    CHECKPOINT_DIR,
    CHECKPOINT_STATE,
    CHECKPOINT_WEIGHTS,
    FROZEN_WEIGHTS,
    LEXICAL,
    MODEL,
    RUN_INFO,
    temporary,
    write_text_at_once,
)
from core._train_state import TrainState
from core.contracts import TrainEnd
from core.paths import is_runs_folder

log = logging.getLogger("core.training")  # the public module's name: what callers silence or watch

STEP_FLUSH_SECONDS = 2.0  # how often the steps heard go into the run store (`core._train_listeners._RunRecorder`)


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


class _RunRecording:
    """The writing half of a run (`core._train_loop._Trainer`): its store record, run folder and checkpoints.

    A mixin: it reads the trainer's state (model, optimizer, `TrainState`) and writes it out.
    """

    def checkpoint_path(self, name: str) -> Path:
        """Where the checkpoint file `name` (a `core._run_folder` name under CHECKPOINT_DIR) goes; makes the folder."""
        (self.run_dir / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
        return self.run_dir / name

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
        if self.run_dir is None or not (self.run_dir / RUN_INFO).exists():
            raise FileNotFoundError(f"Cannot resume: {self.run_dir} holds no {RUN_INFO}; start a new run instead.")
        if not (self.run_dir / CHECKPOINT_STATE).exists():
            raise FileNotFoundError(
                f"Cannot resume: {self.run_dir} has no epoch checkpoint (the run stopped before its first epoch)."
            )
        return json.loads((self.run_dir / RUN_INFO).read_text())

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
        plain = {"epoch": epoch, **self.state.counters(), "optimizer": optim_plain, "rng": rng_plain,
                 "cache_mode": self.cache_mode}
        weights, state = self.checkpoint_path(CHECKPOINT_WEIGHTS), self.checkpoint_path(CHECKPOINT_STATE)
        save_file(_cpu_state(tensors), temporary(weights))
        temporary(state).write_text(json.dumps(plain))
        temporary(weights).replace(weights)
        temporary(state).replace(state)
        self.store.log_checkpoint(self.run_id, epoch, weights)

    def open_checkpoints(self, resuming: bool) -> None:
        """At set-up: a resumed run reads its epoch checkpoint back; a new one writes its frozen layers, once."""
        if resuming:
            self._load_checkpoint()
        elif self.frozen_prefixes:
            save_file(_cpu_state(self._frozen_state()), self.checkpoint_path(FROZEN_WEIGHTS))

    def restore_rng(self) -> None:
        """A resumed run's random generators as its checkpoint left them: applied just before its first epoch."""
        if self.pending_rng is not None:
            _set_rng_state(*self.pending_rng)
            self.pending_rng = None

    def restore_best(self) -> None:
        """The kept weights back into the model (the best epoch's, or a refit's), before it is saved and scored."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state, strict=False)

    def _load_checkpoint(self) -> None:
        if (self.run_dir / FROZEN_WEIGHTS).exists():
            self.model.load_state_dict(load_file(self.run_dir / FROZEN_WEIGHTS), strict=False)
        tensors = load_file(self.run_dir / CHECKPOINT_WEIGHTS)
        plain = json.loads((self.run_dir / CHECKPOINT_STATE).read_text())
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")}, strict=False)
        _load_optimizer_state(self.optimizer, tensors, plain["optimizer"])
        self.pending_rng = (tensors, plain["rng"])  # applied just before training resumes
        self.state = TrainState.resumed(plain)
        if (self.run_dir / BEST_WEIGHTS).exists():
            self.best_state = load_file(self.run_dir / BEST_WEIGHTS)
        log.info("Resuming run %s at epoch %d", self.run_dir, self.state.start_epoch)

    def write_run_json(self) -> None:
        best = next((m for m in self.state.history if m["epoch"] == self.state.best_epoch), None)
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
                "history": self.state.history,
                "best_epoch": self.state.best_epoch,
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
        write_text_at_once(self.run_dir / RUN_INFO, json.dumps(info, indent=2, default=str))

    def save_model(self) -> None:
        """The kept weights (best epoch if any, else the current ones) as the run's `model.safetensors`."""
        state = self.model.state_dict()
        save_file(_cpu_state(state), temporary(self.run_dir / MODEL))
        temporary(self.run_dir / MODEL).replace(self.run_dir / MODEL)
        if getattr(self, "lexical", None) is not None:
            self.lexical.save(self.run_dir / LEXICAL)

    def finish(self) -> TrainEnd:
        """Write the model, run.json and the store record for the final status; build the result."""
        if self.run_id:
            try:
                if hasattr(self, "model"):
                    self.save_model()
                self.write_run_json()
                self.recorder.flush(force=True)
            except (OSError, RuntimeError, sqlite3.Error) as error:  # the store record below must still close
                log.exception("Could not write the run folder %s", self.run_dir)
                if self.status != "failed":
                    self.status, self.error = "failed", f"Could not write the run folder: {error}"
        best = next((m for m in self.state.history if m["epoch"] == self.state.best_epoch), None)
        result = TrainEnd(
            run_id=self.run_id,
            run_dir=str(self.run_dir) if self.run_dir is not None else "",
            status=self.status,
            best_epoch=self.state.best_epoch,
            epochs_completed=len(self.state.history),
            val_accuracy=best.get("val_accuracy") if best else None,
            val_loss=best.get("val_loss") if best else None,
            test_accuracy=self.test_accuracy,
            history=list(self.state.history),
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
