"""The whole walk, like a person: sample data -> backbone -> freezing -> train -> test -> export.

One browser session per modality; steps are switched with the sidebar links (a full page load would start a new
Streamlit session). Each step is screenshotted (`UPDATE_SCREENSHOTS=1` refreshes the README's pictures).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image, ImageChops
from playwright.sync_api import Page, expect

from core.browser import freeze_every_group as set_feature_extraction  # step 3: every group frozen
from tests.e2e.files import SAMPLE_IMAGES_ZIP, sample_clip, sample_digit
from tests.e2e.studio import (
    ARTIFACTS,
    README_SCREENSHOTS,
    TRAINING_TIMEOUT_MS,
    chart_points,
    choose_radio,
    click_button,
    fill_number,
    go_to,
    main,
    rerun,
    shot,
    upload,
    wait_app_loaded,
    wait_chart_grows,
    wait_idle,
)
from tests.e2e.test_data import load_sample

pytestmark = pytest.mark.e2e

DEFAULT_BACKBONE = {"images": "efficientnet_lite0", "texts": "all_minilm_l6_v2",
                    "sound clips": "efficientnet_lite0_audio"}


def choose_default_backbone(page: Page, kind: str) -> None:
    """Step 2: the best offline backbone for the data is pre-selected and available."""
    go_to(page, "2 · Backbone")
    picker = main(page).get_by_role("combobox", name="Backbone", exact=True)
    expect(picker).to_have_value(re.compile(re.escape(f"({DEFAULT_BACKBONE[kind]})")))
    expect(main(page).get_by_test_id("stAlert").filter(has_text="Available:")).to_be_visible()
    expect(main(page).get_by_test_id("stException")).to_have_count(0)


PERCENT = re.compile(r"^\d+(\.\d)?%$")
DIGITS = "zero|one|two|three|four|five|six|seven|eight|nine"


def start_training(
    page: Page, epochs: int, batch_size: int | None = None, patience: int | None = None, gradient: bool = False
) -> None:
    """Step 4: set a few hyperparameters and press Train; returns once the live panel shows progress.

    `fill_number` opens the expander a setting lives in ("Advanced", or the gradient-descent settings that the
    logistic head does not use).
    """
    if gradient:  # feature extraction defaults to the logistic head (seconds); epochs need the gradient loop
        choose_radio(page, "Gradient descent, epoch by epoch")  # outside the form now: it reruns the page
    fill_number(page, "Epochs", epochs)
    if batch_size is not None:
        fill_number(page, "Batch size", batch_size)
    if patience is not None:
        fill_number(page, "Early-stopping patience", patience)
    with rerun(page):
        main(page).get_by_role("button", name=re.compile(r"Train$")).click()
    expect(main(page).get_by_test_id("stProgress").or_(main(page).get_by_text("Training finished"))).to_be_visible()


def expect_finished(page: Page, timeout_ms: int = TRAINING_TIMEOUT_MS) -> None:
    """The run ended by itself and its model became the one step 5 tests."""
    done = main(page).get_by_test_id("stAlert").filter(has_text="Training finished")
    expect(done).to_be_visible(timeout=timeout_ms)
    wait_idle(page)
    expect(main(page).get_by_role("link", name=re.compile("Next: test your model"))).to_be_visible()


def unlabelled_digits(folder: Path) -> Path:
    """A zip of scans without class folders, as a user would collect them: blends of two digits (the model should
    hesitate), digits shifted by a few pixels (new, but easy) and two exact copies of labelled scans."""
    def scan(digit: str, index: int) -> Image.Image:
        with zipfile.ZipFile(SAMPLE_IMAGES_ZIP) as archive:
            return Image.open(io.BytesIO(archive.read(f"digits/{digit}/{digit}_{index:02d}.png"))).convert("RGB")

    def png(image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    path = folder / "unlabelled.zip"
    with zipfile.ZipFile(path, "w") as archive, zipfile.ZipFile(SAMPLE_IMAGES_ZIP) as sample:
        for first, second in (("three", "eight"), ("one", "seven"), ("four", "nine"), ("five", "six"),
                              ("zero", "six"), ("two", "seven")):
            archive.writestr(f"blend-{first}-{second}.png", png(Image.blend(scan(first, 20), scan(second, 21), 0.5)))
        for digit in ("zero", "two", "five", "nine"):
            archive.writestr(f"shifted-{digit}.png", png(ImageChops.offset(scan(digit, 22), 3, 2)))
        for digit in ("four", "eight"):
            archive.writestr(f"copy-{digit}.png", sample.read(f"digits/{digit}/{digit}_05.png"))
    return path


def suggest_labelling(page: Page, path: Path, uploader_key: str) -> pd.DataFrame:
    """The Test page's "What should I label next?": upload unlabelled examples, press Suggest, download the list."""
    uploader = main(page).locator(f".st-key-{uploader_key}")
    with rerun(page):
        uploader.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(path))
    expect(uploader.get_by_role("button", name=f"Remove {path.name}")).to_be_visible()
    click_button(page, "Suggest", timeout_ms=TRAINING_TIMEOUT_MS)
    expect(main(page).locator(".st-key-test_suggest_section").get_by_test_id("stDataFrame")).to_be_visible()
    expect(main(page).get_by_test_id("stAlert").filter(has_text="exact copies of labelled ones")).to_be_visible()
    with page.expect_download() as download_info:
        main(page).get_by_role("button", name="Download the list (CSV)").click()
    saved = path.with_name("to-label.csv")
    download_info.value.save_as(saved)
    wait_idle(page)
    return pd.read_csv(saved)


