"""Benchmark: the training engine against plain PyTorch loops, in the same process, on the same data.

`python -m core.bench [--quick]` compares, on EfficientNet-Lite0 (real weights) and the sample digit images:

1. every layer frozen, 25 epochs: `fit` (features computed once, head trained on them) against the tutorial loop
   that runs the frozen backbone over every batch of every epoch (whole-run time, validation accuracy);
2. some layer groups frozen, no augmentation: `fit` (activations cached at the freeze boundary) against the plain
   `requires_grad=False` loop (training throughput, examples per second over N steps);
3. full fine-tuning: `fit` (channels-last, bfloat16 autocast where the CPU has it) against a plain fp32 loop
   (training throughput), and the peak memory of a full fine-tuning step at batch 32.

Plain loops are written the usual way: a DataLoader over the same preprocessing, `model.train()`,
`loss.backward()`, fp32, default memory format. The arms are interleaved and repeated; each ratio is printed
with its median and spread, plus the machine. Nothing here is used by the app.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

BACKBONE = "efficientnet_lite0"
BATCH_SIZE = 32
LR = 1e-3


def machine() -> dict[str, Any]:
    """CPU model, cores, torch version and what the engine will use here."""
    from core.devices import pick as pick_device
    from core.training import cpu_supports_bf16

    model = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "bf16": cpu_supports_bf16(),
        "device": str(pick_device("auto")), "python": platform.python_version(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


# ------------------------------------------------------------------------------------------------ plain loops


def _plain_loader(items: list[str], labels: list[int], preprocessor: Any, shuffle: bool) -> Any:
    from core.training import _loader

    generator = torch.Generator().manual_seed(0)
    return _loader(items, labels, preprocessor, False, BATCH_SIZE, generator, shuffle=shuffle)


def _plain_accuracy(model: torch.nn.Module, loader: Any) -> float:
    model.eval()
    correct = count = 0
    with torch.no_grad():
        for images, labels in loader:
            correct += int((model(images).argmax(1) == labels).sum())
            count += int(labels.shape[0])
    return correct / max(count, 1)


def plain_training(
    dataset: Any, backbone: Any, epochs: int, freeze_backbone: bool, seed: int = 0
) -> dict[str, Any]:
    """The tutorial loop (fp32, default memory format), validating after every epoch.

    With `freeze_backbone`, only the head trains and every epoch runs the frozen backbone over every batch again
    (its BatchNorm statistics stay as pretrained: the careful tutorial variant); otherwise every parameter trains.
    """
    from core.backbones import Classifier
    from core.preprocess import make_preprocessor

    torch.manual_seed(seed)
    started = time.perf_counter()
    model = Classifier(copy.deepcopy(backbone), dataset.num_classes)
    if freeze_backbone:
        for parameter in model.backbone.parameters():
            parameter.requires_grad = False
    trained = model.head if freeze_backbone else model
    optimizer = torch.optim.AdamW(trained.parameters(), lr=LR, weight_decay=0.01)
    preprocessor = make_preprocessor(backbone.spec, "none")
    train = _plain_loader(*dataset.split("train"), preprocessor, shuffle=True)
    val = _plain_loader(*dataset.split("val"), preprocessor, shuffle=False)
    total = epochs * len(train)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _warmup_cosine(s, total))
    epoch_seconds = []
    val_accuracy = 0.0
    for _ in range(epochs):
        epoch_started = time.perf_counter()
        model.train()
        if freeze_backbone:
            model.backbone.eval()
        for images, labels in train:
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        val_accuracy = _plain_accuracy(model, val)
        epoch_seconds.append(time.perf_counter() - epoch_started)
    examples = len(train.dataset) + len(val.dataset)
    return {
        "seconds": time.perf_counter() - started, "epoch_seconds": epoch_seconds, "val_accuracy": val_accuracy,
        "forward_examples_per_second": examples / statistics.median(epoch_seconds),
    }


def _warmup_cosine(step: int, total: int, warmup_fraction: float = 0.1) -> float:
    warmup = int(round(warmup_fraction * total))
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def plain_throughput(dataset: Any, backbone: Any, frozen_groups: int, steps: int, seed: int = 0) -> float:
    """Examples per second of the plain loop (fp32, default memory format, `requires_grad=False` freezing).

    The first step is a warm-up and is not timed.
    """
    from core.backbones import Classifier
    from core.preprocess import make_preprocessor

    torch.manual_seed(seed)
    model = Classifier(copy.deepcopy(backbone), dataset.num_classes)
    for group in model.backbone.groups()[:frozen_groups]:
        for parameter in group.parameters():
            parameter.requires_grad = False
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=0.01)
    loader = _plain_loader(*dataset.split("train"), make_preprocessor(backbone.spec, "none"), shuffle=True)
    model.train()
    stamps, sizes = [], []
    while len(stamps) <= steps:
        for images, labels in loader:
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            stamps.append(time.perf_counter())
            sizes.append(int(labels.shape[0]))
            if len(stamps) > steps:
                break
    return sum(sizes[1:]) / (stamps[-1] - stamps[0])


# --------------------------------------------------------------------------------------------------- our arms


class _StepClock:
    """Times training steps through the engine's callbacks and stops the run after `steps + 1` of them."""

    def __init__(self, steps: int, stop: threading.Event) -> None:
        self.steps, self.stop = steps, stop
        self.stamps: list[float] = []
        self.sizes: list[int] = []
        self.info: dict[str, Any] = {}
        self.examples_seen = 0

    def on_train_begin(self, info: dict[str, Any]) -> None:
        self.info = info

    def on_step_end(self, metrics: dict[str, Any]) -> None:
        if metrics.get("phase") != "train":
            return
        self.stamps.append(time.perf_counter())
        self.sizes.append(min(BATCH_SIZE, self.info["num_train"] - ((metrics["batch"] - 1) * BATCH_SIZE)))
        if len(self.stamps) > self.steps:
            self.stop.set()

    @property
    def throughput(self) -> float:
        return sum(self.sizes[1:]) / (self.stamps[-1] - self.stamps[0])


