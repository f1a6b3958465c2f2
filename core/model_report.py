"""The model report (MODEL_REPORT.md): what a bundle is, how good it is (with n and intervals), and how to use it.

Written into every bundle by `core.export` and offered for download on the Test page; also where the sentence on a
text run's TF-IDF mix (`lexical_sentence`) is worded, since the page says it the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from core._export_parity import ParityReport  # only an annotation: the report states what parity found


def _fmt(value: Any, pct: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.1%}" if pct else (f"{value:.4g}" if isinstance(value, float) else str(value))
    return str(value)


def _evaluation_parts(evaluation: Any) -> tuple[dict[str, Any], np.ndarray | None, list[str]]:
    """(metrics, confusion, classes) from an `Evaluation` object or its metrics dict."""
    if evaluation is None:
        return {}, None, []
    if hasattr(evaluation, "metrics"):
        confusion = getattr(evaluation, "confusion", None)
        return dict(evaluation.metrics), None if confusion is None else np.asarray(confusion), list(evaluation.classes)
    metrics = dict(evaluation)
    confusion = metrics.get("confusion")
    return metrics, None if confusion is None else np.asarray(confusion), list(metrics.get("classes") or [])


def _report_estimate(run_info: dict[str, Any], evaluation: Any) -> tuple[dict[str, Any], np.ndarray | None, list[str]]:
    """The estimate the report states, as (metrics, confusion matrix or None, its classes).

    Which one, in this order:
    1. An evaluation that carries a `protocol`: the run's recorded estimate as the Test page shows it
       (`core.evaluation.recorded_estimate`, out-of-fold predictions under cross-validation).
    2. The run's own estimate as training wrote it (run.json `metrics.estimate`, `core.smalldata.estimate`). It wins
       over an evaluation made at export time: under cross-validation the delivered model was refitted on every
       labelled example, so what it predicts now on those examples is in-sample, not an estimate.
    3. An evaluation without a protocol, for a run that recorded no estimate: a test split scored after training.
    Metrics without intervals (written before they existed) are no estimate: the report says so. Both writers
    use `evaluate_probabilities`' keys (n, accuracy, accuracy_interval95, macro_f1, macro_f1_interval95,
    calibration_error, small_sample, per_class with recall_interval95). Empty metrics when there is no estimate.
    """
    metrics, confusion, classes = _evaluation_parts(evaluation)
    if metrics.get("protocol"):
        return metrics, confusion, classes
    recorded = run_info["metrics"]["estimate"]
    if recorded:
        return dict(recorded), None, []
    if "accuracy_interval95" in metrics:
        return {"protocol": "test split", **metrics}, confusion, classes
    return {}, None, []


def lexical_sentence(lexical: dict[str, Any]) -> str:
    """One sentence on the TF-IDF model mixed into a text run (`core.ngrams`), with what each part scored alone."""
    sentence = (f"{1 - lexical['share']:.0%} the network, {lexical['share']:.0%} a TF-IDF n-gram model "
                f"({lexical.get('recipe') or 'chosen by inner cross-validation'}), estimated together on the same "
                "examples")
    if lexical.get("network_accuracy") is not None and lexical.get("alone_accuracy") is not None:
        sentence += (f"; on those examples the network alone scored {lexical['network_accuracy']:.1%} and the "
                     f"TF-IDF model alone {lexical['alone_accuracy']:.1%}")
    return sentence + "."


def _interval(interval: Sequence[float]) -> str:
    low, high = interval
    return f"{low:.1%}–{high:.1%}"


def _estimate_lines(estimate: dict[str, Any], legacy_accuracy: Any) -> list[str]:
    """The protocol, why, and the headline numbers with their n and 95 % intervals, as the Test page shows them."""
    from core.stats import SMALL_SAMPLE, format_interval

    if not estimate:
        return [
            f"- Test accuracy: **{_fmt(legacy_accuracy, pct=True)}** (this run recorded no estimate: no n, no "
            "interval; train it again to get them)"
        ]
    cross_validated = estimate["protocol"] == "cross-validation"
    if cross_validated:
        protocol = f"**cross-validation** ({estimate['folds']} folds, out-of-fold predictions)"
        accuracy_label = f"Cross-validated accuracy ({estimate['folds']} folds, out-of-fold predictions)"
        scored = "examples scored, each by a model that never saw it"
    else:
        protocol = "**test split** (held-out examples that training and model selection never saw)"
        accuracy_label = "Test-split accuracy"
        scored = "held-out test examples"
    if estimate.get("refit_on_all"):
        protocol += "; the delivered model is a refit on all labelled examples"
    reason = estimate.get("protocol_reason") or "Scores come from the test split, which training never saw."
    lines = [f"- Protocol: {protocol}.", f"- Why: {reason}"]
    tuning = estimate.get("sentence_tuning") or {}
    if tuning.get("on"):
        cross_validated = estimate.get("protocol") == "cross-validation"
        folds = " Each cross-validation fold tuned its own copy." if cross_validated else ""
        lines.append(f"- Encoder: {tuning['reason']}{folds}")
    elif tuning.get("frozen_accuracy") is not None:  # "auto" scored the frozen encoder's head and kept it
        lines.append(f"- Encoder: {tuning['reason']}")
    lexical = estimate.get("lexical") or {}
    if lexical:
        lines.append(f"- Delivered probabilities: {lexical_sentence(lexical)}")
    lines.append(
        f"- {accuracy_label}: **{format_interval(estimate['accuracy'], estimate['accuracy_interval95'])}** "
        f"(Wilson interval), n = {estimate['n']} {scored}"
    )
    lines.append(
        "- Macro-F1: "
        + format_interval(estimate["macro_f1"], estimate["macro_f1_interval95"], percent=False)
        + ", bootstrap interval"
    )
    calibration = f"- Calibration error: {estimate['calibration_error']:.1%}"
    if "calibration_error_before" in estimate:
        calibration += f" after temperature scaling ({estimate['calibration_error_before']:.1%} before"
        calibration += f"; temperature {estimate['temperature']:.2f})" if "temperature" in estimate else ")"
    lines.append(calibration)
    if estimate["small_sample"]:
        lines.append(
            f"- **A number from fewer than {SMALL_SAMPLE} examples** (n = {estimate['n']}): read it with care; "
            "the intervals show how wide the truth may be."
        )
    return lines


def _per_class_lines(estimate: dict[str, Any]) -> list[str]:
    per_class = estimate.get("per_class") or []
    if not per_class:
        return []
    where = (
        f"out-of-fold predictions, {estimate['folds']}-fold cross-validation"
        if estimate["protocol"] == "cross-validation"
        else "test split"
    )
    lines = [
        "",
        f"### Per class ({where}, n = {estimate['n']})",
        "",
        "| Class | Precision | Recall | Recall, 95 % interval (bootstrap) | F1 | Examples scored |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {row['class']} | {_fmt(row['precision'], True)} | {_fmt(row['recall'], True)} | "
        f"{_interval(row['recall_interval95']) if 'recall_interval95' in row else '—'} | "
        f"{_fmt(row['f1'], True)} | {row['support']} |"
        for row in per_class
    ]
    return lines


def _baseline_rows(baseline: Any) -> list[tuple[str, Any, Any]]:
    """(name, accuracy, macro F1) from BaselineResult objects, dicts, or {name: accuracy | dict}."""
    if baseline is None:
        return []
    entries = baseline if isinstance(baseline, (list, tuple)) else [baseline]
    if isinstance(baseline, dict) and "accuracy" not in baseline:
        entries = [
            {"name": name, **(value if isinstance(value, dict) else {"accuracy": value})}
            for name, value in baseline.items()
        ]
    rows = []
    for entry in entries:
        get = entry.get if isinstance(entry, dict) else (lambda key, e=entry: getattr(e, key, None))
        rows.append((str(get("title") or get("name") or "baseline"), get("accuracy"), get("macro_f1")))
    return rows


def model_report(
    run_info: dict[str, Any],
    evaluation: Any = None,
    baseline: Any = None,
    *,
    parity: ParityReport | None = None,
    spec: Any = None,
    counts: Any = None,
) -> str:
    """The model report in Markdown: data, backbone and licence, freezing and hyperparameters, results, limits.

    The results state the run's estimate as the Test page does: the protocol and why, n, accuracy with its
    Wilson interval, macro-F1 and per-class recall with bootstrap intervals, calibration error before / after
    temperature scaling, and a flag when n is under 30 (see `_report_estimate` for which estimate is used).

    Args:
        run_info: the run record (run.json); its `metrics.estimate` is the estimate training recorded.
        evaluation: a `core.evaluation.Evaluation` (the Test page's `recorded_estimate`, or a test split scored
            now) or its metrics dict, with `confusion` (rows = true class) and `classes` in the dict case.
        baseline: what the Test page compared with: `BaselineResult`s, a dict like {name, accuracy, macro_f1},
            a list of those, or {name: accuracy}.
        parity: the export's parity report, when the report goes into a bundle.
        spec: the backbone's `BackboneSpec` (looked up in the catalogue when not given).
        counts: examples per class and split (`Dataset.counts()`), for the data summary.
    """
    config, metrics = dict(run_info["config"]), dict(run_info["metrics"])
    classes = [str(name) for name in run_info["classes"]]
    backbone_name = str(run_info["backbone"])
    if spec is None:
        try:
            from core.backbones import get_spec

            spec = get_spec(backbone_name)
        except (ImportError, KeyError, ValueError, LookupError):
            spec = None
    estimate, confusion, confusion_classes = _report_estimate(run_info, evaluation)
    lines = [f"# Model report — {run_info['run_id']}", ""]
    lines += [
        "## Data",
        f"- Data set: **{run_info['dataset_name']}** "
        f"(fingerprint `{run_info['dataset_fingerprint']}`), modality {run_info['modality']}",
        f"- Classes ({len(classes)}): {', '.join(classes) or '—'}",
    ]
    if counts is not None:
        table = counts if isinstance(counts, dict) else counts.to_dict(orient="index")
        lines += ["", "| Class | " + " | ".join(next(iter(table.values())).keys()) + " |"]
        lines.append("|---|" + "---:|" * len(next(iter(table.values()))))
        lines += [f"| {name} | " + " | ".join(str(v) for v in row.values()) + " |" for name, row in table.items()]
    lines += ["", "## Backbone"]
    if spec is not None:
        lines += [
            f"- **{spec.title}** (`{spec.name}`: {spec.source} `{spec.model_id}`), {spec.params_millions:g} M "
            f"parameters, pretrained on {spec.pretrained_on}",
            f"- Licence of the weights: **{spec.licence}**"
            + ("" if spec.commercial_use else " — restricts commercial use; check it before you ship the model"),
        ]
    else:
        lines.append(f"- `{backbone_name}` (not in this installation's catalogue; licence unknown here)")
    frozen = run_info["frozen_groups"]
    lines += ["", "## Freezing and hyperparameters", f"- Frozen layer groups: **{frozen}**", ""]
    if config:
        lines += ["| Setting | Value |", "|---|---|"] + [f"| {key} | {_fmt(value)} |" for key, value in config.items()]
    lines += ["", "## Results"]
    lines += _estimate_lines(estimate, metrics.get("test_accuracy"))
    if metrics.get("val_accuracy") is not None:
        best = metrics.get("best_epoch")
        lines.append(
            f"- Validation accuracy: {_fmt(metrics['val_accuracy'], pct=True)}"
            + (f" (best epoch {best})" if best is not None else "")
            + ", used to choose the model, not an estimate of it"
        )
    per_class = estimate.get("per_class") or []
    lines += _per_class_lines(estimate)
    accuracy = estimate.get("accuracy", metrics.get("test_accuracy"))
    rows = _baseline_rows(baseline)
    if rows:
        lines += [
            "",
            "### Compared with training without transfer",
            "",
            "| Model | Accuracy | Macro-F1 |",
            "|---|---:|---:|",
            f"| this model | {_fmt(accuracy, True)} | {_fmt(estimate.get('macro_f1'), True)} |",
        ]
        lines += [f"| {name} | {_fmt(other, True)} | {_fmt(f1, True)} |" for name, other, f1 in rows]
    lines += ["", "## Known limits"]
    limits = []
    few = [row for row in per_class if int(row.get("support", 0)) < 5]
    if few:
        limits.append(
            "Few examples scored for "
            + ", ".join(f"{row['class']} ({row['support']})" for row in few)
            + ": their numbers are rough."
        )
    if counts is not None:
        table = counts if isinstance(counts, dict) else counts.to_dict(orient="index")
        thin = [f"{name} ({row.get('train', 0)})" for name, row in table.items() if int(row.get("train", 0)) < 10]
        if thin:
            limits.append("Under 10 training examples for " + ", ".join(thin) + ".")
    if confusion is not None and confusion.size and len(confusion_classes) == len(confusion):
        off = [
            (int(confusion[t, p]), t, p)
            for t in range(len(confusion))
            for p in range(len(confusion))
            if t != p and confusion[t, p] > 0
        ]
        top = sorted(off, reverse=True)[:3]
        if top:
            limits.append(
                "Top confusions (true → predicted): "
                + "; ".join(f"{confusion_classes[t]} → {confusion_classes[p]} ({n}×)" for n, t, p in top)
                + "."
            )
    measured_on = (
        "by cross-validation on this data set's labelled examples"
        if estimate.get("protocol") == "cross-validation"
        else "on this data set's test split"
    )
    limits.append(f"Measured only {measured_on}: new data from elsewhere may score lower.")
    limits.append("The model always answers one of the classes above, even for inputs that belong to none.")
    lines += [f"- {limit}" for limit in limits]
    if parity is not None:
        lines += [
            "",
            "## Export parity",
            "",
            f"{'Passed' if parity.ok else 'FAILED'}: largest probability "
            f"difference {parity.max_abs_diff:.2e} (tolerance {parity.tolerance:g}) on {parity.examples} "
            "examples.",
            "",
            parity.to_markdown(),
        ]
    return "\n".join(lines) + "\n"