def shot_section(page: Page, key: str, step: str) -> None:
    """`shot` of one keyed section of the page only, so that a README picture of one feature stays legible."""
    section = main(page).locator(f".st-key-{key}")
    section.scroll_into_view_if_needed()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    section.screenshot(path=str(ARTIFACTS / f"{step}.png"), animations="disabled")
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(ARTIFACTS / f"{step}.png", README_SCREENSHOTS / f"{step}.png")


def download_predictions(page: Page, folder: Path) -> pd.DataFrame:
    """Step 5: the predictions of the new examples, as the CSV a user downloads."""
    download_button = main(page).get_by_role("button", name="Download predictions (CSV)")
    expect(download_button).to_be_visible()
    with page.expect_download() as download_info:
        download_button.click()
    predictions = folder / "predictions.csv"
    download_info.value.save_as(predictions)
    wait_idle(page)
    return pd.read_csv(predictions)


def explain_first(page: Page, key: str) -> None:
    """Why this prediction? Press Explain on the first example of the control keyed `key`; the note shows."""
    section = main(page).locator(f".st-key-{key}")
    with rerun(page, timeout_ms=120_000):
        section.get_by_role("button", name="Explain", exact=True).click()
    expect(section.get_by_text(re.compile("approximate: shows where the network looked", re.IGNORECASE))
           ).to_be_visible()


def build_and_download_bundle(page: Page, tmp_path: Path) -> list[str]:
    """Press Build bundle on the Test page, expect its parity check to hold, download the zip: its file names."""
    click_button(page, "Build bundle", timeout_ms=TRAINING_TIMEOUT_MS)
    expect(main(page).get_by_test_id("stAlert").filter(has_text="Parity holds")).to_be_visible()
    with page.expect_download() as download_info:
        main(page).get_by_role("button", name="Download bundle (zip)").click()
    bundle = tmp_path / download_info.value.suggested_filename
    download_info.value.save_as(bundle)
    wait_idle(page)
    with zipfile.ZipFile(bundle) as archive:
        return archive.namelist()

