"""The run folder's declared contract (`core._run_folder`) holds: real runs write exactly the files it names, with
the keys it says readers use, and no module of `core/` or `pages/` spells a run folder file's name itself."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from core import _run_folder as run_folder
from core import ngrams
from core.dataset import Dataset

ROOT = Path(__file__).resolve().parent.parent

#: Where another name of the same spelling is meant, or the file cannot import the contract: (module, literal) -> why.
OTHER_FILES_OF_THE_SAME_NAME = {
    ("core/_bundle_folder.py", run_folder.MODEL): "the bundle's own weights file, in its documented layout",
    ("core/bundle_predict.py", run_folder.MODEL): "predict.py reads a bundle and ships alone: it imports no core",
    ("core/ngrams.py", run_folder.LEXICAL): "ngrams.py ships alone in bundles; its FILE is checked equal below",
    ("core/_backbone_weights.py", run_folder.MODEL): "a Hugging Face model folder's weights",
    ("core/_project_format.py", run_folder.METRICS): "a project's runs/<id>/metrics.json: the run store's record",
}
#: Literals in files another person edits now; they move to the contract's names next (the test fails once moved,
#: so the entry is removed with them).
NOT_MOVED_YET: set[tuple[str, str]] = set()


#: run.json's keys no code reads: what a person looking at the folder, or the model report of a bundle, sees.
RUN_INFO_FOR_PEOPLE = {"cache_mode", "cache_note", "device", "precision", "protocol", "protocol_reason", "refit"}


def _files(folder: Path) -> set[str]:
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}


def _declared(*when: str) -> set[str]:
    assert set(when) <= set(run_folder.WHEN), set(when) - set(run_folder.WHEN)
    return {run_file.name for run_file in run_folder.CONTRACT if run_file.when in when}


def _check_records(folder: Path) -> None:
    """Each JSON record the contract lists has every key its readers use."""
    for run_file in run_folder.CONTRACT:
        if run_file.keys and (folder / run_file.name).is_file():
            record = json.loads((folder / run_file.name).read_text())
            assert set(run_file.keys) <= set(record), (run_file.name, set(run_file.keys) - set(record))


def _tiny_config(**settings):
    from core.training import TrainConfig

    values = {"backbone": "tiny_cnn", "frozen_groups": 1, "epochs": 2, "batch_size": 8, "pretrained": False,
              "precision": "fp32", "device": "cpu", "seed": 3, **settings}
    return TrainConfig(**values)


def test_a_command_line_run_writes_the_files_and_keys_the_contract_declares(
    colour_dataset: Dataset, tmp_path: Path
) -> None:
    from core._train_cli import _fit_and_report
    from tests.tiny import TinyCNN

    out = tmp_path / "out"
    assert _fit_and_report(colour_dataset, _tiny_config(), TinyCNN(), out, None) == 0
    assert _files(out) == _declared("every run", "estimate", "epochs", "frozen", "command line", "job")
    _check_records(out)
    assert set(json.loads((out / run_folder.RUN_INFO).read_text())) <= {*run_folder.RUN_INFO_KEYS, *RUN_INFO_FOR_PEOPLE}


@pytest.mark.usefixtures("clean_jobs")
def test_a_worker_run_writes_the_files_the_contract_declares(colour_dataset: Dataset, tmp_path: Path) -> None:
    from core import workers
    from core.jobs import COMPLETED, TrainingJob

    run_dir = tmp_path / "run"
    job = TrainingJob(colour_dataset, _tiny_config(), run_dir=run_dir, worker_fit="tests.worker_engines:fit_tiny")
    assert job.start().join(120) and job.snapshot().status == COMPLETED, job.snapshot().error
    workers.request_stop(run_dir)  # what Stop leaves until the worker has read it
    assert _files(run_dir) == _declared("every run", "estimate", "epochs", "frozen", "job", "worker", "stop asked")
    _check_records(run_dir)


def test_the_two_runs_cover_every_case_of_the_contract_but_the_text_runs_tf_idf_model() -> None:
    covered = {"every run", "estimate", "epochs", "frozen", "command line", "job", "worker", "stop asked"}
    assert covered | {"lexical"} == set(run_folder.WHEN)  # lexical: tests/test_smalldata loads it from a text run
    assert ngrams.FILE == run_folder.LEXICAL  # ngrams.py ships alone in bundles, so it spells the name itself


def _literals(tree: ast.AST) -> list[str]:
    """The module's string constants, the constant parts of its f-strings included, its docstrings left out."""
    docstrings = {
        id(node.body[0].value) for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body
        and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def _names_a_run_file(literal: str) -> str | None:
    """The contract's file (or its last part) that `literal` is, ends with as a path, or is the temporary of."""
    for name in run_folder.NAMES + (run_folder.CHECKPOINT_DIR,):
        for spelling in {name, name.rsplit("/", 1)[-1]}:
            if literal in (spelling, spelling + run_folder.TEMPORARY_SUFFIX) or literal.endswith("/" + spelling):
                return literal
    return None


def test_no_module_spells_a_run_folder_file_name_but_the_contract() -> None:
    paths = [*(ROOT / "core").glob("*.py"), *(ROOT / "pages").glob("*.py"), ROOT / "app.py"]
    found = set()
    for path in paths:
        module = path.relative_to(ROOT).as_posix()
        if module == "core/_run_folder.py":
            continue
        for literal in _literals(ast.parse(path.read_text(encoding="utf-8"))):
            if _names_a_run_file(literal):
                found.add((module, literal))
    spelled = found - set(OTHER_FILES_OF_THE_SAME_NAME) - NOT_MOVED_YET
    assert not spelled, f"take these names from core._run_folder: {sorted(spelled)}"
    assert NOT_MOVED_YET <= found, f"moved to the contract: drop {sorted(NOT_MOVED_YET - found)} from NOT_MOVED_YET"
    assert set(OTHER_FILES_OF_THE_SAME_NAME) <= found, sorted(set(OTHER_FILES_OF_THE_SAME_NAME) - found)


def _run_info_keys_read(tree: ast.AST) -> set[str]:
    """The keys read from a name `run_info` (the run.json record): `run_info["k"]` and `run_info.get("k", ...)`."""
    keys = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "run_info":
            if isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
                keys.add(node.slice.value)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "run_info" and node.args
                and isinstance(node.args[0], ast.Constant)):
            keys.add(node.args[0].value)
    return keys


def test_every_key_read_from_run_info_is_one_the_contract_declares_and_the_engine_writes() -> None:
    paths = [*(ROOT / "core").glob("*.py"), *(ROOT / "pages").glob("*.py"), ROOT / "app.py"]
    read = {key for path in paths for key in _run_info_keys_read(ast.parse(path.read_text(encoding="utf-8")))}
    assert {"run_id", "classes", "backbone", "feature_taps", "metrics"} <= read  # the walk sees the readers
    assert read <= set(run_folder.RUN_INFO_KEYS), sorted(read - set(run_folder.RUN_INFO_KEYS))