def _config(frozen_groups: int, epochs: int, **overrides: Any) -> Any:
    from core.training import TrainConfig

    values = dict(backbone=BACKBONE, frozen_groups=frozen_groups, epochs=epochs, batch_size=BATCH_SIZE, lr=LR,
                  patience=None, grad_clip=None, backbone_lr_factor=1.0)
    values.update(overrides)
    return TrainConfig(**values)


def _clear_feature_cache() -> None:
    from core import features
    from core.paths import workspace_subdir

    features.MEMORY.clear()
    shutil.rmtree(workspace_subdir("features"), ignore_errors=True)


def engine_features_run(dataset: Any, backbone: Any, epochs: int, **overrides: Any) -> Any:
    from core.training import fit

    return fit(dataset, _config(len(backbone.group_names), epochs, **overrides), backbone=copy.deepcopy(backbone))


def engine_throughput(dataset: Any, backbone: Any, frozen_groups: int, steps: int, **overrides: Any) -> tuple:
    from core.training import fit

    stop = threading.Event()
    clock = _StepClock(steps, stop)
    result = fit(dataset, _config(frozen_groups, 100, **overrides), backbone=copy.deepcopy(backbone),
                 callbacks=[clock], stop_event=stop)
    return clock.throughput, result


_MEMORY_PROBE = """
import json, sys, threading
sys.path.insert(0, {repo!r})
import torch
from core.data import load_sample
from core.training import TrainConfig, fit
dataset, _ = load_sample("images")
stop = threading.Event()
class Stop:
    def on_step_end(self, metrics):
        if metrics.get("phase") == "train" and metrics["step"] >= {steps}:
            stop.set()
fit(dataset, TrainConfig(backbone={backbone!r}, frozen_groups=0, epochs=5, batch_size={batch}, precision={prec!r}),
    callbacks=[Stop()], stop_event=stop)
# VmHWM is this process's own peak (ru_maxrss would include the parent's size inherited through fork/exec)
peak = [line for line in open("/proc/self/status") if line.startswith("VmHWM")][0].split()[1]
print(json.dumps({{"peak_rss_mib": int(peak) / 1024}}))
"""


def peak_memory(precision: str, steps: int = 2) -> float:
    """Peak resident memory (MiB) of a fresh process that fine-tunes every layer for a few steps at batch 32."""
    code = _MEMORY_PROBE.format(repo=str(Path(__file__).resolve().parent.parent), steps=steps, backbone=BACKBONE,
                                batch=BATCH_SIZE, prec=precision)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mib"])


# ------------------------------------------------------------------------------------------------------ report


def _spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}x (1 run)"
    return f"{statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})"


