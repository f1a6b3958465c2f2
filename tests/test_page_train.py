"""AppTest of the Train page: pre-seeded state, a short real run of the tiny CNN, live metrics, completion.

AppTest does not run the browser's `run_every` timer; every `at.run()` is a full script run, which also draws the
polling fragment once, so the test polls with repeated `at.run()` calls (bounded).
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import _jobs_job
from core.session import StudioState

APP = str(Path(__file__).resolve().parent.parent / "app.py")
PAGE = "pages/4_train.py"


@pytest.fixture(autouse=True)
def _clean_registry(clean_jobs):
    """Every test here starts with no training jobs (see `clean_jobs` in conftest)."""


@pytest.fixture
def tiny_fit(monkeypatch):
    """The page's jobs train the tiny CNN with the real engine (the catalogue cannot load a test backbone)."""
    from core import training
    from tests.tiny import TinyCNN

    def fit_tiny(dataset, config, run_dir, backbone=None, **kwargs):
        return training.fit(dataset, config, run_dir, backbone=TinyCNN(), **kwargs)

    monkeypatch.setattr(_jobs_job, "_default_fit", lambda: fit_tiny)
    return fit_tiny


@pytest.fixture
def three_groups():
    """The tiny CNN in the catalogue with three layer groups, so the page knows when every group is frozen."""
    from core import backbones
    from tests.tiny import TINY_SPEC

    backbones.unregister(TINY_SPEC.name)
    spec = backbones.register(dataclasses.replace(TINY_SPEC, family="timm_cnn", depth=1))  # stem, 1 stage, head
    assert spec.num_groups == 3
    yield spec
    backbones.unregister(spec.name)


def _inputs(container) -> list[str]:
    """Labels of the number inputs, select boxes and checkboxes inside an AppTest container, in page order."""
    return [w.label for kind in ("number_input", "selectbox", "checkbox") for w in getattr(container, kind)]


def _app(dataset, frozen_groups: int = 1) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.switch_page(PAGE)  # through the router, so page links to other steps resolve
    state = StudioState()
    state.dataset = dataset
    state.backbone_name = "tiny_cnn"
    state.frozen_groups = frozen_groups
    at.session_state["studio"] = state
    return at


def _poll(at: AppTest, until, limit_seconds: float = 90.0) -> bool:
    deadline = time.monotonic() + limit_seconds
    while time.monotonic() < deadline:
        at.run()
        if until(at):
            return True
        time.sleep(0.3)
    return False


def _state(at: AppTest) -> StudioState:
    return at.session_state["studio"]


def _set(at: AppTest, label: str, value) -> None:
    next(w for w in at.number_input if w.label == label).set_value(value)


def test_page_trains_shows_live_metrics_and_adopts_the_finished_run(colour_dataset, tiny_fit):
    at = _app(colour_dataset)
    at.run()
    assert not at.exception
    assert at.button(key="train-submit") is not None or at.button
    _set(at, "Epochs", 3)
    _set(at, "Batch size", 8)
    at.button[0].click().run()
    assert not at.exception
    job = _state(at).job
    assert job is not None

    saw_live = _poll(at, lambda a: bool(job.snapshot().steps) or not job.is_running)
    assert saw_live
    assert _poll(at, lambda a: not job.is_running)
    at.run()  # one full redraw after the fragment noticed the end
    assert not at.exception
    assert job.status == "completed", job.error
    state = _state(at)
    assert state.run_dir == job.run_dir and state.runs == [job.run_dir]
    # A handful of test images: the interval cannot rule out guessing, and the page says so plainly.
    finished = [alert.value for alert in [*at.success, *at.warning] if "Training finished" in alert.value]
    assert finished and "95 % interval" in finished[0]
    if "no better than guessing" not in finished[0]:
        assert any("Training finished" in s.value for s in at.success)
    commands = [c.value for c in at.code]
    assert any("python -m core train" in c and "--backbone tiny_cnn" in c and "--frozen-groups 1" in c
               and "--epochs 3" in c for c in commands)
    assert len(at.dataframe) == 1  # the session's run table
    snapshot = job.snapshot()
    assert len(snapshot.epochs) >= 1 and snapshot.best_epoch is not None
    # Small data, fine-tuning: by default the delivered model is retrained on train + validation (a line of its own)
    assert any(m["phase"] == "refit" and "retraining on train + validation" in m["note"] for m in snapshot.steps)
    figure = at.get("plotly_chart")[0].proto.spec
    assert "retraining on train + validation" in figure

    _set(at, "Epochs", 2)  # a second run: both are listed, overlaid, and the newest is the model for step 5
    at.selectbox(key="train_refit").set_value("off")
    at.button[0].click().run()
    second = _state(at).job
    assert second is not job
    assert _poll(at, lambda a: not second.is_running)
    at.run()
    assert second.status == "completed", second.error
    assert not any(m["phase"] == "refit" for m in second.snapshot().steps), "Never: no retraining"
    assert any("--refit off" in c.value for c in at.code)
    assert _state(at).runs == [job.run_dir, second.run_dir] and _state(at).run_dir == second.run_dir
    assert len(at.dataframe[0].value) == 2
    assert sorted(at.multiselect[0].value) == sorted([Path(job.run_dir).name, Path(second.run_dir).name])
    assert at.selectbox(key="train-pick-2").value == Path(second.run_dir).name


