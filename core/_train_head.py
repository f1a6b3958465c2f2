"""Small data: the logistic head on frozen features, the lexical model mixed in, tuning the sentence encoder, and the
estimate (with its intervals) that every run ends with.

Feature extraction for real (`run_logistic`): logistic regression by L-BFGS with its L2 strength chosen by inner
cross-validation, estimated by the run's protocol (`core.smalldata`); for texts a TF-IDF n-gram model is mixed into
the probabilities (`core.ngrams`), and a sentence encoder may first be tuned on the labels (`core.contrastive`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from core import backbones, contrastive, ngrams, smalldata, stats
from core import features as feature_cache
from core._run_folder import EXAMPLES, write_text_at_once
from core._train_cache import cached_states
from core._train_config import TrainConfig, _cache_plan, uses_logistic_head
from core.contracts import EpochEnd, StepEnd, TrainingStopped
from core.dataset import Dataset
from core.devices import to_device
from core.preprocess import make_preprocessor
from core.tfidf import fit_tfidf

log = logging.getLogger("core.training")  # the public module's name: what callers silence or watch

ENCODE_BATCH = 64  # texts embedded at once when features are computed outside the cache (a tuned encoder)


class _SmallDataHead:
    """The small-data half of a run (`core._train_loop._Trainer`): the logistic head and the estimate.

    A mixin: it reads the trainer's state (model, backbone, protocol, caches) and sets its results (estimate,
    test accuracy, history).
    """

    def plan_tuning(self) -> contrastive.TuningPlan:
        """Whether the sentence encoder is tuned on the labels first (`core.contrastive.plan`), for this run."""
        return _tuning_plan(self.dataset, self.protocol, self.config.sentence_tuning,
                            self.backbone.spec.sentence_encoder, self.logistic)

    def augmented_views(self, items: list[str], labels: torch.Tensor) -> torch.Tensor | None:
        """`config.views` augmented views of each image or clip (the "light" augmentation: crops and flips, or a
        shifted cut and a gain), through the frozen backbone once: [N, views, D], row i the views of items[i]. Each
        view is seeded and cached on disk like the features, so a second run on the same data reuses them."""
        if not self.config.views:
            return None

        preprocessor = make_preprocessor(self.backbone.spec, "light")
        views = []
        for view in range(self.config.views):
            seed = self.config.seed * 1009 + view
            with torch.random.fork_rng(devices=[]):
                state = random.getstate()
                random.seed(seed)
                torch.manual_seed(seed)
                try:
                    result, _ = cached_states(
                        self.backbone, {"view": (items, labels.tolist())}, self.frozen, preprocessor,
                        f"{self.fingerprint}|{self.protocol.name}|view {view} seed {seed}", self.device, self.precision,
                        self.channels_last, to_disk=True, stop_requested=self.stop_requested, emit=self.events.emit,
                        train=True,
                    )
                finally:
                    random.setstate(state)
            if result is None:
                raise TrainingStopped
            views.append(result["view"].states.float().cpu())
        log.info("Learning from %d augmented views of each of %d examples", self.config.views, len(items))
        return torch.stack(views, dim=1)

    def split_logits(self, split_name: str, cache: dict | None) -> tuple[np.ndarray, np.ndarray]:
        """Logits and labels of one split with the current model (empty arrays for an empty split)."""
        self.model.eval()
        logits, labels = [], []
        for batch, batch_labels in self.eval_batches(split_name, cache):
            with torch.inference_mode(), self.autocast():
                logits.append(self.forward(to_device(batch, self.device, self.channels_last)).float().cpu())
            labels.append(batch_labels)
        if not logits:
            return np.zeros((0, self.dataset.num_classes)), np.zeros(0, dtype=np.int64)
        return torch.cat(logits).numpy(), torch.cat(labels).numpy()

    def estimate_on_test_split(self, cache: dict | None, temperature: float | None = None) -> None:
        """Test-split numbers with intervals; probabilities calibrated by a temperature fitted on validation (by
        the caller, when the model has since learned from the validation split)."""

        test_logits, test_labels = self.split_logits("test", cache)
        if len(test_labels) == 0:
            return
        if temperature is None:
            val_logits, val_labels = self.split_logits("val", cache)
            temperature = stats.fit_temperature(val_logits, val_labels) if len(val_labels) else 1.0
        lexical = getattr(self, "lexical", None)
        probabilities, uncalibrated = self.mix_lexical(
            stats.softmax(test_logits, temperature), stats.softmax(test_logits), test_labels,
            lexical.probabilities(list(self.test_items)) if lexical is not None else None,
        )
        self.record_estimate(
            test_labels, probabilities, uncalibrated,
            items=self.test_items, where=["test"] * len(test_labels), temperature=temperature,
        )

    def record_estimate(
        self, labels: np.ndarray, probabilities: np.ndarray, uncalibrated: np.ndarray, items: Sequence[str],
        where: Sequence[str], temperature: float,
    ) -> None:
        """The estimate (metrics.json contract) and the examples it rests on, written to the run folder."""
        self.estimate = smalldata.estimate(labels, probabilities, uncalibrated, self.protocol, self.dataset.classes)
        self.estimate["temperature"] = temperature
        if getattr(self, "refit_record", None):
            self.estimate["refit"] = self.refit_record
        if getattr(self, "lexical_record", None):
            self.estimate["lexical"] = self.lexical_record
        self.test_accuracy = self.estimate["accuracy"]
        examples = {
            "protocol": self.protocol.name,
            "classes": list(self.dataset.classes),
            "items": [str(item) for item in items],
            "labels": [int(label) for label in labels],
            "where": list(where),
            "probabilities": np.round(np.asarray(probabilities, dtype=np.float64), 6).tolist(),
            "dataset_fingerprint": self.fingerprint,
        }
        write_text_at_once(self.run_dir / EXAMPLES, json.dumps(examples))

    def run_logistic(self, cache: dict[str, feature_cache.CachedStates]) -> None:
        """Feature extraction for real: logistic regression by L-BFGS, L2 by inner CV, estimated by the protocol.

        The chart sees what really happens: one "epoch" per L2 strength tried (its cross-validated loss and
        accuracy; the chosen one is the best epoch), and the loss of every L-BFGS iteration of the final fit.
        """

        names = [name for name in ("train", "val", "test") if name in cache]
        if self.protocol.name == "cross-validation":
            fit_names = names
        else:
            fit_names = [name for name in names if name != "test"]
        examples = feature_cache.concatenate([cache[name] for name in fit_names])
        features, labels = examples.states.float().cpu(), examples.labels.long().cpu()
        items = [item for name in fit_names for item in self.dataset.split(name)[0]]
        grid_size = len(smalldata.l2_grid(self.backbone.spec.sentence_encoder))

        def iteration(index: int, loss: float) -> None:
            self.state.global_step = index
            self.events.emit("on_step_end", StepEnd(
                phase="train", step=index, global_step=index, epoch=grid_size,
                loss=loss, train_loss=loss, lr=0.0, progress=0.95,
            ))

        def progress(done: int, total: int) -> None:
            self.events.emit("on_step_end", StepEnd(
                phase="train", step=0, global_step=0, epoch=0, progress=0.9 * done / max(total, 1),
                note=f"cross-validation fold {min(done + 1, total)} of {total}",
            ))

        balanced = self.config.class_weights
        names = self.class_name_embeddings()  # the pretrained encoder's: the zero-shot baseline (and the prior)
        views = self.augmented_views(items, labels)
        featurize = self.tuned_features(items, labels.numpy()) if self.tuning.on else None
        try:
            if self.protocol.name == "cross-validation":
                def cross_validate(featurize: smalldata.Featurize | None, on_iteration: Any
                                   ) -> smalldata.CrossValidation:
                    return smalldata.cross_validate_head(
                        features, labels, self.dataset.num_classes, self.protocol.folds, seed=self.config.seed,
                        balanced=balanced, progress=progress, on_iteration=on_iteration,
                        stop_requested=self.stop_requested, class_embeddings=names, featurize=featurize, views=views,
                    )

                if self.tuning.conditional:  # "auto": the frozen encoder's head first (seconds), then decide
                    result = cross_validate(None, None)
                    self.frozen_accuracy = float((result.oof_logits.argmax(axis=1) == labels.numpy()).mean())
                    self.tuning = self.tuning.decided(self.frozen_accuracy, len(labels))
                    log.info(self.tuning.reason)
                    if self.tuning.on:
                        result = cross_validate(self.tuned_features(items, labels.numpy()), iteration)
                    else:
                        for index, loss in enumerate(result.final.head.losses, 1):  # the chart's iterations
                            iteration(index, loss)
                else:
                    result = cross_validate(featurize, iteration)
                fitted, temperature = result.final, result.temperature
            else:
                head_features, head_names = featurize(np.ones(len(labels), bool)) if featurize else (features, names)
                fitted = smalldata.select_and_fit(
                    head_features, labels, self.dataset.num_classes, seed=self.config.seed, balanced=balanced,
                    on_iteration=iteration, stop_requested=self.stop_requested, class_embeddings=head_names,
                    views=views,
                )
                temperature = stats.fit_temperature(fitted.oof_logits, labels.numpy())
        except (InterruptedError, contrastive.TuningStopped):
            raise TrainingStopped from None
        fitted.head.to_linear(self.model.head[-1], temperature)
        chosen = next((i for i, point in enumerate(fitted.grid, 1) if point.l2 == fitted.head.l2), None)
        self.state.best_epoch = chosen
        for index, point in enumerate(fitted.grid, 1):
            ended = EpochEnd(
                epoch=index, train_loss=point.train_loss, train_accuracy=None, val_loss=point.log_loss,
                val_accuracy=point.accuracy, lr=0.0, l2=point.l2, toward_names=point.toward_names,
                seconds=0.0, best_epoch=chosen, is_best=index == chosen, total_epochs=len(fitted.grid),
            )
            self.recorder.on_epoch_end(self.state, self.control, ended)  # recorded, not checkpointed: no resume
            self.events.emit("on_epoch_end", ended)
        self.recorder.flush(force=True)
        cross_validated = self.protocol.name == "cross-validation"
        lexical_oof = self.fit_lexical(items, labels.numpy(), result.fold_of if cross_validated else None)
        if cross_validated:
            probabilities, uncalibrated = self.mix_lexical(
                result.oof_probabilities, stats.softmax(result.oof_logits), labels.numpy(), lexical_oof)
            self.record_estimate(
                labels.numpy(), probabilities, uncalibrated, items,
                where=[f"fold {fold + 1}" for fold in result.fold_of], temperature=temperature,
            )
        else:
            self.estimate_on_test_split(None if self.tuning.on else cache)  # tuning makes cached features stale
        if self.estimate is not None:
            self.estimate["sentence_tuning"] = self.tuning_record()
        if names is not None and self.estimate is not None:
            # The class-name classifier scored on the same examples as the estimate: "0 examples -> x %".
            scored_features, scored_labels = features, labels
            if self.protocol.name != "cross-validation":
                test = cache["test"]
                scored_features, scored_labels = test.batch(torch.arange(len(test))).float().cpu(), test.labels
            self.estimate["zero_shot"] = smalldata.zero_shot_score(scored_features, scored_labels.numpy(), names)
            self.estimate["head_prior"] = "class names" if fitted.head.toward_names else "zero"
        log.info("Logistic head: L2 %.4g towards %s, temperature %.2f, %s accuracy %.3f", fitted.head.l2,
                 "the class names" if fitted.head.toward_names else "zero", temperature, self.protocol.name,
                 self.test_accuracy or 0.0)

    def fit_lexical(self, items: Sequence[str], labels: np.ndarray, fold_of: np.ndarray | None) -> np.ndarray | None:
        """The TF-IDF n-gram model mixed into a text run's probabilities (`core.ngrams`), fitted like the head.

        Under cross-validation each fold's model learns from the other folds only (the same folds as the head), so
        the mixed out-of-fold probabilities stay an honest estimate; they are returned. The delivered model then
        learns from every example of `items`. None (and no lexical model) for other data, or when turned off.
        """
        self.lexical = None
        if self.dataset.modality != "text" or self.config.lexical == "off":
            return None

        texts = [str(item) for item in items]
        folds = sorted(set(fold_of.tolist())) if fold_of is not None else []
        oof = np.zeros((len(texts), self.dataset.num_classes)) if fold_of is not None else None
        for step, fold in enumerate([*folds, None]):
            self.check_stop(lockstep=False)
            self.events.emit("on_step_end", StepEnd(
                phase="train", step=0, global_step=self.state.global_step, epoch=0, progress=0.95,
                note=f"TF-IDF n-gram model {step + 1} of {len(folds) + 1}",
            ))
            learn = np.ones(len(texts), bool) if fold is None else fold_of != fold
            pipeline, recipe = fit_tfidf([texts[i] for i in np.flatnonzero(learn)], labels[learn], self.config.seed)
            model = ngrams.from_pipeline(pipeline, self.dataset.num_classes, recipe)
            if fold is None:
                self.lexical = model
            else:
                held = np.flatnonzero(~learn)
                oof[held] = model.probabilities([texts[i] for i in held])
        self.lexical_record = {
            "share": self.lexical.share, "recipe": self.lexical.recipe, "method": "TF-IDF n-grams + logistic "
            "regression, mixed into the probabilities", "file": ngrams.FILE,
        }
        self.model.lexical = self.lexical
        log.info("Lexical model (%s) mixed in at %.0f %%", self.lexical.recipe, 100 * self.lexical.share)
        return oof

    def mix_lexical(
        self, probabilities: np.ndarray, uncalibrated: np.ndarray, labels: np.ndarray, lexical: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The estimate's probabilities (calibrated and not) with the lexical model's mixed in, recording what the
        network and the lexical model each scored alone on the same examples; unchanged without a lexical model."""
        if lexical is None or getattr(self, "lexical", None) is None:
            return probabilities, uncalibrated
        self.lexical_record["network_accuracy"] = float((probabilities.argmax(1) == labels).mean())
        self.lexical_record["alone_accuracy"] = float((lexical.argmax(1) == labels).mean())
        share = self.lexical.share
        return ngrams.mix(probabilities, lexical, share), ngrams.mix(uncalibrated, lexical, share)

    def tuning_record(self) -> dict[str, Any] | None:
        """What run.json and metrics.json say about tuning the sentence encoder (None before it is planned)."""
        plan = getattr(self, "tuning", None)
        if plan is None:
            return None
        record: dict[str, Any] = {"on": plan.on, "reason": plan.reason}
        if getattr(self, "frozen_accuracy", None) is not None:  # "auto" decided on the frozen head's score
            record["frozen_accuracy"] = self.frozen_accuracy
        if plan.on:
            record.update(tunings=plan.tunings, steps=plan.steps, recipe=dataclasses.asdict(contrastive.RECIPE),
                          method="contrastive (SetFit-style, sentence-transformers batch-all triplet loss)")
        return record

    def tuned_features(self, items: Sequence[str], labels: np.ndarray) -> smalldata.Featurize:
        """Features from the encoder tuned on the examples a mask allows, each tuning from the pretrained weights.

        Each call (a cross-validation fold, then all examples) starts from the pretrained encoder, tunes it on the
        allowed examples only, and returns every example's features and the class names' embeddings from it; the
        last call's encoder is the one delivered.
        """

        folder = backbones.weights_folder(self.config.backbone)
        if folder is None:
            raise FileNotFoundError(
                f"Tuning {self.config.backbone} on pairs needs its tokenizer and config files in a local folder; "
                "none was found (install its offline package or turn tuning off)."
            )
        pretrained = contrastive.encoder_state(self.backbone)
        tunings, total_steps = max(self.tuning.tunings, 1), max(self.tuning.steps, 1)
        done = {"tunings": 0, "steps": 0}

        def on_step(step: int, steps: int, loss: float | None) -> None:
            overall = done["steps"] + step
            self.events.emit("on_step_end", StepEnd(
                phase="tuning", step=overall, global_step=overall, epoch=0, tuning_loss=loss,
                lr=contrastive.RECIPE.learning_rate,
                progress=0.9 * min(overall / total_steps, 1.0),
                note=f"tuning the encoder on pairs of your texts ({done['tunings'] + 1} of {tunings}), "
                     f"step {step} of {steps}",
            ))

        def featurize(allowed: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
            contrastive.restore_encoder(self.backbone, pretrained)
            chosen = np.flatnonzero(allowed)
            contrastive.tune_encoder(
                self.backbone, str(folder), [items[i] for i in chosen], labels[chosen].tolist(),
                seed=self.config.seed + done["tunings"], device=self.device, on_step=on_step,
                stop_requested=self.stop_requested,
            )
            done["tunings"] += 1
            done["steps"] += contrastive.steps_per_tuning(len(chosen))
            self.backbone.eval()
            return self.encode(items), self.class_name_embeddings()

        return featurize

    def encode(self, items: Sequence[str]) -> torch.Tensor:
        """The backbone's features of `items` (float32, CPU), computed now (not from the cache)."""
        self.backbone.eval()
        chunks = []
        with torch.inference_mode(), self.autocast():
            for start in range(0, len(items), ENCODE_BATCH):
                batch = self.eval_preprocessor.batch(list(items[start:start + ENCODE_BATCH]))
                chunks.append(self.backbone(to_device(batch, self.device, self.channels_last)).float().cpu())
        return torch.cat(chunks)

    def class_name_embeddings(self) -> torch.Tensor | None:
        """A sentence encoder's features of each class name (underscores and dashes read as spaces), else None."""
        if not self.backbone.spec.sentence_encoder:
            return None
        self.model.eval()
        with torch.inference_mode(), self.autocast():
            texts = smalldata.class_name_texts(self.dataset.classes)
            batch = to_device(self.eval_preprocessor.batch(texts), self.device, self.channels_last)
            return self.model.backbone(batch).float().cpu()


def _tuning_plan(dataset: Dataset, protocol: smalldata.Protocol, setting: str, sentence_encoder: bool,
                 logistic: bool) -> contrastive.TuningPlan:
    cross_validated = protocol.name == "cross-validation"
    learned_from = dataset.table if cross_validated else dataset.table[dataset.table["split"] != "test"]
    counts = learned_from["label"].value_counts().reindex(dataset.classes, fill_value=0)
    return contrastive.plan(setting, sentence_encoder, logistic, [int(count) for count in counts],
                            protocol.folds if cross_validated else 0)


def sentence_tuning_plan(dataset: Dataset, config: TrainConfig) -> contrastive.TuningPlan:
    """Before a run starts: will it tune its sentence encoder on the labels, why, and at what cost (the Train page).

    The same decision the run makes, for a feature-extraction run with the logistic head.
    """

    protocol = smalldata.choose_protocol(
        [str(label) for label in dataset.table["label"]], dataset.split_given, config.protocol, config.folds
    )
    spec = backbones.get_spec(config.backbone)
    cache_mode, _ = _cache_plan(config, min(config.frozen_groups, spec.num_groups), spec.num_groups)
    return _tuning_plan(dataset, protocol, config.sentence_tuning, spec.sentence_encoder,
                        uses_logistic_head(config, cache_mode))