def test_image_walk(page: Page, tmp_path: Path) -> None:
    load_sample(page, "images")
    shot(page, "1-data")
    choose_default_backbone(page, "images")
    expect(page.get_by_test_id("stSidebar")).to_contain_text("240 examples, 10 classes")
    shot(page, "2-backbone")
    # Which backbone? The three offline EfficientNet-Lites, each scored by the probe a run uses, best pre-selected
    # (its features are kept: the runs below start from them).
    click_button(page, "Rank for my data", timeout_ms=TRAINING_TIMEOUT_MS)
    best = main(page).get_by_test_id("stAlert").filter(has_text="is best for your data")
    expect(best).to_contain_text(re.compile(r"EfficientNet-Lite\d is best for your data: \d+\.\d% \(95 % CI"),
                                 timeout=TRAINING_TIMEOUT_MS)
    expect(main(page).get_by_test_id("stDataFrame").first).to_be_visible()  # the ranking's table, above the catalogue
    picker = main(page).get_by_role("combobox", name="Backbone", exact=True)
    chosen = re.search(r"(EfficientNet-Lite\d) is best", best.inner_text()).group(1)
    expect(picker).to_have_value(re.compile(re.escape(chosen)))
    shot(page, "2-backbone-rank")
    set_feature_extraction(page)
    shot(page, "3-freezing")

    # A long run (one example per step, no early stopping) whose live chart must grow while it trains.
    go_to(page, "4 · Train")
    start_training(page, epochs=400, batch_size=1, patience=0, gradient=True)
    seen = wait_chart_grows(page, "steps-live", beyond=0)
    grown = wait_chart_grows(page, "steps-live", beyond=seen)
    assert grown > seen
    expect(main(page).get_by_role("button", name=re.compile("Stop training"))).to_be_visible()
    shot(page, "4-train-live")

    # Reloading the tab starts a new session; it reattaches to the running job and keeps drawing it.
    page.reload()
    wait_app_loaded(page)
    expect(main(page).get_by_text("Reattached to the latest training job")).to_be_visible()
    expect(main(page).get_by_test_id("stProgress")).to_be_visible()
    after_reload = wait_chart_grows(page, "steps-live", beyond=grown)
    assert after_reload > grown

    # Stop it early (a run stopped inside its first epoch keeps no model; the page says so).
    main(page).get_by_role("button", name=re.compile("Stop training")).click()
    stopped = main(page).get_by_test_id("stAlert").filter(has_text="Stopped")
    expect(stopped).to_be_visible(timeout=TRAINING_TIMEOUT_MS)
    wait_idle(page)
    expect(main(page).get_by_role("button", name=re.compile("Stop training"))).to_have_count(0)

    # ... and start another, short one that finishes by itself (the cached features make it quick).
    start_training(page, epochs=5, batch_size=32, patience=5)
    expect_finished(page)
    expect(main(page).get_by_role("heading", name="Runs in this session")).to_be_visible()
    assert chart_points(page, "epochs-done") > 0
    shot(page, "4-train-done")

    # Step 5: scores, confusion matrix, gallery of one cell, a new image's prediction.
    go_to(page, "5 · Test")
    # Small data: scored by cross-validation, with the protocol, n and a 95 % interval on screen.
    accuracy = main(page).get_by_test_id("stMetric").filter(has_text="Cross-validated accuracy")
    expect(accuracy.get_by_test_id("stMetricValue")).to_have_text(PERCENT, timeout=120_000)
    expect(main(page).get_by_text("Protocol: 5-fold cross-validation.")).to_be_visible()
    expect(main(page).get_by_text(re.compile(r"95 % interval \d+\.\d%–\d+\.\d% · n = \d+"))).to_be_visible()
    expect(main(page).locator(".st-key-test_confusion_chart .js-plotly-plot")).to_be_visible()
    expect(main(page).get_by_text(re.compile(r"^\d+ (mistakes?|correct answers?): true"))).to_be_visible()
    shot(page, "5-test")
    upload(page, sample_digit(tmp_path))
    caption = main(page).get_by_text(re.compile(rf"^({DIGITS}) \(\d+%\)$"))
    expect(caption).to_be_visible()
    # Why this prediction? The new image as the network saw it, and the heat map over it.
    explain_first(page, "test_explain_new")
    expect(main(page).locator(".st-key-test_explain_new").get_by_test_id("stImage")).to_have_count(2)
    shot_section(page, "test_explain_new", "5-test-explain")

    # What should I label next? The new scans are ranked; the copies of labelled scans are left out.
    listed = suggest_labelling(page, unlabelled_digits(tmp_path), "test_suggest_files")
    assert len(listed) == 10 and not listed["input"].str.startswith("copy-").any(), listed
    shot_section(page, "test_suggest_section", "5-test-suggest")

    # Does transfer help? The quick comparison alone (raw pixels, seconds; the random-weights network is left out),
    # on the run's own folds, with the paired interval of the difference.
    main(page).get_by_text("Also the same network with random weights").click()
    wait_idle(page)
    click_button(page, "Train baseline", timeout_ms=TRAINING_TIMEOUT_MS)
    verdict = main(page).get_by_test_id("stAlert").filter(has_text=re.compile(r"raw pixels: \d+\.\d%"))
    expect(verdict).to_be_visible(timeout=TRAINING_TIMEOUT_MS)
    expect(verdict).to_contain_text(
        re.compile(r"95 % interval [−+]\d+\.\d to [−+]\d+\.\d points; paired on the same 240 examples"))
    shot_section(page, "test_transfer_section", "5-test-transfer")

    # Would more data help? The learning curve on the same folds, with its sentence.
    click_button(page, "Draw the learning curve", timeout_ms=TRAINING_TIMEOUT_MS)
    sentence = main(page).get_by_test_id("stAlert").filter(has_text=re.compile("Doubling your labelled|unlikely"))
    expect(sentence).to_be_visible(timeout=TRAINING_TIMEOUT_MS)
    expect(main(page).get_by_text(re.compile(r"10% of the labels: \d+\.\d%"))).to_be_visible()
    shot_section(page, "test_learning_curve_section", "5-test-learning-curve")

    # Export: the bundle is built, passes its parity check and downloads.
    names = build_and_download_bundle(page, tmp_path)
    assert any(name.endswith("predict.py") for name in names), names
    assert any(name.endswith(".onnx") for name in names), names
    shot(page, "5-test-export")


