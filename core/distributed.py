"""Scale-out on Hugging Face Accelerate: one run trained by N processes (DDP), `python -m core train --processes N`.

How a run is split over N processes, and why:

- **The global batch stays what you set.** Each process takes its 1/N share of every batch (the semantics of
  Accelerate's `split_batches=True`) and DDP averages the shares' gradients, which for equal shares is the gradient of
  the whole batch. So steps per epoch, the learning rate and its schedule are those of a 1-process run and the numbers
  agree with it within noise; each process holds a smaller batch. For more throughput, raise `--batch-size` and
  `--lr` together (the linear scaling rule); the app does not do it for you, because the defaults are tuned for the
  batch as set. A last batch smaller than N is topped up from the epoch's first examples (Accelerate's
  `even_batches`), so every process takes a step.
- **Rank 0 alone records**: the run store's record, `run.json`, checkpoints, the model and `metrics.json`. The other
  ranks run the same code against a scratch folder and store that is deleted when they finish, and report to no
  callback.
- **Evaluation is sharded** and its sums are reduced over the ranks, with the BatchNorm statistics of rank 0 (whose
  model is saved), so every rank reads the same validation loss and stops early at the same epoch.
- **The cache pass is sharded**: each rank runs the frozen layers over every N-th example of each split, and the
  shares are gathered so that every rank holds the whole cache (training shuffles over all of it); the first process
  on each machine writes it to disk. Unless every rank finds it cached already, all of them compute.
- **Refused with a reason**: fewer training examples than N x batch size (under N steps an epoch, one process is
  faster), and a batch smaller than N.
- **The logistic head** (L-BFGS on cached features, the default with every group frozen) is a full-batch convex fit in
  one process; the CLI runs it in one process and says so.

Launching: `launch` runs `accelerate launch` (torchrun underneath), which starts N processes that each run
`python -m core train` with the same arguments; a process started by a launcher (`WORLD_SIZE` > 1 in its environment)
trains as one rank. `--accelerate-config FILE` is passed on as `--config_file` for several machines (run the same
command on each, with that machine's `machine_rank` in its file). Tested on CPU with the gloo backend; the GPU path
(`--multi_gpu`, NCCL, one device per process) is written against Accelerate's documented API and untested here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.cpus import available_threads

log = logging.getLogger(__name__)


def launched() -> bool:
    """True in a process that a distributed launcher started as one of several (torchrun sets `WORLD_SIZE`)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def check_split(train_examples: int, batch_size: int, processes: int) -> None:
    """Refuse a split over `processes` that cannot pay off or cannot work, with a reason the user can act on.

    Raises:
        ValueError: the batch is smaller than the number of processes, or the data has fewer than N full batches.
    """
    if processes < 2:
        return
    if batch_size < processes:
        raise ValueError(
            f"A batch of {batch_size} cannot be split over {processes} processes (each takes a share of every batch); "
            f"raise the batch size to at least {processes} or use fewer processes."
        )
    if train_examples < processes * batch_size:
        raise ValueError(
            f"{train_examples} training examples are too few to split over {processes} processes: it pays only with "
            f"at least {processes} full batches an epoch ({processes} x batch size {batch_size} = "
            f"{processes * batch_size} examples). Train in one process (faster at this size) or lower the batch size."
        )


def gpu_count() -> int:
    """GPUs on this machine (0 without CUDA): a user interface offers 1 to this many processes when it is over 1."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_devices(processes: int, device: str) -> None:
    """Refuse more processes than GPUs on one machine when the run trains on GPUs (DDP gives each process its own).

    Written against `torch.cuda.device_count`; no machine with GPUs has run it yet.

    Raises:
        ValueError: `processes` is larger than the GPUs this machine has, and the run would use them.
    """
    gpus = gpu_count()
    if device not in ("auto", "cuda") or gpus == 0:
        return
    if processes > gpus:
        raise ValueError(
            f"{processes} processes need {processes} GPUs (one each) and this machine has {gpus}: use "
            f"--processes {gpus}" + (" (or leave it out)" if gpus == 1 else "") + ", or --device cpu to train in CPU "
            "processes."
        )


def free_port() -> int:
    """A TCP port free right now on this machine, for the processes' rendezvous (runs side by side need their own)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def launch_command(
    processes: int | None, argv: Sequence[str], accelerate_config: str | Path | None = None, module: str = "core"
) -> list[str]:
    """The `accelerate launch` command that runs `python -m <module> <argv>` in `processes` processes.

    Without a config file: one machine, DDP (`--multi_gpu`: NCCL on GPUs, gloo on CPU), a free port, the CPU cores
    shared out between the processes. With one: its settings (machines, addresses, ranks) apply, and `processes`, when
    given, overrides its `num_processes`.
    """
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if accelerate_config is not None:
        command += ["--config_file", str(accelerate_config)]
    else:
        threads = max(1, available_threads() // max(processes or 1, 1))
        command += ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                    "--main_process_port", str(free_port()), "--num_cpu_threads_per_process", str(threads)]
    if processes is not None:
        command += ["--num_processes", str(processes)]
    return [*command, "-m", module, *argv]


