"""Scale-out: `python -m core train --processes 2` trains with DDP on CPU (gloo) and agrees with one process.

The launched processes run this file as a module (`python -m tests.test_distributed train ...`): the CLI with the tiny
CNN in place of the catalogue's backbones, which cannot load a test backbone.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from core import distributed
from core.store import RunStore

ROOT = Path(__file__).resolve().parent.parent


def _tiny_backbone(name: str, pretrained: bool = True) -> object:
    """The CLI's `load_backbone`, for tests: the tiny CNN with the same seeded weights in every process."""
    from tests.tiny import TinyCNN

    torch.manual_seed(0)
    return TinyCNN()


def _cli(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """The CLI in this process, with the tiny backbone, launching extra processes that run this file."""
    from core import backbones
    from core.__main__ import main

    monkeypatch.setattr(backbones, "load_backbone", _tiny_backbone)
    monkeypatch.setattr(distributed, "launch", functools.partial(distributed.launch, module="tests.test_distributed"))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    return main(argv)


def _train_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--backbone", "tiny_cnn", "--frozen-groups", "0",
            "--epochs", "4", "--batch-size", "8", "--lr", "0.02", "--patience", "0", "--seed", "0", "--device", "cpu",
            "--refit", "off", *extra]  # several processes do not refit; compare like with like


@pytest.fixture
def colour_folder(tmp_path: Path) -> Path:
    from tests.tiny import make_colour_images

    make_colour_images(tmp_path / "colours", per_class=20)
    return tmp_path / "colours"


