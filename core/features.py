"""The feature / activation cache: run the frozen part of a backbone once, train the rest many times.

When the first `n` layer groups are frozen and no augmentation changes the inputs, their output for an example
never changes during training. Computing it once (`compute_states`) and training only the remaining groups and
the head on the stored result is exact and much faster than the usual loop that recomputes the frozen layers
every epoch. When every group is frozen the stored states are the pooled features and training is a linear
probe on them.

States are kept in a process-wide in-memory cache (so the next run in the same app reuses them) and, for pooled
features, on disk under `workspace_subdir("features")` (so a second process reuses them too). The cache key
covers everything that changes the states: the data (fingerprint), the backbone and the exact weights of its
frozen groups, the freeze boundary, the preprocessing and the numeric precision.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from core import devices
from core.paths import workspace_subdir

log = logging.getLogger(__name__)

State = torch.Tensor | dict[str, torch.Tensor]

MEMORY_BUDGET_BYTES = 3 * 1024**3
"""Largest total size of states kept in memory across all runs of this process."""


@dataclass
class CachedStates:
    """The frozen part's output for every example of one split, stacked along dimension 0.

    Attributes:
        states: a tensor [N, ...] or, for text, a dict of tensors [N, ...] (sequences padded to one length).
        labels: class indices [N].
    """

    states: State
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def nbytes(self) -> int:
        tensors = self.states.values() if isinstance(self.states, dict) else [self.states]
        return sum(t.numel() * t.element_size() for t in tensors) + self.labels.numel() * 8

    def batch(self, indices: torch.Tensor) -> State:
        """The states of some examples; padded text is trimmed to the longest sequence among them."""
        if not isinstance(self.states, dict):
            return self.states.index_select(0, indices)
        picked = {key: value.index_select(0, indices) for key, value in self.states.items()}
        mask = picked.get("attention_mask")
        if mask is not None and mask.dim() == 2:
            full = mask.shape[1]
            longest = max(int(mask.sum(dim=1).max().item()), 1)
            if longest < full:
                picked = {k: (v[:, :longest] if v.dim() >= 2 and v.shape[1] == full else v) for k, v in picked.items()}
        return picked


def weights_digest(modules: Sequence[nn.Module]) -> str:
    """A short hash of the parameters and buffers of some modules: the same weights give the same digest."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            data = tensor.detach().to("cpu").contiguous()
            if data.dtype == torch.bfloat16:
                data = data.view(torch.int16)
            digest.update(str(data.dtype).encode())
            digest.update(data.numpy().tobytes())
    return digest.hexdigest()[:16]


def cache_key(
    dataset_fingerprint: str, backbone_name: str, weights: str, boundary: int, preprocess_key: str, precision: str
) -> str:
    """The key of one set of cached states (a file-name-safe hash of everything that changes them)."""
    text = "|".join([dataset_fingerprint, backbone_name, weights, str(boundary), preprocess_key, precision])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class _MemoryCache:
    """A small LRU of cached states, bounded by bytes, shared by all runs (and threads) of the process."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._items: OrderedDict[str, dict[str, CachedStates]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> dict[str, CachedStates] | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: str, value: dict[str, CachedStates]) -> None:
        size = sum(split.nbytes for split in value.values())
        if size > self.budget:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while sum(s.nbytes for v in self._items.values() for s in v.values()) > self.budget:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


MEMORY = _MemoryCache(MEMORY_BUDGET_BYTES)


_KEY_LOCKS: dict[str, threading.Lock] = {}
_KEY_LOCKS_GUARD = threading.Lock()


def key_lock(key: str) -> threading.Lock:
    """The lock that serialises computing the states of one key, so the same features are never computed twice."""
    with _KEY_LOCKS_GUARD:
        return _KEY_LOCKS.setdefault(key, threading.Lock())


def _disk_path(key: str) -> Path:
    return workspace_subdir("features") / f"{key}.safetensors"


def load_cached(key: str) -> dict[str, CachedStates] | None:
    """Cached states for `key` from memory, else from disk (then kept in memory), else None."""
    hit = MEMORY.get(key)
    if hit is not None:
        return hit
    path = _disk_path(key)
    if not path.exists():
        return None
    try:
        tensors = load_file(path)
    except (OSError, RuntimeError, ValueError) as error:  # a torn write from a killed process: recompute
        log.warning("Ignoring unreadable feature cache %s (%s)", path, error)
        return None
    splits: dict[str, CachedStates] = {}
    for name in {key_.split("/")[0] for key_ in tensors}:
        states = tensors.get(f"{name}/states")
        if states is None:
            states = {k.split("/", 2)[2]: v for k, v in tensors.items() if k.startswith(f"{name}/states/")}
        splits[name] = CachedStates(states=states, labels=tensors[f"{name}/labels"])
    MEMORY.put(key, splits)
    log.info("Reusing cached features %s", path.name)
    return splits


def store_cached(key: str, splits: dict[str, CachedStates], to_disk: bool) -> None:
    """Keep states in memory and, when asked, on disk (written to a temporary name, then renamed)."""
    MEMORY.put(key, splits)
    if not to_disk:
        return
    tensors: dict[str, torch.Tensor] = {}
    for name, split in splits.items():
        tensors[f"{name}/labels"] = split.labels.contiguous()
        if isinstance(split.states, dict):
            for state_key, value in split.states.items():
                tensors[f"{name}/states/{state_key}"] = value.contiguous()
        else:
            tensors[f"{name}/states"] = split.states.contiguous()
    path = _disk_path(key)
    temporary = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")  # writers never share a file
    save_file(tensors, temporary)
    temporary.replace(path)


def _store_dtype(tensor: torch.Tensor, keep_float32: bool) -> torch.Tensor:
    tensor = tensor.detach()
    if tensor.is_floating_point():
        tensor = tensor.float() if keep_float32 else tensor.to(torch.bfloat16)
    return tensor.contiguous().cpu()


def concatenate(splits: Sequence[CachedStates]) -> CachedStates:
    """Several splits' states as one (train + validation for a refit), text padded to one length."""
    return CachedStates(_stack([split.states for split in splits]), torch.cat([split.labels for split in splits]))


