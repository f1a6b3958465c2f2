"""The frozen layers' states a run trains on, from the feature cache or computed once (`core.features` stores them).

`cached_states` is what a run, the background warm-up (`prepare_features`) and the data insights
(`frozen_features`) share: the same key, precision and memory format, so whichever comes first computes the
states and the others reuse them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch

from core import backbones, clip_length
from core import distributed as scale_out
from core import features as feature_cache
from core._train_config import TrainConfig, feature_taps
from core._train_device import _loader, autocast_factory, resolve_precision, uses_channels_last
from core.backbones import Backbone
from core.contracts import StepEnd
from core.dataset import Dataset
from core.devices import pick as pick_device
from core.preprocess import make_preprocessor, uses_feature_extractor

#: Examples per batch of the feature pass. An audio foundation model sees a long sequence per clip (AST: about 1,200
#: patch tokens, whatever the clip's length), so its batches stay small: at 128 clips one attention layer's scores
#: alone would be about 9 GB in fp32.
CACHE_BATCH = {"image": 64, "foundation audio": 8, "other": 128}


def cache_batch_size(spec: Any) -> int:
    """How many examples one batch of the feature pass holds for this backbone (`CACHE_BATCH`)."""
    if spec.modality == "image":
        return CACHE_BATCH["image"]
    return CACHE_BATCH["foundation audio" if uses_feature_extractor(spec) else "other"]


def cached_states(
    backbone: Backbone,
    splits: dict[str, tuple[list[str], list[int]]],
    boundary: int,
    preprocessor: Any,
    fingerprint: str,
    device: torch.device,
    precision: str,
    channels_last: bool,
    to_disk: bool,
    stop_requested: Callable[[], bool] | None = None,
    emit: Callable[[str, StepEnd], None] | None = None,
    distributed: scale_out.Distributed | None = None,
    train: bool = False,
) -> tuple[dict[str, feature_cache.CachedStates] | None, bool]:
    """The states after the first `boundary` groups for every split: from the cache, else computed and stored.

    `train` loads the examples as for training (the preprocessor's augmentation): augmented views, whose
    `fingerprint` must then name the view and its seed (the caller seeds the random generators).

    One computation per key at a time: a caller that finds another one computing the same key (the background
    warm-up of `prepare_features`, a second session) waits for it and reuses its result instead of doing it again.
    Returns (states, reused), or (None, False) when `stop_requested()` turned true.

    With several processes (`distributed`), every rank calls this alike: each computes every N-th example of each
    split and the shares are gathered, so every rank holds all the states; the first process on each machine writes
    them to disk. There is no stopping half-way then (the other ranks would wait for a share that never comes).
    """
    taps = backbone.tap_groups if boundary >= len(backbone.group_names) else ()
    key = feature_cache.cache_key(
        fingerprint,
        f"{backbone.spec.source}:{backbone.spec.name}" + (f"+taps{','.join(map(str, taps))}" if taps else ""),
        feature_cache.weights_digest(backbone.groups()[:boundary]),
        boundary,
        str(getattr(preprocessor, "cache_key", "")),
        precision,
    )
    with feature_cache.key_lock(key):
        cached = feature_cache.load_cached(key)
        if distributed is not None and distributed.sum([cached is None])[0] > 0:
            cached = None  # all ranks compute their shares unless every one of them has the states already
        if cached is not None:
            return cached, True
        total_examples = sum(len(items) for items, _ in splits.values())
        if distributed is not None:  # each rank counts its own shares
            stop_requested = None
            total_examples = sum(len(distributed.eval_share(len(items))) for items, _ in splits.values())
        batch_size = cache_batch_size(backbone.spec)
        autocast = autocast_factory(device, precision)
        done = 0
        result: dict[str, feature_cache.CachedStates] = {}
        for name, (items, labels) in splits.items():
            if not items:
                continue
            count = len(items)
            if distributed is not None:  # this rank's share: every N-th example
                share = distributed.eval_share(count).tolist()
                items, labels = [items[index] for index in share], [labels[index] for index in share]
            loader = _loader(items, labels, preprocessor, train=train, batch_size=batch_size)

            def progress(
                index: int, _total: int, offset: int = done, size: int = len(items), split: str = name
            ) -> None:
                if emit is not None:
                    finished = min(offset + index * batch_size, offset + size)
                    emit("on_step_end", StepEnd(phase="features", progress=finished / total_examples,
                                                done=finished, total=total_examples, split=split))

            states = feature_cache.compute_states(
                backbone, loader, boundary, device, autocast=autocast, channels_last=channels_last,
                keep_float32=to_disk or precision == "fp32", stop_requested=stop_requested, progress=progress,
            ) if items else None
            if distributed is not None:
                states = _gathered_states(distributed, states, count)
            if states is None:
                return None, False
            result[name] = states
            done += len(items)
        on_disk = to_disk and (distributed is None or distributed.is_local_main)  # one writer for each machine
        feature_cache.store_cached(key, result, to_disk=on_disk)
        return result, False


def _gathered_states(
    distributed: scale_out.Distributed, share: feature_cache.CachedStates | None, count: int
) -> feature_cache.CachedStates:
    """Every rank's share of one split's states (every N-th example each), put back in the split's order."""
    shares = distributed.gather(share)
    positions = torch.cat([distributed.eval_share(count, rank) for rank, part in enumerate(shares) if part is not None])
    present = [part for part in shares if part is not None]
    states = feature_cache._stack([part.states for part in present])
    labels = torch.cat([part.labels for part in present])
    back = torch.argsort(positions)  # row i of the split is row back[i] of the stacked shares
    if isinstance(states, dict):
        return feature_cache.CachedStates({k: v.index_select(0, back) for k, v in states.items()}, labels[back])
    return feature_cache.CachedStates(states.index_select(0, back), labels[back])


def prepare_features(
    dataset: Dataset, backbone_name: str, device: str = "auto", stop_event: threading.Event | None = None
) -> bool:
    """Compute and cache the frozen backbone's features for `dataset` ahead of training (feature extraction).

    The app calls this in the background as soon as data and backbone are chosen, so that pressing Train with every
    group frozen finds the features ready and draws its first point within seconds. It computes exactly what `fit`
    would (same key, precision, memory format), so `fit` reuses it. Returns True when the features are cached.
    """
    return frozen_features(dataset, backbone_name, device, stop_event) is not None


def frozen_features(
    dataset: Dataset, backbone_name: str, device: str = "auto", stop_event: threading.Event | None = None,
    emit: Callable[[str, StepEnd], None] | None = None,
) -> dict[str, feature_cache.CachedStates] | None:
    """The features feature extraction trains on, per split: from the cache when a run or the warm-up made them.

    None when the backbone is for another modality or `stop_event` was set while computing. `emit` hears the
    computation's progress ("on_step_end" with done / total examples); it is not called when the cache had them.
    """

    if backbones.get_spec(backbone_name).modality != dataset.modality:
        return None
    backbone_name = clip_length.backbone_for(dataset, backbone_name)  # sound: the "auto" clip length a run hears
    backbone = backbones.load_backbone(backbone_name, pretrained=True)
    num_groups = len(backbone.group_names)
    default = TrainConfig(backbone_name, frozen_groups=num_groups)  # what the Train page runs for feature extraction
    backbone.set_feature_taps(feature_taps(backbone.spec, default, num_groups, num_groups))
    torch_device = pick_device(device)
    precision = resolve_precision("auto", torch_device)
    channels_last = uses_channels_last(dataset.modality, torch_device)
    backbone.to(torch_device)
    if channels_last:
        backbone.to(memory_format=torch.channels_last)
    splits = {name: dataset.split(name) for name in ("train", "val", "test")}
    states, _ = cached_states(
        backbone, splits, len(backbone.group_names), make_preprocessor(backbone.spec, "none"), dataset.fingerprint,
        torch_device, precision, channels_last, to_disk=True,
        stop_requested=(stop_event.is_set if stop_event is not None else None), emit=emit,
    )
    return states
