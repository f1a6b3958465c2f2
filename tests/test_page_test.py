"""AppTest tests of the Test page (step 5), with state pre-seeded from a tiny run folder made in the test."""

from __future__ import annotations

import io
import json
import threading
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from core import background, evaluation, no_transfer
from core.dataset import Dataset
from core.paths import workspace_subdir
from core.session import StudioState
from tests.run_info import full_run_info
from tests.test_evaluation import load_tiny_run, train_tiny, write_run

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "5_evaluate.py")


@pytest.fixture
def seeded(tmp_path: Path, colour_dataset: Dataset, monkeypatch: pytest.MonkeyPatch) -> tuple[AppTest, StudioState]:
    """The Test page with a data set loaded and one tiny trained run, as after step 4."""
    model = train_tiny(colour_dataset)
    run = write_run(tmp_path / "runs" / "tiny-run", model, colour_dataset)
    monkeypatch.setattr(evaluation, "load_model", load_tiny_run)
    state = StudioState(dataset=colour_dataset, backbone_name="tiny_cnn", frozen_groups=0, run_dir=str(run))
    state.runs.append(str(run))
    app = AppTest.from_file(PAGE, default_timeout=60)
    app.session_state["studio"] = state
    return app, state


def _predictions(app: AppTest) -> pd.DataFrame:
    """The prediction table (the page's export section, drawn below it, may add tables of its own)."""
    return next(frame.value for frame in app.dataframe if "prediction" in frame.value.columns)


def _metric(app: AppTest, label: str) -> str:
    return next(metric.value for metric in app.metric if metric.label == label)


def _outlined_cell(app: AppTest) -> tuple[int, int]:
    """(row, column) of the cell the confusion matrix outlines; category axes put cell i at i +- 0.5."""
    figure = json.loads(app.get("plotly_chart")[0].proto.spec)
    [outline] = [shape for shape in figure["layout"]["shapes"] if shape.get("name") == "chosen cell"]
    assert outline["x1"] - outline["x0"] == outline["y1"] - outline["y0"] == 1
    return round(outline["y0"] + 0.5), round(outline["x0"] + 0.5)


def test_page_asks_for_earlier_steps_first() -> None:
    # Through the router: the guard links to the Data page, which only exists inside `st.navigation`.
    app = AppTest.from_file(str(Path(PAGE).parent.parent / "app.py"), default_timeout=30).run()
    app.switch_page("pages/5_evaluate.py").run()
    assert not app.exception
    assert "earlier one" in app.info[0].value


def test_page_shows_metrics_confusion_matrix_and_caches_the_evaluation(seeded) -> None:
    app, state = seeded
    app.run()
    assert not app.exception, app.exception
    cached = state.scratch["test"]["evaluations"]
    assert len(cached) == 1
    result = next(iter(cached.values()))
    assert _metric(app, "Test accuracy") == f"{result.accuracy:.1%}"
    assert _metric(app, "Macro-F1") == f"{result.macro_f1:.3f}"
    assert _metric(app, "Test examples") == str(len(state.dataset.split("test")[0]))
    charts = app.get("plotly_chart")
    assert len(charts) == 2  # confusion matrix and coverage curve
    figure = json.loads(charts[0].proto.spec)
    np.testing.assert_array_equal(np.array(figure["data"][0]["z"]), result.confusion)

    app.toggle(key="test_normalised").set_value(True).run()
    figure = json.loads(app.get("plotly_chart")[0].proto.spec)
    np.testing.assert_allclose(np.array(figure["data"][0]["z"]), result.confusion_normalised())
    assert next(iter(state.scratch["test"]["evaluations"].values())) is result, "a rerun must not re-evaluate"


def test_gallery_shows_the_examples_of_the_chosen_cell(seeded) -> None:
    app, state = seeded
    app.run()
    result = next(iter(state.scratch["test"]["evaluations"].values()))
    app.selectbox(key="test_true_class").set_value("red")
    app.selectbox(key="test_predicted_class").set_value("red").run()
    assert not app.exception
    red = result.classes.index("red")
    expected = result.examples(red, red)
    assert any(f"**{len(expected)}** correct answers" in block.value for block in app.markdown)
    captions = [caption for image in app.image for caption in image.captions]
    assert len(captions) == len(expected)
    assert all(caption.startswith("red ") for caption in captions)

    assert _outlined_cell(app) == (red, red)
    ticks = json.loads(app.get("plotly_chart")[0].proto.spec)["data"][0]["colorbar"]["tickvals"]
    assert ticks == list(range(int(result.confusion.max()) + 1))  # whole counts only, no 0.5 or 1.5

    wrong = next(name for name in result.classes if result.confusion[red, result.classes.index(name)] == 0)
    app.selectbox(key="test_predicted_class").set_value(wrong).run()
    assert _outlined_cell(app) == (red, result.classes.index(wrong))
    assert any("No test example" in caption.value for caption in app.caption)


