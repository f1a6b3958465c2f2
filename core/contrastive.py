"""Few-shot text beyond frozen features: fine-tune a sentence encoder on your labels, SetFit-style.

A sentence encoder places texts of similar meaning near each other, but "similar" is what its pretraining meant,
not what your labels mean. SetFit (Tunstall et al., 2022) first fine-tunes the encoder contrastively, so that texts
with the same label move together and texts with different labels move apart, and then fits a plain classifier on
the new embeddings. We run that first phase with sentence-transformers' own trainer and loss, not a loop of ours:
the batch-all triplet loss (every same-label / other-label triple inside a batch, cosine distance, margin 0.25 as
SetFit sets it) over batches grouped by label, AdamW at 2e-5 with 10 % warm-up. Counting every triple in a batch
learns from far more pairs per forward pass than SetFit's default sampled pairs (on 2 CPU cores, 64 tweets per
class: 4 epochs in about 30 s). The second phase is the app's own logistic head (`core.smalldata`) on the tuned
encoder's features.

When it pays ("auto", `plan`): on the accuracy benchmark (README, "Accuracy: the benchmark") tuning added about 2
points on movie reviews at 20 and 64 texts per class, where the frozen encoder's head scored about 70 %; it cost
points at 8 per class, and on the sample support messages the frozen head already scores 97 %. So "auto" tunes
when every class has at least `AUTO_MIN_PER_CLASS` texts, the run is cross-validated, the tuning is estimated
under `AUTO_MAX_CPU_MINUTES`, and the frozen encoder's head, cross-validated first (seconds, on cached features),
scores under `AUTO_TUNE_BELOW`.

The encoder is tuned in place; callers that need the pretrained weights again (each cross-validation fold starts
from them) keep a copy with `encoder_state` and put it back with `restore_encoder`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """How the encoder is tuned.

    Attributes:
        epochs: passes over the labelled texts.
        batch_size: texts per batch (grouped by label, so every batch holds positives and negatives).
        learning_rate: AdamW's peak rate for the encoder (sentence encoders forget quickly: keep it small).
        margin: the triplet margin in cosine distance.
        warmup: share of the steps spent warming the rate up.
    """

    epochs: int = 4
    batch_size: int = 32
    learning_rate: float = 2e-5
    margin: float = 0.25
    warmup: float = 0.1


RECIPE = Recipe()

#: "auto" tunes only with at least this many labelled texts in every class (at 8 per class tuning cost points).
AUTO_MIN_PER_CLASS = 20
#: ... only when the frozen encoder's head scores under this (cross-validated): near the top there is little room.
AUTO_TUNE_BELOW = 0.90
#: ... and only when tuning is estimated to take at most this many minutes on 2 CPU cores.
AUTO_MAX_CPU_MINUTES = 20.0

#: Seconds one step took on 2 CPU cores (MiniLM, 32 tweets): for the time a run is said to take before it starts.
CPU_SECONDS_PER_STEP = 1.2


@dataclass(frozen=True)
class TuningPlan:
    """Whether a run tunes its sentence encoder on the labels first, why (one sentence), and what it costs.

    Attributes:
        on: tune the encoder.
        reason: the rule that decided, in plain words.
        tunings: how often the encoder is tuned (once per cross-validation fold, and once on all texts).
        steps: optimisation steps over all tunings.
    """

    on: bool
    reason: str
    tunings: int = 0
    steps: int = 0
    conditional: bool = False

    def decided(self, frozen_accuracy: float, n: int) -> TuningPlan:
        """A conditional ("auto") plan made definite by the frozen encoder's cross-validated accuracy."""
        if not self.conditional:
            return self
        score = f"{100 * frozen_accuracy:.1f} % (cross-validated, n = {n})"
        if frozen_accuracy < AUTO_TUNE_BELOW:
            return dataclasses.replace(self, on=True, conditional=False, reason=(
                f"The encoder was first fine-tuned on pairs of your texts, SetFit-style ({self.tunings} tunings, "
                f"{self.steps} steps): with it frozen, the head scored {score}, under "
                f"{100 * AUTO_TUNE_BELOW:.0f} %, where tuning paid on the accuracy benchmark."))
        return dataclasses.replace(self, conditional=False, reason=(
            f"The encoder stays as pretrained: its head already scores {score}, at or above "
            f"{100 * AUTO_TUNE_BELOW:.0f} %, where tuning on pairs has little room to help (choose Always to try)."))

    def cpu_minutes(self) -> float:
        return cpu_minutes(self.steps)