def test_text_walk(page: Page, tmp_path: Path) -> None:
    load_sample(page, "texts")
    choose_default_backbone(page, "texts")
    # Which backbone? Only MiniLM is offline here: the ranking says there is nothing to rank and still scores its
    # probe on the data (its features are kept, so the run below starts from them).
    click_button(page, "Rank for my data", timeout_ms=TRAINING_TIMEOUT_MS)
    ranked = main(page).get_by_test_id("stAlert").filter(has_text="Its probe estimates")
    expect(ranked).to_contain_text(re.compile(r"estimates \d+(\.\d)?\s?% \(.+\), n = 160"), timeout=TRAINING_TIMEOUT_MS)
    shot(page, "text-2-backbone-rank")
    set_feature_extraction(page)
    go_to(page, "4 · Train")
    # The page offers tuning the sentence encoder on the texts first, and says when Auto does (the run decides).
    expect(main(page).get_by_text(re.compile("The encoder is tuned on pairs of your texts first .* if, frozen, its "
                                             "head scores under 90 %"))).to_be_visible()
    start_training(page, epochs=8, batch_size=32, patience=8)
    expect_finished(page)
    shot(page, "text-4-train-done")

    go_to(page, "5 · Test")
    # Small data: scored by cross-validation, with the protocol, n and a 95 % interval on screen.
    accuracy = main(page).get_by_test_id("stMetric").filter(has_text="Cross-validated accuracy")
    expect(accuracy.get_by_test_id("stMetricValue")).to_have_text(PERCENT, timeout=120_000)
    expect(main(page).get_by_text("Protocol: 5-fold cross-validation.")).to_be_visible()
    expect(main(page).get_by_text(re.compile(r"95 % interval \d+\.\d%–\d+\.\d% · n = \d+"))).to_be_visible()
    expect(main(page).locator(".st-key-test_confusion_chart .js-plotly-plot")).to_be_visible()
    texts = main(page).get_by_role("textbox", name="Texts to classify, one per line")
    with rerun(page):
        texts.fill("I was charged twice for my subscription this month.\nThe parcel never arrived at my door.")
        texts.press("Control+Enter")
    table = download_predictions(page, tmp_path)
    assert len(table) == 2
    assert set(table["prediction"]) <= {"billing", "delivery", "technical problem", "praise", "not sure"}, table
    shot(page, "text-5-test")
    explain_first(page, "test_explain_new")  # the first message's words, coloured by how much they counted
    expect(main(page).locator(".st-key-test_explain_new .explain-words")).to_be_visible()

    # What should I label next? New messages ranked; the one already labelled in the sample is left out.
    new_messages = tmp_path / "new_messages.csv"
    pd.DataFrame({"text": ["I was charged for a parcel that never came.", "The app logs me out and bills me again.",
                           "Thanks, the courier was lovely but my invoice is wrong.", "Where is my order?",
                           "The smart plug shows offline in the app but the light is on."]}).to_csv(new_messages,
                                                                                                   index=False)
    listed = suggest_labelling(page, new_messages, "test_suggest_texts")
    assert len(listed) == 4 and "The smart plug shows offline" not in " ".join(listed["input"]), listed

    # Does transfer help? The baselines train in the background on the run's own folds (the page stays usable, a
    # progress bar shows), then the page compares: the verdict reads the 95 % interval of the difference, and the
    # table gives each baseline's accuracy, interval, n and "pretrained minus this".
    with rerun(page):  # the random-weights model: 1 epoch is enough to check the flow (the default is 10)
        fill_number(page, "Epochs for the from-scratch model", 1)
    click_button(page, "Train baseline", timeout_ms=TRAINING_TIMEOUT_MS)
    expect(main(page).get_by_test_id("stProgress").filter(has_text="Training")).to_be_visible()
    verdict = main(page).get_by_test_id("stAlert").filter(has_text=re.compile(r"TF-IDF: \d+\.\d%"))
    expect(verdict).to_be_visible(timeout=TRAINING_TIMEOUT_MS)
    expect(verdict).to_contain_text(re.compile(r"95 % interval [−+]\d+\.\d to [−+]\d+\.\d points; n = \d+"))
    expect(main(page).locator(".st-key-test_baselines_table").get_by_test_id("stDataFrame")).to_be_visible()
    verdict.scroll_into_view_if_needed()
    shot(page, "text-5-baselines")

    # Would more data help? The learning curve, with its sentence.
    click_button(page, "Draw the learning curve", timeout_ms=TRAINING_TIMEOUT_MS)
    sentence = main(page).get_by_test_id("stAlert").filter(has_text=re.compile("Doubling your labelled|unlikely"))
    expect(sentence).to_be_visible(timeout=TRAINING_TIMEOUT_MS)
    expect(main(page).get_by_text(re.compile(r"10% of the labels: \d+\.\d%"))).to_be_visible()
    sentence.scroll_into_view_if_needed()
    shot(page, "text-5-learning-curve")