def launch(
    processes: int | None, argv: Sequence[str], accelerate_config: str | Path | None = None, module: str = "core"
) -> int:
    """Run `python -m <module> <argv>` in several processes through `accelerate launch`; its exit status.

    The launcher stops every process when one fails, so a failing rank cannot leave the others waiting.
    """
    command = launch_command(processes, argv, accelerate_config, module)
    log.info("Launching %s process(es): %s", processes or "the configured", " ".join(command))
    return subprocess.call(command)  # noqa: S603 - our own interpreter and arguments


class _Forward(nn.Module):
    """The model as one module whose forward is the trainer's (head on features, the rest on activations, or all),
    so DDP sees every call that needs its gradients averaged."""

    def __init__(self, model: nn.Module, forward: Callable[[Any], torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self._forward = forward

    def forward(self, batch: Any) -> torch.Tensor:
        return self._forward(batch)


class Distributed:
    """This process's place in a multi-process run, and the few collective steps the training loop needs."""

    def __init__(self, accelerator: Any) -> None:
        self.accelerator = accelerator
        self.rank = int(accelerator.process_index)
        self.world_size = int(accelerator.num_processes)
        self.is_main = bool(accelerator.is_main_process)
        self.is_local_main = bool(getattr(accelerator, "is_local_main_process", self.is_main))
        self.device = torch.device(accelerator.device)
        self._scratch = None if self.is_main else tempfile.TemporaryDirectory(prefix=f"ts-rank{self.rank}-")

    @property
    def scratch(self) -> Path:
        """Where a rank other than 0 writes what rank 0 records for real (deleted by `close`)."""
        if self._scratch is None:
            raise RuntimeError("Rank 0 records into the run folder; it has no scratch folder.")
        return Path(self._scratch.name)

    def wrap(self, model: nn.Module, forward: Callable[[Any], torch.Tensor]) -> nn.Module:
        """`model` in DDP (Accelerate's `prepare_model`), called through `forward`; parameters are shared with it."""
        return self.accelerator.prepare_model(_Forward(model, forward), device_placement=False)

    def batch_share(self, batch: torch.Tensor, epoch_order: torch.Tensor) -> torch.Tensor:
        """This rank's share of one global batch of indices (contiguous, sizes within one of each other)."""
        if len(batch) < self.world_size:
            batch = torch.cat([batch, epoch_order[: self.world_size - len(batch)]])
        return torch.tensor_split(batch, self.world_size)[self.rank]

    def eval_share(self, count: int, rank: int | None = None) -> torch.Tensor:
        """The indices of a split of `count` examples that a rank (default: this one) evaluates or caches: every N-th
        from its rank."""
        return torch.arange(self.rank if rank is None else rank, count, self.world_size)

    def gather(self, value: Any) -> list[Any]:
        """`value` from every rank, in rank order, on every rank (pickled: for CPU tensors and plain data)."""
        from accelerate.utils import gather_object

        return list(gather_object([value]))

    def sum(self, values: Sequence[float]) -> list[float]:
        """Each value summed over the ranks (the same result on every rank)."""
        tensor = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        return [float(value) for value in self.accelerator.reduce(tensor, reduction="sum").cpu()]

    def sync_buffers(self, model: nn.Module) -> None:
        """Give every rank rank 0's buffers (BatchNorm statistics), so all evaluate the model rank 0 saves."""
        from accelerate.utils import broadcast

        with torch.no_grad():
            for buffer in model.buffers():
                broadcast(buffer, from_process=0)

    def close(self, finished: bool = True) -> None:
        """Delete the scratch folder and leave the process group; after a finished run, first wait for every rank.

        After a failure there is no waiting: the other ranks may be inside a collective step, and the launcher stops
        them when this process exits.
        """
        if finished:
            self.accelerator.wait_for_everyone()
        if self._scratch is not None:
            self._scratch.cleanup()
        if finished:
            self.accelerator.end_training()


@contextlib.contextmanager
def from_environment(device: str = "auto") -> Iterator[Distributed]:
    """This process as one rank of the run its launcher started (`accelerate launch`, torchrun); closed on exit.

    `device` is the run's setting: "cpu" keeps every rank on the CPU; otherwise each rank takes its own GPU where there
    are GPUs (untested here), and the CPU where there are none.
    """
    from accelerate import Accelerator

    distributed = Distributed(Accelerator(cpu=device == "cpu" or not torch.cuda.is_available()))
    try:
        yield distributed
    except BaseException:
        distributed.close(finished=False)
        raise
    distributed.close()
