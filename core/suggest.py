"""What should I label next? Rank unlabelled examples by how much a label would likely teach the trained model.

Labelling is the expensive part of a small-data project. A label on an example the model already classifies with
confidence changes little; a label where it hesitates between two classes moves its decision boundary. So the
delivered model (the one the Test page tests and `predict` uses) scores every unlabelled example, and the list
puts first the examples it is least sure about, without spending several labels on near-copies of one hard case.

The method, and why:

1. **Uncertainty: the margin** between the model's two most likely classes (small = it hesitates between two
   answers; margin sampling, Scheffer et al. 2001). Margin is what a single new label acts on: the boundary
   between those two classes. The **entropy** of all class probabilities (divided by its maximum, so 1 = evenly
   spread) breaks ties: at the same margin, an example spread over more classes is the less certain one.
2. **Diversity: a greedy walk over the most uncertain pool.** The K most uncertain examples are often several
   copies of one hard case (a burst of the same photo, one ambiguous phrasing sent twice); labelling all of them
   teaches hardly more than labelling one. Candidates are the `POOL_FACTOR` x K most uncertain examples; each
   next pick maximises

       (1 - margin) x (1 - DIVERSITY_WEIGHT x likeness)

   where likeness compares the candidate's pooled backbone features (what the model's head reads) with those of
   the closest example already picked: their cosine similarity rescaled so that a pair as alike as a typical pair
   of the examples given counts 0 and an identical one 1 (raw cosines of pooled CNN features are all high, so the
   raw number would not mean "alike" on every backbone). The penalty is a share of the candidate's own
   uncertainty, so diversity can reorder uncertain examples but never lifts one the model is sure about above
   them. A near-copy of a pick (likeness >= `NEAR_DUPLICATE`) is the exception: it is not taken while any other
   candidate is left, since its label would teach nothing the first one's did not.

   Chosen over k-center on the pool (Sener & Savarese 2018): k-center keeps uncertainty only for its first pick
   and then takes whatever lies farthest in feature space, which on a small pool is often an outlier the model is
   already fairly sure about; the penalised greedy keeps the order "most uncertain first" and departs from it only
   to skip look-alikes, which is also easy to say in the list's "why" column.

Exact copies of labelled examples (the same text once case and spacing are ignored; the same image file) need no
labelling: they are left out of the list and reported with the label they already have. Near-copies of labelled
examples are not looked for (that would need the features of every labelled example).

A model without a separate backbone and head (an exported bundle's TorchScript model) has no pooled features to
read; its class probabilities are then the space diversity is measured in, and the result says so.

Entry points: `read_unlabelled(paths, modality)` (files, folders, zips, CSV / .txt) or `read_uploads(...)` (the
Test page's uploads) -> `Unlabelled`; `suggest_labels(model, preprocessor, classes, unlabelled)` -> `Suggestions`;
`rank_for_labelling(probabilities, features, top)` is the ranking alone, on arrays.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from core import data, evaluation
from core.dataset import Dataset
from core.paths import file_sha256

log = logging.getLogger(__name__)

#: How many more candidates than suggestions the diversity step chooses from (the most uncertain ones).
POOL_FACTOR = 3
#: The share of its uncertainty a candidate loses when it is as alike to an earlier pick as can be.
DIVERSITY_WEIGHT = 1.0
#: Likeness (see `likeness`) at and above which two examples count as near-copies. Measured on the sample digits
#: (EfficientNet-Lite0): a scan shifted by 3 pixels or saved as JPEG is 0.76-0.92 like its original, while 99 % of
#: pairs of different scans are under 0.62; on the sample texts a message with "!" for "." is 0.95, different ones
#: at most 0.67.
NEAR_DUPLICATE = 0.75
#: What is shown when an image could not be read, by `data.inspect_image`'s problem code.
_IMAGE_PROBLEMS = {"not_image": "not an image", "damaged": "damaged or truncated", "too_large": "too large to open"}
_TABLE_SUFFIXES = (".csv", ".tsv", ".tab")


class SuggestInputError(ValueError):
    """The unlabelled examples cannot be used (no images in a zip, a CSV without a text column, nothing readable)."""


@dataclass
class Unlabelled:
    """Unlabelled examples ready for the model.

    Attributes:
        items: what the model reads: image file paths, or the texts.
        names: what the user calls each one: a file's path inside its zip or folder, an upload's name, the text.
        skipped: inputs that could not be read, each as "name (why)"; the rest are still ranked.
    """

    items: list[str]
    names: list[str]
    skipped: list[str] = field(default_factory=list)


@dataclass
class Suggestion:
    """One row of the list: an example to label, with the model's guess and why it is on the list."""

    rank: int
    input: str
    guess: str
    probability: float
    runner_up: str
    runner_up_probability: float
    margin: float
    entropy: float
    why: str
    item: str  # what the model read (the image path the page shows), not written to the CSV


