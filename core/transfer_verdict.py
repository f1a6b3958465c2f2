"""Does transfer help here? The verdict: the pretrained model against its baselines, with the interval of the gap.

Both models answered the same examples (the run's own estimate), so the difference is paired example by example
(`stats.paired_difference_interval`); records without per-example answers are compared unpaired. The sentence says
plainly when the pretrained model does not clearly beat a model without pretraining, and what to try next.
`python -m core baselines --model RUN` trains the baselines and prints this verdict.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core import stats
from core._run_folder import EXAMPLES, RUN_INFO
from core.evaluation import Evaluation, ModelLoadError, read_run_info, recorded_estimate
from core.no_transfer import BaselineResult, examples_digest, load_baselines, train_baselines

log = logging.getLogger(__name__)


_SHORT_NAMES = {"scratch": "from scratch", "pixels": "raw pixels", "tfidf": "TF-IDF", "mfcc": "MFCC"}
_NEXT_STEPS = ("The pretrained features may not fit this domain: try unfreezing more layer groups, or another "
               "backbone closer to your data, or use the simpler model.")


@dataclass
class TransferVerdict:
    """Whether the pretrained model beats its baselines: what the Test page and `python -m core baselines` say.

    Attributes:
        level: "success" (better than every baseline, the whole 95 % interval of the difference above 0), "warning"
            (not clearly better than `baseline`), "worse" (`baseline` is better, the whole interval below 0) or
            "info" (no baseline yet).
        sentence: the verdict in words, with both accuracies, the difference, its interval and n.
        baseline: the name of the baseline the verdict is about (the hardest to beat), or None.
        model_accuracy, baseline_accuracy: the two accuracies compared.
        difference: model minus baseline accuracy (a share: 0.05 is 5 points).
        interval95: the 95 % interval of the difference, or None where only the old fixed margin could be used.
        n: examples compared.
        method: "paired bootstrap" (the same examples, answer by answer), "unpaired (Newcombe)" (per-example
            answers not kept) or "fixed margin" (a record without n, from before intervals).
        comparisons: the same numbers for every baseline, as dicts.
    """

    level: str
    sentence: str
    baseline: str | None = None
    model_accuracy: float | None = None
    baseline_accuracy: float | None = None
    difference: float | None = None
    interval95: list[float] | None = None
    n: int | None = None
    method: str | None = None
    comparisons: list[dict[str, Any]] = field(default_factory=list)


def _compare(model_accuracy: float, model_correct: list[int] | None, digest: str | None, n: int | None,
             baseline: BaselineResult) -> dict[str, Any]:
    """One baseline against the model: the difference with its interval, paired where the answers allow it."""
    row: dict[str, Any] = {"baseline": baseline.name, "title": baseline.title,
                           "short": _SHORT_NAMES.get(baseline.name, baseline.title), "model_accuracy": model_accuracy,
                           "baseline_accuracy": baseline.accuracy, "difference": model_accuracy - baseline.accuracy,
                           "interval95": None, "n": baseline.n or n, "method": "fixed margin"}
    if model_correct is not None and baseline.correct is not None and digest == baseline.examples_digest:
        row["difference"], row["interval95"] = stats.paired_difference_interval(model_correct, baseline.correct)
        row["n"], row["method"] = len(model_correct), "paired bootstrap"
    elif n and baseline.n:
        row["difference"], row["interval95"] = stats.unpaired_difference_interval(
            round(model_accuracy * n), n, round(baseline.accuracy * baseline.n), baseline.n)
        row["method"] = "unpaired (Newcombe)"
    return row


def format_points(share: float) -> str:
    """A difference in accuracy (a share) as signed points with a true minus sign: 0.046 -> '+4.6'."""
    return f"{share * 100:+.1f}".replace("-", "−")


def _difference_words(row: dict[str, Any]) -> str:
    """'(95 % interval −6.7 to +4.2 points; paired on the same 240 examples)'."""
    low, high = row["interval95"]
    how = (f"paired on the same {row['n']} examples" if row["method"] == "paired bootstrap"
           else f"n = {row['n']}, unpaired: the answers per example were not kept")
    return f"(95 % interval {format_points(low)} to {format_points(high)} points; {how})"


def judge_transfer(
    estimate: Evaluation | None,
    baselines: Sequence[BaselineResult],
    model_accuracy: float | None = None,
    subject: str = "Pretrained",
    margin: float = 0.02,
) -> TransferVerdict:
    """Whether the pretrained model beats its baselines, judged by the 95 % interval of the accuracy difference.

    With the run's `estimate` and baselines that kept their answers on its examples, the interval is a paired
    bootstrap over those examples (`stats.paired_difference_interval`): both models answered the same examples, so
    the comparison is much sharper than two separate intervals. Without per-example answers on either side it is
    Newcombe's unpaired interval; a record without n (written before intervals) falls back to a fixed `margin`.

    `model_accuracy` replaces the estimate's own accuracy (and its per-example answers, which are not its own then):
    a text run that mixes in a TF-IDF model is judged by its network alone (`subject` says so), since the mix would
    otherwise be compared with a baseline it partly is.
    """
    if not baselines:
        return TransferVerdict("info", "No baseline yet: train one to see what transfer learning adds.")
    accuracy = model_accuracy if model_accuracy is not None else (estimate.accuracy if estimate is not None else 0.0)
    paired = estimate is not None and model_accuracy is None
    model_correct = [int(right) for right in estimate.predictions == estimate.targets] if paired else None
    digest = examples_digest(estimate.items) if paired else None
    n = len(estimate.targets) if estimate is not None else None
    rows = [_compare(accuracy, model_correct, digest, n, baseline) for baseline in baselines]
    comparison = ", ".join(f"{_SHORT_NAMES.get(b.name, b.title)}: {b.accuracy:.1%}" for b in baselines)
    head = f"{subject}: {accuracy:.1%}; {comparison}."
    verdict = functools.partial(TransferVerdict, model_accuracy=accuracy, comparisons=rows)
    if any(row["interval95"] is None for row in rows):
        return _margin_verdict(accuracy, baselines, margin, head, verdict)
    below = [row for row in rows if row["interval95"][1] < 0]
    if below:
        row = min(below, key=lambda row: row["difference"])
        return verdict(
            "worse", f"{head} {row['title']} does better than the pretrained model: {row['baseline_accuracy']:.1%} "
            f"against {accuracy:.1%}, {-row['difference'] * 100:.1f} points more {_difference_words(row)}. Transfer "
            f"learning hurts here (negative transfer, a domain gap). {_NEXT_STEPS}", **_numbers(row))
    unsure = [row for row in rows if row["interval95"][0] <= 0]
    if unsure:
        row = min(unsure, key=lambda row: row["difference"])
        return verdict(
            "warning", f"{head} The pretrained model does not clearly beat {row['short']}: "
            f"{format_points(row['difference'])} points {_difference_words(row)}, so on new data of this kind it may "
            f"be no better. {_NEXT_STEPS}", **_numbers(row))
    row = min(rows, key=lambda row: row["interval95"][0])
    return verdict("success", f"{head} Transfer learning adds {row['difference'] * 100:.1f} points over "
                              f"{row['short']}, the hardest baseline to beat {_difference_words(row)}.",
                   **_numbers(row))


def _numbers(row: dict[str, Any]) -> dict[str, Any]:
    return {"baseline": row["baseline"], "baseline_accuracy": row["baseline_accuracy"],
            "difference": row["difference"], "interval95": row["interval95"], "n": row["n"], "method": row["method"]}


def _margin_verdict(accuracy: float, baselines: Sequence[BaselineResult], margin: float, head: str,
                    verdict: Callable[..., TransferVerdict]) -> TransferVerdict:
    """The verdict of records from before intervals (no n): better by `margin`, or not."""
    best = max(baselines, key=lambda b: b.accuracy)
    numbers = {"baseline": best.name, "baseline_accuracy": best.accuracy, "difference": accuracy - best.accuracy,
               "method": "fixed margin"}
    if accuracy >= best.accuracy + margin:
        return verdict("success", f"{head} Transfer learning adds {(accuracy - best.accuracy) * 100:.0f} points over "
                                  "the best baseline.", **numbers)
    short = _SHORT_NAMES.get(best.name, best.title)
    return verdict("warning", f"{head} The pretrained model does not clearly beat {short}: its features may not fit "
                              "this data (negative transfer, a domain gap). Try unfreezing more layer groups, training "
                              "longer, or another backbone closer to your data.", **numbers)


def judge_run(estimate: Evaluation, baselines: Sequence[BaselineResult]) -> TransferVerdict:
    """`judge_transfer` for a run's recorded estimate, as the Test page and the command line both judge it.

    A text run that mixes in TF-IDF is judged by its network alone (metrics.json's `lexical.network_accuracy`).
    """
    network_alone = (estimate.metrics.get("lexical") or {}).get("network_accuracy")
    if network_alone is None:
        return judge_transfer(estimate, baselines)
    return judge_transfer(estimate, baselines, model_accuracy=float(network_alone),
                          subject="Pretrained network alone (without the TF-IDF model)")




def main_baselines(args: argparse.Namespace) -> int:
    """`python -m core baselines --model RUN_DIR`: does transfer help? Train the baselines of a run on its own
    examples, print each with accuracy, interval and n, and the verdict with the interval of the difference."""
    from core.data import DataError, load_path
    from core.workers import read_job_file

    run_dir = Path(args.model).expanduser()
    run_info = read_run_info(run_dir)
    try:
        if not run_info:
            raise ModelLoadError(f"{run_dir} holds no {RUN_INFO}: give a run folder (workspace/runs/<run_id>, or the "
                                 "--out of `python -m core train`).")
        dataset = load_path(args.data)[0] if args.data else read_job_file(run_dir).dataset
        if [str(name) for name in run_info["classes"]] != list(dataset.classes):
            raise ValueError(f"The data set's classes {dataset.classes} differ from the run's {run_info['classes']}: "
                             "give the data the run was trained on.")
        estimate = recorded_estimate(run_dir)
        if estimate is None:
            log.warning("%s recorded no %s (it ended before its estimate): the baselines are scored on the test split "
                        "and compared without pairing.", run_dir, EXAMPLES)
        train_baselines(dataset, run_info, kinds=args.kinds, epochs=args.epochs, estimate=estimate,
                        progress=lambda share, note: log.info("%3.0f%% %s", 100 * share, note))
    except (ModelLoadError, DataError, FileNotFoundError, ValueError, RuntimeError, OSError) as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    baselines = load_baselines(run_info)
    if estimate is not None:
        verdict = judge_run(estimate, baselines)
    else:
        verdict = judge_transfer(None, baselines, model_accuracy=float((run_info.get("metrics") or {}).get(
            "test_accuracy") or 0.0))
    if getattr(args, "json", False):
        record = {"run": str(run_dir), "baselines": [
            {key: value for key, value in dataclasses.asdict(baseline).items() if key != "correct"}
            for baseline in baselines], "verdict": dataclasses.asdict(verdict)}  # fmt: skip
        sys.stdout.write(json.dumps(record, indent=2) + "\n")
        return 0
    rows = {row["baseline"]: row for row in verdict.comparisons}
    for baseline in baselines:
        interval = (stats.format_interval(baseline.accuracy, baseline.accuracy_interval95)
                    if baseline.accuracy_interval95 else f"{baseline.accuracy:.1%}")
        line = f"{baseline.title}: {interval}, n = {baseline.n}"
        row = rows.get(baseline.name)
        if row is not None and row["interval95"] is not None:
            line += f"; pretrained minus this: {format_points(row['difference'])} points {_difference_words(row)}"
        sys.stdout.write(line + "\n")
    sys.stdout.write(f"\n{verdict.level.upper()}: {verdict.sentence}\n")
    return 0
