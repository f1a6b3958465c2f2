"""The feature / activation cache: keys, stacking (images and padded text), disk round trips, stopping."""

from __future__ import annotations

import torch

from core import features
from core.features import CachedStates, cache_key, compute_states, load_cached, store_cached, weights_digest
from tests.tiny import TinyCNN


def _loader(batches: int = 3, size: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        (torch.randn(size, 3, 32, 32, generator=generator), torch.arange(size) % 3) for _ in range(batches)
    ]


def test_weights_digest_follows_the_weights() -> None:
    torch.manual_seed(0)
    first, second = TinyCNN(), TinyCNN()
    assert weights_digest([first.stem]) == weights_digest([first.stem])
    assert weights_digest([first.stem]) != weights_digest([second.stem])
    second.load_state_dict(first.state_dict())
    assert weights_digest(first.groups()) == weights_digest(second.groups())


def test_cache_key_changes_with_every_ingredient() -> None:
    base = ("data", "timm:efficientnet_lite0", "w1", 9, "pre", "bf16")
    keys = {cache_key(*base)}
    for index, other in enumerate(("data2", "timm:other", "w2", 5, "pre2", "fp32")):
        changed = list(base)
        changed[index] = other
        keys.add(cache_key(*changed))
    assert len(keys) == 7


def test_compute_states_matches_the_frozen_groups_and_stops_on_request() -> None:
    torch.manual_seed(0)
    backbone = TinyCNN().eval()
    loader = _loader()
    cached = compute_states(backbone, loader, boundary=3, device=torch.device("cpu"))
    assert cached is not None and len(cached) == 12 and cached.states.shape == (12, 16)
    assert not cached.states.is_inference()  # usable by autograd in training
    with torch.no_grad():
        expected = torch.cat([backbone(batch) for batch, _ in loader])
    assert torch.allclose(cached.states, expected, atol=1e-6)

    halfway = compute_states(backbone, loader, boundary=1, device=torch.device("cpu"), keep_float32=False)
    assert halfway is not None and halfway.states.dtype == torch.bfloat16 and halfway.states.shape[1:] == (8, 16, 16)

    calls: list[int] = []
    stopped = compute_states(
        backbone, loader, 3, torch.device("cpu"), stop_requested=lambda: True, progress=lambda i, n: calls.append(i)
    )
    assert stopped is None and calls == [1]


def test_text_states_are_padded_when_stacked_and_trimmed_per_batch() -> None:
    parts = [
        {"hidden": torch.ones(2, 3, 4), "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]])},
        {"hidden": torch.ones(1, 5, 4), "attention_mask": torch.tensor([[1, 1, 1, 1, 1]])},
    ]
    stacked = features._stack(parts)
    assert stacked["hidden"].shape == (3, 5, 4) and stacked["attention_mask"].shape == (3, 5)
    assert stacked["attention_mask"][0].tolist() == [1, 1, 1, 0, 0]
    cached = CachedStates(states=stacked, labels=torch.tensor([0, 1, 0]))
    batch = cached.batch(torch.tensor([0, 1]))
    assert batch["hidden"].shape == (2, 3, 4) and batch["attention_mask"].shape == (2, 3)
    assert cached.batch(torch.tensor([2]))["hidden"].shape == (1, 5, 4)


def test_disk_round_trip_and_memory_budget() -> None:
    features.MEMORY.clear()
    image = CachedStates(states=torch.randn(4, 16), labels=torch.tensor([0, 1, 2, 0]))
    text = CachedStates(
        states={"hidden": torch.randn(2, 3, 4), "attention_mask": torch.ones(2, 3, dtype=torch.long)},
        labels=torch.tensor([1, 0]),
    )
    store_cached("k1", {"train": image, "val": text}, to_disk=True)
    features.MEMORY.clear()
    loaded = load_cached("k1")
    assert loaded is not None
    assert torch.equal(loaded["train"].states, image.states) and torch.equal(loaded["train"].labels, image.labels)
    assert torch.equal(loaded["val"].states["hidden"], text.states["hidden"])
    assert load_cached("unknown") is None

    small = features._MemoryCache(budget=image.nbytes + 1)
    small.put("a", {"train": image})
    small.put("b", {"train": image})
    assert small.get("a") is None and small.get("b") is not None  # least recently used goes first
