"""Tuning a sentence encoder on the labels, SetFit-style (core.contrastive), and how a run uses it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core import contrastive
from core.dataset import Dataset
from core.training import TrainConfig, fit


def test_the_plan_says_why_and_refuses_what_cannot_apply() -> None:
    plan = contrastive.plan("on", True, True, [64, 64], folds=5)
    assert plan.on and plan.tunings == 6
    # five folds of ~102 texts (4 batches of 32, 4 epochs) and the final tuning on 128 (4 batches, 4 epochs)
    assert plan.steps == 5 * 16 + 16
    assert "SetFit" in plan.reason and "96 steps" in plan.reason
    assert plan.cpu_minutes() == pytest.approx(96 * contrastive.CPU_SECONDS_PER_STEP / 60)

    # "auto" is conditional where tuning paid on the benchmark; the run decides on the frozen head's score
    auto = contrastive.plan("auto", True, True, [64, 64], folds=5)
    assert not auto.on and auto.conditional and auto.steps == plan.steps and "under 90 %" in auto.reason
    tuned = auto.decided(0.70, 128)
    assert tuned.on and not tuned.conditional and "70.0 % (cross-validated, n = 128)" in tuned.reason
    kept = auto.decided(0.95, 128)
    assert not kept.on and not kept.conditional and "little room" in kept.reason
    assert plan.decided(0.5, 128) is plan  # a definite plan stays as it is
    few = contrastive.plan("auto", True, True, [8, 8], folds=5)  # where tuning cost points on the benchmark
    assert not few.on and not few.conditional and "fewer than 20" in few.reason
    assert not contrastive.plan("auto", True, True, [64, 64], folds=0).conditional  # a held-out test split
    big = contrastive.plan("auto", True, True, [3000, 3000], folds=5)
    assert not big.conditional and "minutes on a 2-core CPU" in big.reason
    assert not contrastive.plan("off", True, True, [64, 64], 5).on
    assert "only a sentence encoder" in contrastive.plan("auto", False, True, [64, 64], 5).reason
    with pytest.raises(ValueError, match="only a sentence encoder"):
        contrastive.plan("on", False, True, [64, 64], 5)
    with pytest.raises(ValueError, match="every layer group frozen"):
        contrastive.plan("on", True, False, [64, 64], 5)
    with pytest.raises(ValueError, match="at least 2 labelled texts in every class"):
        contrastive.plan("on", True, True, [1, 64], 5)
    one_split = contrastive.plan("on", True, True, [40, 40], folds=0)  # a held-out test split: one tuning
    assert one_split.tunings == 1 and one_split.steps == 4 * 3


def _support_messages(per_class: int) -> Dataset:
    from core.data import load_sample

    texts, _ = load_sample("texts")
    table = texts.table.groupby("label", group_keys=False).head(per_class).reset_index(drop=True)
    return Dataset(name="support", modality="text", table=table.assign(split="train"))


def _separation(backbone, preprocessor, texts: list[str], labels: np.ndarray) -> float:
    """Mean cosine similarity within a class minus between classes."""
    with torch.inference_mode():
        features = torch.nn.functional.normalize(backbone(preprocessor.batch(texts)), dim=1)
    similarity = (features @ features.T).numpy()
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~np.eye(len(labels), dtype=bool)
    return float(similarity[same & off_diagonal].mean() - similarity[~same].mean())


@pytest.mark.integration
def test_tuning_pulls_texts_of_a_class_together_and_can_be_stopped() -> None:
    from core.backbones import load_backbone, weights_folder
    from core.preprocess import make_preprocessor

    data = _support_messages(8)
    texts, labels = data.table["item"].tolist(), np.array([data.classes.index(x) for x in data.table["label"]])
    backbone = load_backbone("all_minilm_l6_v2")
    preprocessor = make_preprocessor(backbone.spec)
    before = _separation(backbone, preprocessor, texts, labels)
    pretrained = contrastive.encoder_state(backbone)
    steps = []
    contrastive.tune_encoder(backbone, str(weights_folder("all_minilm_l6_v2")), texts, labels.tolist(), seed=0,
                             on_step=lambda step, total, loss: steps.append((step, total)))
    assert steps and steps[-1] == (contrastive.steps_per_tuning(len(texts)),) * 2
    assert _separation(backbone.eval(), preprocessor, texts, labels) > before + 0.02

    contrastive.restore_encoder(backbone, pretrained)
    assert _separation(backbone, preprocessor, texts, labels) == pytest.approx(before, abs=1e-5)
    with pytest.raises(contrastive.TuningStopped):
        contrastive.tune_encoder(backbone, str(weights_folder("all_minilm_l6_v2")), texts, labels.tolist(),
                                 stop_requested=lambda: True)


@pytest.mark.integration
def test_a_run_tunes_the_encoder_per_fold_and_delivers_the_one_tuned_on_all(tmp_path: Path) -> None:
    """Cross-validation tunes a fresh encoder per fold (honest estimate); the delivered model holds the last one."""
    from core.backbones import load_backbone
    from core.evaluation import load_model, predict_proba

    data = _support_messages(10)
    tuning_steps = []

    class Listener:
        def on_step_end(self, metrics: dict) -> None:
            if metrics.get("phase") == "tuning":
                tuning_steps.append(metrics)

    result = fit(data, TrainConfig(backbone="all_minilm_l6_v2", frozen_groups=99, folds=2, sentence_tuning="on"),
                 tmp_path / "run", callbacks=[Listener()])
    assert result.status == "completed"
    record = result.estimate["sentence_tuning"]
    assert record["on"] and record["tunings"] == 3 and "SetFit" in record["method"]
    assert result.estimate["protocol"] == "cross-validation" and result.estimate["n"] == len(data.table)
    notes = [step["note"] for step in tuning_steps]
    assert any("(1 of 3)" in note for note in notes) and any("(3 of 3)" in note for note in notes)
    assert all(0 <= step["progress"] <= 0.9 for step in tuning_steps)
    assert "zero_shot" in result.estimate  # the pretrained encoder's class names, beside the tuned estimate
    info = json.loads((Path(result.run_dir) / "run.json").read_text())
    assert info["sentence_tuning"]["on"] and info["config"]["sentence_tuning"] == "on"

    model, preprocessor, _ = load_model(result.run_dir)
    pretrained = load_backbone("all_minilm_l6_v2")
    texts = data.table["item"].tolist()[:6]
    with torch.inference_mode():
        tuned_features = model.backbone(preprocessor.batch(texts))
        pretrained_features = pretrained(preprocessor.batch(texts))
    assert not torch.allclose(tuned_features, pretrained_features, atol=1e-3)  # the delivered encoder is tuned
    probabilities = predict_proba(model, preprocessor, texts, device="cpu")
    assert probabilities.shape == (6, data.num_classes) and np.allclose(probabilities.sum(1), 1, atol=1e-5)

    # The report and the Test page say the encoder was tuned, and that each fold tuned its own copy.
    from streamlit.testing.v1 import AppTest

    from core.model_report import _estimate_lines
    from core.session import StudioState

    report = "\n".join(_estimate_lines(result.estimate, None))
    assert "- Encoder: The encoder is first fine-tuned on pairs" in report and "fold tuned its own copy" in report
    state = StudioState(dataset=data, backbone_name="all_minilm_l6_v2", frozen_groups=99, run_dir=result.run_dir)
    state.runs.append(result.run_dir)
    app = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "pages" / "5_evaluate.py"), default_timeout=120)
    app.session_state["studio"] = state
    app.run()
    assert not app.exception, app.exception
    assert any("SetFit-style" in c.value and "its own training part only" in c.value for c in app.caption)


@pytest.mark.integration
def test_auto_tunes_the_encoder_only_where_the_frozen_head_scores_low(tmp_path: Path, monkeypatch) -> None:
    """"auto" cross-validates the frozen encoder's head first; under 90 % it tunes, and the run says which and why."""
    monkeypatch.setattr(contrastive, "AUTO_MIN_PER_CLASS", 10)  # half the texts: the same decision, half the time
    data = _support_messages(10)
    shuffled = data.table.assign(label=np.random.default_rng(0).permutation(data.table["label"].to_numpy()))
    noise = Dataset(name="shuffled", modality="text", table=shuffled)  # labels that carry nothing: a low score
    for dataset, name in ((data, "real"), (noise, "shuffled")):
        result = fit(dataset, TrainConfig(backbone="all_minilm_l6_v2", frozen_groups=99, folds=2), tmp_path / name)
        assert result.status == "completed"
        record = result.estimate["sentence_tuning"]
        assert record["on"] == (record["frozen_accuracy"] < contrastive.AUTO_TUNE_BELOW), record
        assert f"n = {len(dataset.table)}" in record["reason"]
        info = json.loads((Path(result.run_dir) / "run.json").read_text())
        assert info["sentence_tuning"] == record  # run.json says what the run decided
        from core.model_report import _estimate_lines

        assert f"- Encoder: {record['reason']}" in "\n".join(_estimate_lines(result.estimate, None))
        if name == "shuffled":
            assert record["on"] and record["tunings"] == 3 and record["frozen_accuracy"] < 0.6


def test_asking_to_tune_an_image_backbone_fails_with_a_clear_message(colour_dataset, tmp_path: Path) -> None:
    from tests.tiny import TinyCNN

    with pytest.raises(ValueError, match="only a sentence encoder"):
        fit(colour_dataset, TrainConfig(backbone="tiny_cnn", frozen_groups=99, pretrained=False,
                                        sentence_tuning="on"), tmp_path / "run", backbone=TinyCNN())


def test_an_unknown_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="sentence_tuning"):
        TrainConfig(backbone="x", frozen_groups=1, sentence_tuning="sometimes").validate()
