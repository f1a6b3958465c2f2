"""Tests of core.suggest ("what should I label next?"): on a tiny trained model, examples on the decision boundary
come first and look-alikes are skipped; the command line's JSON and CSV; bad input is named; the Test page section."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from core import evaluation, suggest
from core.__main__ import main
from core.dataset import Dataset
from core.session import StudioState
from tests.test_evaluation import load_tiny_run, tiny_preprocessor, train_tiny, write_run
from tests.test_page_data import zip_of
from tests.test_page_test import _text_model_page

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "5_evaluate.py")
# The tiny model's classes are sorted: blue, green, red.
RED, GREEN, BLUE = np.array((220, 40, 40)), np.array((40, 200, 60)), np.array((40, 60, 220))
SHARES = (0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0)


def _square(colour: np.ndarray, seed: int = 5) -> bytes:
    pixels = np.clip(colour + np.random.default_rng(seed).normal(0, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _blends(folder: Path) -> dict[str, Path]:
    """Squares on the way from green to red and from blue to red: the model flips class half-way along each."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for start, start_name in ((GREEN, "green"), (BLUE, "blue")):
        for share in SHARES:
            name = f"{start_name}-red-{share:.1f}.png"
            (folder / name).write_bytes(_square(share * RED + (1 - share) * start))
            files[name] = folder / name
    return files