def test_confidence_threshold_updates_coverage(seeded) -> None:
    app, state = seeded
    app.run()
    result = next(iter(state.scratch["test"]["evaluations"].values()))
    app.slider(key="test_threshold").set_value(1.0).run()
    at_one = evaluation.confidence_at(result.probabilities, result.targets, 1.0)
    assert _metric(app, "Coverage") == f"{at_one['coverage']:.0%}"
    assert _metric(app, "Not sure") == str(int(at_one["not_sure"]))


def test_prediction_for_an_uploaded_image(seeded, tmp_path: Path) -> None:
    app, state = seeded
    app.run()
    pixels = np.zeros((32, 32, 3), dtype=np.uint8)
    pixels[..., 2] = 230  # a blue square
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    app.file_uploader(key="test_predict_files").set_value(("sky.png", buffer.getvalue(), "image/png")).run()
    assert not app.exception, app.exception

    model, preprocessor, _ = load_tiny_run(state.run_dir)
    saved = tmp_path / "sky.png"
    saved.write_bytes(buffer.getvalue())
    expected = evaluation.predict_proba(model, preprocessor, [str(saved)], device="cpu")[0]
    table = _predictions(app)
    assert table["input"].tolist() == ["sky.png"]
    assert table["class_1"].iloc[0] == state.dataset.classes[int(expected.argmax())] == "blue"
    assert table["probability_1"].iloc[0] == pytest.approx(float(expected.max()), abs=1e-5)
    assert "Download predictions (CSV)" in [button.label for button in app.get("download_button")]


def _png(red: int, green: int, blue: int) -> bytes:
    pixels = np.zeros((32, 32, 3), dtype=np.uint8)
    pixels[...] = (red, green, blue)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_predictions_from_a_zip_keep_each_file_s_path_inside_it(seeded) -> None:
    """Every class folder has 0000.png: the table and CSV name files by their path in the zip, so none repeat."""
    app, _ = seeded
    app.run()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("new/red/0000.png", _png(230, 0, 0))
        archive.writestr("new/blue/0000.png", _png(0, 0, 230))
        archive.writestr("__MACOSX/new/red/._0000.png", b"junk")
        archive.writestr("new/notes.txt", b"not an image")
    upload = ("new.zip", buffer.getvalue(), "application/zip")
    app.file_uploader(key="test_predict_files").set_value(upload).run()
    assert not app.exception, app.exception
    table = _predictions(app)
    assert table["input"].tolist() == ["new/blue/0000.png", "new/red/0000.png"]
    assert table["class_1"].tolist() == ["blue", "red"]
    assert not any("file names repeat" in caption.value for caption in app.caption)


def test_repeated_file_names_point_to_a_zip(seeded) -> None:
    app, _ = seeded
    app.run()
    same_name = [("0000.png", _png(230, 0, 0), "image/png"), ("0000.png", _png(0, 0, 230), "image/png")]
    app.file_uploader(key="test_predict_files").set_value(same_name).run()
    assert not app.exception, app.exception
    assert _predictions(app)["input"].tolist() == ["0000.png", "0000.png"]
    assert any("Upload a zip to keep the folders" in caption.value for caption in app.caption)


def test_runs_stay_reachable_after_another_data_set_was_loaded(seeded) -> None:
    """Loading other data clears the model step 5 tests (run_dir), not the session's runs: the page picks one."""
    app, state = seeded
    state.run_dir = None
    app.run()
    assert not app.exception, app.exception
    assert not any("earlier one" in info.value for info in app.info)
    assert state.run_dir == state.runs[-1]
    assert app.selectbox[0].value == state.runs[-1]


def test_export_section_shows_commands_a_user_can_run_not_the_server_s_run_folder(seeded) -> None:
    app, state = seeded
    app.run()
    assert not app.exception, app.exception
    [command] = [block.value for block in app.code if "predict.py" in block.value]
    assert command.splitlines() == ["unzip tiny-run.zip", "pip install torch pillow",
                                    "python tiny-run/predict.py --top-k 3 photo.jpg"]  # fmt: skip
    shown = "\n".join(str(element.value) for kind in ("code", "markdown", "caption") for element in app.get(kind))
    assert state.run_dir not in shown and str(Path(state.run_dir).parent) not in shown


