"""The small-data protocol, the logistic head and the intervals (core.smalldata, core.stats)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import threadpoolctl
import torch
from sklearn.datasets import load_digits

from core import ngrams, smalldata, stats
from core.dataset import Dataset
from core.evaluation import predict_proba
from core.training import TrainConfig, fit, load_trained
from tests.tiny import TinyCNN


def test_wilson_interval_contains_the_share_and_stays_in_bounds() -> None:
    low, high = stats.wilson_interval(17, 20)
    assert low < 0.85 < high
    assert 0.6 < low < 0.7 and 0.9 < high < 0.97  # the known Wilson interval for 17/20 is 0.640-0.948
    # Exactly 0 and 1 at the ends (floating point gave 0.9999999999999999, printed as such by `recommend --json`).
    assert stats.wilson_interval(0, 10)[0] == 0.0 and all(stats.wilson_interval(n, n)[1] == 1.0 for n in range(1, 500))
    assert stats.wilson_interval(0, 0) == (0.0, 1.0)


def test_bootstrap_intervals_narrow_with_more_examples() -> None:
    rng = np.random.default_rng(0)
    widths = []
    for count in (40, 400):
        targets = rng.integers(0, 3, count)
        predictions = np.where(rng.random(count) < 0.8, targets, (targets + 1) % 3)
        interval = stats.bootstrap_intervals(targets, predictions, 3)["macro_f1_interval95"]
        widths.append(interval[1] - interval[0])
    assert widths[1] < widths[0] / 2


def test_temperature_scaling_fixes_overconfident_logits() -> None:
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 4, 2000)
    logits = rng.normal(size=(2000, 4))
    logits[np.arange(2000), targets] += 1.0
    overconfident = logits * 5
    temperature = stats.fit_temperature(overconfident, targets)
    assert temperature > 2
    from core.evaluation import expected_calibration_error

    before = expected_calibration_error(stats.softmax(overconfident), targets)
    after = expected_calibration_error(stats.softmax(overconfident, temperature), targets)
    assert after < before / 2


def test_protocol_rule() -> None:
    small = smalldata.choose_protocol(["a"] * 30 + ["b"] * 30, split_given=False)
    assert small.name == "cross-validation" and small.folds == 5 and small.refit_on_all
    assert "60 examples" in small.reason
    large = smalldata.choose_protocol(["a"] * 1500 + ["b"] * 1500, split_given=False)
    assert large.name == "test split" and not large.refit_on_all
    given = smalldata.choose_protocol(["a"] * 30 + ["b"] * 30, split_given=True)
    assert given.name == "test split" and "own test split" in given.reason
    forced = smalldata.choose_protocol(["a"] * 1500 + ["b"] * 1500, split_given=False, requested="cross-validation")
    assert forced.name == "cross-validation"
    assert smalldata.choose_protocol(["a"] * 3 + ["b"] * 9, split_given=False).folds == 3
    with pytest.raises(ValueError, match="protocol"):
        smalldata.choose_protocol(["a", "b"], split_given=False, requested="holdout")


def test_stratified_folds_spread_every_class() -> None:
    labels = [0] * 10 + [1] * 20
    fold_of = smalldata.stratified_folds(labels, 5, seed=0)
    for fold in range(5):
        members = np.asarray(labels)[fold_of == fold]
        assert (members == 0).sum() == 2 and (members == 1).sum() == 4


def _digits(per_class: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    features, labels = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    chosen = np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)])
    rest = np.setdiff1d(np.arange(len(labels)), chosen)
    return (torch.tensor(features[chosen], dtype=torch.float32), torch.tensor(labels[chosen]), features[rest],
            labels[rest])


def test_cross_validated_head_on_real_digits_holds_the_truth_in_its_interval() -> None:
    """20 labelled digits per class: the CV interval holds the accuracy on the ~1,600 digits never labelled."""
    features, labels, rest_features, rest_labels = _digits(20)
    result = smalldata.cross_validate_head(features, labels, 10, folds=5)
    low, high = stats.wilson_interval(int((result.oof_logits.argmax(1) == labels.numpy()).sum()), len(labels))
    held_out = (result.final.head.logits(torch.tensor(rest_features)).argmax(1).numpy() == rest_labels).mean()
    assert low <= held_out <= high
    assert held_out > 0.85
    assert result.final.grid and result.final.head.l2 in smalldata.L2_GRID


def test_augmented_views_never_score_the_example_they_were_made_from() -> None:
    """Labels without signal, and views that are near copies of their example: a fold that learnt from the views of
    the examples it scores would memorise them (near 100 %); kept with their own example it stays near chance."""
    rng = np.random.default_rng(0)
    features = torch.tensor(rng.normal(size=(40, 30)))
    labels = torch.tensor(rng.integers(0, 2, 40))
    views = features[:, None, :] + 0.01 * torch.tensor(rng.normal(size=(40, 2, 30)))
    stacked, stacked_labels = smalldata.with_views(features, labels, views)
    assert stacked.shape == (120, 30) and torch.equal(stacked_labels[40:], labels.repeat_interleave(2))
    result = smalldata.cross_validate_head(features, labels, 2, folds=5, views=views)
    assert (result.oof_logits.argmax(1) == labels.numpy()).mean() < 0.75
    # What the test guards against: with the held-out examples' views in the fit, they are memorised.
    train, held = result.fold_of != 0, result.fold_of == 0
    leaky = smalldata.fit_logistic(torch.cat([features[train], views[held].reshape(-1, 30)]),
                                   torch.cat([labels[train], labels[held].repeat_interleave(2)]), 2, 1e-3)
    assert (leaky.logits(features[held]).argmax(1) == labels[held]).float().mean() > 0.95


def test_linear_head_folds_standardisation_and_temperature_into_nn_linear() -> None:
    features, labels, rest_features, _ = _digits(8)
    head = smalldata.fit_logistic(features, labels, 10, l2=0.01)
    linear = torch.nn.Linear(64, 10)
    head.to_linear(linear, temperature=2.0)
    inputs = torch.tensor(rest_features[:50], dtype=torch.float32)
    expected = head.logits(inputs).float() / 2.0
    torch.testing.assert_close(linear(inputs), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("with_prior", [False, True])
def test_more_features_than_examples_solve_in_their_row_space_to_the_same_head(with_prior: bool) -> None:
    """30 examples with 200 features: the fit on the examples' own axes (a thin SVD) gives the head that the plain
    fit in all 200 coordinates gives, shrunk towards zero or towards a class-name prior."""
    generator = torch.Generator().manual_seed(3)
    labels = torch.arange(30) % 3
    features = torch.randn(30, 200, generator=generator, dtype=torch.float64) + labels[:, None] * 0.3
    prior = torch.randn(3, 200, generator=generator, dtype=torch.float64) * 0.01 if with_prior else None
    fast = smalldata.fit_logistic(features, labels, 3, l2=0.05, prior=prior)
    mean, scale = smalldata._standardiser(features)
    values = (features - mean) / scale
    plain = smalldata.fit_logistic(features, labels, 3, l2=0.05, prior=prior,
                                   standardised=smalldata._Standardised(mean, scale, values, None, values))
    assert fast.losses[-1] == pytest.approx(plain.losses[-1], abs=1e-7)
    torch.testing.assert_close(fast.weight, plain.weight, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(fast.logits(features), plain.logits(features), atol=1e-3, rtol=1e-3)
    assert len(fast.losses) < 2 * len(plain.losses) + 5  # not a slower road to the same place


def test_fit_cross_validates_small_data_and_refits_on_all(colour_dataset: Dataset, tmp_path: Path) -> None:
    config = TrainConfig(backbone="tiny_cnn", frozen_groups=3, pretrained=False, device="cpu", folds=3)
    result = fit(colour_dataset, config, tmp_path / "run", backbone=TinyCNN())
    estimate = result.estimate
    assert estimate is not None and estimate["protocol"] == "cross-validation" and estimate["refit_on_all"]
    assert estimate["n"] == len(colour_dataset.table)  # every labelled example is estimated once
    low, high = estimate["accuracy_interval95"]
    assert low <= estimate["accuracy"] <= high
    examples = json.loads((tmp_path / "run" / "examples.json").read_text())
    assert len(examples["items"]) == len(colour_dataset.table) == len(examples["probabilities"])
    assert {w.split()[0] for w in examples["where"]} == {"fold"}
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["protocol"] == "cross-validation" and info["metrics"]["estimate"]["n"] == estimate["n"]
    assert [record["l2"] for record in result.history] == list(smalldata.L2_GRID)


def test_fit_keeps_the_test_split_when_asked(colour_dataset: Dataset, tmp_path: Path) -> None:
    config = TrainConfig(backbone="tiny_cnn", frozen_groups=3, pretrained=False, device="cpu", protocol="test split")
    result = fit(colour_dataset, config, tmp_path / "run", backbone=TinyCNN())
    assert result.estimate["protocol"] == "test split"
    assert result.estimate["n"] == len(colour_dataset.split("test")[0])
    assert not result.estimate["refit_on_all"]


def test_augmented_views_go_through_the_backbone_once_and_are_reused(
    colour_dataset: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core import _train_head  # where the views are computed: the name it calls `cached_states` by

    passes = []
    original = _train_head.cached_states

    def recording(*args, **kwargs):
        states, reused = original(*args, **kwargs)
        if kwargs.get("train"):
            passes.append((len(args[1]["view"][0]), reused))
        return states, reused

    monkeypatch.setattr(_train_head, "cached_states", recording)
    config = TrainConfig(backbone="tiny_cnn", frozen_groups=3, pretrained=False, device="cpu", folds=3, views=2)
    torch.manual_seed(0)
    first = fit(colour_dataset, config, tmp_path / "first", backbone=TinyCNN())
    assert first.status == "completed" and first.estimate["n"] == len(colour_dataset.table)
    assert passes == [(len(colour_dataset.table), False)] * 2  # every labelled image, two views, computed
    torch.manual_seed(0)  # the same random weights: the same features, so the same cache key
    fit(colour_dataset, config, tmp_path / "second", backbone=TinyCNN())
    assert passes[2:] == [(len(colour_dataset.table), True)] * 2  # the second run reads them from the cache
    with pytest.raises(ValueError, match="Augmented views"):  # fine-tuning augments as it trains instead
        fit(colour_dataset, dataclasses.replace(config, frozen_groups=1), tmp_path / "tuned", backbone=TinyCNN())


def _named_classes(per_class: int, seed: int, names_agree: bool = True) -> tuple[torch.Tensor, ...]:
    """Features scattered around each class's name embedding (as a sentence encoder's would be), plus noise."""
    rng = np.random.default_rng(seed)
    names = torch.tensor(rng.normal(size=(4, 32)))
    labels = torch.arange(4).repeat_interleave(per_class)
    features = names[labels] + torch.tensor(rng.normal(scale=2.5, size=(len(labels), 32)))
    return features, labels, names if names_agree else names[torch.tensor([1, 2, 3, 0])]


def test_zero_shot_logits_classify_by_the_nearest_class_name() -> None:
    names = torch.eye(3)
    features = torch.tensor([[2.0, 0.1, 0.0], [0.0, 0.0, 5.0], [0.1, 3.0, 0.2]])
    assert smalldata.zero_shot_logits(features, names).argmax(1).tolist() == [0, 2, 1]
    score = smalldata.zero_shot_score(features, [0, 2, 0], names)
    assert score["n"] == 3 and score["accuracy"] == pytest.approx(2 / 3) and score["small_sample"]
    assert score["accuracy_interval95"][0] < 2 / 3 < score["accuracy_interval95"][1]


def test_a_strong_pull_towards_the_class_names_gives_the_zero_shot_classifier() -> None:
    features, labels, names = _named_classes(3, seed=0)
    prior = smalldata.class_name_prior(features, labels, names)
    head = smalldata.fit_logistic(features, labels, 4, l2=1e4, prior=prior)
    test_features, _, _ = _named_classes(50, seed=1)
    zero_shot = smalldata.zero_shot_logits(test_features, names).argmax(1)
    agree = head.logits(test_features).argmax(1).numpy() == zero_shot  # cosine is linear up to the features' length
    assert agree.mean() > 0.8 and head.toward_names  # chance agreement would be about 0.25
    plain = smalldata.fit_logistic(features, labels, 4, l2=1e4)
    assert not plain.toward_names and plain.weight.abs().max() < head.weight.abs().max() / 10


def test_class_names_help_with_few_labels_and_misleading_names_cost_little() -> None:
    """Three examples per class: the names' prior beats the plain head on new data; wrong names barely hurt."""
    features, labels, names = _named_classes(3, seed=2)
    new_features, new_labels, _ = _named_classes(200, seed=3)

    def accuracy(fitted: smalldata.HeadFit) -> float:
        return float((fitted.head.logits(new_features).argmax(1) == new_labels).double().mean())

    plain = smalldata.select_and_fit(features, labels, 4)
    named = smalldata.select_and_fit(features, labels, 4, class_embeddings=names)
    assert named.head.toward_names and [point.l2 for point in named.grid] == list(smalldata.NAMES_L2_GRID)
    assert not plain.head.toward_names and [point.l2 for point in plain.grid] == list(smalldata.L2_GRID)
    assert accuracy(named) > accuracy(plain) + 0.05
    # Names that point at the wrong classes: their fitted sharpness is near zero, so the prior is nearly the plain one.
    misleading = smalldata.select_and_fit(features, labels, 4, class_embeddings=_named_classes(3, 2, False)[2])
    assert accuracy(misleading) > accuracy(plain) - 0.05