def run(quick: bool = False, repeats: int | None = None) -> dict[str, Any]:
    """Run all comparisons and return the numbers (also logged as they come)."""
    from core.backbones import load_backbone
    from core.data import load_sample

    repeats = repeats or (1 if quick else 3)
    steps = 3 if quick else 6
    full_steps = 3 if quick else 4
    epochs = 25
    plain_epochs = 2 if quick else epochs  # quick: the plain arm runs 2 epochs and is extrapolated (said so)
    dataset, _ = load_sample("images")
    backbone = load_backbone(BACKBONE, pretrained=True)
    frozen_some = 5  # stem + stages 1-4 frozen, stages 5-7 and the head group train
    results: dict[str, Any] = {"machine": machine(), "repeats": repeats, "steps": steps, "epochs": epochs,
                               "plain_epochs": plain_epochs, "dataset": dataset.name,
                               "split": {s: len(dataset.split(s)[0]) for s in ("train", "val", "test")}}
    log.info("Machine: %s", results["machine"])

    # 1. every layer frozen, 25 epochs ------------------------------------------------------------------------
    ours_runs, plain = [], None
    for repeat in range(repeats):
        _clear_feature_cache()
        ours_runs.append(engine_features_run(dataset, backbone, epochs))
        log.info("features: ours %.1f s (cache %.1f s)", ours_runs[-1].seconds, ours_runs[-1].cache_seconds)
        if repeat == 0:
            plain = plain_training(dataset, backbone, plain_epochs, freeze_backbone=True)
            log.info("features: plain %d epochs %.1f s", plain_epochs, plain["seconds"])
    if plain is None:
        raise RuntimeError("The plain 25-epoch arm did not run; use --repeats 1 or more.")
    per_epoch = statistics.median(plain["epoch_seconds"])
    plain_total = plain["seconds"] + per_epoch * (epochs - plain_epochs)
    reuse = engine_features_run(dataset, backbone, epochs)  # same data and backbone: the cache is reused
    short = engine_features_run(dataset, backbone, plain_epochs)  # the plain arm's schedule, for accuracy
    _clear_feature_cache()
    fp32 = engine_features_run(dataset, backbone, epochs, precision="fp32")
    ours_pass = [r.cache_seconds for r in ours_runs]
    total_examples = sum(results["split"].values())
    results["features"] = {
        "plain_seconds": plain_total, "plain_extrapolated": plain_epochs < epochs,
        "plain_val_accuracy": plain["val_accuracy"], "ours_short_val_accuracy": short.val_accuracy,
        "ours_seconds": [r.seconds for r in ours_runs], "ours_val_accuracy": ours_runs[0].val_accuracy,
        "ours_fp32_val_accuracy": fp32.val_accuracy, "ours_fp32_cache_seconds": fp32.cache_seconds,
        "ratios": [plain_total / r.seconds for r in ours_runs],
        "plain_forward_examples_per_second": plain["forward_examples_per_second"],
        "ours_feature_pass_examples_per_second": total_examples / statistics.median(ours_pass),
        "reuse_cache_seconds": reuse.cache_seconds, "reuse_first_epoch_seconds": reuse.history[0]["seconds"],
        "reuse_seconds": reuse.seconds, "precision": ours_runs[0].precision,
    }

    # 2. some groups frozen: activation cache vs requires_grad=False -------------------------------------------
    ratios, plain_tp, ours_tp, cache_seconds = [], [], [], None
    _clear_feature_cache()  # the first repeat builds the activation cache, the others reuse it
    for _ in range(repeats):
        throughput, result = engine_throughput(dataset, backbone, frozen_some, steps)
        cache_seconds = cache_seconds if cache_seconds is not None else result.cache_seconds
        ours_tp.append(throughput)
        plain_tp.append(plain_throughput(dataset, backbone, frozen_some, steps))
        ratios.append(ours_tp[-1] / plain_tp[-1])
        log.info("activations: ours %.1f ex/s, plain %.1f ex/s (%s)", ours_tp[-1], plain_tp[-1], result.cache_mode)
    results["activations"] = {"frozen_groups": frozen_some, "of_groups": len(backbone.group_names),
                              "ours": ours_tp, "plain": plain_tp, "ratios": ratios, "cache_seconds": cache_seconds}

    # 3. full fine-tuning: channels-last + bf16 autocast vs fp32 --------------------------------------------------
    ratios, plain_tp, ours_tp = [], [], []
    for _ in range(repeats):
        plain_tp.append(plain_throughput(dataset, backbone, 0, full_steps))
        throughput, result = engine_throughput(dataset, backbone, 0, full_steps)
        ours_tp.append(throughput)
        ratios.append(ours_tp[-1] / plain_tp[-1])
        log.info("full: ours %.1f ex/s (%s), plain %.1f ex/s", ours_tp[-1], result.precision, plain_tp[-1])
    full_epochs = 1 if quick else 4
    from core.training import fit

    ours_full = fit(dataset, _config(0, full_epochs), backbone=copy.deepcopy(backbone))
    plain_full = plain_training(dataset, backbone, full_epochs, freeze_backbone=False)["val_accuracy"]
    log.info("full accuracy after %d epochs: ours %.3f, plain %.3f", full_epochs, ours_full.val_accuracy, plain_full)
    results["full"] = {"ours": ours_tp, "plain": plain_tp, "ratios": ratios, "precision": result.precision,
                       "steps": full_steps, "epochs": full_epochs, "ours_val_accuracy": ours_full.val_accuracy,
                       "plain_val_accuracy": plain_full}
    results["peak_memory_mib"] = {"ours": peak_memory("auto"), "fp32": peak_memory("fp32")}
    return results