def test_unreadable_upload_is_reported_not_raised(seeded) -> None:
    app, _ = seeded
    app.run()
    app.file_uploader(key="test_predict_files").set_value(("broken.png", b"not a png", "image/png")).run()
    assert not app.exception
    assert "not images we can read: broken.png" in app.error[0].value


def test_saved_baseline_is_reported_next_to_the_model(seeded) -> None:
    app, state = seeded
    folder = workspace_subdir("baselines") / "tiny-run"
    folder.mkdir(parents=True, exist_ok=True)
    record = {"run_id": "tiny-run", "baselines": [
        {"name": "scratch", "title": "Same architecture, random weights", "accuracy": 1.0, "macro_f1": 1.0,
         "detail": "tiny_cnn without pretrained weights"},
        {"name": "tfidf", "title": "TF-IDF + logistic regression", "accuracy": 0.5, "macro_f1": 0.5, "n": 40,
         "accuracy_interval95": [0.35, 0.65], "protocol": "cross-validation (5 folds, the run's own)",
         "detail": "scored by cross-validation"}]}  # fmt: skip
    (folder / "baselines.json").write_text(json.dumps(record))
    app.run()
    assert not app.exception
    # The tiny model cannot beat a perfect baseline: the page must say so plainly.
    assert any("does not clearly beat" in warning.value for warning in app.warning)
    table = app.dataframe[0].value.set_index("model")
    assert "Same architecture, random weights" in table.index
    assert table.loc["TF-IDF + logistic regression", "interval"] == "50.0% (95 % CI 35.0%–65.0%)"
    assert table.loc["TF-IDF + logistic regression", "n"] == 40
    assert table.loc["Same architecture, random weights", "interval"] == "-", "an older record has no interval"


def test_baselines_train_in_the_background_and_a_failure_keeps_what_was_trained(seeded) -> None:
    """Train baseline starts a background task (the page returns at once, with a progress bar); when it ends the
    page shows what it trained. Here raw pixels train and the from-scratch model fails (the tests' tiny network is
    not in the catalogue): the error is said plainly and the raw-pixels row and its paired verdict stay."""
    app, state = seeded
    tested = len(state.dataset.split("test")[0])
    app.run()
    app.button[[b.label for b in app.button].index("Train baseline")].click().run()
    assert not app.exception, app.exception
    run_folder, task = app.session_state["test_baseline_task"]
    task.join(60)
    app.run()
    assert not app.exception, app.exception
    assert any("could not be trained: No backbone named 'tiny_cnn'" in error.value for error in app.error)
    table = app.dataframe[0].value.set_index("model")
    assert table.loc[no_transfer.PIXELS_TITLE, "n"] == tested
    assert table.loc[no_transfer.PIXELS_TITLE, "difference"].endswith(")"), "pretrained minus pixels, with interval"
    verdicts = [alert.value for kind in ("success", "warning", "error") for alert in app.get(kind)]
    assert any(f"paired on the same {tested} examples" in verdict for verdict in verdicts), verdicts


def test_the_quick_comparison_alone_trains_only_the_classic_model(seeded) -> None:
    """Unticking the random-weights network (as long as a run) trains raw pixels alone, in seconds: no from-scratch
    model is attempted (here it would fail: the tests' tiny network is not in the catalogue)."""
    app, state = seeded
    app.run()
    app.checkbox(key="test_baseline_scratch").uncheck().run()
    assert app.number_input[[n.label for n in app.number_input].index("Epochs for the from-scratch model")].disabled
    app.button[[b.label for b in app.button].index("Train baseline")].click().run()
    _, task = app.session_state["test_baseline_task"]
    task.join(60)
    app.run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    table = app.dataframe[0].value.set_index("model")
    assert no_transfer.PIXELS_TITLE in table.index and "Same architecture, random weights" not in table.index