@pytest.mark.integration
def test_a_sentence_encoder_run_scores_the_class_names_alone_and_the_test_page_shows_both(tmp_path: Path) -> None:
    """The sample support messages with MiniLM: '0 examples -> x %' is recorded beside the trained estimate."""
    from streamlit.testing.v1 import AppTest

    from core.data import load_sample
    from core.session import StudioState

    texts, _ = load_sample("texts")
    # The encoder as pretrained (tuning it first is tests/test_contrastive.py's; here, minutes of CPU saved).
    result = fit(texts, TrainConfig(backbone="all_minilm_l6_v2", frozen_groups=99, sentence_tuning="off"),
                 tmp_path / "run")
    zero_shot = result.estimate["zero_shot"]
    assert zero_shot["n"] == result.estimate["n"] == len(texts.table)
    assert 1 / texts.num_classes < zero_shot["accuracy"] < result.estimate["accuracy"]  # names help; labels more
    low, high = zero_shot["accuracy_interval95"]
    assert low < zero_shot["accuracy"] < high
    assert {record["toward_names"] for record in result.history} == {True}  # the head shrinks towards the names
    assert [record["l2"] for record in result.history] == list(smalldata.NAMES_L2_GRID)
    # The TF-IDF model is mixed in, estimated on the same folds, and delivered with the weights.
    lexical = result.estimate["lexical"]
    assert lexical["share"] == ngrams.MIX_SHARE and 0 < lexical["alone_accuracy"] <= 1
    assert 0 < lexical["network_accuracy"] <= 1
    model, preprocessor, _ = load_trained(result.run_dir)
    assert model.lexical.recipe == lexical["recipe"]
    new_texts = ["My parcel never came", "The app crashes on start", "You charged me twice"]
    mixed = predict_proba(model, preprocessor, new_texts)
    del model.lexical
    network_only = predict_proba(model, preprocessor, new_texts)
    model.lexical = ngrams.load(Path(result.run_dir) / ngrams.FILE)
    np.testing.assert_allclose(mixed, model.lexical.mix(network_only, new_texts), atol=1e-5)

    state = StudioState(dataset=texts, backbone_name="all_minilm_l6_v2", frozen_groups=99, run_dir=result.run_dir)
    state.runs.append(result.run_dir)
    app = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "pages" / "5_evaluate.py"), default_timeout=120)
    app.session_state["studio"] = state
    app.run()
    assert not app.exception, app.exception
    line = next(block.value for block in app.markdown if block.value.startswith("**0 examples**"))
    assert f"{zero_shot['accuracy']:.1%}" in line and f"{result.estimate['accuracy']:.1%}" in line


