"""Loader processes (`core._train_device.loader_workers`): only for images and clips on a CUDA machine, and a loader
that decodes in worker processes gives the same batches, in the same order, as one that decodes in the process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core import _train_device
from core.backbones import get_spec
from core.preprocess import make_preprocessor
from tests.tiny import TINY_SPEC, make_colour_dataset


def test_no_loader_processes_without_a_gpu_or_for_texts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRANSFER_STUDIO_LOADER_WORKERS", raising=False)
    images, texts = make_preprocessor(TINY_SPEC), make_preprocessor(get_spec("all_minilm_l6_v2"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _train_device.loader_workers(images) == 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(_train_device, "available_threads", lambda: 16)
    monkeypatch.setattr(_train_device.sys, "platform", "linux")
    assert _train_device.loader_workers(images) == _train_device.MAX_LOADER_WORKERS
    assert _train_device.loader_workers(texts) == 0
    monkeypatch.setattr(_train_device, "available_threads", lambda: 2)
    assert _train_device.loader_workers(images) == 1  # one core stays with the training process
    monkeypatch.setattr(_train_device.sys, "platform", "darwin")  # no fork for the closure: decode in the process
    assert _train_device.loader_workers(images) == 0


def test_the_setting_overrides_and_a_bad_value_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    images = make_preprocessor(TINY_SPEC)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("TRANSFER_STUDIO_LOADER_WORKERS", "3")
    assert _train_device.loader_workers(images) == 3
    monkeypatch.setenv("TRANSFER_STUDIO_LOADER_WORKERS", "many")
    assert _train_device.loader_workers(images) == 0


def test_worker_processes_give_the_same_batches_in_the_same_order(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = make_colour_dataset(tmp_path / "colours", per_class=5)
    items, labels = dataset.split("train")
    preprocessor = make_preprocessor(TINY_SPEC)

    def batches(workers: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        monkeypatch.setenv("TRANSFER_STUDIO_LOADER_WORKERS", workers)
        loader = _train_device._loader(items, labels, preprocessor, False, 4, torch.Generator().manual_seed(1),
                                       shuffle=True)
        assert loader.num_workers == int(workers)
        return list(loader)

    in_process, forked = batches("0"), batches("2")
    assert len(in_process) == len(forked) == -(-len(items) // 4)
    for (x0, y0), (x1, y1) in zip(in_process, forked, strict=True):
        assert torch.equal(y0, y1)
        assert torch.equal(x0, x1)


def test_a_seeded_augmented_view_is_the_seeds_in_worker_processes_too(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A training loader without a generator of its own (an augmented view for the logistic head) seeds its worker
    processes from the global RNG: another seed, another view; the same seed, the same view, as in the process."""
    dataset = make_colour_dataset(tmp_path / "colours", per_class=3)
    items, labels = dataset.split("train")
    augmented = make_preprocessor(TINY_SPEC, "light")
    monkeypatch.setenv("TRANSFER_STUDIO_LOADER_WORKERS", "1")

    def view(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return torch.cat([batch for batch, _ in _train_device._loader(items, labels, augmented, True, 4)])

    first = view(1)
    assert torch.equal(view(1), first) and not torch.equal(view(2), first)