def _stack(parts: list[State]) -> State:
    """Concatenate per-batch states; text sequences are right-padded to the longest one first."""
    if not isinstance(parts[0], dict):
        return torch.cat(parts, dim=0)  # type: ignore[arg-type]
    longest = max(part["attention_mask"].shape[1] for part in parts) if "attention_mask" in parts[0] else None
    stacked: dict[str, torch.Tensor] = {}
    for key in parts[0]:
        pieces = []
        for part in parts:
            value = part[key]
            if longest is not None and value.dim() >= 2 and value.shape[1] == part["attention_mask"].shape[1]:
                pad = longest - value.shape[1]
                if pad:
                    shape = list(value.shape)
                    shape[1] = pad
                    value = torch.cat([value, value.new_zeros(shape)], dim=1)
            pieces.append(value)
        stacked[key] = torch.cat(pieces, dim=0)
    return stacked


def compute_states(
    backbone: nn.Module,
    loader: Any,
    boundary: int,
    device: torch.device,
    autocast: Callable[[], AbstractContextManager[Any]] | None = None,
    channels_last: bool = False,
    keep_float32: bool = True,
    stop_requested: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CachedStates | None:
    """Run layer groups 0 .. `boundary - 1` of `backbone` over a loader of (batch, labels).

    Uses inference mode (no autograd bookkeeping) and the caller's autocast (bfloat16 / AMP) and memory format.
    Returns None when `stop_requested()` turns true (checked after every batch).

    Args:
        keep_float32: store floating states as float32 (pooled features: small, exact) rather than bfloat16
            (activations in the middle of the network: half the memory).
    """
    backbone.eval()
    parts: list[State] = []
    labels: list[torch.Tensor] = []
    total = len(loader)
    context = autocast or nullcontext
    for index, (batch, batch_labels) in enumerate(loader):
        with torch.inference_mode(), context():
            inputs = devices.to_device(batch, device, channels_last)
            # The whole backbone is `forward` (which adds multi-block taps where set); a prefix is `forward_groups`.
            out = backbone(inputs) if boundary >= len(backbone.group_names) else backbone.forward_groups(
                inputs, 0, boundary
            )
        if isinstance(out, dict):
            parts.append({k: _store_dtype(v, keep_float32) for k, v in out.items()})
        else:
            parts.append(_store_dtype(out, keep_float32))
        labels.append(batch_labels.cpu())
        if progress is not None:
            progress(index + 1, total)
        if stop_requested is not None and stop_requested():
            return None
    if not parts:
        raise ValueError("Cannot cache states of an empty split.")
    # Concatenating outside inference mode turns inference tensors into ordinary ones that autograd may use.
    return CachedStates(states=_stack(parts), labels=torch.cat(labels))
