"""Engines for worker-process tests, importable by name ('tests.worker_engines:fit_tiny') in a fresh process.

The real engine trains the tiny CNN (the backbone catalogue cannot load a test backbone); the others crash, die or
start a child process, so the tests can see what the server makes of each.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

#: Seconds each training step is held back (a test sets it, so it can act mid-epoch); 0 by default.
STEP_SECONDS_ENV = "TS_TEST_STEP_SECONDS"


class _HoldEachStep:
    """Sleeps after every step: the numbers do not change, the test just gets time to act."""

    def on_step_end(self, metrics: dict[str, Any]) -> None:
        time.sleep(float(os.environ.get(STEP_SECONDS_ENV, "0")))


def fit_tiny(dataset: Any, config: Any, run_dir: Any, callbacks: tuple = (), **options: Any) -> Any:
    """`core.training.fit` on a freshly built TinyCNN (its weights are replaced from checkpoints on resume)."""
    import torch

    from core.training import fit
    from tests.tiny import TinyCNN

    torch.manual_seed(config.seed)
    return fit(dataset, config, run_dir, backbone=TinyCNN(), callbacks=(*callbacks, _HoldEachStep()), **options)


def fit_raises(dataset: Any, config: Any, run_dir: Any, **options: Any) -> Any:
    raise ValueError("The class 'cat' has no training examples; add some or remove the class.")


def fit_killed(dataset: Any, config: Any, run_dir: Any, **options: Any) -> Any:
    """Dies the way an out-of-memory kill looks: SIGKILL, no exception, no last words."""
    os.kill(os.getpid(), signal.SIGKILL)


def fit_with_a_child(dataset: Any, config: Any, run_dir: Any, **options: Any) -> Any:
    """Starts a long-lived child process (as a data loader would), writes its pid, then trains for ever."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # noqa: S603
    (Path(run_dir) / "child.pid").write_text(str(child.pid))
    while True:
        time.sleep(0.1)


def tiny_backbone(name: str, pretrained: bool = True) -> Any:
    """`load_backbone` for command-line tests: the tiny CNN (seeded) whatever the name; the catalogue has none."""
    import torch

    from tests.tiny import TinyCNN

    torch.manual_seed(0)
    return TinyCNN()


def cli_with_tiny_backbone(argv: list[str]) -> int:
    """`python -m core ...` with the tiny CNN as every backbone and each training step held back (`STEP_SECONDS_ENV`),
    so a test can kill the command mid-run: `python -c 'from tests.worker_engines import cli_with_tiny_backbone; ...'`.
    """
    from core import backbones, training
    from core.__main__ import main

    backbones.load_backbone = tiny_backbone
    training._LogProgress.on_step_end = lambda self, metrics: _HoldEachStep().on_step_end(metrics)
    return main(argv)
