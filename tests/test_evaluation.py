"""Tests of core.evaluation: metrics against a hand computation, evaluate / predict on a tiny trained model,
the coverage curve, the TF-IDF baseline and `python -m core predict`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from core import evaluation, no_transfer, transfer_verdict
from core.backbones import Classifier
from core.dataset import Dataset
from core.paths import workspace_subdir
from core.preprocess import make_preprocessor
from core.store import RunStore
from core.training import load_trained
from tests.run_info import full_run_info
from tests.tiny import TINY_SPEC, TinyCNN

# ------------------------------------------------------------------------------------------------ helpers


def tiny_preprocessor() -> Any:
    """The engine's evaluation preprocessing for TinyCNN (32x32 RGB, normalised as TINY_SPEC says)."""
    return make_preprocessor(TINY_SPEC, "none")


_TRAINED: dict[tuple[Any, ...], dict[str, torch.Tensor]] = {}


def train_tiny(dataset: Dataset, steps: int = 60) -> Classifier:
    """A TinyCNN classifier fitted on the train split (the colours are easy: a few full-batch steps suffice).

    The generated colour images are the same in every test (fixed seed), so the weights are trained once per
    test session and reused.
    """
    key = (tuple(dataset.classes), tuple(dataset.table["split"]), tuple(dataset.table["label"]), steps)
    if key in _TRAINED:
        model = Classifier(TinyCNN(), dataset.num_classes)
        model.load_state_dict(_TRAINED[key])
        return model.eval()
    torch.manual_seed(0)
    model = Classifier(TinyCNN(), dataset.num_classes)
    preprocessor = tiny_preprocessor()
    items, targets = dataset.split("train")
    batch = torch.stack([preprocessor.load(item, train=True) for item in items])
    labels = torch.tensor(targets)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.02)
    model.train()
    for _ in range(steps):
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(batch), labels)
        loss.backward()
        optimiser.step()
    _TRAINED[key] = {name: value.detach().clone() for name, value in model.state_dict().items()}
    return model.eval()