def test_a_reloaded_page_finds_the_baselines_still_training(seeded) -> None:
    """A fresh session on the same run (a reload, another tab) shows the running task's progress and cannot start
    the same baselines a second time."""
    app, state = seeded
    release = threading.Event()

    def work(progress: Any, stop_event: threading.Event) -> list:
        progress(0.4, "Raw pixels: fold 2 of 5")
        release.wait(30)
        return []

    key = f"baselines:{Path(state.run_dir).resolve()}"
    task = background.start_once(key, work, label="reload")
    try:
        app.run()
        assert not app.exception, app.exception
        assert app.session_state["test_baseline_task"][1] is task
        assert any("Raw pixels: fold 2 of 5" in bar.text for bar in app.get("progress")), "the progress is shown"
        train = app.button[[b.label for b in app.button].index("Train baseline")]
        assert train.disabled, "the same baselines cannot be started twice"
    finally:
        release.set()
        task.join(10)


class _KeywordPreprocessor:
    """Texts -> counts of one keyword per class: a stand-in for a tokenizer in a text-model page test."""

    cache_key = "keywords"
    keywords = ("goal", "bake", "chip")

    def load(self, item: str, train: bool) -> str:
        return item

    def collate(self, loaded: list[str]) -> torch.Tensor:
        return torch.tensor([[text.split().count(word) for word in self.keywords] for text in loaded]).float()


class _KeywordModel(torch.nn.Module):
    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return batch * 5.0