WORDS = ("down", "left", "no", "right", "up", "yes")


def test_audio_walk(page: Page, tmp_path: Path) -> None:
    """Sound clips, cheaply: the spoken-words sample, the offline spectrogram backbone with every group frozen, the
    logistic head with the page's defaults (seconds on cached features), then scores, baselines and a new clip."""
    load_sample(page, "sound clips")
    classes = main(page).get_by_test_id("stMetric").filter(has_text="Classes")
    expect(classes.get_by_test_id("stMetricValue")).to_have_text("6")
    expect(main(page).get_by_text(re.compile(r"every clip 1 s long"))).to_be_visible()
    expect(main(page).get_by_text("No problems found.")).to_be_visible()
    # each class's first clips as spectrogram pictures with a player under each
    expect(main(page).get_by_test_id("stAudio")).to_have_count(6 * 4)
    expect(main(page).get_by_test_id("stImage")).to_have_count(6 * 4)
    shot(page, "audio-1-data")
    choose_default_backbone(page, "sound clips")
    expect(page.get_by_test_id("stSidebar")).to_contain_text("144 examples, 6 classes")
    set_feature_extraction(page)

    go_to(page, "4 · Train")
    with rerun(page):
        main(page).get_by_role("button", name=re.compile(r"Train$")).click()
    expect_finished(page)

    go_to(page, "5 · Test")
    accuracy = main(page).get_by_test_id("stMetric").filter(has_text="Cross-validated accuracy")
    expect(accuracy.get_by_test_id("stMetricValue")).to_have_text(PERCENT, timeout=120_000)
    expect(main(page).get_by_text("Protocol: 5-fold cross-validation.")).to_be_visible()
    expect(main(page).get_by_text(re.compile(r"95 % interval \d+\.\d%–\d+\.\d% · n = 144"))).to_be_visible()
    # Does transfer help? The MFCC baseline (and the same network with random weights) on the run's own folds.
    with rerun(page):
        fill_number(page, "Epochs for the from-scratch model", 1)
    click_button(page, "Train baseline", timeout_ms=TRAINING_TIMEOUT_MS)
    verdict = main(page).get_by_test_id("stAlert").filter(has_text=re.compile(r"MFCC: \d+\.\d%"))
    expect(verdict).to_be_visible(timeout=TRAINING_TIMEOUT_MS)

    # A clip of the sample on its own, as a user would upload a new recording.
    clip = sample_clip(tmp_path, "left")
    uploaders = main(page).get_by_test_id("stFileUploader")
    upload(page, clip, index=next(i for i in range(uploaders.count())
                                  if "Sound clips to classify" in uploaders.nth(i).inner_text()))
    table = download_predictions(page, tmp_path)
    assert table["input"].tolist() == [clip.name] and table["prediction"].iloc[0] in (*WORDS, "not sure"), table

    # A clip recorded in the browser: the fake microphone says "left" (see the browser fixture).
    recorder = main(page).get_by_test_id("stAudioInput")
    recorder.get_by_role("button", name="Record").click()
    page.wait_for_timeout(2_000)
    with rerun(page):
        recorder.get_by_role("button", name="Stop recording").click()
    expect(main(page).locator(".st-key-test_live_chart")).to_be_visible(timeout=60_000)  # drawn for a recording only
    answer = main(page).get_by_text(re.compile(rf"^({'|'.join(WORDS)}|not sure) \(\d+%\)"))
    expect(answer.first).to_be_visible()
    shot(page, "audio-5-test")

    # Export: the bundle carries the spectrogram code and passes its parity check on the clips.
    names = build_and_download_bundle(page, tmp_path)
    expect(main(page).get_by_text("pip install torch numpy scipy soundfile")).to_be_visible()
    for part in ("predict.py", "audio_features.py", ".onnx", ".torchscript.pt"):
        assert any(name.endswith(part) for name in names), (part, names)
