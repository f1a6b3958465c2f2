"""Which device to compute on, and moving a batch there: one copy for the trainer, evaluation, probes and pages.

"auto" means a CUDA GPU, then Apple MPS, then the CPU, whichever is present. A device named outright is checked, so
asking for a GPU that is not there fails with a sentence rather than deep inside torch.
"""

from __future__ import annotations

from typing import Any

import torch


def mps_available() -> bool:
    """Whether Apple's Metal (MPS) backend can be used on this machine."""
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available() -> list[str]:
    """Device choices on this machine, for a selector: "auto" first, then what is really there."""
    choices = ["auto", "cpu"]
    if torch.cuda.is_available():
        choices.append("cuda")
    if mps_available():
        choices.append("mps")
    return choices


def pick(name: str | torch.device | None = "auto") -> torch.device:
    """The torch device: "auto" (or None) picks CUDA, then Apple MPS, then CPU; anything else is used as given.

    Raises:
        ValueError: when the requested device is not available on this machine.
    """
    if isinstance(name, torch.device):
        return name
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"Unknown device {name!r}: use 'auto', 'cpu', 'cuda' (or 'cuda:N') or 'mps'.") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA was requested but no CUDA GPU is available here; use device 'auto' or 'cpu'.")
    if device.type == "mps" and not mps_available():
        raise ValueError("Apple MPS was requested but is not available here; use device 'auto' or 'cpu'.")
    return device


def to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    """A batch (a tensor, or a dict of them as a tokenizer gives) on `device`; anything else is left as it is.

    With `channels_last`, image batches (4-D) take the memory layout convolutions run fastest in.
    """
    if isinstance(batch, dict):
        return {key: to_device(value, device, channels_last) for key, value in batch.items()}
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.dim() == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
    return batch


__all__ = ["available", "mps_available", "pick", "to_device"]