def test_two_processes_write_the_metrics_of_one_within_noise_and_one_run_record(
    colour_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    assert _cli(_train_argv(colour_folder, one), monkeypatch) == 0
    assert _cli(_train_argv(colour_folder, two, "--processes", "2"), monkeypatch) == 0

    single, split = json.loads((one / "metrics.json").read_text()), json.loads((two / "metrics.json").read_text())
    assert set(split) == set(single)
    assert single["processes"] == 1 and split["processes"] == 2
    assert split["status"] == "completed" and len(split["history"]) == len(single["history"]) == 4
    assert split["n"] == single["n"] and split["protocol"] == single["protocol"] == "test split"
    # the same global batches and schedule: only BatchNorm's per-process statistics differ
    assert abs(split["accuracy"] - single["accuracy"]) <= 0.15
    assert abs(split["history"][-1]["train_loss"] - single["history"][-1]["train_loss"]) < 0.25
    assert split["accuracy"] > 0.6  # it learned (3 classes)

    runs = [run for run in RunStore().list_runs() if Path(run["run_dir"]) == two]
    assert len(runs) == 1 and runs[0]["status"] == "completed"  # rank 0 alone recorded it
    assert (two / "model.safetensors").exists() and (two / "run.json").exists()


def test_tiny_data_is_refused_for_several_processes_with_the_reason(
    colour_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        status = _cli(_train_argv(colour_folder, tmp_path / "out", "--processes", "4", "--batch-size", "16"),
                      monkeypatch)
    assert status == 2
    assert "too few to split over 4 processes" in caplog.text and "4 x batch size 16 = 64" in caplog.text
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_the_logistic_head_trains_in_one_process_and_says_so(
    colour_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from core import _train_cli  # `main_train` calls `_fit_and_report` by its name there

    trained_with = []
    monkeypatch.setattr(_train_cli, "_fit_and_report", lambda *args: trained_with.append(args[-1]) or 0)
    argv = _train_argv(colour_folder, tmp_path / "out", "--processes", "2")
    argv[argv.index("--frozen-groups") + 1] = "3"  # every group frozen: the logistic head by default
    with caplog.at_level(logging.WARNING):
        assert _cli(argv, monkeypatch) == 0
    assert "training in one process" in caplog.text
    assert trained_with == [None]  # here, in this process, with no ranks


def test_the_cache_pass_is_shared_out_and_the_gradient_head_trains_on_it_in_two_processes(
    colour_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.paths import workspace_subdir

    def argv(out: Path, *extra: str) -> list[str]:
        values = _train_argv(colour_folder, out, "--head", "gradient", *extra)
        values[values.index("--frozen-groups") + 1] = "3"
        return values

    assert _cli(argv(tmp_path / "out", "--processes", "2"), monkeypatch) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["cache_mode"] == "features" and metrics["processes"] == 2
    cache_files = list(workspace_subdir("features").glob("*.safetensors"))
    assert len(cache_files) == 1  # the ranks agreed on one entry, written once
    gathered = load_file(cache_files[0])
    cache_files[0].unlink()  # a 1-process run computes the same cache again: the shares came back in order

    assert _cli(argv(tmp_path / "one"), monkeypatch) == 0
    computed = load_file(cache_files[0])
    assert gathered.keys() == computed.keys()
    for name, tensor in computed.items():
        torch.testing.assert_close(gathered[name], tensor, atol=1e-2, rtol=1e-2)


def _stop_on_rank_zero_after_two_steps(out: Path) -> None:
    """One launched process: fit the tiny CNN; rank 0's stop flag is set after step 2, the other ranks' never."""
    import threading

    from core.training import TrainConfig, fit
    from tests.tiny import make_colour_dataset

    stop = threading.Event()

    class StopAfterTwoSteps:  # a callback: only rank 0 reports to callbacks
        def on_step_end(self, metrics: dict) -> None:
            if metrics.get("phase") == "train" and metrics["step"] >= 2:
                stop.set()

    config = TrainConfig(backbone="tiny_cnn", frozen_groups=0, epochs=3, batch_size=8, pretrained=False,
                         precision="fp32", patience=None, device="cpu")
    with distributed.from_environment("cpu") as rank:
        dataset = make_colour_dataset(out / f"images{rank.rank}", per_class=20)  # no two ranks write one file
        result = fit(dataset, config, out / "run", backbone=_tiny_backbone("tiny_cnn"), callbacks=[StopAfterTwoSteps()],
                     stop_event=stop, distributed=rank)
        (out / f"rank{rank.rank}.json").write_text(json.dumps({"status": result.status,
                                                               "epochs": result.epochs_completed}))


def test_a_stop_on_one_rank_stops_every_rank_at_the_same_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    command = distributed.launch_command(2, ["stop-test", str(tmp_path)], module="tests.test_distributed")
    subprocess.run(command, check=True, timeout=180)  # a rank that went on training would wait for ever
    for rank in range(2):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == {"status": "stopped", "epochs": 0}
    runs = RunStore().list_runs()
    assert len(runs) == 1 and runs[0]["status"] == "stopped"


def test_more_processes_than_gpus_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="2 processes need 2 GPUs .* this machine has 1"):
        distributed.check_devices(2, "auto")
    distributed.check_devices(2, "cpu")  # CPU processes need no GPU
    assert distributed.gpu_count() == 1


def test_check_split_says_what_to_change() -> None:
    distributed.check_split(16, 8, 2)
    distributed.check_split(3, 64, 1)  # one process: nothing to check
    with pytest.raises(ValueError, match="raise the batch size to at least 4"):
        distributed.check_split(100, 2, 4)
    with pytest.raises(ValueError, match="15 training examples are too few"):
        distributed.check_split(15, 8, 2)


def test_each_rank_takes_its_share_of_every_global_batch() -> None:
    def rank(index: int, world: int) -> distributed.Distributed:
        accelerator = SimpleNamespace(process_index=index, num_processes=world, is_main_process=index == 0,
                                      device="cpu")
        return distributed.Distributed(accelerator)

    order = torch.tensor([5, 3, 0, 1, 4, 2, 6])
    shares = [rank(index, 2).batch_share(order[:5], order) for index in range(2)]
    assert [share.tolist() for share in shares] == [[5, 3, 0], [1, 4]]  # the whole batch, once
    last = [rank(index, 3).batch_share(order[6:], order) for index in range(3)]
    assert [share.tolist() for share in last] == [[6], [5], [3]]  # topped up from the epoch's start
    assert rank(1, 3).eval_share(7).tolist() == [1, 4]


def test_launch_command_passes_a_config_file_through() -> None:
    local = distributed.launch_command(2, ["train", "--data", "d"])
    assert local[local.index("--num_processes") + 1] == "2" and "--multi_gpu" in local
    assert local[-4:] == ["core", "train", "--data", "d"]
    machines = distributed.launch_command(None, ["train"], accelerate_config="cluster.yaml")
    assert machines[machines.index("--config_file") + 1] == "cluster.yaml"
    assert "--num_processes" not in machines and "--multi_gpu" not in machines


if __name__ == "__main__":  # one launched process: a stop test, or the CLI with the tiny backbone
    if sys.argv[1] == "stop-test":
        _stop_on_rank_zero_after_two_steps(Path(sys.argv[2]))
        sys.exit(0)
    from core import backbones
    from core.__main__ import main

    backbones.load_backbone = _tiny_backbone
    sys.exit(main())
