"""Runs in worker processes: crashes, kills and Cancel end one run and leave the server working; a killed run
resumes to the same numbers as one never interrupted; a restarted server adopts or marks what it finds."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from core import jobs, workers
from core.jobs import TrainingJob
from core.store import RunStore
from tests.test_jobs import _wait as wait

TINY = "tests.worker_engines:fit_tiny"


@pytest.fixture(autouse=True)
def _clean_registry(clean_jobs, monkeypatch):
    """No jobs before a test, one training slot, workers that use one thread (the CI machine has two cores)."""
    monkeypatch.setenv("TRANSFER_STUDIO_MAX_JOBS", "1")


def _config(**settings: Any) -> Any:
    from core.training import TrainConfig

    values = {"backbone": "tiny_cnn", "frozen_groups": 1, "epochs": 3, "batch_size": 8, "pretrained": False,
              "precision": "fp32", "device": "cpu", "seed": 3, **settings}
    return TrainConfig(**values)


def _wait(predicate, timeout: float = 60.0) -> bool:
    """Workers take seconds to start (a fresh interpreter imports torch), so the default wait is long."""
    return wait(predicate, timeout)


def _events(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / workers.EVENTS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _in_epoch(run_dir: Path, epoch: int) -> bool:
    """A training step of `epoch` was reported (the worker is mid-epoch: its checkpoint is of the epoch before)."""
    return any(e["event"] == "on_step_end" and e["data"].get("epoch") == epoch for e in _events(run_dir))


def _numbers(history: list[dict[str, Any]]) -> list[tuple]:
    return [(m["epoch"], m["train_loss"], m["train_accuracy"], m["val_loss"], m["val_accuracy"]) for m in history]


def test_the_real_engine_trains_in_a_worker_process_and_the_page_contract_holds(colour_dataset, tmp_path):
    job = TrainingJob(colour_dataset, _config(epochs=2), run_dir=tmp_path / "run", worker_fit=TINY,
                      owner="alice").start()
    assert job.join(120)
    snap = job.snapshot()
    assert snap.status == jobs.COMPLETED, snap.error
    assert snap.isolation == "process" and job.result.status == "completed"
    assert [m["epoch"] for m in snap.epochs] == [1, 2] and snap.progress == 1.0
    assert len([m for m in snap.steps if m["phase"] == "train"]) == 2 * 3
    assert any(m["phase"] == "refit" for m in snap.steps), "small data: retrained on train + validation"
    assert snap.cache_mode == "activations" and snap.info["num_groups"] == 3
    assert (tmp_path / "run" / "model.safetensors").exists()
    record = RunStore().list_runs(owner="alice")[0]
    assert record["status"] == "completed" and record["pid"] != os.getpid()  # the worker recorded the run


def test_the_default_engine_runs_in_a_process_and_fakes_on_a_thread(colour_dataset, tmp_path):
    from tests.test_jobs import _FakeFit

    assert TrainingJob(colour_dataset, _config(), run_dir=tmp_path / "real")._runs_real_engine()
    fake = TrainingJob(colour_dataset, _config(), run_dir=tmp_path / "fake", fit_fn=_FakeFit()).start()
    assert fake.join(10) and fake.isolation == "thread"


def test_a_worker_that_raises_leaves_a_failed_run_with_its_message_and_the_server_goes_on(colour_dataset, tmp_path):
    bad = TrainingJob(colour_dataset, _config(), run_dir=tmp_path / "bad",
                      worker_fit="tests.worker_engines:fit_raises").start()
    assert bad.join(60)
    assert bad.status == jobs.FAILED and "no training examples" in bad.error
    good = TrainingJob(colour_dataset, _config(epochs=1), run_dir=tmp_path / "good", worker_fit=TINY).start()
    assert good.join(120) and good.status == jobs.COMPLETED, good.error


def test_a_worker_killed_by_a_signal_leaves_a_failed_run_that_says_so(colour_dataset, tmp_path):
    job = TrainingJob(colour_dataset, _config(), run_dir=tmp_path / "run",
                      worker_fit="tests.worker_engines:fit_killed").start()
    assert job.join(60)
    assert job.status == jobs.FAILED
    assert job.error == "the training process ended unexpectedly (signal 9)"


def test_cancel_kills_the_worker_and_every_process_it_started_at_once(colour_dataset, tmp_path):
    run_dir = tmp_path / "run"
    job = TrainingJob(colour_dataset, _config(), run_dir=run_dir,
                      worker_fit="tests.worker_engines:fit_with_a_child").start()
    assert _wait(lambda: (run_dir / "child.pid").exists())
    worker_pid, child_pid = job._worker.pid, int((run_dir / "child.pid").read_text())
    assert os.getpgid(worker_pid) == worker_pid != os.getpgid(0)  # a process group of its own
    job.cancel()
    assert job.join(10)
    assert job.status == jobs.CANCELLED and not job.is_running
    assert _wait(lambda: not workers.pid_alive(child_pid), timeout=5), "the worker's own child must die with it"
    assert not workers.pid_alive(worker_pid)


def test_stop_ends_a_worker_gracefully_after_the_batch(colour_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("TS_TEST_STEP_SECONDS", "0.3")
    job = TrainingJob(colour_dataset, _config(epochs=50), run_dir=tmp_path / "run", worker_fit=TINY).start()
    assert _wait(lambda: len(job.snapshot().steps) >= 1)
    job.stop()
    assert job.join(60)
    assert job.status == jobs.STOPPED and job.error is None
    assert len(job.snapshot().epochs) < 50
    assert RunStore().list_runs()[0]["status"] == "stopped"  # the engine closed its own record


def test_a_worker_killed_mid_epoch_resumes_to_the_numbers_of_an_uninterrupted_run(colour_dataset, tmp_path,
                                                                                    monkeypatch):
    """SIGKILL in epoch 2 (as the kernel's out-of-memory killer would), Resume, and compare with a run never
    interrupted: same seed, same epochs, same final metrics.json numbers."""
    whole = TrainingJob(colour_dataset, _config(), run_dir=tmp_path / "whole", worker_fit=TINY).start()
    assert whole.join(120) and whole.status == jobs.COMPLETED, whole.error
    expected = json.loads(workers.write_metrics(tmp_path / "whole", whole.result).read_text())

    monkeypatch.setenv("TS_TEST_STEP_SECONDS", "0.3")
    run_dir = tmp_path / "killed"
    killed = TrainingJob(colour_dataset, _config(), run_dir=run_dir, worker_fit=TINY, owner="alice").start()
    assert _wait(lambda: _in_epoch(run_dir, 2))
    os.kill(killed._worker.pid, signal.SIGKILL)
    assert killed.join(30)
    assert killed.status == jobs.FAILED and "signal 9" in killed.error
    assert workers.checkpoint_epoch(run_dir) == 1 and jobs.can_resume(run_dir)

    monkeypatch.setenv("TS_TEST_STEP_SECONDS", "0")
    with pytest.raises(PermissionError, match="another workspace"):
        jobs.resume(run_dir, owner="bob")
    resumed = jobs.resume(run_dir, owner="alice")
    assert jobs.get("killed") is resumed
    assert [m["epoch"] for m in resumed.snapshot().epochs] == [1]  # the checkpoint's history, shown at once
    assert resumed.join(120) and resumed.status == jobs.COMPLETED, resumed.error
    got = json.loads(workers.write_metrics(run_dir, resumed.result).read_text())
    assert _numbers(got["history"]) == _numbers(expected["history"])
    for key in ("best_epoch", "val_accuracy", "val_loss", "test_accuracy", "accuracy", "macro_f1", "n"):
        assert got.get(key) == expected.get(key), key
    record = RunStore().list_runs(owner="alice")
    assert len(record) == 1 and record[0]["status"] == "completed"  # one run, continued; not a second one


def _start_worker_without_a_server(dataset: Any, run_dir: Path, **settings: Any) -> workers.Worker:
    """What a previous server left behind: a worker training, its job file written, no job object here."""
    job_file = workers.JobFile(dataset=dataset, config=_config(**settings).to_dict(), owner="alice", fit=TINY,
                               host=workers.this_host(), started_at=time.time())
    workers.write_job_file(run_dir, job_file)
    worker = workers.Worker.start(run_dir)
    job_file.worker_pid = worker.pid
    workers.write_job_file(run_dir, job_file)
    return worker


def _recorded_running(run_dir: Path) -> bool:
    return any(r["run_dir"] == str(run_dir) for r in RunStore().list_runs(status="running"))


def test_a_restarted_server_adopts_a_worker_that_still_trains(colour_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("TS_TEST_STEP_SECONDS", "0.2")
    run_dir = tmp_path / "run"
    _start_worker_without_a_server(colour_dataset, run_dir, epochs=2)
    assert _wait(lambda: _recorded_running(run_dir) and _in_epoch(run_dir, 1))
    found = jobs.recover()
    assert len(found["adopted"]) == 1 and found["interrupted"] == []
    job = jobs.latest(owner="alice")
    assert job is not None and job.is_running and job.isolation == "process"
    assert job.join(120) and job.status == jobs.COMPLETED, job.error
    assert [m["epoch"] for m in job.snapshot().epochs] == [1, 2]  # the events from before the restart too


def test_a_restarted_server_marks_a_run_whose_worker_is_gone_interrupted_and_it_resumes(colour_dataset, tmp_path,
                                                                                         monkeypatch):
    monkeypatch.setenv("TS_TEST_STEP_SECONDS", "0.3")
    run_dir = tmp_path / "run"
    worker = _start_worker_without_a_server(colour_dataset, run_dir, epochs=2)
    assert _wait(lambda: _in_epoch(run_dir, 2))
    worker.kill()
    found = jobs.recover()
    assert found["adopted"] == [] and len(found["interrupted"]) == 1
    record = RunStore().list_runs()[0]
    assert record["status"] == "interrupted" and "Resume continues it after epoch 1" in record["error"]
    monkeypatch.setenv("TS_TEST_STEP_SECONDS", "0")
    job = jobs.resume(run_dir, owner="alice")
    assert job.join(120) and job.status == jobs.COMPLETED, job.error
    assert RunStore().list_runs()[0]["status"] == "completed"


def test_the_cli_resumes_a_run_folder_and_writes_metrics_json(colour_dataset, tmp_path, monkeypatch):
    from core.__main__ import main

    monkeypatch.setenv("TS_TEST_STEP_SECONDS", "0.3")
    run_dir = tmp_path / "run"
    worker = _start_worker_without_a_server(colour_dataset, run_dir, epochs=2)
    assert _wait(lambda: _in_epoch(run_dir, 2))
    worker.kill()
    monkeypatch.setenv("TS_TEST_STEP_SECONDS", "0")
    assert main(["train", "--resume", str(run_dir)]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and [m["epoch"] for m in metrics["history"]] == [1, 2]
    assert main(["train", "--resume", str(tmp_path / "nothing-here")]) == 2


def test_workers_are_spread_over_the_gpus(colour_dataset, tmp_path, monkeypatch):
    """On a machine with GPUs each worker sees one of them, the least used (CUDA_VISIBLE_DEVICES); untested on a GPU."""
    monkeypatch.setattr(workers, "gpu_ids", lambda: ["2", "5"])
    first, second, third = (TrainingJob(colour_dataset, _config(), run_dir=tmp_path / name)
                            for name in ("first", "second", "third"))
    first.gpu = first._pick_gpu()
    jobs._SLOTS.adopt(first)
    try:
        second.gpu = second._pick_gpu()
        jobs._SLOTS.adopt(second)
        assert (first.gpu, second.gpu) == ("2", "5")
        jobs._SLOTS.release(first)
        assert third._pick_gpu() == "2"
    finally:
        jobs._SLOTS.release(first)
        jobs._SLOTS.release(second)
    monkeypatch.setattr(workers, "gpu_ids", lambda: [])
    assert third._pick_gpu() is None


def test_a_command_line_run_killed_after_an_epoch_resumes_to_the_numbers_of_an_uninterrupted_one(tmp_path, monkeypatch):
    """`python -m core train` writes the job file a worker run has, so `train --resume OUT` continues it too."""
    import subprocess
    import sys

    from core import backbones
    from core.__main__ import main
    from tests.tiny import make_colour_images
    from tests.worker_engines import STEP_SECONDS_ENV, tiny_backbone

    make_colour_images(tmp_path / "colours")
    options = ["--data", str(tmp_path / "colours"), "--backbone", "tiny_cnn", "--frozen-groups", "1", "--epochs", "3",
               "--batch-size", "8", "--protocol", "test split", "--device", "cpu", "--seed", "3"]
    killed = tmp_path / "killed"
    command = [sys.executable, "-c", "import sys; from tests.worker_engines import cli_with_tiny_backbone; "
               "sys.exit(cli_with_tiny_backbone(sys.argv[1:]))", "train", *options, "--out", str(killed)]
    repo = Path(__file__).resolve().parent.parent
    process = subprocess.Popen(command, cwd=repo, env={**os.environ, STEP_SECONDS_ENV: "0.3", "PYTHONPATH": str(repo)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait(lambda: workers.checkpoint_epoch(killed) == 1 or process.poll() is not None, timeout=120)
        assert process.poll() is None, "the command ended before it could be killed after its first epoch"
        assert workers.read_job_file(killed).worker_pid is None  # nothing a server could mistake for its worker
    finally:
        process.kill()
        process.wait(10)
    assert not (killed / "metrics.json").exists()

    monkeypatch.setattr(backbones, "load_backbone", tiny_backbone)
    assert main(["train", "--resume", str(killed)]) == 0
    resumed = json.loads((killed / "metrics.json").read_text())
    assert main(["train", *options, "--out", str(tmp_path / "whole")]) == 0
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    assert resumed["status"] == whole["status"] == "completed"
    assert _numbers(resumed["history"]) == _numbers(whole["history"])
    assert resumed["test_accuracy"] == whole["test_accuracy"]


@pytest.mark.parametrize(("setting", "expected"), [(None, workers.DEFAULT_NICE), ("3", 3), ("0", 0), ("soon", 0)])
def test_a_worker_yields_the_cpu_to_the_server_by_as_much_as_the_operator_says(setting, expected) -> None:
    """A worker lowers its own priority (pages stay quick while runs train on the same cores); the operator can
    change how much, and a value that is not a number keeps the priority, with a warning."""
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if key != workers.NICE_ENV}
    if setting is not None:
        env[workers.NICE_ENV] = setting
    probe = ("import os; from core.workers import lower_priority; before = os.getpriority(os.PRIO_PROCESS, 0); "
             "lower_priority(); print(os.getpriority(os.PRIO_PROCESS, 0) - before)")
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert int(done.stdout.strip()) == expected, done.stderr
