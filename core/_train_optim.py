"""The optimisation recipe of the gradient loop: AdamW parameter groups, the learning-rate schedule, class weights.

The head learns at the full rate and the unfrozen backbone layers at a fraction of it (discriminative rates); biases
and normalisation weights get no weight decay; the rate warms up linearly and then decays on a cosine (Hugging
Face's `get_cosine_schedule_with_warmup`); an imbalanced data set may weight the loss by inverse class frequency.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from core._train_config import TrainConfig
from core.backbones import Classifier


def _class_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def _lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warm-up from ~0 to 1 over `warmup_steps`, then cosine decay to 0 at `total_steps`."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _param_groups(model: Classifier, config: TrainConfig) -> list[dict[str, Any]]:
    """Head at `lr`, unfrozen backbone at `lr * backbone_lr_factor`; no weight decay on biases and norms."""
    groups = []
    for part, factor in ((model.head, 1.0), (model.backbone, config.backbone_lr_factor)):
        decay = [p for p in part.parameters() if p.requires_grad and p.dim() > 1]
        no_decay = [p for p in part.parameters() if p.requires_grad and p.dim() <= 1]
        lr = config.lr * factor
        for params, weight_decay in ((decay, config.weight_decay), (no_decay, 0.0)):
            if params and lr > 0:
                groups.append({"params": params, "lr": lr, "initial_lr": lr, "weight_decay": weight_decay})
    return groups