def test_a_fresh_session_reattaches_to_the_running_job(colour_dataset, tiny_fit):
    at = _app(colour_dataset)
    _state(at).owner = "0123456789abcdef" * 2  # this browser's workspace code, which the router keeps in the URL
    at.run()
    _set(at, "Epochs", 2)
    at.button[0].click().run()
    job = _state(at).job

    fresh = AppTest.from_file(APP, default_timeout=60)  # a reload: a new session with empty state, same URL
    fresh.query_params["workspace"] = _state(at).owner
    fresh.run()
    fresh.switch_page(PAGE)
    fresh.run()
    assert not fresh.exception
    assert _state(fresh).job is job
    assert _state(fresh).dataset is colour_dataset and _state(fresh).backbone_name == "tiny_cnn"
    assert _poll(fresh, lambda a: not job.is_running)
    fresh.run()
    assert _state(fresh).run_dir == job.run_dir


def test_the_stop_button_stops_the_run(colour_dataset, monkeypatch):
    from core import training
    from tests.tiny import TinyCNN

    class HoldUntilStopped(training.TrainCallback):
        """Keeps the real run going (each step waits for the stop flag, at most 5 s) so the click always lands."""

        def __init__(self, stop_event):
            self.stop_event = stop_event

        def on_step_end(self, metrics):
            if metrics.get("phase", "train") == "train":
                self.stop_event.wait(5)

    def fit_held(dataset, config, run_dir, backbone=None, callbacks=(), stop_event=None, **kwargs):
        return training.fit(dataset, config, run_dir, backbone=TinyCNN(), stop_event=stop_event,
                            callbacks=(*callbacks, HoldUntilStopped(stop_event)), **kwargs)

    monkeypatch.setattr(_jobs_job, "_default_fit", lambda: fit_held)
    at = _app(colour_dataset, frozen_groups=0)
    at.run()
    _set(at, "Epochs", 200)
    _set(at, "Batch size", 2)
    at.button[0].click().run()
    job = _state(at).job
    assert _poll(at, lambda a: bool(job.snapshot().steps) or not job.is_running)
    at.run()
    at.button(key="train-stop").click().run()
    assert not at.exception
    assert _poll(at, lambda a: not job.is_running, limit_seconds=30)
    at.run()
    assert job.status == "stopped"
    assert any("Stopped" in w.value for w in at.warning)
    assert len(job.snapshot().epochs) < 200


def test_a_second_session_queues_behind_the_first_and_says_so(colour_dataset, monkeypatch):
    from tests.test_jobs import _FakeFit

    gate = threading.Event()
    fits = iter([_FakeFit(gate=gate), _FakeFit()])
    monkeypatch.setattr(_jobs_job, "_default_fit", lambda: next(fits))
    first, second = _app(colour_dataset), _app(colour_dataset)
    first.run()
    first.button[0].click().run()
    first_job = _state(first).job
    assert _poll(first, lambda a: first_job.status == "running")

    second.run()
    assert second.button[0].label == "Train in the queue"  # the page says a run is going on elsewhere
    second.button[0].click().run()
    second_job = _state(second).job
    assert second_job is not first_job
    assert _poll(second, lambda a: second_job.status == "queued" and any("Queued" in i.value for i in a.info))
    # Waiting is cheap to draw (a class waits at once): the place in the queue and Cancel, no charts, no Stop.
    assert not second.get("plotly_chart") and "train-stop" not in [b.key for b in second.button]
    assert "train-cancel" in [b.key for b in second.button]
    gate.set()
    assert _poll(second, lambda a: not second_job.is_running)
    assert first_job.status == "completed" and second_job.status == "completed"
    assert second_job.started_at >= first_job.finished_at


