"""Runs are named by the settings that set them apart."""

from __future__ import annotations

from core.compare import differing_labels
from core.training import TrainConfig

#: A run's settings as the engine records them (every `TrainConfig` field).
BASE = TrainConfig(backbone="efficientnet_lite0", frozen_groups=9, head="logistic", epochs=25, lr=0.01,
                   batch_size=32, augmentation="none", label_smoothing=0.0, seed=0).to_dict()


def test_only_the_settings_that_differ_name_the_runs_most_telling_first():
    configs = [BASE, {**BASE, "frozen_groups": 5, "head": "gradient", "lr": 0.001}, {**BASE, "lr": 0.001}]
    assert differing_labels(configs) == [
        "9 frozen, logistic head, lr 0.01",
        "5 frozen, gradient descent, lr 0.001",
        "9 frozen, logistic head, lr 0.001",
    ]


def test_a_single_run_or_runs_alike_are_named_by_backbone_and_freezing_and_told_apart_by_id():
    assert differing_labels([BASE]) == ["efficientnet_lite0, 9 frozen"]
    labels = differing_labels([BASE, dict(BASE)], run_ids=["20250101-120000-effnet-1a2b3c", "20250101-120500-x-9f8e7d"])
    assert labels == ["efficientnet_lite0, 9 frozen (1a2b3c)", "efficientnet_lite0, 9 frozen (9f8e7d)"]


def test_settings_a_run_does_not_record_are_left_out():
    """An opened project's run keeps the settings its project carried, which an older version recorded fewer of."""
    older = {key: value for key, value in BASE.items() if key != "head"}  # recorded before the head was a choice
    assert differing_labels([older, BASE]) == ["efficientnet_lite0, 9 frozen", "logistic head"]
    plain, light = {"backbone": "a", "augmentation": "none"}, {"backbone": "a", "augmentation": "light"}
    assert differing_labels([plain, light]) == ["no augmentation", "light augmentation"]