@pytest.fixture
def tiny_run(tmp_path: Path, colour_dataset: Dataset, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A run folder of the tiny colour model, loadable through `evaluation.load_model`."""
    monkeypatch.setattr(evaluation, "load_model", load_tiny_run)
    return write_run(tmp_path / "runs" / "tiny-run", train_tiny(colour_dataset), colour_dataset)


# ------------------------------------------------------------------------------------------------ the ranking


def test_examples_on_the_decision_boundary_rank_above_confident_ones(tmp_path: Path, colour_dataset) -> None:
    files = _blends(tmp_path / "unlabelled")
    unlabelled = suggest.read_unlabelled([tmp_path / "unlabelled"], "image")
    result = suggest.suggest_labels(train_tiny(colour_dataset), tiny_preprocessor(), colour_dataset.classes,
                                    unlabelled, top=len(files), device="cpu")
    order = [row.input for row in result.rows]
    assert sorted(order) == sorted(files) and result.examined == len(files)
    # The two half-way blends are where the model hesitates most; the pure colours, where it is sure, come last.
    assert set(order[:2]) == {"green-red-0.5.png", "blue-red-0.5.png"}, order
    assert all(name.endswith(("-0.4.png", "-0.5.png", "-0.6.png")) for name in order[:4]), order
    assert not {"green-red-0.0.png", "blue-red-0.0.png", "green-red-1.0.png"} & set(order[:6]), order
    margins = [row.margin for row in result.rows]
    assert margins[0] < 0.5 < min(margins[-4:])
    assert result.rows[0].why.startswith("the most uncertain: torn between")


def test_diversity_skips_a_near_copy_of_a_pick_when_a_distinct_uncertain_example_exists() -> None:
    rng = np.random.default_rng(0)
    hard_case = rng.normal(size=16)
    features = np.stack([hard_case, hard_case + 1e-3 * rng.normal(size=16), hard_case + 1e-3 * rng.normal(size=16),
                         rng.normal(size=16), rng.normal(size=16), rng.normal(size=16)])
    probabilities = np.array([[0.50, 0.48, 0.02],   # the hard case and two near-copies of it: the most uncertain
                              [0.51, 0.47, 0.02], [0.52, 0.46, 0.02],
                              [0.10, 0.30, 0.60],   # distinct, less uncertain (margin 0.30)
                              [0.97, 0.02, 0.01], [0.01, 0.98, 0.01]])  # confident
    picks = suggest.rank_for_labelling(probabilities, features, top=2)
    assert [pick.index for pick in picks] == [0, 3]
    assert picks[1].passed_over == 2 and not picks[1].near_duplicate
    # Uncertainty alone would have taken the copy: with identical features the order is by margin.
    plain = suggest.rank_for_labelling(probabilities, np.ones_like(features), top=6)
    assert [pick.index for pick in plain][:3] == [0, 1, 2] and plain[1].near_duplicate
    # Diversity never lifts a confident example above an uncertain one, except above near-copies of a pick: those
    # go last, since a label on them teaches nothing the first one's did not.
    assert [pick.index for pick in suggest.rank_for_labelling(probabilities, features, top=6)] == [0, 3, 4, 5, 1, 2]


def test_a_model_on_identical_uploads_suggests_one_of_them_and_then_a_distinct_hard_case(tmp_path, colour_dataset):
    hard = _square(0.5 * RED + 0.5 * GREEN)
    uploads = [("copy-1.png", hard), ("copy-2.png", hard), ("copy-3.png", hard),
               ("other.png", _square(0.5 * RED + 0.5 * BLUE)), ("sure.png", _square(RED))]
    unlabelled = suggest.read_uploads(uploads, "image", tmp_path / "uploads")
    result = suggest.suggest_labels(train_tiny(colour_dataset), tiny_preprocessor(), colour_dataset.classes,
                                    unlabelled, top=2, device="cpu")
    names = [row.input for row in result.rows]
    assert sum(name.startswith("copy") for name in names) == 1 and "other.png" in names, names


def test_exact_copies_of_labelled_examples_are_left_out_with_their_label(tmp_path: Path, colour_dataset) -> None:
    labelled_item = colour_dataset.table.iloc[0]
    folder = tmp_path / "unlabelled"
    _blends(folder)
    (folder / "again.png").write_bytes(Path(labelled_item["item"]).read_bytes())
    result = suggest.suggest_labels(train_tiny(colour_dataset), tiny_preprocessor(), colour_dataset.classes,
                                    suggest.read_unlabelled([folder], "image"), top=50, labelled=colour_dataset,
                                    device="cpu")
    assert result.already_labelled == [("again.png", labelled_item["label"])]
    assert "again.png" not in [row.input for row in result.rows] and result.examined == len(SHARES) * 2

    texts = Dataset("t", "text", pd.DataFrame([("goal goal team", "sport", "train"), ("bake", "food", "test")],
                                               columns=["item", "label", "split"]))
    copies = suggest.labelled_copies(suggest.Unlabelled(["Goal  GOAL team ", "chips"], ["a", "b"]), texts)
    assert copies == {0: "sport"}


# ------------------------------------------------------------------------------------------------ command line


def test_the_command_line_prints_json_and_writes_the_csv(tiny_run: Path, tmp_path: Path, capsys) -> None:
    _blends(tmp_path / "new")
    (tmp_path / "new" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "lists" / "to-label.csv"
    status = main(["suggest-labels", "--model", str(tiny_run), "--data", str(tmp_path / "new"), "--top", "3",
                   "--json", "--out", str(out), "--device", "cpu"])
    assert status == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["examined"] == len(SHARES) * 2 and printed["feature_space"] == "backbone features"
    assert printed["skipped"] == ["broken.png (not an image)"]
    assert [row["rank"] for row in printed["suggestions"]] == [1, 2, 3]
    assert set(printed["suggestions"][0]) == set(suggest.COLUMNS)
    with out.open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == list(suggest.COLUMNS)
    assert [row["input"] for row in rows] == [row["input"] for row in printed["suggestions"]]
    assert float(rows[0]["margin"]) == pytest.approx(printed["suggestions"][0]["margin"])


def test_the_command_line_names_what_is_wrong(tiny_run: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "notes.zip").write_bytes(zip_of({"readme.txt": b"no pictures here"}))
    assert main(["suggest-labels", "--model", str(tiny_run), "--data", str(tmp_path / "notes.zip")]) == 2
    assert "`notes.zip` holds no images" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("scores.csv", b"id,score\n1,0.5\n2,0.7\n", "`scores.csv` has no text column: its columns are `id`, `score`"),
        ("ids.csv", b"id\n1\n2\n", "Column `id` of `ids.csv` holds numbers, not texts"),
        ("empty.txt", b"\n  \n", "`empty.txt` is empty"),
        ("photo.png", b"\x89PNG...", "neither a CSV nor a .txt file"),
    ],
)
def test_unusable_texts_get_a_specific_message(name: str, content: bytes, message: str, tmp_path: Path) -> None:
    with pytest.raises(suggest.SuggestInputError, match=message.replace("(", r"\(").replace(".", r"\.")):
        suggest.read_uploads([(name, content)], "text", tmp_path)


def test_texts_come_from_a_text_column_or_one_per_line(tmp_path: Path) -> None:
    table = b"id,message,label\n1,the parcel is late,\n2,\"charged twice, please refund\",billing\n"
    lines = b"first text\n\n  second text  \n"
    unlabelled = suggest.read_uploads([("new.csv", table), ("more.txt", lines)], "text", tmp_path)
    assert unlabelled.items == ["the parcel is late", "charged twice, please refund", "first text", "second text"]


def test_unreadable_images_are_named_and_the_rest_kept(tmp_path: Path) -> None:
    good = _square(RED)
    unlabelled = suggest.read_uploads([("a.png", good), ("cut.png", good[: len(good) // 2]), ("b.png", good)],
                                      "image", tmp_path)
    assert unlabelled.names == ["a.png", "b.png"]
    assert unlabelled.skipped == ["cut.png (damaged or truncated)"]
    with pytest.raises(suggest.SuggestInputError, match=r"None of the 1 file could be read as an image: x\.png"):
        suggest.read_uploads([("x.png", b"junk")], "image", tmp_path)
    with pytest.raises(suggest.SuggestInputError, match="`empty.zip` holds no images"):
        suggest.read_uploads([("empty.zip", zip_of({"notes/a.txt": b"text"}))], "image", tmp_path)
    with pytest.raises(suggest.SuggestInputError, match="not built yet"):
        suggest.read_uploads([("a.wav", b"RIFF")], "audio", tmp_path)


# ------------------------------------------------------------------------------------------------ Test page


def test_the_test_page_ranks_an_uploaded_zip_and_keeps_the_list_after_a_bad_upload(
    tiny_run: Path, colour_dataset: Dataset
) -> None:
    state = StudioState(dataset=colour_dataset, backbone_name="tiny_cnn", frozen_groups=0, run_dir=str(tiny_run))
    state.runs.append(str(tiny_run))
    app = AppTest.from_file(PAGE, default_timeout=60)
    app.session_state["studio"] = state
    app.run()
    assert app.button(key="test_suggest").disabled, "nothing to rank before an upload"
    entries = {f"new/{share:.1f}.png": _square(share * RED + (1 - share) * GREEN) for share in SHARES}
    entries["new/cut.png"] = entries["new/0.0.png"][: len(entries["new/0.0.png"]) // 2]
    app.file_uploader(key="test_suggest_files").set_value(("new.zip", zip_of(entries), "application/zip"))
    app.number_input(key="test_suggest_top").set_value(3).run()
    app.button(key="test_suggest").click().run()
    assert not app.exception, app.exception
    table = next(frame.value for frame in app.dataframe if "why" in frame.value.columns)
    assert len(table) == 3 and table["input"].iloc[0] == "new/0.5.png"
    assert table["picture"].iloc[0].startswith("data:image/png;base64,")
    assert any("new/cut.png (damaged or truncated)" in warning.value for warning in app.warning)
    assert "Download the list (CSV)" in [button.label for button in app.get("download_button")]

    not_images = ("notes.zip", zip_of({"a.txt": b"x"}), "application/zip")
    app.file_uploader(key="test_suggest_files").set_value(not_images).run()
    app.button(key="test_suggest").click().run()
    assert not app.exception, app.exception
    assert any("`notes.zip` holds no images" in error.value for error in app.error)
    assert any("why" in frame.value.columns for frame in app.dataframe), "the last good list stays"


def test_the_test_page_ranks_uploaded_texts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A text model without a separate backbone (the keyword stand-in): look-alikes are judged on probabilities."""
    rows = [("goal goal team", "sport", "test"), ("bake bread", "food", "test"), ("chip", "tech", "test"),
            ("goal", "sport", "train"), ("bake", "food", "train"), ("chip", "tech", "train")]  # fmt: skip
    app = _text_model_page(rows, monkeypatch, tmp_path)
    app.run()
    texts = b"text\ngoal bake\nGoal  goal TEAM\nchip chip chip\nbake chip\n"
    app.file_uploader(key="test_suggest_texts").set_value(("new.csv", texts, "text/csv")).run()
    app.button(key="test_suggest").click().run()
    assert not app.exception, app.exception
    table = next(frame.value for frame in app.dataframe if "why" in frame.value.columns)
    assert set(table["input"].iloc[:2]) == {"goal bake", "bake chip"}, table  # one keyword each of two classes
    assert "picture" not in table.columns and table["input"].iloc[-1] == "chip chip chip"
    assert any("Goal  goal TEAM (= sport)" in info.value for info in app.info)
    assert any("judged on the class probabilities" in caption.value for caption in app.caption)
