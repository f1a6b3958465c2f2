"""The run store keeps complete records: through normal use, several threads, and a killed writer process."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from core.store import RunNotFound, RunStore

REPO = Path(__file__).resolve().parent.parent


def _new_run(store: RunStore, **overrides: object) -> str:
    values = dict(
        backbone="tiny_cnn", modality="image", dataset_name="colours", dataset_fingerprint="abc123",
        frozen_groups=1, config={"lr": 0.01, "epochs": 3}, classes=["blue", "green", "red"],
    )
    values.update(overrides)
    return store.create_run(**values)  # type: ignore[arg-type]


def test_records_a_run_from_start_to_finish(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs.sqlite")
    run_id = _new_run(store, run_dir=tmp_path / "run")
    assert store.get_run(run_id)["status"] == "running"
    store.log_steps(run_id, [(1, 1, {"loss": 1.2}), (2, 1, {"loss": 1.0})])
    store.log_epoch(run_id, 1, {"train_loss": 1.1, "val_loss": 1.3, "val_accuracy": 0.5})
    store.log_epoch(run_id, 2, {"train_loss": 0.9, "val_loss": 1.1, "val_accuracy": 0.6})
    store.log_checkpoint(run_id, 2, tmp_path / "run" / "checkpoint" / "last.safetensors")
    store.finish(run_id, "completed", best_epoch=2, val_accuracy=0.6)

    run = store.get_run(run_id)
    assert run["status"] == "completed" and run["error"] is None
    assert run["config"] == {"lr": 0.01, "epochs": 3}
    assert run["classes"] == ["blue", "green", "red"]
    assert run["summary"] == {"best_epoch": 2, "val_accuracy": 0.6}
    assert [e["epoch"] for e in store.history(run_id)] == [1, 2]
    assert store.history(run_id)[1]["val_loss"] == 1.1
    assert [s["loss"] for s in store.steps(run_id)] == [1.2, 1.0]
    assert store.checkpoints(run_id)[0]["epoch"] == 2


def test_failed_run_keeps_its_error_and_lists_newest_first(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs.sqlite")
    first = _new_run(store)
    second = _new_run(store)
    store.finish(first, "failed", error="ValueError: boom")
    assert store.get_run(first)["error"] == "ValueError: boom"
    assert [r["run_id"] for r in store.list_runs()][:2] == [second, first]
    assert [r["run_id"] for r in store.list_runs(status="failed")] == [first]
    with pytest.raises(ValueError, match="status must be one of"):
        store.finish(second, "exploded")
    with pytest.raises(RunNotFound):
        store.get_run("no-such-run")


def test_epoch_rewritten_on_resume_keeps_the_last_value(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs.sqlite")
    run_id = _new_run(store)
    store.log_epoch(run_id, 1, {"val_loss": 2.0})
    store.log_epoch(run_id, 1, {"val_loss": 1.5})
    assert store.history(run_id) == [{"val_loss": 1.5, "epoch": 1}]


def test_default_path_is_in_the_workspace(_isolated_workspace: Path) -> None:
    store = RunStore()
    assert store.path == _isolated_workspace / "runs.sqlite"
    journal = sqlite3.connect(store.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert journal == "wal"


def test_threads_write_through_their_own_connections(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs.sqlite")
    run_id = _new_run(store)
    errors: list[BaseException] = []

    def write(offset: int) -> None:
        try:
            for step in range(20):
                store.log_step(run_id, offset + step, 1, {"loss": float(step)})
        except BaseException as error:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(100 * i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(store.steps(run_id)) == 60


_WRITER = """
import sys
sys.path.insert(0, {repo!r})
from core.store import RunStore
store = RunStore({db!r})
run_id = store.create_run(backbone="b", modality="image", dataset_name="d", dataset_fingerprint="f",
                          frozen_groups=0, config={{}}, classes=["a", "b"])
for epoch in range(1, 4):
    store.log_epoch(run_id, epoch, {{"val_loss": 1.0 / epoch}})