def write_run(folder: Path, model: Classifier, dataset: Dataset, run_id: str = "tiny-run") -> Path:
    """A run folder in the engine's contract format: model.safetensors + run.json."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(folder / "model.safetensors"))
    info = full_run_info(
        run_id=run_id, backbone="tiny_cnn", modality=dataset.modality, classes=dataset.classes, frozen_groups=0,
        num_groups=3, config={"backbone": "tiny_cnn", "frozen_groups": 0, "epochs": 2, "seed": 0},
        dataset_name=dataset.name, dataset_fingerprint=dataset.fingerprint,
        metrics={"best_epoch": 1, "val_accuracy": 1.0},
    )
    (folder / "run.json").write_text(json.dumps(info), encoding="utf-8")
    return folder


def load_tiny_run(path: str | Path) -> tuple[Classifier, Any, dict[str, Any]]:
    """`evaluation.load_model` for TinyCNN runs: the engine's `load_trained`, given the architecture the catalogue
    does not hold."""
    if not (Path(path) / "run.json").is_file():
        raise evaluation.ModelLoadError(f"{path} is not a run folder")
    return load_trained(path, backbone=TinyCNN())


@pytest.fixture
def tiny_model(colour_dataset: Dataset) -> Classifier:
    return train_tiny(colour_dataset)


# ------------------------------------------------------------------------------------------------ metrics

# A known confusion (rows true, columns predicted) and its metrics worked out by hand:
#   cat:  3 right, 1 called dog            precision 3/4, recall 3/4, F1 3/4
#   dog:  1 called cat, 2 right, 1 fox     precision 2/3, recall 2/4, F1 2*(2/3*1/2)/(2/3+1/2) = 4/7
#   fox:  2 right                          precision 2/3, recall 1,   F1 2*(2/3)/(5/3) = 4/5
KNOWN = np.array([[3, 1, 0], [1, 2, 1], [0, 0, 2]])


def _pairs(confusion: np.ndarray) -> tuple[list[int], list[int]]:
    targets, predictions = [], []
    for true in range(len(confusion)):
        for predicted in range(len(confusion)):
            targets += [true] * int(confusion[true, predicted])
            predictions += [predicted] * int(confusion[true, predicted])
    return targets, predictions


def test_metrics_match_a_hand_computation() -> None:
    targets, predictions = _pairs(KNOWN)
    confusion = evaluation.confusion_matrix(targets, predictions, 3)
    np.testing.assert_array_equal(confusion, KNOWN)

    metrics = evaluation.metrics_from_confusion(confusion, ["cat", "dog", "fox"])
    assert metrics["accuracy"] == pytest.approx(7 / 10)
    per_class = {row["class"]: row for row in metrics["per_class"]}
    assert per_class["cat"]["precision"] == pytest.approx(3 / 4)
    assert per_class["cat"]["recall"] == pytest.approx(3 / 4)
    assert per_class["dog"]["precision"] == pytest.approx(2 / 3)
    assert per_class["dog"]["recall"] == pytest.approx(1 / 2)
    assert per_class["dog"]["f1"] == pytest.approx(4 / 7)
    assert per_class["fox"]["f1"] == pytest.approx(4 / 5)
    assert [per_class[name]["support"] for name in ("cat", "dog", "fox")] == [4, 4, 2]
    assert metrics["macro_f1"] == pytest.approx((3 / 4 + 4 / 7 + 4 / 5) / 3)
    assert metrics["weighted_f1"] == pytest.approx((4 * 3 / 4 + 4 * 4 / 7 + 2 * 4 / 5) / 10)


def test_metrics_agree_with_sklearn_and_handle_a_never_predicted_class() -> None:
    from sklearn.metrics import accuracy_score, f1_score

    targets = [0, 0, 1, 1, 2, 2, 2]
    predictions = [0, 1, 1, 1, 1, 0, 0]  # class 2 is never predicted: precision 0, F1 0, no division error
    metrics = evaluation.metrics_from_confusion(evaluation.confusion_matrix(targets, predictions, 3), ["a", "b", "c"])
    assert metrics["accuracy"] == pytest.approx(accuracy_score(targets, predictions))
    assert metrics["macro_f1"] == pytest.approx(f1_score(targets, predictions, average="macro", zero_division=0))
    assert metrics["per_class"][2]["precision"] == 0.0


def test_confusion_matrix_rejects_unpaired_inputs() -> None:
    with pytest.raises(ValueError, match="pair up"):
        evaluation.confusion_matrix([0, 1], [0], 2)


def test_calibration_error_is_zero_for_a_sure_right_model_and_large_for_a_sure_wrong_one() -> None:
    sure = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert evaluation.expected_calibration_error(sure, [0, 1]) == pytest.approx(0.0)
    assert evaluation.expected_calibration_error(sure, [1, 0]) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------ coverage


def test_coverage_curve_trades_coverage_for_accuracy() -> None:
    # Confident answers are right, hesitant ones wrong: raising the threshold must raise accuracy.
    probabilities = np.array([[0.95, 0.05], [0.9, 0.1], [0.55, 0.45], [0.4, 0.6], [0.2, 0.8]])
    targets = [0, 0, 1, 0, 1]
    curve = evaluation.coverage_curve(probabilities, targets)
    assert list(curve.columns) == ["threshold", "coverage", "accuracy", "answered", "not_sure"]
    first = curve.iloc[0]
    assert first["threshold"] == 0.0 and first["coverage"] == 1.0 and first["accuracy"] == pytest.approx(3 / 5)
    assert (np.diff(curve["coverage"].to_numpy()) <= 0).all()
    assert (curve["answered"] + curve["not_sure"] == 5).all()
    at_70 = evaluation.confidence_at(probabilities, targets, 0.7)
    assert at_70["coverage"] == pytest.approx(3 / 5) and at_70["accuracy"] == pytest.approx(1.0)
    assert at_70["not_sure"] == 2
    nothing = evaluation.confidence_at(probabilities, targets, 0.99)
    assert nothing["coverage"] == 0.0 and np.isnan(nothing["accuracy"])


# ------------------------------------------------------------------------------------------------ evaluate / predict


def test_evaluate_a_tiny_trained_model(colour_dataset: Dataset, tiny_model: Classifier) -> None:
    result = evaluation.evaluate(tiny_model, tiny_preprocessor(), colour_dataset, device="cpu", batch_size=4)
    test_items, test_targets = colour_dataset.split("test")
    assert result.split == "test" and result.items == test_items
    np.testing.assert_array_equal(result.targets, test_targets)
    assert result.probabilities.shape == (len(test_items), 3)
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert result.confusion.sum() == len(test_items)
    assert result.accuracy >= 0.8, "the colours are easy: a trained model must get them right"
    assert result.accuracy == pytest.approx(float((result.predictions == result.targets).mean()))
    assert set(result.per_class_table().index) == set(colour_dataset.classes)
    assert 0.0 <= result.metrics["calibration_error"] <= 1.0

    # Same probabilities whatever the batch size: evaluation runs in eval mode.
    again = evaluation.predict_proba(tiny_model, tiny_preprocessor(), test_items, device="cpu", batch_size=1)
    np.testing.assert_allclose(again, result.probabilities, atol=1e-5)


def test_cell_examples_lead_with_the_most_confident() -> None:
    probabilities = np.array([[0.6, 0.4], [0.1, 0.9], [0.3, 0.7], [0.8, 0.2]])
    result = evaluation.evaluate_probabilities(probabilities, [0, 0, 0, 1], ["a", "b"], ["w", "x", "y", "z"])
    mistakes = result.examples(true_class=0, predicted_class=1)
    assert mistakes["item"].tolist() == ["x", "y"]
    assert mistakes["confidence"].tolist() == pytest.approx([0.9, 0.7])
    assert mistakes["true_probability"].tolist() == pytest.approx([0.1, 0.3])
    assert result.mistakes()["item"].tolist() == ["x", "z", "y"]
    np.testing.assert_allclose(result.confusion_normalised(), [[1 / 3, 2 / 3], [1.0, 0.0]])
    assert result.examples(1, 1).empty


def test_evaluate_refuses_an_empty_split(colour_dataset: Dataset, tiny_model: Classifier) -> None:
    table = colour_dataset.table.assign(split=colour_dataset.table["split"].replace("test", "train"))
    no_test = Dataset("no test", "image", table, root=colour_dataset.root)
    with pytest.raises(ValueError, match="test share"):
        evaluation.evaluate(tiny_model, tiny_preprocessor(), no_test, device="cpu")


def test_top_k_table_says_not_sure_below_the_threshold() -> None:
    probabilities = np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]])
    table = evaluation.top_k_table(["one", "two"], probabilities, ["a", "b", "c"], top_k=2, threshold=0.5)
    assert table["prediction"].tolist() == ["a", evaluation.NOT_SURE]
    assert table["class_2"].tolist() == ["b", "b"]
    assert table["probability_1"].tolist() == pytest.approx([0.7, 0.4])
    assert "class_3" not in table.columns


def test_read_texts_from_lines_and_csv() -> None:
    assert evaluation.read_texts("first\n\n  second  \n") == ["first", "second"]
    assert evaluation.read_texts("id,text\n1,hello there\n2,good bye\n", is_csv=True) == ["hello there", "good bye"]
    with pytest.raises(evaluation.PredictionInputError, match="one text per line"):
        evaluation.read_texts("  \n\n")


def test_check_image_files_names_every_bad_file(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(evaluation.PredictionInputError, match=r"not found: .*missing\.png.*notes\.txt"):
        evaluation.check_image_files([tmp_path / "missing.png", tmp_path / "notes.txt"])


def test_load_model_explains_what_it_needs(tmp_path: Path) -> None:
    with pytest.raises(evaluation.ModelLoadError, match="not a folder"):
        evaluation.load_model(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------------ baselines


def _topic_texts(per_class: int = 30, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    words = {
        "sport": ["match", "goal", "team", "score", "coach", "league", "player"],
        "food": ["recipe", "bake", "flour", "sauce", "taste", "oven", "salt"],
        "tech": ["laptop", "software", "chip", "code", "battery", "screen", "cloud"],
    }
    filler = ["the", "a", "today", "really", "some", "new", "very", "we", "it", "was"]
    rows = []
    for label, vocabulary in words.items():
        for i in range(per_class):
            text = " ".join(rng.choice(vocabulary, 2).tolist() + rng.choice(filler, 5).tolist())
            split = "train" if i < per_class * 0.6 else ("val" if i < per_class * 0.8 else "test")
            rows.append({"item": text, "label": label, "split": split})
    return Dataset("topics", "text", pd.DataFrame(rows))


def test_tfidf_baseline_beats_chance_on_a_small_text_set() -> None:
    result = no_transfer.tfidf_baseline(_topic_texts())
    assert result.name == "tfidf"
    assert result.accuracy > 1 / 3 + 0.3
    assert 0.0 <= result.macro_f1 <= 1.0


def _suffix_texts(per_class: int = 30) -> Dataset:
    """Two classes told apart only inside words (every stem unique): "-ing" words vs "-ed" words."""
    rng = np.random.default_rng(0)
    rows = []
    for label, suffix in (("ongoing", "ing"), ("finished", "ed")):
        for i in range(per_class):
            stems = ["".join(rng.choice(list("bcdfgklmnprstvz"), 4)) for _ in range(3)]
            split = "train" if i < per_class * 0.6 else ("val" if i < per_class * 0.8 else "test")
            rows.append({"item": " ".join(stem + suffix for stem in stems), "label": label, "split": split})
    return Dataset("suffixes", "text", pd.DataFrame(rows))


def test_tfidf_baseline_chooses_character_ngrams_where_words_never_repeat() -> None:
    result = no_transfer.tfidf_baseline(_suffix_texts())
    assert "character" in result.detail and result.protocol == "test split"
    assert result.accuracy >= 0.9, "character n-grams see the suffix that no whole word shares"
    assert result.n == 12 and result.accuracy_interval95[0] < result.accuracy <= result.accuracy_interval95[1]


def test_tfidf_baseline_is_scored_on_the_runs_own_folds() -> None:
    texts = _topic_texts()
    items, targets = [], []
    for name in ("train", "val", "test"):
        items += texts.split(name)[0]
        targets += texts.split(name)[1]
    folds = [f"fold {i % 3 + 1}" for i in range(len(items))]
    estimate = evaluation.evaluate_probabilities(np.full((len(items), 3), 1 / 3, dtype=np.float32), list(targets),
                                                 texts.classes, list(items))
    estimate.where = folds
    result = no_transfer.tfidf_baseline(texts, estimate=estimate)
    assert result.n == len(items), "every example is scored once, by the fold model that did not learn from it"
    assert result.protocol.startswith("cross-validation (3 folds")
    assert result.accuracy > 1 / 3 + 0.3
    saved = no_transfer.train_baselines(texts, {"run_id": "cv-run"}, kinds=["tfidf"], estimate=estimate)
    assert no_transfer.load_baselines({"run_id": "cv-run"})[0].n == saved[0].n == len(items)


def test_tfidf_baseline_refuses_images(colour_dataset: Dataset) -> None:
    with pytest.raises(ValueError, match="text data"):
        no_transfer.tfidf_baseline(colour_dataset)


def test_scratch_baseline_trains_the_same_recipe_without_pretrained_weights(colour_dataset: Dataset) -> None:
    info = {"run_id": "tiny-run", "backbone": "tiny_cnn", "frozen_groups": 0,
            "config": {"backbone": "tiny_cnn", "frozen_groups": 0, "epochs": 9, "batch_size": 8, "lr": 0.01,
                       "device": "cpu", "patience": None}}  # fmt: skip
    results = no_transfer.train_baselines(colour_dataset, info, epochs=2, backbone_factory=TinyCNN)
    assert [r.name for r in results] == ["pixels", "scratch"], "image data: raw pixels, no TF-IDF baseline"
    assert 0.0 <= results[1].accuracy <= 1.0 and "2 epoch(s)" in results[1].detail
    assert results[0].n == results[1].n == len(colour_dataset.split("test")[0]), "both on the test split"
    saved = no_transfer.load_baselines(info)
    assert [(r.name, r.accuracy) for r in saved] == [(r.name, r.accuracy) for r in results]
    scratch_run = workspace_subdir("baselines") / "tiny-run" / "scratch"
    recorded = json.loads((scratch_run / "run.json").read_text())
    assert recorded["config"]["pretrained"] is False and recorded["config"]["epochs"] == 2
    # the encoder is tuned on pairs only if the run's was: "auto" would tune random weights (their frozen score is low)
    assert recorded["config"]["sentence_tuning"] == "off"
    assert RunStore().list_runs() == [], "a baseline must not show up among the user's runs"


def test_a_cross_validated_scratch_baseline_reports_its_out_of_fold_estimate(colour_dataset: Dataset) -> None:
    """Under cross-validation the baseline's delivered model learned from the test split too: its own out-of-fold
    estimate is what compares with the run, not that model scored on examples it trained on."""
    info = {"run_id": "cv-scratch", "backbone": "tiny_cnn", "frozen_groups": 3,
            "config": {"backbone": "tiny_cnn", "frozen_groups": 3, "device": "cpu"}}  # fmt: skip
    result = no_transfer.train_baselines(colour_dataset, info, kinds=["scratch"], backbone_factory=TinyCNN)[0]
    assert result.protocol.startswith("cross-validation") and "cross-validation" in result.detail
    assert result.n == len(colour_dataset.table), "every labelled example scored once, out of fold"
    assert result.accuracy_interval95[0] <= result.accuracy <= result.accuracy_interval95[1]


def test_train_baselines_saves_results_for_the_run() -> None:
    texts = _topic_texts()
    info = {"run_id": "text-run", "config": {"seed": 0}}
    results = no_transfer.train_baselines(texts, info, kinds=["tfidf"])
    assert [r.name for r in results] == ["tfidf"]
    assert [r.name for r in no_transfer.load_baselines(info)] == ["tfidf"]
    assert no_transfer.load_baselines({"run_id": "another"}) == []


def _digits(per_class: int = 10) -> tuple[Dataset, evaluation.Evaluation]:
    """The image sample (8x8 digits), `per_class` of each, with a run estimate on 3 folds that gets each third
    example of every class wrong (a stand-in for a pretrained model that is no match for raw pixels here)."""
    from core.data import load_sample

    sample, _ = load_sample("images")
    table = sample.table.groupby("label", group_keys=False).head(per_class).reset_index(drop=True)
    digits = Dataset(name="digits", modality="image", table=table, classes=sample.classes, root=sample.root)
    items = table["item"].tolist()
    targets = [digits.classes.index(label) for label in table["label"]]
    probabilities = np.full((len(items), digits.num_classes), 0.01, dtype=np.float32)
    for row, target in enumerate(targets):
        probabilities[row, (target + 1) % digits.num_classes if row % 3 == 0 else target] = 0.91
    estimate = evaluation.evaluate_probabilities(probabilities, targets, digits.classes, items)
    estimate.where = [f"fold {row % 3 + 1}" for row in range(len(items))]
    return digits, estimate


def test_raw_pixels_are_scored_on_the_runs_own_examples_and_kept_per_example() -> None:
    digits, estimate = _digits()
    info = {"run_id": "digits-run", "config": {"seed": 0}}
    result = no_transfer.train_baselines(digits, info, kinds=["pixels"], estimate=estimate)[0]
    assert result.name == "pixels" and "Raw pixels" in result.title and "32x32 RGB" in result.detail
    assert result.n == len(estimate.items) == 100 and result.protocol.startswith("cross-validation (3 folds")
    assert result.accuracy > 0.7, "8x8 digits: raw pixels already do well"
    assert len(result.correct) == 100 and sum(result.correct) == round(result.accuracy * 100)
    assert result.examples_digest == no_transfer.examples_digest(estimate.items)
    saved = no_transfer.load_baselines(info)[0]
    assert (saved.name, saved.correct, saved.examples_digest) == ("pixels", result.correct, result.examples_digest)
    verdict = transfer_verdict.judge_transfer(estimate, [saved])
    assert verdict.method == "paired bootstrap" and verdict.n == 100
    with pytest.raises(ValueError, match="for images"):
        no_transfer.pixels_baseline(_topic_texts(), info)


def _paired(name: str, correct: list[int], digest: str) -> no_transfer.BaselineResult:
    accuracy = sum(correct) / len(correct)
    return no_transfer.BaselineResult(name, no_transfer.PIXELS_TITLE if name == "pixels" else name, accuracy, accuracy,
                                     n=len(correct), accuracy_interval95=[0.0, 1.0], correct=correct,
                                     examples_digest=digest)


def test_transfer_verdict_reads_the_interval_of_the_paired_difference() -> None:
    items = [f"image_{i}.png" for i in range(100)]
    model_right = [1] * 90 + [0] * 10
    estimate = evaluation.evaluate_probabilities(np.eye(2, dtype=np.float32)[[0] * 100], [0 if r else 1 for r in
                                                 model_right], ["a", "b"], items)  # fmt: skip
    digest = no_transfer.examples_digest(items)
    # Right on every example the baseline gets right, and on 20 more: the whole interval is above 0.
    verdict = transfer_verdict.judge_transfer(estimate, [_paired("pixels", [1] * 70 + [0] * 30, digest)])
    assert verdict.level == "success" and verdict.method == "paired bootstrap" and verdict.interval95[0] > 0
    assert verdict.difference == pytest.approx(0.2) and "paired on the same 100 examples" in verdict.sentence
    # Two points apart on the same examples: not clearly better, said plainly, with the interval and n.
    verdict = transfer_verdict.judge_transfer(estimate, [_paired("pixels", [1] * 88 + [0] * 12, digest)])
    assert verdict.level == "warning" and verdict.interval95[0] <= 0 <= verdict.interval95[1]
    assert "does not clearly beat raw pixels" in verdict.sentence and "95 % interval" in verdict.sentence
    assert "unfreezing" in verdict.sentence and "simpler model" in verdict.sentence
    # Raw pixels better outside the interval (the digits case): the stronger wording names it.
    verdict = transfer_verdict.judge_transfer(estimate, [_paired("pixels", [1] * 100, digest)])
    assert verdict.level == "worse" and verdict.baseline == "pixels" and verdict.interval95[1] < 0
    assert verdict.sentence.startswith("Pretrained: 90.0%; raw pixels: 100.0%.")
    assert "Raw pixels + logistic regression (no pretraining) does better than the pretrained model" in verdict.sentence
    # Answers kept on other examples are not paired with these: Newcombe's unpaired interval, which says so.
    verdict = transfer_verdict.judge_transfer(estimate, [_paired("pixels", [1] * 70 + [0] * 30, "other examples")])
    assert verdict.method == "unpaired (Newcombe)" and "unpaired" in verdict.sentence


def test_transfer_verdict_says_plainly_when_pretraining_does_not_help() -> None:
    baselines = [no_transfer.BaselineResult("scratch", "Same architecture, random weights", 0.43, 0.4)]
    verdict = transfer_verdict.judge_transfer(None, baselines, model_accuracy=0.91)
    assert verdict.level == "success" and "91.0%" in verdict.sentence and "43.0%" in verdict.sentence
    verdict = transfer_verdict.judge_transfer(None, baselines, model_accuracy=0.44)
    assert verdict.level == "warning" and "negative transfer" in verdict.sentence
    assert "unfreez" in verdict.sentence.lower()
    assert transfer_verdict.judge_transfer(None, [], model_accuracy=0.9).level == "info"
    # A text run that mixes in TF-IDF is judged by its network alone, and the sentence says whose number it is.
    tfidf = [no_transfer.BaselineResult("tfidf", "TF-IDF + logistic regression", 0.80, 0.8)]
    verdict = transfer_verdict.judge_transfer(None, tfidf, model_accuracy=0.79, subject="Pretrained network alone")
    assert verdict.level == "warning" and verdict.sentence.startswith("Pretrained network alone: 79.0%")
    assert "TF-IDF: 80.0%" in verdict.sentence
    # A record from before intervals (no n, no answers) is still judged, by the old fixed margin.
    verdict = transfer_verdict.judge_transfer(None, baselines, model_accuracy=0.44)
    assert verdict.method == "fixed margin" and verdict.interval95 is None and verdict.level == "warning"


# ------------------------------------------------------------------------------------------------ command line


def test_cli_predict_prints_the_same_answers_as_the_library(
    tmp_path: Path,
    colour_dataset: Dataset,
    tiny_model: Classifier,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from core.__main__ import main

    run = write_run(tmp_path / "run", tiny_model, colour_dataset)
    monkeypatch.setattr(evaluation, "load_model", load_tiny_run)
    images, _ = colour_dataset.split("test")
    expected = evaluation.predict_proba(tiny_model, tiny_preprocessor(), images[:3], device="cpu")

    assert main(["predict", "--model", str(run), "--top-k", "2", *images[:3]]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split("\t") == ["input", "prediction", "confidence", "class_1", "probability_1", "class_2",
                                    "probability_2"]  # fmt: skip
    printed = [line.split("\t") for line in lines[1:]]
    assert [row[0] for row in printed] == images[:3]
    assert [row[1] for row in printed] == [colour_dataset.classes[i] for i in expected.argmax(axis=1)]
    assert [float(row[2]) for row in printed] == pytest.approx(expected.max(axis=1).tolist(), abs=1e-4)

    assert main(["predict", "--model", str(run), "--json", images[0]]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record[0]["input"] == images[0] and len(record[0]["top_k"]) == 3
    assert record[0]["top_k"][0]["probability"] == pytest.approx(float(expected[0].max()), abs=1e-5)


def test_cli_baselines_finds_the_runs_own_data_and_prints_the_verdict_as_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from core.__main__ import main
    from core.workers import JobFile, write_job_file

    digits, estimate = _digits(per_class=5)
    run = tmp_path / "run"
    write_job_file(run, JobFile(dataset=digits, config={"seed": 0}))  # what train writes: the data it trained on
    (run / "run.json").write_text(json.dumps(full_run_info(run_id="digits-cli", classes=digits.classes,
                                                           config={"seed": 0})))  # fmt: skip
    (run / "examples.json").write_text(json.dumps({
        "protocol": "cross-validation", "classes": digits.classes, "items": estimate.items,
        "labels": estimate.targets.tolist(), "where": estimate.where, "probabilities": estimate.probabilities.tolist(),
    }))
    assert main(["baselines", "--model", str(run), "--kinds", "pixels", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert [(b["name"], b["n"]) for b in record["baselines"]] == [("pixels", 50)]
    verdict = record["verdict"]
    low, high = verdict["interval95"]
    assert verdict["level"] == ("success" if low > 0 else "worse" if high < 0 else "warning")
    assert verdict["baseline"] == "pixels" and verdict["n"] == 50
    assert verdict["method"] == "paired bootstrap" and verdict["interval95"][0] < verdict["difference"]
    assert "95 % interval" in verdict["sentence"] and verdict["model_accuracy"] == pytest.approx(estimate.accuracy)
    assert main(["baselines", "--model", str(tmp_path / "nowhere")]) == 2
    assert "run.json" in capsys.readouterr().err


def test_cli_predict_reports_bad_inputs(
    tmp_path: Path,
    colour_dataset: Dataset,
    tiny_model: Classifier,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from core.__main__ import main

    run = write_run(tmp_path / "run", tiny_model, colour_dataset)
    monkeypatch.setattr(evaluation, "load_model", load_tiny_run)
    assert main(["predict", "--model", str(run), str(tmp_path / "missing.png")]) == 2
    assert "not found" in capsys.readouterr().err
    monkeypatch.undo()
    assert main(["predict", "--model", str(tmp_path / "nowhere"), "x.png"]) == 2
    assert "run folder" in capsys.readouterr().err
