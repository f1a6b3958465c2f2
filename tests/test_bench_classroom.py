"""The classroom benchmark with three students training a tiny model in real worker processes: every run finishes,
owners take turns, the features are computed once for the whole class, and each student sees only their own runs.
Behaviour only, never seconds."""

from __future__ import annotations

import json
from typing import Any

from core import bench, bench_classroom


def _tiny_config(dataset: Any) -> Any:
    """Every group of the tiny CNN frozen, so the runs share one feature cache on disk (as the page's defaults do)."""
    from core.training import TrainConfig

    return TrainConfig(backbone="tiny_cnn", frozen_groups=3, epochs=2, batch_size=8, pretrained=False,
                       precision="fp32", device="cpu", seed=3, head="gradient", protocol="test split")


def test_a_class_of_three_all_finish_in_turn_sharing_one_feature_computation(colour_dataset, clean_jobs, tmp_path,
                                                                               monkeypatch):
    real_run = bench_classroom.run

    def tiny_run(students: int) -> dict[str, Any]:
        return real_run(students, worker_fit="tests.worker_engines:fit_tiny", load_data=lambda: colour_dataset,
                        make_config=_tiny_config)

    monkeypatch.setattr(bench_classroom, "run", tiny_run)
    out = tmp_path / "classroom.json"
    assert bench.main(["--classroom", "3", "--json", str(out)]) == 0

    results = json.loads(out.read_text())
    assert results["students"] == 3 and results["runs"] == 4  # the eager first student pressed Train twice
    assert results["completed"] == 4 and results["failures"] == 0
    rows = results["rows"]
    assert {row["isolation"] for row in rows} == {"process"}
    assert {row["owner"] for row in rows} == {"student-01", "student-02", "student-03"}
    by_start = [row["owner"] for row in sorted(rows, key=lambda row: row["started"])]
    assert by_start[-1] == "student-01" and rows[1]["second_run"] and rows[1]["owner"] == "student-01"
    assert results["fair_order"] and results["visible_to_owner_only"]
    assert results["cache_computed"] == 1 and results["cache_reused"] == 3
    baseline = results["baseline_one_alone"]
    assert baseline["completed"] == 1 and baseline["cache_computed"] == 1  # a fresh workspace: its own cache
    assert results["peak_memory_mib"]["one_worker"] > 0 and results["workers_at_once"] >= 1
    assert results["ratios"]["class_vs_one_alone"] > 0


def test_fair_order_is_broken_when_a_second_run_starts_before_someone_elses_first() -> None:
    rows = [{"second_run": False, "started": 0.0}, {"second_run": True, "started": 5.0},
            {"second_run": False, "started": 9.0}]
    assert not bench_classroom.fair_order_held(rows)
    rows[1]["started"] = 10.0
    assert bench_classroom.fair_order_held(rows)


def test_the_page_defaults_train_only_the_head_with_the_logistic_head(colour_dataset) -> None:
    config = bench_classroom.page_defaults(colour_dataset, "efficientnet_lite0")
    assert config.head == "logistic" and config.frozen_groups == 9 and config.augmentation == "none"
