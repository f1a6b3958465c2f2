"""The training engine: learning, stopping, resuming, caching, failure records, and the real backbone once."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from core import features
from core.dataset import Dataset
from core.store import RunStore
from core.training import (
    FitResult,
    TrainConfig,
    _class_weights,
    _lr_factor,
    _param_groups,
    fit,
    load_trained,
    pick_device,
)
from tests.tiny import TinyCNN as _TinyCNN


def TinyCNN(seed: int = 0) -> _TinyCNN:  # noqa: N802 - reads like the class it builds
    """The tiny backbone with seeded random weights, so two runs start from the same network."""
    torch.manual_seed(seed)
    return _TinyCNN()


def _config(**overrides: Any) -> TrainConfig:
    values: dict[str, Any] = dict(
        backbone="tiny_cnn", frozen_groups=0, epochs=4, batch_size=8, lr=0.02, pretrained=False,
        precision="fp32", patience=None, warmup_fraction=0.0, refit="off",
    )
    values.update(overrides)
    return TrainConfig(**values)


class Recorder:
    """Collects every event (what the Train page's job does with them)."""

    def __init__(self) -> None:
        self.begin: dict[str, Any] = {}
        self.steps: list[dict[str, Any]] = []
        self.epochs: list[dict[str, Any]] = []
        self.end: FitResult | None = None

    def on_train_begin(self, info: dict[str, Any]) -> None:
        self.begin = info

    def on_step_end(self, metrics: dict[str, Any]) -> None:
        if metrics.get("phase") == "train":
            self.steps.append(metrics)

    def on_epoch_end(self, metrics: dict[str, Any]) -> None:
        self.epochs.append(metrics)

    def on_train_end(self, result: FitResult) -> None:
        self.end = result


@pytest.fixture(autouse=True)
def _empty_feature_memory() -> None:
    features.MEMORY.clear()


def test_tiny_model_learns_and_the_run_is_recorded(colour_dataset: Dataset, tmp_path: Path) -> None:
    recorder = Recorder()
    run_dir = tmp_path / "run"
    result = fit(colour_dataset, _config(), run_dir, backbone=TinyCNN(), callbacks=[recorder])

    assert result.status == "completed" and result.cache_mode == "none"
    losses = [epoch["train_loss"] for epoch in result.history]
    assert losses[-1] < losses[0] * 0.8
    assert result.val_accuracy is not None and result.val_accuracy > 0.5
    assert recorder.begin["steps_per_epoch"] == 3 and recorder.begin["total_steps"] == 12
    assert recorder.begin["sentence_tuning_reason"] == ""  # an image run has nothing to say about tuning on texts
    assert [s["step"] for s in recorder.steps] == list(range(1, 13))
    assert [e["epoch"] for e in recorder.epochs] == [1, 2, 3, 4]
    assert recorder.end is result

    info = json.loads((run_dir / "run.json").read_text())
    for key in ("run_id", "backbone", "modality", "classes", "frozen_groups", "config", "dataset_name",
                "dataset_fingerprint", "status", "metrics"):
        assert key in info
    assert info["status"] == "completed" and info["classes"] == colour_dataset.classes
    assert info["metrics"]["best_epoch"] == result.best_epoch
    assert set(info["metrics"]["history"][0]) >= {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy"}

    record = RunStore().get_run(result.run_id)
    assert record["status"] == "completed" and record["dataset_fingerprint"] == colour_dataset.fingerprint
    assert len(RunStore().history(result.run_id)) == 4 and len(RunStore().steps(result.run_id)) == 12

    model, preprocessor, loaded_info = load_trained(run_dir, backbone=TinyCNN())
    assert not model.training and loaded_info["run_id"] == result.run_id
    items, labels = colour_dataset.split("val")
    with torch.no_grad():
        predictions = model(preprocessor.collate([preprocessor.load(i, False) for i in items])).argmax(1)
    assert (predictions == torch.tensor(labels)).float().mean().item() == pytest.approx(result.val_accuracy)


def test_stop_flag_is_honoured_within_one_batch(colour_dataset: Dataset, tmp_path: Path) -> None:
    stop = threading.Event()

    class StopAtStep5(Recorder):
        def on_step_end(self, metrics: dict[str, Any]) -> None:
            super().on_step_end(metrics)
            if metrics.get("step") == 5:
                stop.set()

    recorder = StopAtStep5()
    result = fit(colour_dataset, _config(epochs=10), tmp_path / "run", backbone=TinyCNN(), callbacks=[recorder],
                 stop_event=stop)
    assert result.status == "stopped"
    assert recorder.steps[-1]["step"] == 5
    assert result.epochs_completed == 1 and result.best_epoch == 1
    assert RunStore().get_run(result.run_id)["status"] == "stopped"
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "stopped"
    assert (tmp_path / "run" / "model.safetensors").exists()


@pytest.mark.parametrize("frozen_groups", [0, 1])
def test_resume_continues_exactly_like_an_uninterrupted_run(
    colour_dataset: Dataset, tmp_path: Path, frozen_groups: int
) -> None:
    config = _config(epochs=3, frozen_groups=frozen_groups, warmup_fraction=0.2)
    whole = fit(colour_dataset, config, tmp_path / "whole", backbone=TinyCNN())

    stop = threading.Event()

    class StopAfterEpoch2:
        def on_epoch_end(self, metrics: dict[str, Any]) -> None:
            if metrics["epoch"] == 2:
                stop.set()

    torch.manual_seed(123)  # the resumed run must not depend on what ran before it
    first = fit(colour_dataset, config, tmp_path / "split", backbone=TinyCNN(), callbacks=[StopAfterEpoch2()],
                stop_event=stop)
    assert first.status == "stopped" and first.epochs_completed == 2
    features.MEMORY.clear()
    resumed = fit(colour_dataset, config, tmp_path / "split", backbone=TinyCNN(), resume=True)

    assert resumed.status == "completed" and resumed.run_id == first.run_id
    assert [e["epoch"] for e in resumed.history] == [1, 2, 3]
    for resumed_epoch, whole_epoch in zip(resumed.history, whole.history, strict=True):  # the state read back too
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            assert resumed_epoch[key] == pytest.approx(whole_epoch[key], rel=1e-5, abs=1e-6)
        for key in ("best_epoch", "is_best"):
            assert resumed_epoch[key] == whole_epoch[key]
    assert resumed.best_epoch == whole.best_epoch
    assert RunStore().get_run(first.run_id)["status"] == "completed"


@pytest.mark.parametrize(("frozen_groups", "mode"), [(3, "features"), (1, "activations")])
def test_cached_training_predicts_like_recomputing(
    colour_dataset: Dataset, tmp_path: Path, frozen_groups: int, mode: str
) -> None:
    result = fit(colour_dataset, _config(frozen_groups=frozen_groups), tmp_path / "run", backbone=TinyCNN())
    assert result.cache_mode == mode and not result.cache_reused

    model, preprocessor, _ = load_trained(tmp_path / "run", backbone=TinyCNN())
    items, labels = colour_dataset.split("val")
    with torch.no_grad():
        recomputed = model(preprocessor.collate([preprocessor.load(i, False) for i in items]))
    [cached] = list(features.MEMORY._items.values())
    with torch.no_grad():
        state = cached["val"].states
        if mode == "activations":
            state = model.backbone.forward_groups(state, frozen_groups, len(model.backbone.group_names))
        from_cache = model.head(state)
    assert torch.equal(cached["val"].labels, torch.tensor(labels))
    assert torch.allclose(from_cache, recomputed, atol=1e-4)
    assert torch.equal(from_cache.argmax(1), recomputed.argmax(1))
    accuracy = (recomputed.argmax(1) == torch.tensor(labels)).float().mean().item()
    assert accuracy == pytest.approx(result.val_accuracy)


def test_second_run_reuses_the_feature_cache_from_memory_and_disk(colour_dataset: Dataset, tmp_path: Path) -> None:
    backbone = TinyCNN()
    first = fit(colour_dataset, _config(frozen_groups=3), tmp_path / "a", backbone=backbone)
    second = fit(colour_dataset, _config(frozen_groups=3), tmp_path / "b", backbone=backbone)
    features.MEMORY.clear()
    third = fit(colour_dataset, _config(frozen_groups=3), tmp_path / "c", backbone=backbone)
    assert not first.cache_reused and second.cache_reused and third.cache_reused
    for key in ("train_loss", "val_loss", "val_accuracy"):
        assert [h[key] for h in third.history] == pytest.approx([h[key] for h in first.history])
    other_weights = fit(colour_dataset, _config(frozen_groups=3), tmp_path / "d", backbone=TinyCNN(seed=1))
    assert not other_weights.cache_reused  # a different backbone's weights never reuse these features


def test_augmentation_turns_caching_off_and_says_why(colour_dataset: Dataset, tmp_path: Path) -> None:
    recorder = Recorder()
    result = fit(colour_dataset, _config(frozen_groups=3, epochs=1, augmentation="light"), tmp_path / "run",
                 backbone=TinyCNN(), callbacks=[recorder])
    assert result.cache_mode == "none" == recorder.begin["cache_mode"]
    assert "augmentation" in result.cache_note.lower()


def test_failing_run_is_recorded_as_failed(colour_dataset: Dataset, tmp_path: Path) -> None:
    table = colour_dataset.table.copy()
    table.loc[table.index[0], "item"] = str(tmp_path / "missing.png")
    broken = Dataset(name="broken", modality="image", table=pd.DataFrame(table), root=colour_dataset.root)
    with pytest.raises(Exception, match="missing.png"):
        fit(broken, _config(epochs=2), tmp_path / "run", backbone=TinyCNN())
    [record] = RunStore().list_runs()
    assert record["status"] == "failed" and "missing.png" in record["error"]
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["status"] == "failed" and "missing.png" in info["error"]


def test_run_failing_before_training_is_recorded_too(tmp_path: Path) -> None:
    texts = pd.DataFrame({"item": ["good", "bad", "fine", "awful"], "label": ["pos", "neg", "pos", "neg"],
                          "split": ["train", "train", "val", "val"]})
    with pytest.raises(ValueError, match="pick a text backbone"):
        fit(Dataset(name="texts", modality="text", table=texts), _config(), tmp_path / "run", backbone=TinyCNN())
    [record] = RunStore().list_runs()
    assert record["status"] == "failed" and "text backbone" in record["error"]


def test_bad_settings_are_explained() -> None:
    with pytest.raises(ValueError, match="epochs must be at least 1.*augmentation must be one of"):
        _config(epochs=0, augmentation="extreme").validate()


def test_schedule_class_weights_and_discriminative_rates() -> None:
    factors = [_lr_factor(step, total_steps=10, warmup_steps=2) for step in range(10)]
    assert factors[0] == pytest.approx(0.5) and factors[1] == pytest.approx(1.0) and factors[2] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[1:], factors[2:], strict=False)) and factors[-1] < 0.05

    weights = _class_weights([0, 0, 0, 1], num_classes=3)
    assert weights[1] > weights[0] > 0 and weights[2] == 0

    from core.backbones import Classifier
    from core.freezing import freeze_first

    model = Classifier(TinyCNN(), 3)
    freeze_first(model, 1)
    groups = _param_groups(model, _config(lr=0.01, backbone_lr_factor=0.1, weight_decay=0.05))
    head_ids = {id(p) for p in model.head.parameters()}
    for group in groups:
        is_head = all(id(p) in head_ids for p in group["params"])
        assert group["lr"] == pytest.approx(0.01 if is_head else 0.001)
        assert group["weight_decay"] == (0.05 if group["params"][0].dim() > 1 else 0.0)
    trained = {id(p) for group in groups for p in group["params"]}
    assert not trained & {id(p) for p in model.backbone.stem.parameters()}


