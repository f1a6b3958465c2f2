"""Named workspaces (issue 10.3): codes that can be read out, folders of their own, a shared feature cache, and
another workspace's run refused."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from core import jobs, workspaces
from core.features import _disk_path
from core.paths import (
    check_in_workspace,
    is_runs_folder,
    is_workspace_name,
    named_workspace_dir,
    workspace_dir,
    workspace_subdir,
)


@pytest.fixture(autouse=True)
def _clean_registry(clean_jobs):
    """Every test here starts with no training jobs (see `clean_jobs` in conftest)."""


def test_a_new_code_is_a_colour_an_animal_and_a_number_and_never_handed_out_twice():
    name = workspaces.new_name(random.Random(1))
    colour, animal, number = name.split("-")
    assert is_workspace_name(name) and colour.isalpha() and animal.isalpha() and 10 <= int(number) <= 999
    first = workspaces.claim_new(random.Random(7))
    second = workspaces.claim_new(random.Random(7))  # the same draws: the taken code is skipped
    assert first != second and workspaces.exists(first) and workspaces.exists(second)
    assert named_workspace_dir(first).is_dir()


def test_a_typed_code_forgives_case_and_spaces_and_a_wrong_one_says_what_a_code_looks_like():
    assert workspaces.parse_code("  Blue Otter_427 ") == "blue-otter-427"
    with pytest.raises(workspaces.WorkspaceError, match="letters, digits and hyphens"):
        workspaces.parse_code("blue/../otter")
    with pytest.raises(workspaces.WorkspaceError, match="Type the code"):
        workspaces.parse_code("   ")
    assert not is_workspace_name("x" * 41) and not is_workspace_name("../x") and not is_workspace_name("")


def test_joining_says_whether_the_workspace_was_there_before():
    name = workspaces.claim_new()
    assert workspaces.join(name) is True
    assert workspaces.join("team-vision") is False and workspaces.join("team-vision") is True


def test_the_operator_can_put_everyone_in_one_team_workspace(monkeypatch):
    assert workspaces.shared_workspace() is None
    monkeypatch.setenv(workspaces.SHARED_WORKSPACE_ENV, "team-vision")
    assert workspaces.shared_workspace() == "team-vision"
    monkeypatch.setenv(workspaces.SHARED_WORKSPACE_ENV, "Team Vision!")
    with pytest.raises(workspaces.WorkspaceError, match="TRANSFER_STUDIO_WORKSPACE"):
        workspaces.shared_workspace()


def test_runs_projects_and_exports_are_private_while_features_and_uploads_are_shared():
    top = workspace_dir()
    for folder in ("runs", "projects", "exports", "predict"):
        assert workspace_subdir(folder, "alice") == top / "workspaces" / "alice" / folder
        assert workspace_subdir(folder, "bob") != workspace_subdir(folder, "alice")
        assert workspace_subdir(folder) == top / folder  # the CLI, without a workspace: where it always was
    for folder in ("features", "datasets"):
        assert workspace_subdir(folder, "alice") == workspace_subdir(folder, "bob") == top / folder
    assert _disk_path("0123abcd").parent == top / "features"  # one cache file per content key, for everyone
    with pytest.raises(ValueError, match="not a workspace name"):
        workspace_subdir("runs", "../bob")


def test_a_job_of_a_workspace_trains_in_its_folder_and_its_folder_counts_as_a_runs_folder(colour_dataset):
    from core.training import TrainConfig

    job = jobs.TrainingJob(colour_dataset, TrainConfig(backbone="tiny_cnn", frozen_groups=1), owner="alice")
    assert Path(job.run_dir).parent == workspace_subdir("runs", "alice")
    assert is_runs_folder(Path(job.run_dir).parent) and is_runs_folder(workspace_subdir("runs"))
    assert not is_runs_folder(workspace_dir() / "elsewhere" / "runs")
    assert Path(jobs.TrainingJob(colour_dataset, TrainConfig(backbone="tiny_cnn", frozen_groups=1)).run_dir).parent == (
        workspace_subdir("runs"))


def test_a_path_in_another_workspace_is_refused(tmp_path):
    alices_run = workspace_subdir("runs", "alice") / "20260101-000000-tiny-abcdef"
    check_in_workspace(alices_run, "alice")
    check_in_workspace(alices_run, None)  # the CLI is the operator's
    check_in_workspace(tmp_path / "run", "bob")  # outside every workspace: the run store's owner decides
    with pytest.raises(PermissionError, match="another workspace"):
        check_in_workspace(alices_run, "bob")
    with pytest.raises(PermissionError, match="another workspace"):
        check_in_workspace(workspace_subdir("runs", "bob") / ".." / ".." / "alice" / "runs" / "x", "bob")
    with pytest.raises(PermissionError, match="another workspace"):
        jobs.resume(alices_run, owner="bob")  # refused before anything of the run is read