def markdown(results: dict[str, Any]) -> str:
    """The results as the Markdown the README shows."""
    m, f, a, u = results["machine"], results["features"], results["activations"], results["full"]
    note = (
        f" (plain arm ran {results['plain_epochs']} real epochs; its median epoch time is extrapolated to "
        f"{results['epochs']})" if f["plain_extrapolated"] else ""
    )
    pct = "{:.1%}".format

    def accuracy(value: float | None) -> str:
        return pct(value) if value is not None else "n/a"

    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads, "
        f"{m['cpu_capability']}, bf16 {'yes' if m['bf16'] else 'no'}), load average at start "
        f"{' / '.join(f'{value:.2f}' for value in m['load_average']) if m['load_average'] else 'unknown'}",
        f"Data: {results['dataset']} ({results['split']}), backbone {BACKBONE}, batch {BATCH_SIZE}, "
        f"{results['repeats']} repeat(s); throughput over {results['steps']} timed steps ({u['steps']} for full "
        "fine-tuning) after one warm-up step.",
        "",
        "| Comparison | Plain PyTorch | Transfer Studio | Speed-up: median (min-max) | Target |",
        "|---|---|---|---|---|",
        f"| All frozen, {results['epochs']} epochs, whole run{note} | {f['plain_seconds']:.1f} s | "
        f"{statistics.median(f['ours_seconds']):.1f} s ({f['precision']} features) | {_spread(f['ratios'])} | "
        ">= 25x |",
        f"| All frozen, validation accuracy | {accuracy(f['plain_val_accuracy'])} after {results['plain_epochs']} "
        f"epochs | {accuracy(f['ours_short_val_accuracy'])} after {results['plain_epochs']} epochs; "
        f"{accuracy(f['ours_val_accuracy'])} after {results['epochs']} ({f['precision']}), "
        f"{accuracy(f['ours_fp32_val_accuracy'])} after {results['epochs']} (fp32 features) | - | within 1 pt |",
        f"| Feature pass (frozen backbone forward) | {f['plain_forward_examples_per_second']:.1f} ex/s | "
        f"{f['ours_feature_pass_examples_per_second']:.1f} ex/s (fp32 cache: "
        f"{sum(results['split'].values()) / f['ours_fp32_cache_seconds']:.1f} ex/s) | "
        f"{f['ours_feature_pass_examples_per_second'] / f['plain_forward_examples_per_second']:.2f}x | > 1x |",
        f"| Second run, same data + backbone | - | cache load {f['reuse_cache_seconds']:.2f} s, first epoch "
        f"{f['reuse_first_epoch_seconds']:.2f} s, whole run {f['reuse_seconds']:.1f} s | - | first epoch < 1 s |",
        f"| {a['frozen_groups']} of {a['of_groups']} groups frozen, training throughput | "
        f"{statistics.median(a['plain']):.1f} ex/s | {statistics.median(a['ours']):.1f} ex/s (cache built once in "
        f"{a['cache_seconds']:.1f} s) | {_spread(a['ratios'])} | >= 2x |",
        f"| Full fine-tuning, training throughput | {statistics.median(u['plain']):.2f} ex/s (fp32) | "
        f"{statistics.median(u['ours']):.2f} ex/s ({u['precision']}, channels-last) | {_spread(u['ratios'])} | "
        ">= 1.4x |",
        f"| Full fine-tuning, validation accuracy | {accuracy(u['plain_val_accuracy'])} after {u['epochs']} epochs "
        f"(fp32) | {accuracy(u['ours_val_accuracy'])} after {u['epochs']} epochs ({u['precision']}) | - | "
        "within 1 pt |",
        f"| Peak memory, full fine-tuning, batch {BATCH_SIZE} (process RSS) | "
        f"{results['peak_memory_mib']['fp32']:.0f} MiB (fp32) | {results['peak_memory_mib']['ours']:.0f} MiB | - | "
        "< 3 GiB |",
    ]
    return "\n".join(lines)