def test_a_failed_run_shows_its_message_is_listed_and_the_page_keeps_working(colour_dataset, tiny_fit):
    colour_dataset.table["split"] = colour_dataset.table["split"].replace("train", "val")
    at = _app(colour_dataset)
    at.run()
    at.button[0].click().run()
    job = _state(at).job
    assert _poll(at, lambda a: not job.is_running)
    at.run()
    assert not at.exception
    assert job.status == "failed"
    assert any("Training failed" in e.value and "no training examples" in e.value for e in at.error)
    assert _state(at).run_dir is None and _state(at).runs == []
    table = at.dataframe[0].value
    assert len(table) == 1 and "failed" in table["status"].iloc[0]
    assert at.button[0].label == "🚀 Train" and not at.button[0].disabled  # ready for another try


@pytest.mark.integration
def test_a_short_run_on_the_sample_images_with_the_real_backbone():
    """The real path: sample digits, the offline EfficientNet-Lite0 with its weights, every group frozen."""
    from core.data import load_sample

    dataset, report = load_sample("images")
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page(PAGE)
    state = StudioState()
    state.set_dataset(dataset, report)
    state.backbone_name = "efficientnet_lite0"
    state.frozen_groups = 9
    at.session_state["studio"] = state
    at.run()
    assert not at.exception
    assert next(w for w in at.number_input if w.label == "Learning rate").value == pytest.approx(1e-2)
    _set(at, "Epochs", 3)
    at.button[0].click().run()
    job = _state(at).job
    # Generous limits: the run is a worker process (start-up seconds), and a busy machine slows L-BFGS a lot.
    assert _poll(at, lambda a: bool(job.snapshot().epochs) or not job.is_running, limit_seconds=480)
    assert _poll(at, lambda a: not job.is_running, limit_seconds=240)
    at.run()
    assert job.status == "completed", job.error
    snapshot = job.snapshot()
    # Feature extraction fits a logistic-regression head: one chart point per L2 strength tried, not per epoch.
    from core.smalldata import L2_GRID

    assert snapshot.cache_mode == "features" and len(snapshot.epochs) == len(L2_GRID)
    assert max(epoch["val_accuracy"] for epoch in snapshot.epochs) > 0.3  # 10 classes: chance is 0.1
    assert _state(at).run_dir == job.run_dir
    assert any("Training finished" in s.value for s in at.success)
    assert any("cross-validated accuracy" in s.value and "95 % interval" in s.value for s in at.success)


def test_a_finished_run_with_other_settings_is_labelled_as_the_previous_run(colour_dataset, tiny_fit):
    """Freezing chosen anew after a run: its panel stays, but is no longer presented under the new settings."""
    at = _app(colour_dataset, frozen_groups=1)
    at.run()
    _set(at, "Epochs", 1)
    at.button[0].click().run()
    job = _state(at).job
    assert _poll(at, lambda a: not job.is_running)
    at.run()
    assert f"**Run `{job.job_id}`**" in [block.value for block in at.markdown]

    _state(at).frozen_groups = 0  # as the Freezing page sets it
    at.run()
    assert not at.exception, at.exception
    labels = [block.value for block in at.markdown if job.job_id in block.value]
    assert labels == [f"**Previous run `{job.job_id}`**, with other settings than above: frozen groups 1 (now 0). "
                      "Press Train for a run with the settings above."]  # fmt: skip


def test_a_few_settings_up_front_the_rest_under_advanced_and_one_line_on_the_freezing_defaults(
    colour_dataset, three_groups
):
    at = _app(colour_dataset, frozen_groups=1)
    at.run()
    assert not at.exception, at.exception
    assert [e.label for e in at.expander] == ["Advanced", "The same run from the command line"][: len(at.expander)]
    advanced = _inputs(at.expander[0])
    up_front = [label for label in _inputs(at) if label not in advanced]
    assert up_front == ["Epochs", "Learning rate", "Batch size", "Augmentation", "Class weights"]
    assert {"Label smoothing", "Backbone LR factor", "Early-stopping patience", "Weight decay", "Seed",
            "Device"} <= set(advanced)  # fmt: skip
    assert not at.radio  # some groups adapt: gradient descent is the only way to train
    assert ("Defaults for fine-tuning (1 of 3 groups frozen): epochs 8, learning rate 0.001, label smoothing 0.1; "
            "with every group frozen they would be epochs 25, learning rate 0.01, label smoothing 0."
            in [c.value for c in at.caption])  # fmt: skip
    assert next(w for w in at.number_input if w.label == "Epochs").value == 8