#: The columns of the CSV, the JSON and the page's table, in order.
COLUMNS = ("rank", "input", "guess", "probability", "runner_up", "runner_up_probability", "margin", "entropy", "why")


@dataclass
class Suggestions:
    """The ranked list and what else the user should know about the examples given.

    Attributes:
        rows: the examples to label next, best first.
        examined: how many unlabelled examples the model scored.
        skipped: inputs that could not be read ("name (why)").
        already_labelled: (input, its label) for exact copies of labelled examples, left out of the list.
        feature_space: what diversity was measured on: "backbone features" or "class probabilities".
    """

    rows: list[Suggestion]
    examined: int
    skipped: list[str] = field(default_factory=list)
    already_labelled: list[tuple[str, str]] = field(default_factory=list)
    feature_space: str = "backbone features"

    def table(self) -> pd.DataFrame:
        """The list as a table with `COLUMNS` (what the CSV holds)."""
        return pd.DataFrame([{column: getattr(row, column) for column in COLUMNS} for row in self.rows],
                            columns=list(COLUMNS))

    def to_csv(self) -> str:
        return self.table().to_csv(index=False)

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready (what `suggest-labels --json` prints)."""
        return {
            "examined": self.examined,
            "feature_space": self.feature_space,
            "skipped": list(self.skipped),
            "already_labelled": [{"input": name, "label": label} for name, label in self.already_labelled],
            "suggestions": [{key: value for key, value in asdict(row).items() if key != "item"} for row in self.rows],
        }


# --------------------------------------------------------------------------------------------------- ranking


@dataclass
class _Pick:
    index: int  # into the arrays given to rank_for_labelling
    margin: float
    entropy: float
    closest_rank: int | None  # the earlier pick it is most like (1-based), None for the first
    likeness: float  # how alike it is to that pick (see `likeness`)
    near_duplicate: bool
    passed_over: int  # more uncertain candidates not taken at this step (they resemble earlier picks)


def uncertainty(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(margin between the two most likely classes, entropy divided by its maximum) of each row of probabilities."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    classes = probabilities.shape[1]
    ordered = -np.sort(-probabilities, axis=1)
    margin = ordered[:, 0] - (ordered[:, 1] if classes > 1 else 0.0)
    spread = -(probabilities * np.log(np.clip(probabilities, 1e-12, 1.0))).sum(axis=1)
    return margin, spread / math.log(classes) if classes > 1 else np.zeros(len(probabilities))


def _typical_similarity(unit: np.ndarray, most: int = 500) -> float:
    """The median cosine similarity between two of the examples (at most `most` of them, evenly spread, are used)."""
    chosen = unit[np.unique(np.linspace(0, len(unit) - 1, min(len(unit), most)).astype(int))]
    similarity = chosen @ chosen.T
    off_diagonal = similarity[~np.eye(len(chosen), dtype=bool)]
    return float(np.median(off_diagonal)) if off_diagonal.size else 0.0


def likeness(unit: np.ndarray, typical: float) -> np.ndarray:
    """Cosine similarity of unit vectors rescaled: 0 = no more alike than a typical pair of the examples, 1 = the
    same. Pooled CNN features are all fairly alike in raw cosine (a median of 0.92 between different sample digits,
    0.13 between different sample texts), so only the rescaled number means the same on every backbone."""
    raw = np.clip(unit @ unit.T, -1.0, 1.0)
    scaled = np.clip((raw - typical) / max(1.0 - typical, 1e-6), 0.0, 1.0)
    scaled[raw >= 1.0 - 1e-6] = 1.0
    return scaled


def rank_for_labelling(probabilities: np.ndarray, features: np.ndarray, top: int) -> list[_Pick]:
    """The `top` examples to label next: most uncertain first, look-alikes of earlier picks pushed down.

    See the module docstring for the method. Ties keep the uncertainty order (margin, then entropy, then input
    order), so the result is deterministic.

    Args:
        probabilities: the model's class probabilities [N, C].
        features: one vector per example [N, F] (pooled backbone features) for the diversity step.
        top: how many to pick (fewer when there are fewer examples).
    """
    if top < 1:
        raise ValueError(f"Ask for at least one suggestion (got top = {top}).")
    probabilities = np.asarray(probabilities, dtype=np.float64)
    features = np.asarray(features, dtype=np.float64).reshape(len(probabilities), -1)
    if len(probabilities) == 0:
        return []
    margin, entropy = uncertainty(probabilities)
    by_uncertainty = np.lexsort((np.arange(len(margin)), -entropy, margin))
    pool = by_uncertainty[: min(len(margin), POOL_FACTOR * top)]
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    alike = likeness(unit[pool], _typical_similarity(unit))
    gain = 1.0 - margin[pool]
    closest = np.zeros(len(pool))  # likeness to the closest pick so far
    closest_rank = np.zeros(len(pool), dtype=int)  # that pick's rank (0: none yet)
    taken = np.zeros(len(pool), dtype=bool)
    picks: list[_Pick] = []
    for rank in range(1, min(top, len(pool)) + 1):
        fresh = ~taken & (closest < NEAR_DUPLICATE)
        if fresh.any():
            allowed, score = fresh, gain * (1.0 - DIVERSITY_WEIGHT * closest)
        else:  # only near-copies of picks are left: take them by uncertainty alone
            allowed, score = ~taken, gain
        best = int(np.where(allowed, score, -np.inf).argmax())
        index = int(pool[best])
        picks.append(_Pick(
            index=index, margin=float(margin[index]), entropy=float(entropy[index]),
            closest_rank=int(closest_rank[best]) or None, likeness=float(closest[best]),
            near_duplicate=bool(closest[best] >= NEAR_DUPLICATE), passed_over=int((~taken[:best]).sum()),
        ))
        taken[best] = True
        nearer = (alike[best] >= closest) & ~taken
        closest_rank[nearer] = rank
        closest[nearer] = alike[best][nearer]
    return picks


def _why(pick: _Pick, guess: str, probability: float, runner_up: str, runner_up_probability: float) -> str:
    """Why this example is on the list, in a sentence a person labelling it can use."""
    if pick.margin < 0.5:
        hesitation = f"torn between {guess} ({probability:.0%}) and {runner_up} ({runner_up_probability:.0%})"
    else:
        hesitation = f"leans to {guess} ({probability:.0%}), next {runner_up} ({runner_up_probability:.0%})"
    if pick.closest_rank is None:
        return f"the most uncertain: {hesitation}"
    if pick.near_duplicate:
        return (f"{hesitation}; a near-copy of #{pick.closest_rank} (likeness {pick.likeness:.2f}), "
                "listed only because nothing else uncertain was left")
    closest = f"#{pick.closest_rank}, likeness {pick.likeness:.2f}"
    why = (f"{hesitation}; unlike the picks above" if pick.likeness < 0.25
           else f"{hesitation}; somewhat like an earlier pick ({closest}), still the most informative left")
    if pick.passed_over:
        verb = "resembles" if pick.passed_over == 1 else "resemble"
        why += f"; ahead of {data.plural(pick.passed_over, 'more uncertain example')} that {verb} earlier picks"
    return why


# --------------------------------------------------------------------------------------------------- the model


def model_outputs(
    model: nn.Module,
    preprocessor: Any,
    items: Sequence[str],
    device: str | torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, str]:
    """(class probabilities, features, what the features are) of `items` in one pass of the delivered model.

    The features are what the model's head reads (the pooled backbone output, several blocks' for multi-block
    runs), caught on their way into the head, so the probabilities are exactly `evaluation.predict_proba`'s. A
    model without a separate head (a bundle's TorchScript model) gives its probabilities as the features.
    """
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Module) or not isinstance(getattr(model, "backbone", None), nn.Module):
        probabilities = evaluation.predict_proba(model, preprocessor, items, device=device, progress=progress)
        return probabilities, probabilities, "class probabilities"
    caught: list[np.ndarray] = []
    hook = head.register_forward_pre_hook(
        lambda _module, inputs: caught.append(inputs[0].detach().float().flatten(1).cpu().numpy()))
    try:
        probabilities = evaluation.predict_proba(model, preprocessor, items, device=device, progress=progress)
    finally:
        hook.remove()
    return probabilities, np.concatenate(caught) if caught else np.zeros((0, 0)), "backbone features"


def _text_key(text: str) -> str:
    return " ".join(str(text).casefold().split())


def labelled_copies(unlabelled: Unlabelled, labelled: Dataset) -> dict[int, str]:
    """Position in `unlabelled` -> label, for each example that is an exact copy of a labelled one.

    Texts match once case and spacing are ignored; images match on the bytes of the file the model reads (a
    picture in an odd format is read from its normalised copy, named by its content, so the same picture matches
    too). Only labelled files of a size some unlabelled file has are hashed, which keeps this cheap.
    """
    rows = labelled.table[["item", "label"]].astype(str).itertuples(index=False)
    if labelled.modality == "text":
        known = {_text_key(item): label for item, label in rows}
        return {position: known[_text_key(item)] for position, item in enumerate(unlabelled.items)
                if _text_key(item) in known}
    sizes: dict[int, list[int]] = {}
    for position, item in enumerate(unlabelled.items):
        try:
            sizes.setdefault(os.stat(item).st_size, []).append(position)
        except OSError:
            continue
    known: dict[str, str] = {}
    for item, label in rows:
        try:
            if os.stat(item).st_size in sizes:
                known.setdefault(file_sha256(item), label)
        except OSError:  # a labelled file moved or deleted since: it cannot be compared
            continue
    copies = {}
    for positions in sizes.values():
        for position in positions:
            label = known.get(file_sha256(unlabelled.items[position])) if known else None
            if label is not None:
                copies[position] = label
    return copies


def suggest_labels(
    model: nn.Module,
    preprocessor: Any,
    classes: Sequence[str],
    unlabelled: Unlabelled,
    top: int = 20,
    labelled: Dataset | None = None,
    device: str | torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Suggestions:
    """The `top` unlabelled examples whose labels would likely teach `model` the most (see the module docstring).

    Args:
        model, preprocessor: the trained run's delivered model and its evaluation preprocessing (`load_model`).
        classes: the model's class names, in its output order.
        unlabelled: the examples (`read_unlabelled` / `read_uploads`).
        top: how many to suggest.
        labelled: the labelled data set, to leave out exact copies of its examples (None: not checked).
        device: where to run the model ("auto"/None: the best one present).
        progress: called with (done, total) examples scored.
    """
    if top < 1:
        raise ValueError(f"Ask for at least one suggestion (got top = {top}).")
    copies = labelled_copies(unlabelled, labelled) if labelled is not None else {}
    if copies:
        log.info("%d of the unlabelled examples are copies of labelled ones; they are left out", len(copies))
    keep = [position for position in range(len(unlabelled.items)) if position not in copies]
    items = [unlabelled.items[position] for position in keep]
    probabilities, features, space = (model_outputs(model, preprocessor, items, device, progress) if items
                                      else (np.zeros((0, len(classes))), np.zeros((0, 1)), "backbone features"))
    rows = []
    for rank, pick in enumerate(rank_for_labelling(probabilities, features, top), start=1):
        order = np.argsort(-probabilities[pick.index], kind="stable")
        first, second = int(order[0]), int(order[1] if len(order) > 1 else order[0])
        guess, runner_up = str(classes[first]), str(classes[second])
        probability, runner_up_probability = (float(probabilities[pick.index, first]),
                                              float(probabilities[pick.index, second]))
        position = keep[pick.index]
        rows.append(Suggestion(
            rank=rank, input=unlabelled.names[position], guess=guess, probability=round(probability, 6),
            runner_up=runner_up, runner_up_probability=round(runner_up_probability, 6),
            margin=round(pick.margin, 6), entropy=round(pick.entropy, 6),
            why=_why(pick, guess, probability, runner_up, runner_up_probability), item=unlabelled.items[position],
        ))
    log.info("Scored %d unlabelled examples; suggested %d (diversity on %s)", len(items), len(rows), space)
    return Suggestions(rows=rows, examined=len(items), skipped=list(unlabelled.skipped),
                       already_labelled=[(unlabelled.names[position], label) for position, label in copies.items()],
                       feature_space=space)


# --------------------------------------------------------------------------------------------------- inputs


def _texts_from_table(frame: pd.DataFrame, name: str, text_column: str | None) -> list[str]:
    """The texts of a table: the column asked for, else one named like a text column, else the only column."""
    columns = [str(column) for column in frame.columns]
    listed = ", ".join(f"`{column}`" for column in columns) or "none"
    if text_column is not None:
        if text_column not in columns:
            raise SuggestInputError(f"`{name}` has no column `{text_column}`; its columns are {listed}.")
        column = text_column
    else:
        named = [column for column in columns if column.strip().lower() in data.TEXT_COLUMNS]
        if named:
            column = named[0]
        elif len(columns) == 1:
            column = columns[0]
        else:
            raise SuggestInputError(
                f"`{name}` has no text column: its columns are {listed}, and none is named `text` (or message, "
                "sentence, review, ...). Rename the column that holds the texts to `text`, or upload a .txt file "
                "with one text per line.")
    texts = [str(value).strip() for value in frame[column].tolist()]
    texts = [text for text in texts if text]
    if texts and pd.to_numeric(pd.Series(texts), errors="coerce").notna().all():
        raise SuggestInputError(f"Column `{column}` of `{name}` holds numbers, not texts. Give the column that holds "
                                "the texts (named `text`), or a .txt file with one text per line.")
    if not texts:
        raise SuggestInputError(f"Column `{column}` of `{name}` is empty: there is no text to rank.")
    return texts


def _texts_from_file(content: bytes, name: str, text_column: str | None) -> list[str]:
    if name.lower().endswith(_TABLE_SUFFIXES):
        try:
            return _texts_from_table(data.read_table(content, name=name), name, text_column)
        except data.DataError as error:
            raise SuggestInputError(str(error)) from error
    if not name.lower().endswith(".txt"):
        raise SuggestInputError(f"`{name}` is neither a CSV nor a .txt file. Give a CSV with a `text` column, or a "
                                ".txt file with one text per line.")
    if b"\x00" in content[:65536]:
        raise SuggestInputError(f"`{name}` is not a text file (it holds binary data). Save it as plain text (UTF-8).")
    texts = [line.strip() for line in content.decode("utf-8-sig", errors="replace").splitlines()]
    texts = [text for text in texts if text]
    if not texts:
        raise SuggestInputError(f"`{name}` is empty: give one text per line.")
    return texts


def _checked_images(found: Sequence[tuple[str, Path]]) -> Unlabelled:
    """Every image decoded in full (`data.inspect_image`); unreadable ones are named in `skipped`, not fatal."""
    items, names, skipped = [], [], []
    for name, path in found:
        _, usable, problem = data.inspect_image(Path(path))
        if usable is None:
            skipped.append(f"{name} ({_IMAGE_PROBLEMS.get(problem or '', problem)})")
        else:
            items.append(str(usable))
            names.append(name)
    if not items:
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        raise SuggestInputError(f"None of the {data.plural(len(found), 'file')} could be read as an image: {shown}. "
                                "Give PNG, JPEG, BMP, GIF, WebP or TIFF files.")
    return Unlabelled(items, names, skipped)


def _images_in_folder(folder: Path) -> list[tuple[str, Path]]:
    found = [(path.relative_to(folder).as_posix(), path) for path in sorted(folder.rglob("*"))
             if path.is_file() and path.suffix.lower() in data.IMAGE_EXTENSIONS
             and not any(part.startswith(".") or part in data.JUNK_NAMES for part in path.relative_to(folder).parts)]
    if not found:
        raise SuggestInputError(f"`{folder}` holds no images ({', '.join(sorted(data.IMAGE_EXTENSIONS))}).")
    return found


def _require_images_or_texts(modality: str) -> None:
    if modality not in ("image", "text"):
        raise SuggestInputError(f"Suggestions are built for image and text models; this model takes {modality} "
                                "(not built yet for it).")


def read_unlabelled(paths: Sequence[str | Path], modality: str, text_column: str | None = None) -> Unlabelled:
    """Unlabelled examples from files on disk: for images, image files, folders and zips (any folders inside are
    ignored, each file named by its path in them); for texts, CSV files (a `text` column) or .txt files (one per
    line).

    Raises:
        SuggestInputError: a path is missing or of the wrong kind, a zip or folder holds no image, a CSV has no text
            column, or nothing at all could be read.
    """
    _require_images_or_texts(modality)
    missing = [str(path) for path in paths if not Path(path).exists()]
    if missing:
        raise SuggestInputError(f"Not found: {', '.join(missing)}.")
    if modality == "text":
        texts: list[str] = []
        for path in map(Path, paths):
            if path.is_dir():
                raise SuggestInputError(f"`{path}` is a folder; give a CSV with a `text` column or a .txt file.")
            texts += _texts_from_file(path.read_bytes(), path.name, text_column)
        return Unlabelled(texts, list(texts))
    found: list[tuple[str, Path]] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += _images_in_folder(path)
        elif path.suffix.lower() == ".zip":
            found += _images_in_zip(path, path.name)
        elif path.suffix.lower() in data.IMAGE_EXTENSIONS:
            found.append((path.name, path))
        else:
            raise SuggestInputError(f"`{path.name}` is not an image, a folder of images or a zip of images.")
    return _checked_images(found)


def _images_in_zip(source: bytes | Path, name: str) -> list[tuple[str, Path]]:
    try:
        return data.images_in_zip(source, name=name)
    except data.DataError as error:
        raise SuggestInputError(str(error)) from error


def read_uploads(
    uploads: Sequence[tuple[str, bytes]], modality: str, folder: Path, text_column: str | None = None
) -> Unlabelled:
    """Unlabelled examples from uploaded files (name, content), as the Test page receives them.

    Images are written under `folder` (one sub-folder per content, the user's file name kept, so messages name the
    file they know); a zip is extracted safely by `data.images_in_zip`. Raises `SuggestInputError` as
    `read_unlabelled` does.
    """
    _require_images_or_texts(modality)
    if not uploads:
        raise SuggestInputError("Upload the examples to rank first.")
    if modality == "text":
        texts = [text for name, content in uploads for text in _texts_from_file(content, name, text_column)]
        return Unlabelled(texts, list(texts))
    found: list[tuple[str, Path]] = []
    for name, content in uploads:
        if name.lower().endswith(".zip"):
            found += _images_in_zip(content, name)
            continue
        safe_name = re.sub(r"[^\w.\- ]", "_", Path(name).name).strip() or "upload.png"
        path = folder / hashlib.sha256(content).hexdigest()[:16] / safe_name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        found.append((name, path))
    return _checked_images(found)


# --------------------------------------------------------------------------------------------------- command line


def _labelled_of_run(model_dir: str) -> Dataset | None:
    """The labelled data a run trained on, as its `job.json` recorded it (None for a bundle or an older run)."""
    from core import workers

    try:
        return workers.read_job_file(model_dir).dataset
    except (FileNotFoundError, ValueError, KeyError, json.JSONDecodeError) as error:
        log.info("Copies of labelled examples are not checked: %s", str(error).split(":")[0])
        return None


def main_suggest_labels(args: argparse.Namespace) -> int:
    """`python -m core suggest-labels --model RUN_DIR --data UNLABELLED [--top 20] [--json] [--out list.csv]`."""
    try:
        model, preprocessor, run_info = evaluation.load_model(args.model)
        classes, modality = list(run_info["classes"]), str(run_info["modality"])  # run.json or a bundle's record
        unlabelled = read_unlabelled(args.data, modality, text_column=getattr(args, "text_column", None))
        result = suggest_labels(model, preprocessor, classes, unlabelled, top=args.top,
                                labelled=_labelled_of_run(args.model), device=getattr(args, "device", None))
        if args.out:
            Path(args.out).expanduser().parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).expanduser().write_text(result.to_csv(), encoding="utf-8")
    except (evaluation.ModelLoadError, SuggestInputError, OSError, ValueError, RuntimeError) as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    for skipped in result.skipped:
        log.warning("Skipped (cannot be read): %s", skipped)
    for name, label in result.already_labelled:
        log.info("Already labelled (an exact copy): %s = %s", name, label)
    if args.json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
        return 0
    writer = csv.writer(sys.stdout, delimiter="\t", lineterminator="\n")
    table = result.table()
    writer.writerow(table.columns)
    for row in table.itertuples(index=False):
        writer.writerow([f"{value:.4f}" if isinstance(value, float) else value for value in row])
    if args.out:
        log.info("Wrote the list of %d to %s", len(result.rows), args.out)
    return 0
