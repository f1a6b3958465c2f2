"""Freezing by layer group: what stays as pretrained, what trains, what it costs, and what we recommend.

`freeze_first(model, n)` freezes the first n layer groups of the backbone (fastai's `freeze_to`, Lightning's
`BaseFinetuning.freeze`): n = all groups is feature extraction (only the new head trains), n = 0 is full
fine-tuning. `set_train_mode` puts the model in training mode but keeps frozen groups in eval mode, so that
BatchNorm statistics of frozen layers stay as pretrained and their outputs stay deterministic (cacheable).
"""

from __future__ import annotations

import copy
import logging
import math
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from core import devices
from core.backbones import BackboneSpec, Classifier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GroupInfo:
    """One layer group: its name, parameter count and whether it is frozen."""

    name: str
    params: int
    frozen: bool


@dataclass(frozen=True)
class FreezeSummary:
    """What `freeze_first` did.

    Attributes:
        frozen_groups: how many of the first layer groups are frozen.
        trainable_params: parameters that training will change (the new head included).
        total_params: all parameters of the classifier.
        groups: per layer group of the backbone, in order; the new head is not listed (it always trains).
        head_params: parameters of the new classification head.
    """

    frozen_groups: int
    trainable_params: int
    total_params: int
    groups: list[GroupInfo] = field(default_factory=list)
    head_params: int = 0

    @property
    def trainable_fraction(self) -> float:
        return self.trainable_params / self.total_params if self.total_params else 0.0


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def freeze_first(model: Classifier, n: int) -> FreezeSummary:
    """Freeze the first `n` layer groups of `model.backbone`; everything after them and the head train.

    Also remembers `n` as `model.frozen_groups`, which `set_train_mode` reads.

    Raises:
        ValueError: `n` is not between 0 and the number of layer groups.
    """
    groups = model.backbone.groups()
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= len(groups):
        raise ValueError(
            f"frozen_groups must be a whole number from 0 (full fine-tuning) to {len(groups)} (feature extraction, "
            f"only the new head trains); got {n!r}."
        )
    for index, group in enumerate(groups):
        for parameter in group.parameters():
            parameter.requires_grad_(index >= n)
    for parameter in model.head.parameters():
        parameter.requires_grad_(True)
    model.frozen_groups = n
    infos = [GroupInfo(name, _count(group), index < n)
             for index, (name, group) in enumerate(zip(model.backbone.group_names, groups, strict=True))]
    summary = FreezeSummary(
        frozen_groups=n,
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_params=_count(model),
        groups=infos,
        head_params=_count(model.head),
    )
    log.info("Froze %d of %d layer groups: %d of %d parameters train", n, len(groups), summary.trainable_params,
             summary.total_params)
    return summary


def set_train_mode(model: Classifier) -> Classifier:
    """`model.train()`, except that the frozen groups stay in eval mode (BatchNorm statistics, dropout off)."""
    model.train()
    frozen = int(getattr(model, "frozen_groups", 0) or 0)
    for group in model.backbone.groups()[:frozen]:
        group.eval()
    return model


# --------------------------------------------------------------------------------------------------- cost


@dataclass(frozen=True)
class CostEstimate:
    """Measured cost of training with the chosen freezing on this machine.

    Attributes:
        seconds_per_epoch: average measured seconds per training step (loading, forward, backward, optimiser
            step) times the number of steps in one epoch.
        peak_memory_mb: extra memory the training steps needed (GPU memory on CUDA, process memory on CPU).
        measured_batches: how many training steps were timed.
        seconds_per_batch: the average measured step time.
        device: where it was measured.
    """

    seconds_per_epoch: float
    peak_memory_mb: float
    measured_batches: int
    seconds_per_batch: float = 0.0
    device: str = "cpu"