print(run_id, flush=True)
step = 0
while True:  # write as fast as possible until killed
    store.log_steps(run_id, [(step + i, 4, {{"loss": 0.5}}) for i in range(50)])
    step += 50
"""


def test_store_survives_a_killed_writer(tmp_path: Path) -> None:
    db = tmp_path / "runs.sqlite"
    process = subprocess.Popen(
        [sys.executable, "-c", _WRITER.format(repo=str(REPO), db=str(db))], stdout=subprocess.PIPE, text=True
    )
    try:
        run_id = process.stdout.readline().strip()  # type: ignore[union-attr]
        assert run_id, "the writer process did not start"
        deadline = time.monotonic() + 10
        store = RunStore(db)
        while not store.steps(run_id) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # mid-write
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL

    store = RunStore(db)
    assert store._connection().execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    run = store.get_run(run_id)
    assert run["status"] == "running"
    assert [e["epoch"] for e in store.history(run_id)] == [1, 2, 3]
    assert len(store.steps(run_id)) % 50 == 0 and store.steps(run_id)  # whole transactions only
    # the killed process cannot close its run; start-up clean-up marks it failed
    assert store.mark_abandoned() == [run_id]
    assert store.get_run(run_id)["status"] == "failed"


def _old_file(path: Path) -> None:
    """A run store as written before runs had an owner: the same tables, no `owner` column, one run in it."""
    connection = sqlite3.connect(path)
    connection.executescript(
        """
        CREATE TABLE runs (run_id TEXT PRIMARY KEY, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
            status TEXT NOT NULL, backbone TEXT NOT NULL, modality TEXT NOT NULL, dataset_name TEXT NOT NULL,
            dataset_fingerprint TEXT NOT NULL, frozen_groups INTEGER, config_json TEXT NOT NULL,
            classes_json TEXT NOT NULL, run_dir TEXT, error TEXT, summary_json TEXT NOT NULL DEFAULT '{}',
            host TEXT, pid INTEGER);
        INSERT INTO runs VALUES ('old-run', '2025-01-01T00:00:00', '2025-01-01T00:00:00', 'completed', 'tiny_cnn',
            'image', 'colours', 'abc123', 1, '{}', '["a", "b"]', '/runs/old-run', NULL, '{}', 'host', 1);
        """
    )
    connection.commit()
    connection.close()


def test_a_file_from_before_owners_gets_the_column_and_keeps_its_runs(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    _old_file(path)
    store = RunStore(path)
    old = store.get_run("old-run")
    assert old["owner"] is None and old["status"] == "completed"
    run_id = _new_run(store, run_dir=tmp_path / "new")
    assert store.set_owner(tmp_path / "new", "alice") == run_id
    assert [run["run_id"] for run in store.list_runs(owner="alice")] == [run_id]
    assert {run["run_id"] for run in store.list_runs()} == {"old-run", run_id}
    store.close()
    again = RunStore(path)  # opening a migrated file again changes nothing
    assert again.get_run(run_id)["owner"] == "alice"


def test_runs_are_listed_per_owner_and_data_set_and_never_change_hands(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs.sqlite")
    alice = _new_run(store, run_dir=tmp_path / "a1")
    alice_other_data = _new_run(store, run_dir=tmp_path / "a2", dataset_fingerprint="other")
    bob = _new_run(store, run_dir=tmp_path / "b1")
    store.set_owner(tmp_path / "a1", "alice")
    store.set_owner(tmp_path / "a2", "alice")
    store.set_owner(tmp_path / "b1", "bob")
    assert store.set_owner(tmp_path / "a1", "bob") == alice  # already alice's: stays hers
    assert store.set_owner(tmp_path / "nowhere", "bob") is None
    assert [run["run_id"] for run in store.list_runs(owner="alice")] == [alice_other_data, alice]
    assert [run["run_id"] for run in store.list_runs(owner="alice", dataset_fingerprint="abc123")] == [alice]
    assert [run["run_id"] for run in store.list_runs(owner="bob")] == [bob]
    assert store.list_runs(owner="carol") == []