def test_with_every_group_frozen_the_page_says_which_settings_the_chosen_head_uses(colour_dataset, three_groups):
    at = _app(colour_dataset, frozen_groups=3)
    at.run()
    assert not at.exception, at.exception
    assert at.radio(key="train_head").value == "logistic"
    assert any("no epochs, batch size or learning rate apply" in m.value for m in at.markdown)
    labels = [e.label for e in at.expander]
    assert labels[:2] == ["Advanced", "Gradient-descent settings (not used by the logistic head)"]
    assert sorted(_inputs(at.expander[0])) == ["Augmented views per image", "Device", "Seed"]  # views: images only
    assert at.number_input(key="train_views").value == 0  # off unless asked for
    assert "Epochs" in _inputs(at.expander[1]) and "Learning rate" in _inputs(at.expander[1])
    assert [label for label in _inputs(at) if label not in _inputs(at.expander[0]) + _inputs(at.expander[1])] == [
        "Class weights"
    ]

    at.radio(key="train_head").set_value("gradient").run()  # the settings follow the choice at once
    assert not at.exception, at.exception
    assert [e.label for e in at.expander][:1] == ["Advanced"]
    assert "Gradient-descent settings (not used by the logistic head)" not in [e.label for e in at.expander]
    assert "Augmented views per image" not in _inputs(at)  # fine-tuning augments as it trains instead
    up_front = [label for label in _inputs(at) if label not in _inputs(at.expander[0])]
    assert up_front == ["Epochs", "Learning rate", "Batch size", "Augmentation", "Class weights"]
    assert next(w for w in at.number_input if w.label == "Learning rate").value == pytest.approx(1e-2)
    assert any(c.value.startswith("Defaults for feature extraction (every group frozen): epochs 25, learning rate "
                                  "0.01, label smoothing 0; fine-tuning would suggest epochs 8") for c in at.caption)


def _recorded_run(folder: Path, run_id: str, config: dict, estimate: dict) -> str:
    """A finished run's folder as the engine leaves it: run.json with its settings, history and estimate."""
    run_dir = folder / run_id
    run_dir.mkdir(parents=True)
    history = [{"epoch": 1, "val_loss": 0.5, "val_accuracy": 0.8}]
    (run_dir / "run.json").write_text(json.dumps({
        "run_id": run_id, "status": "completed", "config": config,
        "metrics": {"best_epoch": 1, "history": history, "estimate": estimate},
    }))  # fmt: skip
    return str(run_dir)


def test_runs_are_named_by_what_differs_and_compared_by_their_recorded_accuracy(colour_dataset, tmp_path):
    settings = {"backbone": "tiny_cnn", "epochs": 25, "batch_size": 32, "seed": 0}
    older = _recorded_run(
        tmp_path, "20250101-120000-tiny_cnn-aaaaaa", {**settings, "frozen_groups": 3, "head": "logistic", "lr": 0.01},
        {"accuracy": 0.875, "accuracy_interval95": [0.8, 0.93], "n": 240, "protocol": "cross-validation", "folds": 5},
    )
    newer = _recorded_run(
        tmp_path, "20250101-121000-tiny_cnn-bbbbbb", {**settings, "frozen_groups": 1, "head": "gradient", "lr": 0.001},
        {"accuracy": 0.6, "accuracy_interval95": [0.45, 0.74], "n": 40, "protocol": "test split", "folds": None},
    )
    at = _app(colour_dataset)
    _state(at).runs = [older, newer]
    _state(at).run_dir = newer
    at.run()
    assert not at.exception, at.exception

    table = at.dataframe[0].value
    assert list(table["settings"]) == ["1 frozen, gradient descent, lr 0.001", "3 frozen, logistic head, lr 0.01"]
    assert list(table["accuracy"]) == [60.0, 87.5]
    assert list(table["95 % interval"]) == ["45.0–74.0 %", "80.0–93.0 %"]
    assert list(table["estimated by"]) == ["test split, n = 40", "5-fold cross-validation, n = 240"]
    assert list(table["run"]) == ["20250101-121000-tiny_cnn-bbbbbb", "20250101-120000-tiny_cnn-aaaaaa"]
    columns = json.loads(at.dataframe[0].proto.columns)  # the key columns stay in view when scrolling sideways
    assert columns["settings"]["pinned"] is True and columns["accuracy"]["pinned"] is True

    compared = at.multiselect[0]
    assert compared.options == ["1 frozen, gradient descent, lr 0.001 · 20250101-121000-tiny_cnn-bbbbbb",
                                "3 frozen, logistic head, lr 0.01 · 20250101-120000-tiny_cnn-aaaaaa"]  # fmt: skip
    side_by_side = {m.label: m.value for m in at.metric}
    assert side_by_side == {"1 frozen, gradient descent, lr 0.001": "60.0 %",
                            "3 frozen, logistic head, lr 0.01": "87.5 %"}  # fmt: skip
    assert "95 % interval 80.0–93.0 % · 5-fold cross-validation, n = 240" in [c.value for c in at.caption]


