"""The state of one user's walk through the five steps.

`app.py` keeps one `StudioState` per browser session; pages read and write it. It is plain data so that
tests can pre-seed it and `core` stays free of Streamlit.

A refresh or a reopened tab is a new session with empty state. `restore` fills it again from what the same
workspace (its `owner`, a code such as `blue-otter-427`, `core.workspaces`) left behind: its latest training job,
with the data and choices it trained on, and every run it recorded on that data; or, when it opened a saved
project since, that project. Nothing of another workspace is ever restored. A private workspace is one browser's,
so this is what the browser had; in a joined or team workspace it is the workspace's latest work.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from core import jobs, project
from core.dataset import Dataset
from core.evaluation import has_model
from core.store import RunStore

log = logging.getLogger(__name__)


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
        runs: run folders with a model trained in this workspace, newest last.
        owner: the name of the workspace this browser works in (kept in the URL, so it survives a refresh); jobs
            and runs are recorded under it, and its private folders carry its name.
        scratch: per-page values that must survive page switches.
    """

    dataset: Dataset | None = None
    data_report: dict[str, Any] | None = None
    backbone_name: str | None = None
    frozen_groups: int | None = None
    job: Any = None
    run_dir: str | None = None
    runs: list[str] = field(default_factory=list)
    owner: str | None = None
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


def restore(state: StudioState, owner: str) -> bool:
    """Give a fresh session back what its workspace had: its latest job, that job's data and choices, its runs.

    Only jobs and runs recorded under the workspace `owner` are looked at, so a new visitor starts empty rather
    than inside someone else's work. Runs listed are those on the job's data set (the only ones this session can test);
    `scratch["train_run_dirs"]` gets all of them (failed ones too, for the Train page's table), `runs` those
    with a model, and the newest of these becomes the model for step 5. A project opened after the latest job
    started comes back instead (`core.project.last_opened`), with its runs and those trained on it since.
    Returns True when a job was found.
    """
    state.owner = owner
    job = jobs.latest(owner=owner)
    opened = project.last_opened(owner)
    if opened is not None and (job is None or opened[0] > getattr(job, "created_at", 0.0)):
        project.apply_to_state(state, opened[1], remember=False)
        _list_runs(state, owner, state.dataset.fingerprint, newest=None)
        state.run_dir = opened[1].chosen_run if opened[1].chosen_run in state.runs else state.run_dir
        return False
    if job is None:
        return False
    state.job = job
    state.dataset = job.dataset
    state.backbone_name = str(getattr(job.config, "backbone", "")) or None
    state.frozen_groups = getattr(job.config, "frozen_groups", None)
    _list_runs(state, owner, job.dataset.fingerprint, newest=job)
    return True


def open_workspace(name: str) -> StudioState:
    """The state of a session that enters the workspace `name`: what that workspace had (`restore`), with a note
    for the Train page when its latest job came back (`scratch["train_reattached"]`)."""
    state = StudioState()
    if restore(state, name):
        state.scratch["train_reattached"] = state.job.job_id
    return state


def _list_runs(state: StudioState, owner: str, fingerprint: str, newest: Any) -> None:
    """The session's runs: every run `owner` recorded on the data set, and the job `newest` (when given) last, if
    it has a model by now; the newest testable one becomes the model for step 5."""
    try:
        store = RunStore()
        try:
            records = store.list_runs(owner=owner, dataset_fingerprint=fingerprint)
        finally:
            store.close()
    except Exception:  # noqa: BLE001 - a refresh without its history is better than no page at all
        log.warning("Could not read this browser's runs from the run store", exc_info=True)
        records = []
    started = [str(record["run_dir"]) for record in reversed(records) if record.get("run_dir")]
    if newest is not None and newest.run_dir not in started:
        started.append(newest.run_dir)
    state.scratch["train_run_dirs"] = started
    testable = {str(record["run_dir"]) for record in records if _has_model(record)}
    state.runs = [run_dir for run_dir in started
                  if run_dir in testable and (newest is None or run_dir != newest.run_dir or newest.is_finished)]
    state.run_dir = state.runs[-1] if state.runs else None


def _has_model(record: dict[str, Any]) -> bool:
    """Whether a recorded run left a model to test: it ended well, or was stopped after an epoch was kept."""
    if record.get("status") not in ("completed", "stopped") or not record.get("run_dir"):
        return False
    if record["status"] == "stopped" and (record.get("summary") or {}).get("best_epoch") is None:
        return False  # stopped inside its first epoch: the head is untrained
    return has_model(record["run_dir"])
