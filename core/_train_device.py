"""Where a run computes and how examples reach it: device precision, memory format, seeded loaders."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from core.cpus import available_threads

log = logging.getLogger(__name__)

#: At most this many loader processes decode images or clips on a GPU machine (`loader_workers`).
MAX_LOADER_WORKERS = 8


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bfloat16 maths (AVX512-BF16 / AMX), where bf16 autocast is faster than fp32."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(requested: str, device: torch.device) -> str:
    """The precision actually used: "auto" becomes bf16 on capable CPUs and CUDA GPUs, fp16 on older GPUs."""
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_supports_bf16():
        return "bf16"
    return "fp32"


def uses_channels_last(modality: str, device: torch.device) -> bool:
    """Images train in channels-last memory format (faster convolutions), except on Apple MPS."""
    return modality == "image" and device.type != "mps"


def autocast_factory(device: torch.device, precision: str) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """A zero-argument function returning the autocast context for this device and precision."""
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


class _Examples(torch.utils.data.Dataset):
    """(loaded example, class index) pairs through a preprocessor, for a torch DataLoader."""

    def __init__(self, items: Sequence[str], labels: Sequence[int], preprocessor: Any, train: bool) -> None:
        self.items, self.labels, self.preprocessor, self.train = list(items), list(labels), preprocessor, train

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.preprocessor.load(self.items[index], self.train), self.labels[index]


def loader_workers(preprocessor: Any) -> int:
    """How many processes decode examples for a loader: 0 (in the training process) unless a CUDA GPU is here.

    Decoding and resizing images or clips is CPU work. On a GPU machine it, not the GPU, sets the pace of a feature
    pass or of fine-tuning: on an H200 with 16 cores (2026-12-04) the frozen network's feature pass ran at 55-80
    images/s, decoding in the training process, against 1,700 examples/s for training on the cached activations.
    There the images or clips are decoded by up to `MAX_LOADER_WORKERS` forked processes (Linux; one core is left
    to the training process). Texts are tokenised in the batch and stay in the process; a CPU-only machine keeps
    its cores for the model. `TRANSFER_STUDIO_LOADER_WORKERS` sets the number (0 turns it off).
    """
    setting = os.environ.get("TRANSFER_STUDIO_LOADER_WORKERS", "").strip()
    if setting:
        try:
            return max(0, int(setting))
        except ValueError:
            log.warning("TRANSFER_STUDIO_LOADER_WORKERS=%r is not a whole number; decoding in the process", setting)
            return 0
    if getattr(preprocessor, "modality", "text") not in ("image", "audio"):
        return 0
    if not torch.cuda.is_available() or not sys.platform.startswith("linux"):
        return 0
    return max(0, min(MAX_LOADER_WORKERS, available_threads() - 1))


def _worker_options(preprocessor: Any) -> dict[str, Any]:
    """DataLoader arguments for `loader_workers` processes: forked (the collate function is a closure), pinned
    memory for the copy to the GPU."""
    workers = loader_workers(preprocessor)
    if workers == 0:
        return {"num_workers": 0}
    return {"num_workers": workers, "multiprocessing_context": "fork", "pin_memory": torch.cuda.is_available()}


def _loader(
    items: Sequence[str], labels: Sequence[int], preprocessor: Any, train: bool, batch_size: int,
    generator: torch.Generator | None = None, shuffle: bool = False, batches: Sequence[Sequence[int]] | None = None,
) -> torch.utils.data.DataLoader:
    """A DataLoader over a preprocessor; its own generator keeps the global RNG (dropout, augmentation) untouched.

    `batches` (the indices of each batch, in order) replaces batch size and shuffling: one process's shares of a
    multi-process run. Loader processes seed their augmentation from the generator; a training loader without one
    (a seeded augmented view, `_SmallDataHead.augmented_views`) takes it from the global RNG, so the caller's seed
    decides the view there too and not only when decoding in the process.
    """
    def collate(examples: list[tuple[Any, int]]) -> tuple[Any, torch.Tensor]:
        loaded, classes = zip(*examples, strict=True)
        return preprocessor.collate(list(loaded)), torch.tensor(classes, dtype=torch.long)

    if batches is not None:
        return torch.utils.data.DataLoader(
            _Examples(items, labels, preprocessor, train), batch_sampler=batches, collate_fn=collate,
            **_worker_options(preprocessor),
        )
    if generator is None:
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,)).item()) if train else 0)
    return torch.utils.data.DataLoader(
        _Examples(items, labels, preprocessor, train),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        collate_fn=collate,
        **_worker_options(preprocessor),
    )


def _batch_size_of(batch: Any) -> int:
    if isinstance(batch, dict):
        return int(next(iter(batch.values())).shape[0])
    return int(batch.shape[0])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