def test_a_sentence_encoder_offers_tuning_on_the_texts_and_says_what_it_costs():
    """The text sample with MiniLM, every group frozen: the tuning choice, its reason and cost, and the CLI flag."""
    from core.data import load_sample

    texts, _ = load_sample("texts")
    at = AppTest.from_file(APP, default_timeout=60)
    at.switch_page(PAGE)
    state = StudioState()
    state.dataset, state.backbone_name, state.frozen_groups = texts, "all_minilm_l6_v2", 7
    at.session_state["studio"] = state
    at.run()
    assert not at.exception, at.exception
    assert at.radio(key="train_sentence_tuning").value == "auto"
    caption = next(c.value for c in at.caption if "if, frozen, its head scores under 90 %" in c.value)
    assert "6 tunings" in caption and "min on a 2-core CPU" in caption  # what tuning would cost

    at.radio(key="train_sentence_tuning").set_value("on").run()
    caption = next(c.value for c in at.caption if "SetFit-style" in c.value)
    assert "fine-tuned on pairs of your texts" in caption and "min on a 2-core CPU" in caption
    at.radio(key="train_sentence_tuning").set_value("off").run()
    assert any("you turned tuning on pairs off" in c.value for c in at.caption)

    at.radio(key="train_head").set_value("gradient").run()  # the gradient loop: no tuning choice
    assert not at.exception, at.exception
    assert not [r for r in at.radio if r.key == "train_sentence_tuning"]


def test_augmentation_is_offered_for_images_and_sound_and_says_what_it_does(colour_dataset, three_groups,
                                                                             monkeypatch):
    """Images and sound clips augment while training, texts do not; the help says what each setting does to a clip
    (the recipes' own numbers), the run gets the chosen setting, and with every group frozen sound clips get
    augmented views per clip as images get them per image."""
    from core.dataset import Dataset

    def no_training(dataset, config, run_dir, **kwargs):
        raise ValueError("only the settings are looked at here")

    monkeypatch.setattr(_jobs_job, "_default_fit", lambda: no_training)
    for modality, offered in (("image", True), ("audio", True), ("text", False)):
        data = Dataset(colour_dataset.name, modality, colour_dataset.table, colour_dataset.classes,
                       root=colour_dataset.root)
        at = _app(data)
        at.run()
        assert not at.exception, at.exception
        augmentation = next(box for box in at.selectbox if box.label == "Augmentation")
        assert augmentation.disabled is not offered
        if modality == "audio":
            assert "Light: the cut window moves by up to ±10 % of the clip" in augmentation.help
            assert "white or pink noise at 10-30 dB" in augmentation.help and "masked" in augmentation.help
            augmentation.set_value("strong")
            at.button(key="train-submit").click().run()  # the form sends its values with the click
            assert not at.exception, at.exception
            assert _state(at).job.config.augmentation == "strong"  # the page passes it on for sound

            at = _app(data, frozen_groups=3)
            at.run()
            assert "Augmented views per clip" in _inputs(at.expander[0])
            assert "±10 % of the clip" in at.number_input(key="train_views").help
        elif modality == "text":
            assert augmentation.help == "Texts train without augmentation."