def test_default_precision_trains_too(colour_dataset: Dataset, tmp_path: Path) -> None:
    result = fit(colour_dataset, _config(precision="auto", epochs=2, frozen_groups=2), tmp_path / "run",
                 backbone=TinyCNN())
    assert result.status == "completed" and result.precision in {"bf16", "fp32"}
    assert pick_device("auto").type in {"cpu", "cuda", "mps"}
    assert pick_device("cpu") == torch.device("cpu")



def test_augmentation_choices_are_declared_once() -> None:
    """The CLI (kept free of heavy imports) spells the choices out; they must be the preprocessing's own."""
    from core.__main__ import build_parser
    from core.preprocess import AUGMENTATIONS as DECLARED
    from core.training import AUGMENTATIONS

    train = next(action for action in build_parser()._subparsers._group_actions[0].choices["train"]._actions
                 if action.dest == "augmentation")
    assert list(train.choices) == list(DECLARED) == list(AUGMENTATIONS)



@pytest.mark.parametrize("changes", [
    {},
    {"epochs": 7, "lr": 0.003, "batch_size": 8, "class_weights": True, "augmentation": "light", "patience": 0,
     "seed": 4, "protocol": "test split", "folds": 3, "head": "gradient", "multi_block": False, "refit": "off",
     "views": 2, "label_smoothing": 0.1, "weight_decay": 0.05, "backbone_lr_factor": 0.5},
    {"sentence_tuning": "on", "lexical": "off", "device": "cpu"},
])
def test_the_command_line_a_run_shows_trains_the_same_config(colour_dataset: Dataset, changes: dict) -> None:
    """The Train page shows `python -m core train ...` for a run: parsed by the CLI's own parser and read back as the
    CLI does, it must give the run's TrainConfig (except the fields the CLI has no option for)."""
    from core.__main__ import build_parser
    from core.training import NOT_ON_THE_COMMAND_LINE, config_from_args, train_arguments

    config = dataclasses.replace(TrainConfig("tiny_cnn", frozen_groups=1), **changes)
    arguments = train_arguments(config, "sample-images", "out", text_column="text")
    args = build_parser().parse_args(["train", *arguments])
    assert (args.data, args.out, args.text_column) == ("sample-images", "out", "text")
    back = config_from_args(args, colour_dataset, "tiny_cnn", num_groups=3)
    carried = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in NOT_ON_THE_COMMAND_LINE]
    assert {name: getattr(back, name) for name in carried} == {name: getattr(config, name) for name in carried}