def _main_classroom(students: int, json_path: str | None, in_browsers: bool = False) -> int:
    """`--classroom N`: one student alone, then N at once on one server; the table, and the raw numbers to JSON.
    With `--browser`, the class clicks through the real app in headless Chromium instead (`core.bench_browser`)."""
    from core import bench_classroom

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("core.training", "core.freezing", "core.features", "core.data", "core.backbones", "core.jobs"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if students < 1:
        log.error("--classroom needs at least 1 student, not %d.", students)
        return 2
    context = machine()
    if in_browsers:
        from core import bench_browser as bench_kind

        results = bench_kind.run(students)
        passed = not results["failures"] and results["finished"] == students and results["own_runs_only"]
    else:
        bench_kind = bench_classroom
        results = bench_kind.run(students)
        passed = results["failures"] == 0
    results["machine"] = context
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2, default=str))
    sys.stdout.write(bench_kind.markdown(results, context)
                     + f"\n\nBenchmark took {results['bench_seconds'] / 60:.1f} min.\n")
    return 0 if passed else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="1 repeat, 3 steps; the plain 25-epoch arm runs 2 epochs, extrapolated"
    )
    parser.add_argument("--repeats", type=int, help="repeats per comparison (default 3, quick 1)")
    parser.add_argument("--json", help="also write the raw numbers to this file")
    parser.add_argument("--accuracy", action="store_true", help="accuracy benchmark (core.bench_accuracy) instead")
    parser.add_argument("--accuracy-out", help="also write the accuracy table to this file")
    parser.add_argument("--accuracy-sizes", type=int, nargs="+", help="examples per class (default 8 20 64)")
    parser.add_argument("--accuracy-draws", type=int, help="random draws per size (default 3)")
    parser.add_argument("--accuracy-sets", nargs="+", choices=("digits", "lfw", "tweets", "movies"),
                        help="which real data sets (default: all four)")
    parser.add_argument("--classroom", type=int, metavar="N",
                        help="classroom load benchmark (core.bench_classroom) instead: N students train at once")
    parser.add_argument("--browser", action="store_true",
                        help="with --classroom: N real browser sessions (headless Chromium) click through the app")
    args = parser.parse_args(argv)
    if args.classroom is not None:
        return _main_classroom(args.classroom, args.json, args.browser)
    if args.accuracy:
        from core import bench_accuracy

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        sizes = tuple(args.accuracy_sizes or ((8,) if args.quick else bench_accuracy.SIZES))
        draws = args.accuracy_draws or (1 if args.quick else bench_accuracy.DRAWS)
        names = tuple(args.accuracy_sets or bench_accuracy.SETS)
        started = time.perf_counter()
        text, rows = bench_accuracy.run(sizes, draws, names, out=args.accuracy_out)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2, default=str))
        sys.stdout.write(text + f"\n\nBenchmark took {(time.perf_counter() - started) / 60:.1f} min.\n")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("core.training", "core.freezing", "core.features", "core.data", "core.backbones"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="transfer-studio-bench-") as home:
        os.environ["TRANSFER_STUDIO_HOME"] = home  # bench runs never mix with the user's runs
        results = run(quick=args.quick, repeats=args.repeats)
    results["bench_seconds"] = time.perf_counter() - started
    results["peak_rss_mib_bench_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    sys.stdout.write(markdown(results) + f"\n\nBenchmark took {results['bench_seconds'] / 60:.1f} min.\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
