"""How long a clip a sound backbone hears: the run's choice, or "auto" from the lengths of the data's own clips.

Every catalogue entry for sound cuts each clip to its own length (the loudest 1 s for the spectrogram CNN and the
speech models, 10.24 s for AST). That suits spoken words; a bird call or a machine noise of 4 s would lose most of
itself. A run's `TrainConfig.clip_seconds` says what to hear instead:

- a number: every clip is cut (around its loudest part) or padded with silence to that many seconds;
- "auto" (the default): the entry's own length, unless the clips are clearly longer (their median more than a
  quarter above it): then their median, to the half second, at most 10 s. Whole clips, then, as PANNs and AST
  hear ESC-50's 5 s clips; and a set of 1 s words keeps the length the sample's numbers were measured at.

The chosen length travels in the backbone's name (`efficientnet_lite0_audio@2s`, `core.backbones.clip_variant`): the
run records it, and prediction, export and the baselines read it back from there.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Sequence

import numpy as np

from core._backbone_catalogue import clip_range
from core._train_config import TrainConfig
from core.backbones import base_name, clip_variant, get_spec
from core.dataset import Dataset

#: "auto" rounds the median clip length to this step (seconds)...
AUTO_STEP = 0.5
#: ... and goes no longer than this: a longer clip rarely holds one sound, and costs more than it tells.
AUTO_LONGEST = 10.0
#: "auto" keeps the entry's length until the median clip is this much longer.
AUTO_MARGIN = 1.25
#: The lengths offered besides "auto" and the entry's own (seconds).
OFFERED = (0.5, 1.0, 2.0, 3.0, 5.0, 10.0)

_DURATIONS: dict[str, np.ndarray] = {}
_DURATIONS_LOCK = threading.Lock()


def clip_durations(items: Sequence[str]) -> np.ndarray:
    """The length of each clip file in seconds, read from the file headers (nothing is decoded)."""
    import soundfile

    return np.array([soundfile.info(str(item)).duration for item in items], dtype=float)


def dataset_durations(dataset: Dataset) -> np.ndarray:
    """`clip_durations` of every clip of `dataset`, remembered per data set (its fingerprint)."""
    with _DURATIONS_LOCK:
        known = _DURATIONS.get(dataset.fingerprint)
    if known is None:
        known = clip_durations(dataset.table["item"].astype(str).tolist())
        with _DURATIONS_LOCK:
            _DURATIONS[dataset.fingerprint] = known
    return known


def auto_clip_seconds(durations: Sequence[float] | np.ndarray, own_seconds: float) -> float:
    """The "auto" length for clips of these `durations` on a backbone whose entry hears `own_seconds`."""
    lengths = np.asarray(durations, dtype=float)
    if not len(lengths):
        return own_seconds
    median = float(np.median(lengths))
    if median <= own_seconds * AUTO_MARGIN:
        return own_seconds
    rounded = math.floor(median / AUTO_STEP + 0.5) * AUTO_STEP
    return min(max(own_seconds, rounded), max(own_seconds, AUTO_LONGEST))


def own_seconds(backbone_name: str) -> float:
    """The clip length of the catalogue entry itself (without a chosen length)."""
    return float(get_spec(base_name(backbone_name)).extra["audio"]["clip_seconds"])


def offered_lengths(backbone_name: str) -> list[float]:
    """The clip lengths to offer for this backbone (the page's choice): its own and those of `OFFERED` it can take."""
    low, high = clip_range(get_spec(base_name(backbone_name)))
    return [seconds for seconds in sorted({own_seconds(backbone_name), *OFFERED}) if low <= seconds <= high]


def chosen_seconds(dataset: Dataset, backbone_name: str, clip_seconds: float | str = "auto") -> float:
    """The clip length a run hears: `clip_seconds`, or the "auto" length for `dataset`'s clips."""
    if clip_seconds != "auto":
        return float(clip_seconds)
    own = own_seconds(backbone_name)
    return auto_clip_seconds(dataset_durations(dataset), own)


def backbone_for(dataset: Dataset, backbone_name: str, clip_seconds: float | str = "auto") -> str:
    """The backbone name a run on `dataset` trains: for sound, `backbone_name` hearing the chosen clip length.

    Images and texts keep the name as it is. A name that already carries a length keeps it under "auto" (a resumed
    run, or a caller that chose through the name).

    Raises:
        ValueError: the length is out of the backbone's range (`core.backbones.CLIP_SECONDS_RANGE`).
    """
    if dataset.modality != "audio" or get_spec(backbone_name).modality != "audio":
        return backbone_name
    if clip_seconds == "auto" and base_name(backbone_name) != backbone_name:
        return backbone_name
    return clip_variant(backbone_name, chosen_seconds(dataset, backbone_name, clip_seconds))


def resolve(config: TrainConfig, dataset: Dataset) -> TrainConfig:
    """`config` with the backbone name carrying the clip length the run hears, and `clip_seconds` that number.

    Idempotent: a resolved config comes back unchanged. Images and texts come back as they are.
    """
    if dataset.modality != "audio" or get_spec(config.backbone).modality != "audio":
        return config
    backbone = backbone_for(dataset, config.backbone, config.clip_seconds)
    seconds = float(get_spec(backbone).extra["audio"]["clip_seconds"])
    if backbone == config.backbone and config.clip_seconds == seconds:
        return config
    return dataclasses.replace(config, backbone=backbone, clip_seconds=seconds)


__all__ = [
    "AUTO_LONGEST", "AUTO_MARGIN", "AUTO_STEP", "OFFERED", "auto_clip_seconds", "backbone_for", "chosen_seconds",
    "clip_durations", "dataset_durations", "offered_lengths", "own_seconds", "resolve",
]
