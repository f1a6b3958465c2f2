"""The state of one user's walk through the five steps.

`app.py` keeps one `StudioState` per browser session; pages read and write it. It is plain data so that
tests can pre-seed it and `core` stays free of Streamlit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.dataset import Dataset


@dataclass
class StudioState:
    """What the user has done so far.

    Attributes:
        dataset: the loaded, split data set (step 1).
        data_report: the check report of that data set, as `core.data` returns it.
        backbone_name: the chosen catalogue entry (step 2).
        frozen_groups: how many layer groups stay frozen (step 3); None until chosen.
        job: the training job of this session, running or finished (step 4).
        run_dir: the folder of the trained run that step 5 tests and exports.
        runs: run folders trained in this session, newest last.
        scratch: per-page values that must survive page switches.
    """

    dataset: Dataset | None = None
    data_report: dict[str, Any] | None = None
    backbone_name: str | None = None
    frozen_groups: int | None = None
    job: Any = None
    run_dir: str | None = None
    runs: list[str] = field(default_factory=list)
    scratch: dict[str, Any] = field(default_factory=dict)

    def set_dataset(self, dataset: Dataset, report: dict[str, Any] | None) -> None:
        """A new data set: later choices that depended on the old one are reset."""
        old_modality = self.dataset.modality if self.dataset is not None else None
        self.dataset = dataset
        self.data_report = report
        self.run_dir = None
        if old_modality != dataset.modality:
            self.backbone_name = None
            self.frozen_groups = None

    @property
    def steps_done(self) -> dict[str, bool]:
        return {
            "Data": self.dataset is not None,
            "Backbone": self.backbone_name is not None,
            "Freezing": self.frozen_groups is not None,
            "Train": self.run_dir is not None,
        }
