"""Would more data help? The learning curve on real digits, its trend's forecast, its sentence and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core import insight


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """400 of scikit-learn's real handwritten digits (8x8 pixels), a fixed stratified draw."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    kept, _ = train_test_split(np.arange(len(data.target)), train_size=400, stratify=data.target, random_state=0)
    return torch.as_tensor(data.data[kept], dtype=torch.float32), torch.as_tensor(data.target[kept])


def test_the_trend_from_a_share_of_the_labels_forecasts_the_measured_full_point(digits) -> None:
    features, labels = digits
    curve = insight.learning_curve(features, labels, 10, fractions=(0.1, 0.25, 0.5, 1.0))
    assert [point.fraction for point in curve.points] == [0.1, 0.25, 0.5, 1.0]
    assert all(point.n == 400 for point in curve.points), "every point scores every example once, out of fold"
    assert curve.points[0].accuracy < curve.points[-1].accuracy, "more labels, better model"
    partial = insight.fit_trend(curve.points[:3])  # fitted on 10-50 % only
    measured = curve.points[-1]
    forecast = partial.accuracy(measured.examples)
    assert measured.interval95[0] <= forecast <= measured.interval95[1], (forecast, measured)
    assert curve.accuracy_doubled >= curve.accuracy_now and "Doubling your labelled examples" in curve.sentence


def test_labels_that_carry_no_signal_make_a_flat_curve_and_the_sentence_says_more_data_will_not_help(digits) -> None:
    features, _ = digits
    noise = torch.as_tensor(np.random.default_rng(1).integers(0, 4, len(features)))
    curve = insight.learning_curve(features, noise, 4, fractions=(0.25, 0.5, 1.0))
    assert "unlikely to help" in curve.sentence


def test_the_command_line_prints_the_curve_as_json(capsys, tmp_path) -> None:
    from core.__main__ import main
    from core.data import load_sample

    sample, _ = load_sample("texts")  # 10 of each class: every fit of a text curve also fits a TF-IDF model
    texts = sample.table.groupby("label", group_keys=False).head(10)[["item", "label"]]
    texts.rename(columns={"item": "text"}).to_csv(tmp_path / "texts.csv", index=False)
    assert main(["learning-curve", "--data", str(tmp_path / "texts.csv"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [point["fraction"] for point in printed["points"]] == list(insight.FRACTIONS)
    assert printed["examples_now"] == printed["points"][0]["n"] and printed["sentence"]
    assert all(len(point["interval95"]) == 2 for point in printed["points"])


def test_a_text_curve_mixes_in_the_tfidf_model_as_text_runs_deliver() -> None:
    """Features that say nothing, texts whose words give the class away: only the mixed curve learns it."""
    rng = np.random.default_rng(0)
    labels = torch.as_tensor(np.repeat([0, 1], 30))
    texts = [f"{'refund invoice' if label else 'parcel courier'} note {index}" for index, label in
             enumerate(labels.tolist())]  # fmt: skip
    features = torch.as_tensor(rng.normal(size=(60, 8)), dtype=torch.float32)
    plain = insight.learning_curve(features, labels, 2, folds=3, fractions=(0.5, 1.0))
    mixed = insight.learning_curve(features, labels, 2, folds=3, fractions=(0.5, 1.0), texts=texts)
    assert mixed.points[-1].accuracy > 0.95 > 0.75 > plain.points[-1].accuracy
