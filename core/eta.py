"""How long a training run has left, estimated from what the run really does and smoothed, so it does not jump.

A plain "time spent / progress" estimate counts only the optimisation steps: it leaves out each epoch's validation
pass (and the test pass at the end), so it promises too little and then leaps when the first epoch ends. `TimeLeft`
uses the measured duration of whole epochs (steps and validation together) as soon as one has ended, averaged with
an exponential moving average; before that it extrapolates the steps and adds a share for validation. The feature
cache pass is timed on its own. The estimate shown then moves towards each new raw estimate gradually and counts
down between events, so a user sees a steady number rather than 15 s, then 2 min 18 s.

No clocks are read here: every call passes `now` (seconds, any monotonic origin), which keeps it testable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Weight of the newest epoch duration in the moving average (the rest is the earlier average).
EPOCH_SMOOTHING = 0.5
#: Seconds over which the shown estimate follows a changed raw estimate (time constant of the smoothing).
FOLLOW_SECONDS = 4.0
#: Before any epoch has ended, validating an example is taken to cost a third of training on it (forward only).
VALIDATION_COST_PER_EXAMPLE = 1 / 3
#: No estimate before this much training time: the first steps include warm-up and would mislead.
MIN_TRAINING_SECONDS = 1.0


@dataclass
class TimeLeft:
    """A smoothed estimate of the seconds a run has left.

    Feed it the run's events in order (`begin`, `cache`, `step`, `epoch_end`) and ask `seconds_left(now)`.

    Attributes:
        epochs: how many epochs this run trains (None when unknown: then only the step rate is used).
        validation_share: before an epoch has been measured, how much longer an epoch takes than its steps
            (validation examples / training examples × `VALIDATION_COST_PER_EXAMPLE`; 0 when there is none).
    """

    epochs: int | None = None
    validation_share: float = 0.0
    _ready_at: float | None = None
    _cache_started: float | None = None
    _cache_progress: float = 0.0
    _cache_at: float | None = None
    _train_started: float | None = None
    _progress: float = 0.0
    _epochs_done: int = 0
    _last_epoch_end: float | None = None
    _seconds_per_epoch: float | None = None
    _shown: float | None = None
    _shown_at: float | None = None

    def begin(self, epochs: int | None, num_train: int = 0, num_val: int = 0, gradient: bool = True,
              now: float | None = None) -> None:
        """What the run will do: its epochs and split sizes.

        Only gradient descent has epochs with a validation pass each; the logistic head reports its progress as a
        share of the whole fit (its "epochs" are L2 strengths, reported together at the end), so for it the
        step rate alone is used. `now`: when the run began; training is timed from then or from the end of the
        cache pass, so the first step's own time is not lost.
        """
        self._ready_at = now
        self.epochs = epochs if gradient and epochs and epochs > 0 else None
        share = num_val / num_train * VALIDATION_COST_PER_EXAMPLE if gradient and num_train > 0 else 0.0
        self.validation_share = max(0.0, share)

    def cache(self, progress: float, now: float) -> None:
        """The feature cache pass has done `progress` (0..1) of its examples."""
        if self._cache_started is None:
            self._cache_started = self._ready_at if self._ready_at is not None else now
        self._cache_progress = max(self._cache_progress, min(1.0, progress))
        self._cache_at = self._ready_at = now

    def step(self, progress: float, now: float) -> None:
        """Training has done `progress` (0..1) of its optimisation steps (or of the run, for the logistic head)."""
        if self._train_started is None:
            self._train_started = self._last_epoch_end = self._ready_at if self._ready_at is not None else now
        self._progress = max(self._progress, min(1.0, progress))
        self._follow(self._raw(now), now)

    def epoch_end(self, now: float, epochs_done: int | None = None) -> None:
        """An epoch (its steps and its validation pass) has ended."""
        if self._train_started is None:
            self._train_started = self._last_epoch_end = now
            return
        duration = now - self._last_epoch_end if self._last_epoch_end is not None else 0.0
        self._last_epoch_end = now
        self._epochs_done = epochs_done if epochs_done is not None else self._epochs_done + 1
        if duration > 0:
            previous = self._seconds_per_epoch
            self._seconds_per_epoch = duration if previous is None else (
                EPOCH_SMOOTHING * duration + (1 - EPOCH_SMOOTHING) * previous
            )
        if self.epochs:
            self._progress = max(self._progress, min(1.0, self._epochs_done / self.epochs))
        self._follow(self._raw(now), now)

    def seconds_left(self, now: float) -> float | None:
        """The shown estimate: the smoothed one, counted down since it was last revised; None while unknown.

        While the feature cache pass runs (and no training has started), the time left of that pass alone.
        """
        if self._train_started is None:
            return self._cache_left(now)
        if self._shown is None or self._shown_at is None:
            return None
        return max(0.0, self._shown - (now - self._shown_at))

    # ------------------------------------------------------------------------------------------------ internal
    def _cache_left(self, now: float) -> float | None:
        if self._cache_started is None or self._cache_at is None or self._cache_progress <= 0.0:
            return None
        spent = self._cache_at - self._cache_started
        if spent < MIN_TRAINING_SECONDS:
            return None
        left = spent * (1.0 - self._cache_progress) / self._cache_progress
        return max(0.0, left - (now - self._cache_at))

    def _raw(self, now: float) -> float | None:
        """The unsmoothed estimate at `now`, from measured epochs when there are any, else from the step rate."""
        if self._seconds_per_epoch is not None and self.epochs:
            position = max(float(self._epochs_done), self._progress * self.epochs)
            in_epoch = now - self._last_epoch_end if self._last_epoch_end is not None else 0.0
            # the current epoch's share still to go, taken from the measured epoch, never below nothing
            current = max(0.0, self._seconds_per_epoch - in_epoch) if position > self._epochs_done else 0.0
            whole_left = max(0, self.epochs - self._epochs_done - (1 if position > self._epochs_done else 0))
            return whole_left * self._seconds_per_epoch + current
        spent = now - self._train_started if self._train_started is not None else 0.0
        if self._progress <= 0.0 or spent < MIN_TRAINING_SECONDS:
            return None
        # the whole run takes its steps' time plus the validation share; what is left of it, from the rate so far
        return max(0.0, spent * ((1.0 + self.validation_share) / self._progress - 1.0))

    def _follow(self, raw: float | None, now: float) -> None:
        """Move the shown estimate towards `raw` by how much time passed since it was last revised."""
        if raw is None:
            return
        if self._shown is None or self._shown_at is None:
            self._shown, self._shown_at = raw, now
            return
        predicted = max(0.0, self._shown - (now - self._shown_at))
        weight = 1.0 - math.exp(-max(0.0, now - self._shown_at) / FOLLOW_SECONDS)
        self._shown, self._shown_at = predicted + weight * (raw - predicted), now
