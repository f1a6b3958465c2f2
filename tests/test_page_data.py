"""The Data page through `streamlit.testing.v1.AppTest`: one-click samples, uploads, and bad input that must
neither crash the page nor replace the data set already loaded.

The page runs inside `app.py` (its default page), because `st.page_link` to the next step only resolves under the
app's `st.navigation`; the session's state is pre-seeded as a fresh `StudioState`.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from core.session import StudioState

APP = Path(__file__).resolve().parent.parent / "app.py"


def png(colour: tuple[int, int, int], seed: int) -> bytes:
    pixels = np.clip(np.array(colour) + np.random.default_rng(seed).integers(0, 40, (16, 16, 3)), 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def zip_of(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def pets(classes: tuple[str, ...] = ("cats", "dogs"), per_class: int = 6) -> dict[str, bytes]:
    colours = [(200, 30, 30), (30, 30, 200)]
    return {f"pets/{c}/{i}.png": png(colours[k], k * 10 + i) for k, c in enumerate(classes) for i in range(per_class)}


@pytest.fixture
def app() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.session_state["studio"] = StudioState()
    at.run()
    assert not at.exception
    return at


def state(at: AppTest) -> StudioState:
    return at.session_state["studio"]


def texts(elements) -> str:
    return "\n".join(str(element.value) for element in elements)


def test_sample_images_load_with_one_click(app: AppTest) -> None:
    app.button(key="load_sample_images").click().run()

    assert not app.exception
    dataset = state(app).dataset
    assert dataset is not None and dataset.name == "Sample: handwritten digits" and dataset.num_classes == 10
    assert state(app).data_report["ok"]
    assert "Loaded **Sample: handwritten digits**" in texts(app.success)
    assert len(app.get("plotly_chart")) == 1
    assert len(app.get("image")) == 10  # one thumbnail row per class
    assert [link.proto.label for link in app.get("page_link")] == ["Next: choose a backbone"]


def test_sample_texts_show_a_table(app: AppTest) -> None:
    app.radio(key="data_source").set_value("Sample texts").run()
    app.button(key="load_sample_texts").click().run()
    assert not app.exception
    assert state(app).dataset.modality == "text"
    assert len(app.dataframe) == 1 and set(app.dataframe[0].value["label"]) == {
        "billing",
        "delivery",
        "praise",
        "technical problem",
    }


def test_zip_upload_then_unsafe_zip_keeps_the_loaded_data(app: AppTest) -> None:
    app.radio(key="data_source").set_value("Upload a zip of class folders").run()
    app.file_uploader(key="data_zip_upload").set_value(("pets.zip", zip_of(pets()), "application/zip")).run()
    app.button(key="load_zip").click().run()
    assert not app.exception
    assert state(app).dataset.name == "pets.zip" and state(app).dataset.classes == ["cats", "dogs"]

    evil = zip_of({**pets(), "../evil.png": png((0, 0, 0), 0)})
    app.file_uploader(key="data_zip_upload").set_value(("evil.zip", evil, "application/zip")).run()
    app.button(key="load_zip").click().run()

    assert not app.exception
    assert "`../evil.png` points outside" in texts(app.error)
    assert "Your earlier data set **pets.zip** is still loaded." in texts(app.info)
    assert state(app).dataset.name == "pets.zip"


def test_data_set_with_errors_does_not_replace_a_good_one(app: AppTest) -> None:
    app.button(key="load_sample_images").click().run()
    app.radio(key="data_source").set_value("Upload a zip of class folders").run()
    one_class = zip_of(pets(classes=("cats",)))
    app.file_uploader(key="data_zip_upload").set_value(("cats.zip", one_class, "application/zip")).run()
    app.button(key="load_zip").click().run()

    assert not app.exception
    errors = texts(app.error)
    assert "**cats.zip** was not loaded" in errors and "needs at least two" in errors
    assert state(app).dataset.name == "Sample: handwritten digits"


def test_corrupt_zip_on_empty_session_shows_one_error(app: AppTest) -> None:
    app.radio(key="data_source").set_value("Upload a zip of class folders").run()
    app.file_uploader(key="data_zip_upload").set_value(("broken.zip", b"PK\x03\x04garbage", "application/zip")).run()
    app.button(key="load_zip").click().run()
    assert not app.exception
    assert len(app.error) == 1 and "not a readable zip archive" in app.error[0].value
    assert state(app).dataset is None


def test_csv_upload_with_column_choice(app: AppTest) -> None:
    rows = ["id,message,topic,channel"] + [
        f"{i},message about {'money' if i % 2 else 'parcels'} {i},t{i % 2},web" for i in range(12)
    ]
    app.radio(key="data_source").set_value("Upload a CSV/TSV of texts").run()
    app.file_uploader(key="data_table_upload").set_value(("msgs.csv", "\n".join(rows).encode(), "text/csv")).run()

    assert not app.exception
    assert app.selectbox(key="data_table_text_column").value == "message"
    assert app.selectbox(key="data_table_label_column").value == "topic"  # "channel" is constant: not a label
    app.selectbox(key="data_table_text_column").set_value("id").run()
    app.selectbox(key="data_table_text_column").set_value("message").run()
    app.button(key="load_table").click().run()

    assert not app.exception
    dataset = state(app).dataset
    assert dataset.modality == "text" and dataset.classes == ["t0", "t1"] and len(dataset.table) == 12


def test_binary_file_renamed_csv_is_a_clear_error(app: AppTest) -> None:
    app.button(key="load_sample_images").click().run()
    app.radio(key="data_source").set_value("Upload a CSV/TSV of texts").run()
    app.file_uploader(key="data_table_upload").set_value(("photo.csv", png((1, 2, 3), 0), "text/csv")).run()
    assert not app.exception
    assert "not a text table: it is a PNG image" in texts(app.error)
    assert not app.get("button") or "load_table" not in [button.key for button in app.button]
    assert state(app).dataset.name == "Sample: handwritten digits"


def test_server_folder_only_with_data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, app: AppTest) -> None:
    assert "Folder on the server" not in app.radio(key="data_source").options
    for name, content in pets().items():
        path = tmp_path / "root" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    (tmp_path / "root" / "notes.json").write_text(json.dumps({"not": "data"}))
    monkeypatch.setenv("TRANSFER_STUDIO_DATA_ROOT", str(tmp_path / "root"))
    app.run()
    app.radio(key="data_source").set_value("Folder on the server").run()
    assert app.selectbox(key="data_server_entry").options == ["pets/"]
    app.button(key="load_server").click().run()
    assert not app.exception
    assert state(app).dataset.name == "pets" and len(state(app).dataset.table) == 12


def test_protocol_is_said_in_one_sentence_and_can_be_overridden(app: AppTest) -> None:
    app.button(key="load_sample_images").click().run()
    assert "Estimate: cross-validation." in texts(app.info)
    assert "240 examples" in texts(app.info) and state(app).scratch["protocol"] == "auto"
    app.selectbox(key="data_protocol").select("test split").run()
    assert not app.exception
    assert "Estimate: test split." in texts(app.info) and state(app).scratch["protocol"] == "test split"


def _trained(app: AppTest) -> StudioState:
    """The session as after steps 2-4 on the loaded data: a backbone, a freezing and a trained run."""
    studio = state(app)
    studio.backbone_name, studio.frozen_groups = "efficientnet_lite0", 9
    studio.run_dir = "/workspace/runs/run-1"
    studio.runs.append(studio.run_dir)
    return studio


def _load_zip(app: AppTest, name: str, content: bytes) -> None:
    app.radio(key="data_source").set_value("Upload a zip of class folders").run()
    app.file_uploader(key="data_zip_upload").set_value((name, content, "application/zip")).run()
    app.button(key="load_zip").click().run()
    assert not app.exception, app.exception


def test_data_set_with_warnings_asks_before_setting_trained_work_aside(app: AppTest) -> None:
    """A zip with a broken image and tiny classes loads with warnings; with a trained model, the page asks first."""
    app.button(key="load_sample_images").click().run()
    studio = _trained(app)
    corrupt = zip_of({**pets(per_class=3), "pets/cats/broken.png": b"not a png"})
    _load_zip(app, "corrupt.zip", corrupt)

    assert studio.dataset.name == "Sample: handwritten digits" and studio.run_dir == "/workspace/runs/run-1"
    question = texts(app.warning)
    assert "**corrupt.zip** is checked and ready" in question and "the trained model that step 5 tests" in question
    # the new data set's own warnings, to decide with
    assert "1 file in `cats/` is not an image and was skipped: broken.png. Remove or replace it." in question
    app.button(key="data_keep_loaded").click().run()
    assert not app.exception
    assert studio.dataset.name == "Sample: handwritten digits" and studio.run_dir == "/workspace/runs/run-1"
    assert "Kept **Sample: handwritten digits**" in texts(app.success)
    assert "data_confirm_replace" not in [button.key for button in app.button]

    app.button(key="load_zip").click().run()
    app.button(key="data_confirm_replace").click().run()
    assert not app.exception
    assert studio.dataset.name == "corrupt.zip" and studio.run_dir is None
    assert studio.runs == ["/workspace/runs/run-1"]  # still listed on the Test page
    assert (studio.backbone_name, studio.frozen_groups) == ("efficientnet_lite0", 9)  # images again: still valid
    assert "Loaded **corrupt.zip**" in texts(app.success)


def test_other_modality_says_the_backbone_goes_too_and_keeps_the_runs(app: AppTest) -> None:
    app.radio(key="data_source").set_value("Sample texts").run()
    app.button(key="load_sample_texts").click().run()
    studio = _trained(app)
    _load_zip(app, "pets.zip", zip_of(pets()))
    assert "the chosen backbone and freezing (they are for texts)" in texts(app.warning)
    app.button(key="data_confirm_replace").click().run()
    assert studio.dataset.name == "pets.zip" and studio.backbone_name is None and studio.frozen_groups is None
    assert studio.runs == ["/workspace/runs/run-1"]


def test_same_data_again_keeps_the_trained_model_without_asking(app: AppTest) -> None:
    app.button(key="load_sample_images").click().run()
    studio = _trained(app)
    app.button(key="load_sample_images").click().run()
    assert not app.exception
    assert "data_confirm_replace" not in [button.key for button in app.button]
    assert studio.run_dir == "/workspace/runs/run-1" and "Loaded **Sample: handwritten digits**" in texts(app.success)