def test_small_heads_fit_on_one_thread_and_the_setting_comes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Threads only slow a small L-BFGS fit down (a busy machine made it 5-10x slower); large data keeps them."""
    seen: list[int] = []
    fit = smalldata.fit_logistic

    def watched(*args: Any, **kwargs: Any) -> smalldata.LinearHead:
        seen.append(torch.get_num_threads())
        return fit(*args, **kwargs)

    monkeypatch.setattr(smalldata, "fit_logistic", watched)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        generator = torch.Generator().manual_seed(0)
        features, labels = torch.randn(60, 5, generator=generator), torch.arange(60) % 3
        smalldata.select_and_fit(features, labels, 3)
        assert seen and set(seen) == {1} and torch.get_num_threads() == 2
        seen.clear()
        with smalldata.one_thread(60):  # numpy's and scipy's BLAS too (scikit-learn's TF-IDF model fits inside)
            blas = [pool for pool in threadpoolctl.threadpool_info() if pool["user_api"] == "blas"]
            assert blas and {pool["num_threads"] for pool in blas} == {1}
        with smalldata.one_thread(smalldata.SMALL_DATA_EXAMPLES + 1):
            assert torch.get_num_threads() == 2, "large data keeps its threads"
    finally:
        torch.set_num_threads(before)