def plan(
    setting: str,
    sentence_encoder: bool,
    every_group_frozen: bool,
    class_counts: Sequence[int],
    folds: int,
    recipe: Recipe = RECIPE,
) -> TuningPlan:
    """Decide whether to tune the encoder on pairs ("auto", "on" or "off"); "on" where it cannot apply raises.

    Args:
        setting: the user's choice; "auto" gives a conditional plan where tuning may pay (module docstring): the
            run decides it (`TuningPlan.decided`) once the frozen encoder's head is cross-validated.
        sentence_encoder: the backbone is a sentence encoder (`BackboneSpec.sentence_encoder`).
        every_group_frozen: the run is feature extraction (the tuned encoder then feeds the logistic head).
        class_counts: labelled texts per class that the delivered model learns from.
        folds: cross-validation folds (0 for a held-out test split: one tuning).
    """
    total = int(sum(class_counts))
    tunings = folds + 1 if folds else 1
    per_fold = total - total // folds if folds else total
    steps = folds * steps_per_tuning(per_fold, recipe) + steps_per_tuning(total, recipe) if folds \
        else steps_per_tuning(total, recipe)
    if setting == "off":
        return TuningPlan(False, "The encoder stays as pretrained: you turned tuning on pairs off.")
    cannot = None
    if not sentence_encoder:
        cannot = "only a sentence encoder (all_minilm_l6_v2) can be tuned on pairs of your texts"
    elif not every_group_frozen:
        cannot = "tuning on pairs feeds the logistic head, so it needs every layer group frozen (feature extraction)"
    elif len(class_counts) < 2 or min(class_counts) < 2:
        cannot = "tuning on pairs needs at least 2 labelled texts in every class"
    if cannot:
        if setting == "on":
            raise ValueError(f"Cannot tune the encoder: {cannot}.")
        return TuningPlan(False, f"The encoder stays as pretrained: {cannot}.")
    cost = f"{tunings} tuning{'s' if tunings > 1 else ''}, {steps} steps"
    if setting == "auto":
        minutes = cpu_minutes(steps)
        rule = None
        if min(class_counts) < AUTO_MIN_PER_CLASS:
            rule = (f"a class has fewer than {AUTO_MIN_PER_CLASS} labelled texts, where tuning on pairs did not pay "
                    "on the accuracy benchmark")
        elif not folds:
            rule = "tuning on pairs is chosen automatically for cross-validated (small) data only"
        elif minutes > AUTO_MAX_CPU_MINUTES:
            rule = f"tuning would take about {minutes:.0f} minutes on a 2-core CPU"
        if rule:
            return TuningPlan(False, f"The encoder stays as pretrained: {rule}; choose Always to tune it on pairs "
                              f"of your texts ({cost}).", tunings, steps)
        return TuningPlan(
            False, f"The encoder is tuned on pairs of your texts first ({cost}) if, frozen, its head scores under "
            f"{100 * AUTO_TUNE_BELOW:.0f} % (cross-validated first, in seconds): on the accuracy benchmark's movie "
            "reviews that added about 2 points.", tunings, steps, conditional=True,
        )
    return TuningPlan(
        True, f"The encoder is first fine-tuned on pairs of your texts, SetFit-style ({cost}): texts with the same "
        "label move together, so the head separates them better.", tunings, steps,
    )


def cpu_minutes(steps: int) -> float:
    """About how long `steps` tuning steps take on 2 CPU cores, in minutes."""
    return steps * CPU_SECONDS_PER_STEP / 60


def steps_per_tuning(num_texts: int, recipe: Recipe = RECIPE) -> int:
    """Optimisation steps one tuning of `num_texts` texts takes (for progress and time estimates)."""
    return recipe.epochs * max(1, math.ceil(num_texts / recipe.batch_size))


def encoder_state(backbone: Any) -> dict[str, torch.Tensor]:
    """A CPU copy of the encoder's weights, to start again from them later."""
    return {key: value.detach().to("cpu", copy=True) for key, value in backbone.network.state_dict().items()}


def restore_encoder(backbone: Any, state: dict[str, torch.Tensor]) -> None:
    backbone.network.load_state_dict(state)


def _hf_model(module: Any) -> torch.nn.Module:
    """The transformers model inside a sentence-transformers `Transformer` module (named differently by version)."""
    model = getattr(module, "auto_model", None)
    return model if model is not None else module.model


