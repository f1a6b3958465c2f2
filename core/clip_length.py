"""How long a clip a sound backbone hears: the run's choice, or "auto" from the lengths of the data's own clips.

Every catalogue entry for sound cuts each clip to its own length (the loudest 1 s for the spectrogram CNN and the
speech models, 10.24 s for AST). That suits spoken words; a bird call or a machine noise of 4 s would lose most of
itself. A run's `TrainConfig.clip_seconds` says what to hear instead:

- a number: every clip is cut (around its loudest part) or padded with silence to that many seconds;
- "auto" (the default): the entry's own length, unless the sound in the clips clearly lasts longer (its median
  more than a quarter above it): then that median, to the half second, at most 10 s. Whole sounds, then, as PANNs
  and AST hear ESC-50's 5 s clips; and words, even padded with silence or noise to 2 s, keep the length the
  sample's numbers were measured at. The sound's length is the span within 20 dB of the clip's loudest 20 ms
  (`sound_seconds`): spoken words padded to 2 s scored 82.6 % when heard whole and 90.3 % at the loudest 1 s.

The chosen length travels in the backbone's name (`efficientnet_lite0_audio@2s`, `core.backbones.clip_variant`): the
run records it, and prediction, export and the baselines read it back from there.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Sequence

import numpy as np

from core import audio
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
#: A frame counts as sound within this many dB of the clip's loudest frame (background noise and padding do not).
SOUND_DB = 20.0
#: The lengths offered besides "auto" and the entry's own (seconds).
OFFERED = (0.5, 1.0, 2.0, 3.0, 5.0, 10.0)

_SOUND_SECONDS: dict[str, np.ndarray] = {}
_SOUND_SECONDS_LOCK = threading.Lock()


def sound_seconds(path: str) -> float:
    """How long the sound in a clip file lasts (seconds): from the first to the last 20 ms frame within
    `SOUND_DB` of the clip's loudest frame. Silence or quiet background padding around a word does not count, so a
    1 s word padded to 2 s lasts about 1 s; a tone that goes on quietly after a loud start counts whole."""
    samples, info = audio.read_audio(str(path))
    mono, rate = audio.to_mono(samples), info.sample_rate
    frame = max(1, int(rate * 0.02))
    frames = len(mono) // frame
    if frames == 0:
        return len(mono) / rate
    energy = (mono[: frames * frame].reshape(frames, frame) ** 2).mean(axis=1)
    peak = float(energy.max())
    if peak <= 0:
        return 0.0
    loud = np.flatnonzero(energy >= peak * 10 ** (-SOUND_DB / 10))
    return float((loud[-1] - loud[0] + 1) * frame / rate)


def dataset_sound_seconds(dataset: Dataset) -> np.ndarray:
    """`sound_seconds` of every clip of `dataset`, remembered per data set (its fingerprint)."""
    with _SOUND_SECONDS_LOCK:
        known = _SOUND_SECONDS.get(dataset.fingerprint)
    if known is None:
        known = np.array([sound_seconds(item) for item in dataset.table["item"].astype(str)], dtype=float)
        with _SOUND_SECONDS_LOCK:
            _SOUND_SECONDS[dataset.fingerprint] = known
    return known


def auto_clip_seconds(durations: Sequence[float] | np.ndarray, own_seconds: float) -> float:
    """The "auto" length for clips whose sound lasts `durations` (`sound_seconds`), on a backbone whose entry hears
    `own_seconds`."""
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
    return auto_clip_seconds(dataset_sound_seconds(dataset), own)


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
    "dataset_sound_seconds", "offered_lengths", "own_seconds", "resolve", "sound_seconds",
]