def _text_model_page(rows: list[tuple[str, str, str]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AppTest:
    """The Test page with a text data set of (text, label, split) rows and the keyword model as its trained run."""
    texts = Dataset("topics", "text", pd.DataFrame(rows, columns=["item", "label", "split"]), ["sport", "food", "tech"])
    info = full_run_info(run_id="text-run", backbone="all_minilm_l6_v2", modality="text", classes=texts.classes,
                         num_groups=7, dataset_name=texts.name, dataset_fingerprint=texts.fingerprint)
    monkeypatch.setattr(evaluation, "load_model", lambda path: (_KeywordModel(), _KeywordPreprocessor(), info))
    state = StudioState(dataset=texts, backbone_name="all_minilm_l6_v2", frozen_groups=0, run_dir=str(tmp_path))
    app = AppTest.from_file(PAGE, default_timeout=60)
    app.session_state["studio"] = state
    return app


def test_text_model_gallery_and_pasted_predictions(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    rows = [("goal goal team", "sport", "test"), ("bake bread", "food", "test"), ("chip goal", "tech", "test"),
            ("goal", "sport", "train"), ("bake", "food", "train"), ("chip", "tech", "train")]  # fmt: skip
    app = _text_model_page(rows, monkeypatch, tmp_path)
    app.run()
    assert not app.exception, app.exception
    assert _metric(app, "Test accuracy") == f"{2 / 3:.1%}"
    # Default cell: the most common mistake (tech read as sport), shown as a table of texts.
    assert app.selectbox(key="test_true_class").value == "tech"
    assert app.selectbox(key="test_predicted_class").value == "sport"
    gallery = next(frame.value for frame in app.dataframe if "text" in frame.value.columns)
    assert gallery["text"].tolist() == ["chip goal"]
    assert any(block.value.startswith("**1** mistake: true **tech**") for block in app.markdown)

    app.text_area(key="test_predict_text").set_value("we bake\n\nchip chip").run()
    table = _predictions(app)
    assert table["input"].tolist() == ["we bake", "chip chip"]
    assert table["prediction"].tolist() == ["food", "tech"]


def test_cross_validated_run_shows_its_protocol_n_and_intervals(
    tmp_path: Path, colour_dataset: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small-data run is scored out of fold: the page says so and shows n and 95 % intervals."""
    from core.training import TrainConfig, fit
    from tests.tiny import TinyCNN

    config = TrainConfig(backbone="tiny_cnn", frozen_groups=3, pretrained=False, device="cpu", folds=3)
    result = fit(colour_dataset, config, tmp_path / "cv-run", backbone=TinyCNN())
    monkeypatch.setattr(evaluation, "load_model", load_tiny_run)
    state = StudioState(dataset=colour_dataset, backbone_name="tiny_cnn", frozen_groups=3, run_dir=result.run_dir)
    state.runs.append(result.run_dir)
    app = AppTest.from_file(PAGE, default_timeout=60)
    app.session_state["studio"] = state
    app.run()
    assert not app.exception, app.exception
    assert any("3-fold cross-validation" in info.value for info in app.info)
    assert _metric(app, "Cross-validated accuracy") == f"{result.estimate['accuracy']:.1%}"
    assert _metric(app, "Examples scored") == str(len(colour_dataset.table))
    low, high = result.estimate["accuracy_interval95"]
    assert any(f"95 % interval {low:.1%}–{high:.1%}" in caption.value for caption in app.caption)


def _live_bars(app: AppTest) -> dict[str, float]:
    """Class -> probability of the live preview's bar chart, in the order drawn (most likely first)."""
    [chart] = [chart for chart in app.get("plotly_chart") if chart.proto.id and "test_live_chart" in chart.proto.id]
    [bars] = json.loads(chart.proto.spec)["data"]
    assert bars["type"] == "bar" and bars["orientation"] == "h"
    return dict(zip(bars["y"], bars["x"], strict=True))


def test_live_preview_classifies_what_is_typed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    rows = [("goal", "sport", "test"), ("bake", "food", "test"), ("chip", "tech", "test"),
            ("goal", "sport", "train"), ("bake", "food", "train"), ("chip", "tech", "train")]  # fmt: skip
    app = _text_model_page(rows, monkeypatch, tmp_path)
    app.run()
    assert not app.exception, app.exception
    assert any("update when you press Enter" in caption.value for caption in app.caption)

    app.text_input(key="test_live_text").set_value("chip chip goal").run()
    assert not app.exception, app.exception
    bars = _live_bars(app)
    expected = evaluation.predict_proba(_KeywordModel(), _KeywordPreprocessor(), ["chip chip goal"], device="cpu")[0]
    assert list(bars) == ["tech", "sport", "food"]  # top_k defaults to 3: every class, most likely first
    assert bars["tech"] == pytest.approx(float(expected[2]), abs=1e-6)
    assert any(block.value.startswith("**tech** (") for block in app.markdown)

    app.text_input(key="test_live_text").set_value("bake").run()
    assert next(iter(_live_bars(app))) == "food"


def test_live_preview_classifies_each_camera_photo_and_reports_an_unreadable_one(seeded) -> None:
    app, _ = seeded
    app.run()
    assert not app.camera_input, "the camera stays off until the user turns it on"
    app.toggle(key="test_live_camera_on").set_value(True).run()
    buffer = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), (0, 0, 230), dtype=np.uint8)).save(buffer, format="JPEG")
    app.camera_input(key="test_live_camera").set_value(("photo.jpg", buffer.getvalue(), "image/jpeg")).run()
    assert not app.exception, app.exception
    assert next(iter(_live_bars(app))) == "blue"

    app.camera_input(key="test_live_camera").set_value(("photo.jpg", b"not a jpeg", "image/jpeg")).run()
    assert not app.exception, app.exception
    assert any("could not be read" in error.value for error in app.error)
    assert not [chart for chart in app.get("plotly_chart") if "test_live_chart" in chart.proto.id]


def test_the_learning_curve_is_not_offered_for_a_fine_tuned_run(seeded) -> None:
    app, _ = seeded
    app.run()
    assert any("not drawn for it yet" in caption.value for caption in app.caption)
    assert not [button for button in app.button if button.key == "test_learning_curve"]


def test_would_more_data_help_draws_the_learning_curve_of_a_feature_extraction_run(seeded, monkeypatch) -> None:
    from core import insight

    app, state = seeded
    info_path = Path(state.run_dir) / "run.json"
    info = json.loads(info_path.read_text())
    info.update(frozen_groups=3, num_groups=3)
    info_path.write_text(json.dumps(info))
    asked = []

    def curve(dataset, backbone, progress=None, lexical=True):  # the real curve, on features that separate colours
        asked.append(backbone)
        assert not lexical, "an image run has no TF-IDF model to mix in"
        labels = [label for name in ("train", "val", "test") for label in dataset.split(name)[1]]
        features = torch.nn.functional.one_hot(torch.tensor(labels), 3).float() + 0.3 * torch.randn(len(labels), 3)
        return insight.learning_curve(features, torch.tensor(labels), 3, folds=3, fractions=(0.5, 1.0),
                                      progress=progress)

    monkeypatch.setattr(insight, "dataset_curve", curve)
    app.run()
    app.button(key="test_learning_curve").click().run()
    assert not app.exception and asked == ["tiny_cnn"]
    assert app.get("plotly_chart"), "the curve is drawn"
    sentence = [alert.value for alert in app.info if "data" in alert.value and ("likely" in alert.value)]
    assert sentence, [alert.value for alert in app.info]
    assert any("50% of the labels" in caption.value and "95 % CI" in caption.value for caption in app.caption)
