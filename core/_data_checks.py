"""The checks every kind of data gets once it is read, and the common end of every loader that runs them.

`_finish` splits the examples (or completes a split the folders gave), then looks for exact duplicates (with
different labels, or leaking across splits), classes with too few examples, very unbalanced classes and empty
splits, and builds the `Dataset` and its report.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from core._data_report import _names, _Report, plural
from core._data_split import random_split_source, split_examples
from core.dataset import Dataset, Modality

logger = logging.getLogger("core.data")  # the public module's name: what callers silence or watch (core.bench)


MIN_EXAMPLES = 2
FEW_EXAMPLES = 5
MAX_IMBALANCE = 10.0


def _finish(
    table: pd.DataFrame,
    name: str,
    modality: Modality,
    report: _Report,
    split_given: bool,
    seed: int,
    fractions: tuple[float, float, float],
    root: str | None,
) -> tuple[Dataset, dict[str, Any]]:
    """Split (or complete a given split), run the checks every modality shares, and build Dataset + report."""
    table = table.reset_index(drop=True)
    table["label"] = table["label"].astype(str)
    test_given = split_given and bool((table["split"] == "test").any())
    if split_given:
        report.info["split_source"] = "given by the folders"
        for missing in ("val", "test"):
            if len(table) and not (table["split"] == missing).any():
                share = fractions[1] if missing == "val" else fractions[2]
                train_rows = table.index[table["split"] == "train"]
                carved = split_examples(
                    table.loc[train_rows, "label"].tolist(),
                    table.loc[train_rows, "hash"].tolist(),
                    (1.0 - share, share, 0.0) if missing == "val" else (1.0 - share, 0.0, share),
                    seed,
                )
                table.loc[train_rows, "split"] = [missing if split != "train" else "train" for split in carved]
                report.info["split_source"] += f"; {missing} carved from train ({share:.0%}, seed {seed})"
    else:
        table["split"] = split_examples(table["label"].tolist(), table["hash"].tolist(), fractions, seed)
        report.info["split_source"] = random_split_source(fractions, seed)
    _check_duplicates(table, modality, report, split_given)
    _check_classes(table, modality, report, split_given)
    dataset = Dataset(
        name=name, modality=modality, table=table.drop(columns=["hash"]), root=root, split_given=test_given
    )
    result = report.to_dict(dataset)
    logger.info(
        "loaded %s: %d examples, %d classes, %d errors, %d warnings",
        name,
        len(table),
        dataset.num_classes,
        len(result["errors"]),
        len(result["warnings"]),
    )
    return dataset, result


def _check_duplicates(table: pd.DataFrame, modality: Modality, report: _Report, split_given: bool) -> None:
    what = "texts" if modality == "text" else "files"
    names = table["source"]
    duplicated = table[table["hash"].duplicated(keep=False)]
    report.info["duplicates"] = int(table["hash"].duplicated().sum())
    if duplicated.empty:
        return
    conflicting, same, leaking = [], [], []
    for _, group in duplicated.groupby("hash", sort=False):
        described = " = ".join(names[group.index].tolist())
        if group["label"].nunique() > 1:
            labels = ", ".join(f"`{label}`" for label in sorted(group["label"].unique()))
            conflicting.append(f"{described} ({labels})")
        else:
            same.append(described)
        if group["split"].nunique() > 1:
            leaking.append(f"{described} ({', '.join(sorted(group['split'].unique()))})")
    if conflicting:
        report.warning(
            "conflicting_duplicates",
            f"{plural(len(conflicting), 'set')} of identical {what} carry different labels, so the model is "
            f"taught two answers for the same input: {_names(conflicting)}. Keep each in its right class only.",
            conflicting,
        )
    if same:
        kept = "were kept in the same split" if not split_given else "are in the data more than once"
        report.warning(
            "duplicates",
            f"{plural(len(same), 'set')} of exact duplicate {what} found ({kept}); duplicates add no information: "
            f"{_names(same)}.",
            same,
        )
    if leaking:
        report.warning(
            "duplicates_across_splits",
            f"{plural(len(leaking), 'set')} of identical {what} sit in more than one split, so the validation/test "
            f"score will look better than it is (leakage): {_names(leaking)}. Remove the copies from val/test.",
            leaking,
        )


def _check_classes(table: pd.DataFrame, modality: Modality, report: _Report, split_given: bool) -> None:
    what = {"image": "images", "text": "texts", "audio": "clips"}[modality]
    counts = table["label"].value_counts()
    if counts.empty:
        how = {
            "image": "Put one folder per class with images in it (e.g. `cats/1.jpg`, `dogs/2.jpg`) and zip those "
            "folders.",
            "audio": "Put one folder per class with sound files in it (e.g. `yes/1.wav`, `no/2.flac`) and zip those "
            "folders.",
            "text": "Check that the chosen text and label columns hold values.",
        }[modality]
        report.error("no_examples", f"No usable {what} were found. {how}")
        return
    if len(counts) == 1:
        only = counts.index[0]
        report.error(
            "one_class",
            f"Only one class was found (`{only}`): classification needs at least two. Add a second class "
            f"({'rows with another label' if modality == 'text' else f'another folder of {what}'}).",
            [only],
        )
    tiny = sorted(label for label, count in counts.items() if count < MIN_EXAMPLES)
    if tiny:
        report.error(
            "too_few_examples",
            f"{plural(len(tiny), 'class', 'classes')} {'has' if len(tiny) == 1 else 'have'} fewer than "
            f"{MIN_EXAMPLES} examples: {_names([f'`{t}`' for t in tiny])}. Add examples (20+ per class works well) "
            "or remove the class.",
            tiny,
        )
    few = sorted(label for label, count in counts.items() if MIN_EXAMPLES <= count < FEW_EXAMPLES)
    if few:
        report.warning(
            "few_examples",
            f"{plural(len(few), 'class', 'classes')} {'has' if len(few) == 1 else 'have'} fewer than {FEW_EXAMPLES} "
            f"examples: {_names([f'`{c}` ({counts[c]})' for c in few])}. Results for them will be unreliable.",
            few,
        )
    if len(counts) > 1 and counts.min() > 0 and counts.max() / counts.min() > MAX_IMBALANCE:
        report.warning(
            "imbalance",
            f"The classes are very unbalanced: `{counts.idxmax()}` has {counts.max()} examples, `{counts.idxmin()}` "
            f"only {counts.min()} ({counts.max() / counts.min():.0f}x). Consider class weights in training or "
            "more examples of the small classes.",
            [str(counts.idxmax()), str(counts.idxmin())],
        )
    if len(counts) > 1:
        empty = [name for name in ("val", "test") if not (table["split"] == name).any()]
        if empty:
            titles = " and ".join("validation" if name == "val" else "test" for name in empty)
            report.warning(
                "empty_split",
                f"The {titles} split {'is' if len(empty) == 1 else 'are'} empty, so "
                + ("early stopping and the best-epoch choice cannot use held-out data" if "val" in empty else "")
                + (" and " if len(empty) == 2 else "")
                + ("step 5 has nothing held out to test on" if "test" in empty else "")
                + ". Add examples, or check for many identical files (identical files stay in one split).",
                empty,
            )
    if split_given:
        train_labels = set(table.loc[table["split"] == "train", "label"])
        absent = sorted(set(counts.index) - train_labels)
        if absent:
            report.error(
                "missing_from_train",
                f"{plural(len(absent), 'class', 'classes')} {'has' if len(absent) == 1 else 'have'} no examples "
                f"in the training folder: {_names([f'`{a}`' for a in absent])}. Put some of them in `train/`.",
                absent,
            )