def _sentence_transformer(backbone: Any, folder: str, device: torch.device) -> Any:
    """A SentenceTransformer (transformer + mean pooling, as our backbone pools) holding `backbone`'s weights."""
    from sentence_transformers import SentenceTransformer, models

    transformer = models.Transformer(folder)
    missing, unexpected = _hf_model(transformer).load_state_dict(backbone.network.state_dict(), strict=False)
    unexpected_real = [key for key in unexpected if not key.startswith("pooler.")]
    missing_real = [key for key in missing if not key.startswith("pooler.")]
    if missing_real or unexpected_real:
        raise ValueError(
            f"The encoder in {folder} does not match the backbone {backbone.spec.name!r} "
            f"(missing {missing_real[:3]}, unexpected {unexpected_real[:3]}); cannot fine-tune it on pairs."
        )
    pooling = models.Pooling(backbone.num_features, pooling_mode="mean")
    return SentenceTransformer(modules=[transformer, pooling], device=str(device))


def _warmup(fraction: float) -> dict[str, float]:
    """transformers 5 takes the warm-up share as a fractional `warmup_steps`; earlier versions as `warmup_ratio`."""
    import transformers

    major = int(transformers.__version__.split(".")[0])
    return {"warmup_steps": fraction} if major >= 5 else {"warmup_ratio": fraction}


class _Progress:
    """A transformers `TrainerCallback` that reports each step and stops the trainer when asked."""

    def __new__(cls, on_step: Callable[[int, int, float | None], None] | None,
                stop_requested: Callable[[], bool] | None) -> Any:
        from transformers import TrainerCallback

        class Progress(TrainerCallback):
            def __init__(self) -> None:
                self.last_loss: float | None = None
                self.stopped = False

            def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
                if logs and "loss" in logs:
                    self.last_loss = float(logs["loss"])

            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
                if on_step is not None:
                    on_step(int(state.global_step), int(state.max_steps), self.last_loss)
                if stop_requested is not None and stop_requested():
                    self.stopped = True
                    control.should_training_stop = True
                return control

        return Progress()


class TuningStopped(Exception):
    """The user asked the run to stop while the encoder was being tuned."""


def tune_encoder(
    backbone: Any,
    folder: str,
    texts: Sequence[str],
    labels: Sequence[int],
    seed: int = 0,
    recipe: Recipe = RECIPE,
    device: torch.device | str = "cpu",
    on_step: Callable[[int, int, float | None], None] | None = None,
    stop_requested: Callable[[], bool] | None = None,
) -> None:
    """Fine-tune `backbone`'s sentence encoder in place so that texts with the same label embed close together.

    Args:
        backbone: an `HFEncoderBackbone` of a sentence encoder (its weights change).
        folder: the local folder with the encoder's tokenizer and config (`core.backbones.weights_folder`).
        texts, labels: the labelled texts to tune on (class indices).
        seed: seeds the batch order.
        recipe: the tuning settings.
        device: where to train.
        on_step: called after each step with (step, total steps, last logged loss or None).
        stop_requested: polled after each step; when it returns True tuning ends and `TuningStopped` is raised.
    """
    from datasets import Dataset as HFDataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments, losses
    from sentence_transformers.training_args import BatchSamplers

    if len(set(labels)) < 2:
        raise ValueError("Tuning the encoder on pairs needs at least two classes among the labelled texts.")
    device = torch.device(device)
    model = _sentence_transformer(backbone, folder, device)
    loss = losses.BatchAllTripletLoss(
        model, distance_metric=losses.BatchHardTripletLossDistanceFunction.cosine_distance, margin=recipe.margin,
    )
    train = HFDataset.from_dict({"sentence": [str(text) for text in texts], "label": [int(y) for y in labels]})
    progress = _Progress(on_step, stop_requested)
    with tempfile.TemporaryDirectory(prefix="transfer-studio-tuning-") as scratch:
        arguments = SentenceTransformerTrainingArguments(
            output_dir=scratch, num_train_epochs=recipe.epochs, per_device_train_batch_size=recipe.batch_size,
            learning_rate=recipe.learning_rate, seed=seed, data_seed=seed, **_warmup(recipe.warmup),
            batch_sampler=BatchSamplers.GROUP_BY_LABEL, save_strategy="no", report_to="none", logging_steps=1,
            disable_tqdm=True, use_cpu=device.type == "cpu", dataloader_num_workers=0,
        )
        class Trainer(SentenceTransformerTrainer):
            def add_model_card_callback(self, *args: Any, **kwargs: Any) -> None:
                """No model card: nothing is published, and drafting one embeds sample texts (seconds on a CPU)."""

        trainer = Trainer(
            model=model, args=arguments, train_dataset=train, loss=loss, callbacks=[progress],
        )
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # progress reaches the user through `on_step`, not stdout
        trainer.train()
    backbone.network.load_state_dict(_hf_model(model[0]).state_dict(), strict=False)
    backbone.network.to(device)
    if progress.stopped:
        raise TuningStopped
    log.info("Tuned the encoder on %d texts in %d steps", len(texts), trainer.state.global_step)