def _rss_mb() -> float:
    """Current resident memory of this process, in MB (Linux /proc; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        return pages * resource.getpagesize() / 2**20
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def estimate_cost(
    model: Classifier,
    preprocessor: Any,
    items: list[str],
    batch_size: int,
    n_batches: int = 3,
    device: str | torch.device | None = "auto",
) -> CostEstimate:
    """Measure time per epoch and peak memory by running real training steps on real items.

    Works on a copy of `model` (its freezing, i.e. `requires_grad` and `frozen_groups`, is kept), so a cached,
    shared model is not changed. One untimed warm-up step runs first; then `n_batches` steps are timed.

    Raises:
        ValueError: no items, or a batch size below 1.
    """
    if not items:
        raise ValueError("There are no training examples to measure on; load a data set with a train split.")
    if batch_size < 1:
        raise ValueError(f"The batch size must be at least 1; got {batch_size}.")
    target = devices.pick(device)
    work = copy.deepcopy(model).to(target)
    work.frozen_groups = getattr(model, "frozen_groups", 0)
    set_train_mode(work)
    trainable = [p for p in work.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4) if trainable else None
    num_classes = work.head[-1].out_features
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(0)

    def batch_items(step: int) -> list[str]:
        start = (step * batch_size) % len(items)
        chosen = [items[(start + i) % len(items)] for i in range(min(batch_size, len(items)))]
        return chosen

    rss_before = _rss_mb()
    peak_rss = rss_before
    if target.type == "cuda":
        torch.cuda.synchronize(target)
        torch.cuda.reset_peak_memory_stats(target)
        cuda_before = torch.cuda.memory_allocated(target)

    def step(index: int) -> None:
        nonlocal peak_rss
        chosen = batch_items(index)
        loaded = [preprocessor.load(item, train=True) for item in chosen]
        batch = devices.to_device(preprocessor.collate(loaded), target)
        labels = torch.randint(0, num_classes, (len(chosen),), generator=generator).to(target)
        loss = loss_fn(work(batch), labels)
        peak_rss = max(peak_rss, _rss_mb())  # activations are alive here
        if optimizer is not None:
            loss.backward()
            peak_rss = max(peak_rss, _rss_mb())
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        peak_rss = max(peak_rss, _rss_mb())

    step(0)  # warm-up: allocator, kernels, optimiser state
    if target.type == "cuda":
        torch.cuda.synchronize(target)
    started = time.perf_counter()
    measured = max(1, int(n_batches))
    for index in range(1, measured + 1):
        step(index)
    if target.type == "cuda":
        torch.cuda.synchronize(target)
    elif target.type == "mps":
        torch.mps.synchronize()
    per_batch = (time.perf_counter() - started) / measured
    if target.type == "cuda":
        peak_mb = (torch.cuda.max_memory_allocated(target) - cuda_before) / 2**20
    elif target.type == "mps":
        peak_mb = torch.mps.driver_allocated_memory() / 2**20
    else:
        peak_mb = peak_rss - rss_before
    steps_per_epoch = math.ceil(len(items) / batch_size)
    return CostEstimate(
        seconds_per_epoch=per_batch * steps_per_epoch,
        peak_memory_mb=max(0.0, peak_mb),
        measured_batches=measured,
        seconds_per_batch=per_batch,
        device=str(target),
    )


# --------------------------------------------------------------------------------------------------- advice


def recommend(num_train_examples: int, dataset_modality: str, spec: BackboneSpec) -> tuple[int, str]:
    """How many layer groups to freeze, and why, by the usual rule of thumb of transfer learning.

    Small data close to what the backbone was pretrained on: freeze (nearly) everything, the pretrained features
    are already good and there is too little data to change them safely. More data, or data of another kind:
    let more of the top layers adapt.

    Raises:
        ValueError: the data's modality does not match the backbone's, or the spec is not a catalogue entry (whose
            group count `register` fills in).
    """
    if dataset_modality != spec.modality:
        raise ValueError(f"{spec.title} is a {spec.modality} backbone but the data set holds {dataset_modality}s; "
                         f"choose a {dataset_modality} backbone.")
    total = spec.num_groups
    if total < 1:
        raise ValueError(f"{spec.name} is not in the catalogue: `register` it so that its family counts its layer "
                         "groups.")
    examples = int(num_train_examples)
    if examples < 1000:
        return total, (
            f"With {examples} training examples, keep the whole backbone as pretrained and train only the new head "
            f"(feature extraction). So little data cannot improve the pretrained layers and would overfit them; "
            f"it is also the fastest choice."
        )
    if examples < 10000:
        unfrozen = max(1, round(total / 4))
        return total - unfrozen, (
            f"With {examples} training examples, let the last {unfrozen} layer group(s) adapt to your data and keep "
            f"the rest frozen: enough data to tune the most specialised layers, not enough for all of them. If your "
            f"data looks very different from what {spec.title} saw ({spec.pretrained_on}), unfreeze more."
        )
    return 1, (
        f"With {examples} training examples there is enough data to fine-tune almost the whole backbone; only the "
        f"first group (the most generic features) stays frozen. Full fine-tuning (0) may gain a little more, at "
        f"the most cost."
    )
