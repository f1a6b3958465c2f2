"""Command line: `python -m core <command> ...`, the same engine as the web app, without the UI.

Commands: check-data, backbones, train, predict, export, project. Each returns a process exit status (non-zero
on error).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# command -> (module, function); the function takes the parsed arguments and returns an exit status.
COMMANDS = {
    "check-data": ("core.data", "main_check_data"),
    "backbones": ("core.backbones", "main_backbones"),
    "train": ("core.training", "main_train"),
    "predict": ("core.evaluation", "main_predict"),
    "export": ("core.export", "main_export"),
    "project": ("core.project", "main_project"),
    "learning-curve": ("core.insight", "main_learning_curve"),
    "recommend": ("core.recommend", "main_recommend"),
    "explain": ("core.explain", "main_explain"),
    "suggest-labels": ("core.suggest", "main_suggest_labels"),
    "baselines": ("core.transfer_verdict", "main_baselines"),
}


def _clip_seconds(value: str) -> float | str:
    """`--clip-seconds`: "auto" or a number of seconds."""
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'auto' or a number of seconds, not {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check-data", help="check a data set (zip, folder, CSV/TSV) and print the report")
    check.add_argument("path")
    check.add_argument("--text-column", help="for a text CSV: the column that holds the texts")
    check.add_argument("--label-column", help="for a CSV: the column that holds the labels")
    check.add_argument("--json", action="store_true", help="print the report as JSON")

    backbones = sub.add_parser("backbones", help="list the backbone catalogue with availability")
    backbones.add_argument("--modality", choices=["image", "text", "audio"])
    backbones.add_argument("--json", action="store_true")

    train = sub.add_parser("train", help="train a classifier exactly as the Train page does")
    train.add_argument("--data", help="zip, folder or CSV/TSV, or 'sample-images' / 'sample-texts' / 'sample-audio'")
    train.add_argument("--text-column")
    train.add_argument("--label-column")
    train.add_argument("--backbone", help="catalogue name (default: the best offline one for the data)")
    train.add_argument("--frozen-groups", type=int, help="layer groups kept frozen (default: all = feature extraction)")
    train.add_argument("--epochs", type=int, help="default: 25 for feature extraction, 8 when fine-tuning")
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument("--weight-decay", type=float)
    train.add_argument("--label-smoothing", type=float)
    train.add_argument("--class-weights", action=argparse.BooleanOptionalAction,
                       help="weight classes in the loss (default: on when the largest class is > 3x the smallest)")
    train.add_argument("--backbone-lr-factor", type=float)
    # = core.preprocess.AUGMENTATIONS, spelled out to keep the CLI light (a test checks they agree)
    train.add_argument("--augmentation", choices=["none", "light", "strong"],
                       help="training examples only (default none, which lets frozen layers be cached). Images: "
                       "light = crops and flips, strong = also colour and RandAugment. Clips: light = a shifted cut "
                       "and a gain, strong = also noise and, on spectrograms, SpecAugment masks (the numbers: "
                       "core/audio_augment.py)")
    train.add_argument("--patience", type=int)
    train.add_argument("--protocol", choices=["auto", "cross-validation", "test split"], default="auto",
                       help="how scores are estimated (default: cross-validation and a refit on all labels for small "
                       "data: under 2000 examples or any class under 50, unless the data brings its own test split)")
    train.add_argument("--folds", type=int, default=5, help="the most cross-validation folds")
    train.add_argument("--head", choices=["auto", "logistic", "gradient"], default="auto",
                       help="with every group frozen: logistic regression by L-BFGS (auto) or the gradient loop")
    train.add_argument("--multi-block", action=argparse.BooleanOptionalAction, default=True,
                       help="with every group frozen, also pool the last blocks' outputs where the backbone declares "
                       "them (EfficientNet-Lite; default on)")
    train.add_argument("--sentence-tuning", choices=["auto", "on", "off"], default="auto",
                       help="with a sentence encoder and every group frozen, first tune the encoder on the labelled "
                       "texts, SetFit-style (auto: with 20+ texts per class, tunes if the frozen encoder's head "
                       "scores under 90 %% cross-validated)")
    train.add_argument("--refit", choices=["auto", "on", "off"], default="auto",
                       help="fine-tuning: after early stopping, retrain on train + validation for the chosen number "
                       "of epochs and deliver that model (auto: for small data, where cross-validation would apply)")
    train.add_argument("--lexical", choices=["auto", "off"], default="auto",
                       help="texts with the logistic head: mix a TF-IDF n-gram model into the delivered probabilities "
                       "(an equal vote, estimated on the same folds; auto) or keep the head alone (off)")
    train.add_argument("--views", type=int, metavar="N",
                       help="images and sound clips with the logistic head: learn also from N augmented views of "
                       "each example (images: crops, flips; clips: a shifted cut, a gain), computed once through the "
                       "frozen backbone and cached; 0 = off (default: 2 for sound clips with the logistic head, "
                       "else 0)")
    train.add_argument("--clip-seconds", type=_clip_seconds, default="auto", metavar="SECONDS",
                       help="sound clips: seconds of each clip the backbone hears, cut around the loudest part or "
                       "padded with silence (auto, the default: the backbone's own length, 1 s for the offline one, "
                       "unless your clips are clearly longer; then their median, at most 10 s)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    train.add_argument("--out", help="folder for metrics.json and the best model")
    train.add_argument("--resume", metavar="RUN_DIR",
                       help="continue a stopped, failed or interrupted run (of the app, or of this command: its "
                       "--out) from its last epoch checkpoint, with the data and settings it recorded (no other option "
                       "is needed); writes metrics.json there")
    train.add_argument("--processes", type=int, metavar="N",
                       help="train with N processes (DDP through Hugging Face Accelerate: one per GPU, or CPU "
                       "processes); the batch size stays the global batch, each process takes 1/N of it. The logistic "
                       "head runs in one process; fewer than N x batch size training examples are refused")
    train.add_argument("--accelerate-config", metavar="FILE",
                       help="an `accelerate config` file for several machines (run the same command on each)")

    predict = sub.add_parser("predict", help="predict classes of new images or texts with a trained model")
    predict.add_argument("--model", required=True, help="a run folder or an exported bundle")
    predict.add_argument("--top-k", type=int, default=3)
    predict.add_argument("--json", action="store_true")
    predict.add_argument("inputs", nargs="+", help="image or sound files (or folders), or texts (for a text model)")

    export = sub.add_parser("export", help="write a model bundle (safetensors, ONNX, TorchScript) and check parity")
    export.add_argument("--model", required=True, help="a run folder")
    export.add_argument("--out", required=True, help="bundle folder to write")
    export.add_argument("--data", help="data set to run the parity check on (default: the run's own test split)")

    project = sub.add_parser("project", help="open a saved project (.tsproject.zip) into this workspace, offline")
    project.add_argument("action", choices=["open"], help="open: check the file, then bring in its data and runs")
    project.add_argument("file", help="the project file that 'Save project' on the Data page downloaded")
    project.add_argument("--owner", help="the workspace (its code, as the app's sidebar shows it) whose runs "
                         "these become")

    probed = argparse.ArgumentParser(add_help=False)  # the commands that score the feature-extraction head on data
    probed.add_argument("--data", required=True, help="zip, folder or CSV/TSV, or 'sample-images' / 'sample-texts'")
    probed.add_argument("--device", default="auto")
    probed.add_argument("--seed", type=int, default=0)

    curve = sub.add_parser("learning-curve", parents=[probed], help="would more data help? the small-data recipe on "
                           "10/25/50/100 %% of the labels, with a fitted trend")
    curve.add_argument("--backbone", help="catalogue name (default: the best offline one for the data)")
    curve.add_argument("--json", action="store_true", help="print the points, trend and sentence as JSON")

    rank = sub.add_parser("recommend", parents=[probed], help="which backbone? every available one of the data's "
                          "kind, scored on the data by the probe a feature-extraction run uses, with speed and size")
    rank.add_argument("--backbone-names", help="comma-separated catalogue names (default: every available one)")
    rank.add_argument("--json", action="store_true", help="print the ranking as JSON")

    explain = sub.add_parser("explain", help="why this prediction? an approximate heat map (images, sound) or word "
                             "scores (texts) for the class the model predicts")
    explain.add_argument("--model", required=True, help="a run folder (a bundle is TorchScript: nothing to look into)")
    explain.add_argument("--input", required=True, help="an image or sound file, or a text (or a .txt file)")
    explain.add_argument("--json", action="store_true", help="print the prediction and a 7x7 heat grid or the word "
                         "scores as JSON")

    baselines = sub.add_parser("baselines", help="does transfer help? train models without pretraining on a run's own "
                               "examples and compare, with the 95 %% interval of the difference")
    baselines.add_argument("--model", required=True, help="a run folder")
    baselines.add_argument("--data", help="the data the run was trained on (default: the data set its job.json "
                           "recorded)")
    baselines.add_argument("--kinds", nargs="+", choices=["scratch", "pixels", "tfidf", "mfcc"],
                           help="which baselines (default: the same network with random weights, and raw pixels / "
                           "TF-IDF / MFCC for images / texts / sound)")
    baselines.add_argument("--epochs", type=int, help="epochs for the from-scratch model (default: the run's own)")
    baselines.add_argument("--json", action="store_true", help="print the baselines and the verdict as JSON")

    suggest = sub.add_parser("suggest-labels", help="what should I label next? rank unlabelled examples by the "
                             "model's uncertainty, skipping look-alikes, and write the list")
    suggest.add_argument("--model", required=True, help="a run folder or an exported bundle")
    suggest.add_argument("--data", required=True, nargs="+", help="unlabelled images (files, folders or zips) or "
                         "texts (a CSV with a text column, or a .txt with one text per line)")
    suggest.add_argument("--top", type=int, default=20, help="how many examples to suggest (default 20)")
    suggest.add_argument("--text-column", help="for a CSV: the column that holds the texts")
    suggest.add_argument("--device", default="auto")
    suggest.add_argument("--json", action="store_true", help="print the list (and what was skipped) as JSON")
    suggest.add_argument("--out", help="also write the list as CSV to this file")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what `--processes` starts each process with
    module_name, function_name = COMMANDS[args.command]
    if args.command == "train" and args.resume and ((args.processes or 1) > 1 or args.accelerate_config):
        parser.error("--resume continues a run in one process; --processes and --accelerate-config do not apply")
    if args.command == "train" and args.resume:
        module_name, function_name = "core.workers", "main_resume"
    elif args.command == "train" and not (args.data and args.out):
        parser.error("train needs --data and --out (or --resume RUN_DIR)")
    function = getattr(importlib.import_module(module_name), function_name)
    return int(function(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
