"""The time-left estimate: measured epochs (validation included), the cache pass, smoothing and counting down."""

from __future__ import annotations

import pytest

from core.eta import TimeLeft


def _run_epochs(eta: TimeLeft, epochs: int, steps: int, step_seconds: float, validation_seconds: float,
                start: float = 0.0, epochs_before: int = 0, shown: list[float] | None = None) -> float:
    """Feeds `epochs` epochs of a run whose steps and validation take the given times; returns the clock."""
    now = start
    total = eta.epochs * steps
    done = epochs_before * steps
    for _epoch in range(epochs):
        for _step in range(steps):
            now += step_seconds
            done += 1
            eta.step(done / total, now)
            if shown is not None and eta.seconds_left(now) is not None:
                shown.append(eta.seconds_left(now))
        now += validation_seconds
        eta.epoch_end(now, epochs_done=round(done / steps))
    return now


def test_after_an_epoch_the_estimate_counts_validation_too():
    """Steps take 1 s per epoch but validation 3 s: the estimate uses the measured 4 s per epoch."""
    eta = TimeLeft()
    eta.begin(epochs=10, num_train=100, num_val=100, now=0.0)
    now = _run_epochs(eta, epochs=2, steps=10, step_seconds=0.1, validation_seconds=3.0)
    eta.step(21 / 100, now + 0.1)  # first step of epoch 3
    # 8 epochs to go of 4 s each, less the 0.1 s already spent in this one
    assert eta.seconds_left(now + 0.1) == pytest.approx(8 * 4.0 - 0.1, rel=0.15)


def test_before_the_first_epoch_ends_validation_is_estimated_from_the_split_sizes():
    plain, with_val = TimeLeft(), TimeLeft()
    plain.begin(epochs=4, num_train=100, num_val=0, now=0.0)
    with_val.begin(epochs=4, num_train=100, num_val=60, now=0.0)
    for eta in (plain, with_val):
        for step in range(1, 21):
            eta.step(step / 40, step * 0.1)  # half of the steps, 2 s
    assert plain.seconds_left(2.0) == pytest.approx(2.0, rel=0.05)
    # the steps take 4 s in all and validation a fifth more (60 of 100 examples, a third the cost): 4.8 - 2 s
    assert with_val.seconds_left(2.0) == pytest.approx(4.0 * (1 + 60 / 100 / 3) - 2.0, rel=0.05)


def test_the_shown_estimate_does_not_jump_and_counts_down_between_events():
    """Steady epochs, then one slow one: the number moves smoothly, and never rises by more than a few seconds."""
    eta = TimeLeft()
    eta.begin(epochs=20, num_train=100, num_val=100)
    shown: list[float] = []
    now = _run_epochs(eta, epochs=3, steps=10, step_seconds=0.1, validation_seconds=1.0, shown=shown)
    now = _run_epochs(eta, epochs=1, steps=10, step_seconds=0.3, validation_seconds=3.0, start=now,
                      epochs_before=3, shown=shown)
    rises = [later - earlier for earlier, later in zip(shown, shown[1:], strict=False)]
    assert max(rises) < 5.0, max(rises)
    before = eta.seconds_left(now)
    assert eta.seconds_left(now + 2.0) == pytest.approx(before - 2.0)  # counts down without new events
    assert eta.seconds_left(now + 10_000) == 0.0


def test_nothing_is_promised_before_there_is_something_to_measure():
    eta = TimeLeft()
    eta.begin(epochs=5, num_train=10, num_val=5)
    assert eta.seconds_left(0.0) is None
    eta.step(0.01, 0.2)  # 0.2 s of warm-up steps is too little to extrapolate from
    assert eta.seconds_left(0.2) is None


def test_the_cache_pass_is_timed_on_its_own():
    eta = TimeLeft()
    eta.begin(epochs=5, num_train=10, num_val=5, now=0.0)
    eta.cache(0.25, 1.0)
    eta.cache(0.5, 2.0)  # half of the examples in 2 s: 2 s left for the other half
    assert eta.seconds_left(2.0) == pytest.approx(2.0)
    assert eta.seconds_left(3.0) == pytest.approx(1.0)


def test_the_logistic_head_uses_its_progress_alone():
    """Its L2 strengths arrive as a burst of "epochs" at the end; they must not multiply the time left."""
    eta = TimeLeft()
    eta.begin(epochs=8, num_train=100, num_val=20, gradient=False, now=0.0)
    for index in range(1, 10):
        eta.step(0.9 * index / 10, index * 1.0)
    assert eta.seconds_left(9.0) == pytest.approx(9.0 * (1 - 0.81) / 0.81, rel=0.05)  # the rate so far
    eta.epoch_end(9.5, epochs_done=1)
    assert eta.seconds_left(9.5) < 3.0
