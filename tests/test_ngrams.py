"""The lexical text model (core.ngrams): our own predictor of a fitted TF-IDF pipeline, saved without pickle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core import ngrams
from core.evaluation import fit_tfidf

TEXTS = [
    "refund my order please", "the parcel never arrived", "I want my money back", "refund refund refund!!",
    "where is my parcel #late", "Delivery was late again", "love the new app", "great service, thanks",
    "the app works great", "thanks for the quick help :)", "Love it", "brilliant support team",
]
LABELS = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
NEW = ["my refund never came", "great app, love it", "", "Über-fast délivery!! #wow", "late   parcel\tagain"]


@pytest.mark.parametrize("analyzer, ngram_range", [("char_wb", (2, 5)), ("word", (1, 2))])
def test_our_predictor_gives_exactly_scikit_learns_probabilities(analyzer: str, ngram_range: tuple) -> None:
    pipeline, _ = fit_tfidf(TEXTS, LABELS, seed=0)
    pipeline.set_params(tfidf__analyzer=analyzer, tfidf__ngram_range=ngram_range).fit(TEXTS, LABELS)
    model = ngrams.from_pipeline(pipeline, 2)
    np.testing.assert_allclose(model.probabilities(NEW), pipeline.predict_proba(NEW), atol=1e-12)


def test_a_class_the_fold_never_saw_gets_no_probability_and_the_model_round_trips(tmp_path: Path) -> None:
    pipeline, recipe = fit_tfidf(TEXTS, LABELS, seed=0)
    model = ngrams.from_pipeline(pipeline, 3, recipe)  # a third class that these examples lack
    probabilities = model.probabilities(NEW)
    assert probabilities.shape == (len(NEW), 3)
    np.testing.assert_allclose(probabilities[:, 2], 0.0, atol=1e-12)
    np.testing.assert_allclose(probabilities[:, :2], pipeline.predict_proba(NEW), atol=1e-12)
    loaded = ngrams.load(model.save(tmp_path / ngrams.FILE))
    assert (loaded.analyzer, loaded.ngram_range, loaded.recipe, loaded.share) == (
        model.analyzer, model.ngram_range, recipe, ngrams.MIX_SHARE)
    np.testing.assert_allclose(loaded.probabilities(NEW), probabilities, atol=1e-12)


def test_the_mix_is_a_probability_and_an_equal_vote() -> None:
    pipeline, _ = fit_tfidf(TEXTS, LABELS, seed=0)
    model = ngrams.from_pipeline(pipeline, 2)
    network = np.tile([0.9, 0.1], (len(NEW), 1))
    mixed = model.mix(network, NEW)
    np.testing.assert_allclose(mixed.sum(axis=1), 1.0)
    lexical = model.probabilities(NEW)
    np.testing.assert_allclose(mixed, 0.5 * network + 0.5 * lexical)
    other = ngrams.from_pipeline(pipeline, 2, share=0.3)  # a share given explicitly is kept
    np.testing.assert_allclose(other.mix(network, NEW), 0.7 * network + 0.3 * lexical)


def test_a_file_that_is_not_ours_is_refused(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    save_file({"idf": np.ones(2)}, str(tmp_path / "other.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not a lexical model"):
        ngrams.load(tmp_path / "other.safetensors")
