"""Name runs by what sets them apart, so two runs are compared as "9 frozen" vs "5 frozen", not by their ids.

A run id (`20250101-120000-resnet18-1a2b3c`) says when a run started, not what it tried. `differing_labels` looks at
the training settings of the runs being compared and names each run by the settings that differ between them, in a
fixed order of importance (backbone and freezing first, seed last).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

_Say = Callable[[Any], str]


def _number(word: str) -> _Say:
    return lambda value: f"{word} {value:g}" if isinstance(value, (int, float)) else f"{word} {value}"


#: The settings worth naming, most telling first, and how to say each in a few words.
SETTINGS: tuple[tuple[str, _Say], ...] = (
    ("backbone", str),
    ("frozen_groups", lambda value: f"{value} frozen"),
    ("head", lambda value: {"logistic": "logistic head", "gradient": "gradient descent"}.get(value, str(value))),
    ("epochs", lambda value: f"{value} epochs"),
    ("lr", _number("lr")),
    ("batch_size", lambda value: f"batch {value}"),
    ("augmentation", lambda value: "no augmentation" if value == "none" else f"{value} augmentation"),
    ("label_smoothing", _number("smoothing")),
    ("weight_decay", _number("weight decay")),
    ("class_weights", lambda value: "class weights" if value else "no class weights"),
    ("backbone_lr_factor", _number("backbone lr ×")),
    ("patience", lambda value: f"patience {value}"),
    ("warmup_fraction", _number("warm-up")),
    ("grad_clip", _number("clip")),
    ("protocol", str),
    ("seed", lambda value: f"seed {value}"),
)
#: What names a run when nothing sets it apart (a single run, or every setting the same).
BASICS = ("backbone", "frozen_groups")


def differing_labels(configs: Sequence[dict[str, Any]], run_ids: Sequence[str] | None = None) -> list[str]:
    """A short label per run from the settings that differ among `configs` ("efficientnet_lite0, 9 frozen").

    Args:
        configs: each run's training settings (`TrainConfig` fields as a dict, as run.json records them).
        run_ids: the runs' ids, used only to tell apart runs whose settings are all the same (their last part).

    Returns:
        One label per config, in order; labels are unique when `run_ids` are given.
    """
    differing = [key for key, _ in SETTINGS if len({repr(config.get(key)) for config in configs}) > 1]
    keys = differing or [key for key in BASICS if any(config.get(key) is not None for config in configs)]
    say = dict(SETTINGS)

    def named(config: dict[str, Any], by: Sequence[str]) -> str:
        return ", ".join(say[key](config[key]) for key in by if config.get(key) is not None)

    # a run with no value for what differs (a setting left off, or one an older version did not record: an opened
    # project's run keeps the settings it came with) is named by its basics instead
    labels = [named(config, keys) or named(config, BASICS) or "run" for config in configs]
    if run_ids is not None:
        repeated = {label for label in labels if labels.count(label) > 1}
        labels = [
            f"{label} ({run_id.rsplit('-', 1)[-1]})" if label in repeated else label
            for label, run_id in zip(labels, run_ids, strict=True)
        ]
    return labels