def test_a_device_that_is_not_here_is_refused_with_a_sentence() -> None:
    with pytest.raises(ValueError, match="Unknown device 'tpu-that-is-not-here'"):
        pick_device("tpu-that-is-not-here")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is available here"):
            pick_device("cuda")

@pytest.mark.integration
def test_efficientnet_lite0_feature_caching_via_the_cli(tmp_path: Path) -> None:
    from core.__main__ import build_parser
    from core.data import load_sample
    from core.training import main_train

    sample, _ = load_sample("images")
    folder = tmp_path / "digits"
    for label in sample.classes[:4]:
        (folder / label).mkdir(parents=True)
        for item in sample.table[sample.table["label"] == label]["item"].tolist()[:8]:
            shutil.copy(item, folder / label / Path(item).name)

    out = tmp_path / "out"
    args = build_parser().parse_args(
        ["train", "--data", str(folder), "--backbone", "efficientnet_lite0", "--epochs", "5", "--lr", "0.01",
         "--out", str(out)]
    )
    assert main_train(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["cache_mode"] == "features" and metrics["status"] == "completed"
    assert metrics["history"][-1]["train_loss"] < metrics["history"][0]["train_loss"]
    assert (out / "model.safetensors").exists()
    model, _, info = load_trained(out)
    assert info["backbone"] == "efficientnet_lite0" and model.head[1].out_features == 4


def test_suggested_settings_follow_the_freezing_and_the_balance(colour_dataset) -> None:
    from core.training import suggested_settings

    probe = suggested_settings(colour_dataset, num_groups=3, frozen_groups=3)
    tune = suggested_settings(colour_dataset, num_groups=3, frozen_groups=1)
    assert probe["feature_extraction"] and not tune["feature_extraction"]
    assert probe["lr"] > tune["lr"] and probe["epochs"] > tune["epochs"]
    assert probe["batch_size"] <= 24  # never more than the training examples (24 here)
    assert not probe["class_weights"]

    table = colour_dataset.table
    keep = ~((table["label"] == "red") & (table.index % 12 > 1))
    lopsided = type(colour_dataset)(name="lopsided", modality="image", table=table[keep].reset_index(drop=True))
    assert suggested_settings(lopsided, num_groups=3, frozen_groups=3)["class_weights"]


@pytest.mark.integration
def test_features_prepared_ahead_are_reused_by_fit(colour_dataset) -> None:
    from core.training import TrainConfig, fit, prepare_features

    assert prepare_features(colour_dataset, "efficientnet_lite0")
    config = TrainConfig(backbone="efficientnet_lite0", frozen_groups=99, epochs=2, lr=1e-2)
    result = fit(colour_dataset, config)
    assert result.cache_mode == "features"
    assert result.cache_reused  # the backbone did not run again: same key as the warm-up's


def test_a_warm_up_starts_once_per_data_and_backbone(colour_dataset, monkeypatch) -> None:
    from core import jobs, training

    calls = []
    monkeypatch.setenv("TRANSFER_STUDIO_WARM_UP", "1")
    monkeypatch.setattr(training, "prepare_features", lambda dataset, name: calls.append(name))
    assert jobs.warm_up_features(colour_dataset, "efficientnet_lite0")
    assert jobs.warm_up_features(colour_dataset, "efficientnet_lite0")
    jobs._WARM_UPS[(colour_dataset.fingerprint, "efficientnet_lite0")].join(5)
    assert calls == ["efficientnet_lite0"]
    monkeypatch.setenv("TRANSFER_STUDIO_WARM_UP", "0")
    assert not jobs.warm_up_features(colour_dataset, "all_minilm_l6_v2")


def test_feature_extraction_pools_the_declared_taps_and_the_run_reloads_with_them(
    colour_dataset: Dataset, tmp_path: Path
) -> None:
    import dataclasses

    from tests.tiny import TINY_SPEC, TinyCNN

    def tapped() -> TinyCNN:
        backbone = TinyCNN()
        backbone.spec = dataclasses.replace(TINY_SPEC, feature_taps=(1,))
        return backbone

    config = TrainConfig(backbone="tiny_cnn", frozen_groups=3, pretrained=False, device="cpu", folds=3)
    result = fit(colour_dataset, config, tmp_path / "run", backbone=tapped())
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["feature_taps"] == [1]
    model, preprocessor, _ = load_trained(tmp_path / "run", backbone=tapped())
    assert model.head[-1].in_features == 16 + 16  # the stage's pooled output, then the final features
    items, labels = colour_dataset.split("test")
    with torch.no_grad():
        predicted = model(preprocessor.batch(items)).argmax(1)
    assert (predicted.numpy() == np.asarray(labels)).mean() >= 0.5 and result.status == "completed"

    unfrozen = fit(colour_dataset, dataclasses.replace(config, frozen_groups=2, epochs=1), tmp_path / "partial",
                   backbone=tapped())
    assert json.loads((tmp_path / "partial" / "run.json").read_text())["feature_taps"] == []  # fine-tuning: none
    assert unfrozen.status == "completed"
    off = fit(colour_dataset, dataclasses.replace(config, multi_block=False), tmp_path / "off", backbone=tapped())
    assert json.loads((tmp_path / "off" / "run.json").read_text())["feature_taps"] == [] and off.status == "completed"


class _StopWhenRefitStarts:
    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop

    def on_step_end(self, metrics: dict[str, Any]) -> None:
        if metrics.get("phase") == "refit":
            self.stop.set()


def test_refit_trains_the_delivered_model_on_train_and_validation(colour_dataset: Dataset, tmp_path: Path) -> None:
    first = fit(colour_dataset, _config(patience=2, refit="off"), tmp_path / "first", backbone=TinyCNN())
    result = fit(colour_dataset, _config(patience=2, refit="on"), tmp_path / "refit", backbone=TinyCNN())
    train, val = len(colour_dataset.split("train")[0]), len(colour_dataset.split("val")[0])
    refit = result.estimate["refit"]
    assert refit["examples"] == train + val and refit["first_examples"] == train
    assert refit["epochs"] == result.best_epoch == first.best_epoch, "the first pass is the same run"
    assert "trained again on train + validation" in result.estimate["protocol_reason"]
    info = json.loads((tmp_path / "refit" / "run.json").read_text())
    assert info["refit"]["epochs"] == result.best_epoch and "refit" not in (first.estimate or {})
    # The delivered model is the retrained one, and the estimate scores it: the test split through the saved model
    delivered = load_file(tmp_path / "refit" / "model.safetensors")
    kept = load_file(tmp_path / "first" / "model.safetensors")
    assert any(not torch.equal(delivered[name], kept[name]) for name in kept)
    model, preprocessor, _ = load_trained(tmp_path / "refit", backbone=TinyCNN())
    items, labels = colour_dataset.split("test")
    from core.evaluation import predict_proba

    probabilities = predict_proba(model, preprocessor, items, device="cpu")
    assert result.estimate["accuracy"] == pytest.approx(float((probabilities.argmax(1) == np.array(labels)).mean()))


def test_auto_refits_small_data_only_and_a_stop_keeps_the_first_model(colour_dataset: Dataset, tmp_path: Path) -> None:
    auto = fit(colour_dataset, _config(refit="auto", epochs=2), tmp_path / "auto", backbone=TinyCNN())
    assert auto.estimate["refit"]["examples"] > auto.estimate["refit"]["first_examples"], "a small set refits"
    big = fit(colour_dataset, _config(refit="auto", epochs=2, protocol="test split"), tmp_path / "big",
              backbone=TinyCNN())
    assert "refit" not in big.estimate, "the user asked for a test split: auto leaves the recipe alone"
    stop = threading.Event()
    stopped = fit(colour_dataset, _config(refit="on", epochs=2), tmp_path / "stopped", backbone=TinyCNN(),
                  callbacks=[_StopWhenRefitStarts(stop)], stop_event=stop)
    assert stopped.status == "stopped" and stopped.best_epoch is not None
    delivered = load_file(tmp_path / "stopped" / "model.safetensors")
    best = load_file(tmp_path / "stopped" / "checkpoint" / "best.safetensors")
    assert all(torch.equal(delivered[name], value) for name, value in best.items()), "the first run's best epoch"
