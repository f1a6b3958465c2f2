"""Pages 2 (Backbone) and 3 (Freezing) through `streamlit.testing.v1.AppTest`, with the session pre-seeded.

The pages run inside `app.py` (switching to them), because `st.page_link` only resolves under `st.navigation`.
Page 3 uses the tiny test backbone: the loader is swapped for one that returns `TinyCNN`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from core import backbones
from core.dataset import Dataset
from core.session import StudioState
from tests.tiny import TINY_SPEC, TinyCNN, make_colour_dataset

APP = str(Path(__file__).resolve().parent.parent / "app.py")


def start(page: str, state: StudioState) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["studio"] = state
    at.switch_page(page)
    at.run()
    assert not at.exception, at.exception
    return at


def text_dataset() -> Dataset:
    rows = [{"item": f"text number {i}", "label": "a" if i % 2 else "b", "split": "train"} for i in range(10)]
    return Dataset(name="texts", modality="text", table=pd.DataFrame(rows))


def markdown(at: AppTest) -> str:
    return "\n".join(str(m.value) for m in at.markdown)


def test_backbone_page_needs_data_first() -> None:
    at = start("pages/2_backbone.py", StudioState())
    assert "load a data set" in "\n".join(str(i.value) for i in at.info)


def test_backbone_page_preselects_the_offline_default_and_stores_it(tmp_path: Path) -> None:
    state = StudioState(dataset=make_colour_dataset(tmp_path / "colours", per_class=3))
    at = start("pages/2_backbone.py", state)
    assert at.selectbox[0].value == "efficientnet_lite0"
    assert state.backbone_name == "efficientnet_lite0"
    table = at.dataframe[0].value
    assert "EfficientNet-Lite0" in set(table["Backbone"]) and "all-MiniLM-L6-v2" not in set(table["Backbone"])
    assert any("ImageNet" in str(m.value) for m in at.markdown)

    at.toggle(key="backbone_offline_only").set_value(True).run()
    assert set(at.dataframe[0].value["Backbone"]) == {"EfficientNet-Lite0", "EfficientNet-Lite1", "EfficientNet-Lite2"}
    at.selectbox[0].set_value("efficientnet_lite1").run()
    assert state.backbone_name == "efficientnet_lite1"


def test_backbone_page_explains_an_unavailable_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if backbones.availability("roberta_base").available:
        pytest.skip("roberta-base is cached on this machine")
    state = StudioState(dataset=text_dataset())
    at = start("pages/2_backbone.py", state)
    assert at.selectbox[0].value == "all_minilm_l6_v2"
    at.selectbox[0].set_value("roberta_base").run()
    assert "TRANSFER_STUDIO_WEIGHTS_DIR" in "\n".join(str(e.value) for e in at.error)
    assert state.backbone_name == "all_minilm_l6_v2"  # an unavailable choice is not stored


@pytest.fixture
def tiny_catalogue(monkeypatch: pytest.MonkeyPatch):
    """Register the tiny CNN and make the loader build it, so the page runs in a fraction of a second."""
    spec = backbones.register(dataclasses.replace(TINY_SPEC, family="timm_cnn", depth=1))  # stem, stage 1, head

    def load_tiny(name: str, pretrained: bool = True) -> TinyCNN:
        backbone = TinyCNN()
        backbone.spec = spec  # as load_backbone gives it: the catalogue entry, counting the same three groups
        return backbone

    monkeypatch.setattr(backbones, "load_backbone", load_tiny)
    yield spec
    backbones.unregister(spec.name)


def test_freezing_page_slider_chart_recommendation_and_measurement(tmp_path: Path, tiny_catalogue) -> None:
    state = StudioState(dataset=make_colour_dataset(tmp_path / "colours", per_class=3), backbone_name="tiny_cnn")
    at = start("pages/3_freezing.py", state)
    # 6 training examples: the recommendation is feature extraction, all 3 groups frozen.
    assert state.frozen_groups == 3
    # One word, one direction: the slider, its metric and the recommendation all count frozen groups.
    assert at.slider[0].label == "Layer groups frozen" and at.slider[0].value == 3
    assert [m.value for m in at.metric if m.label == "Frozen layer groups"] == ["3 of 3"]
    assert "Recommendation: 3 of 3" in markdown(at)
    assert len(at.get("plotly_chart")) == 1
    trainable = [m for m in at.metric if m.label == "Trainable parameters"][0]
    assert trainable.value == f"{16 * 3 + 3:,}"  # only the new head: 16 features x 3 classes + 3 biases

    at.slider[0].set_value(0).run()
    assert state.frozen_groups == 0
    assert [m.value for m in at.metric if m.label == "Frozen layer groups"] == ["0 of 3"]
    full = [m for m in at.metric if m.label == "Trainable parameters"][0]
    assert int(full.value.replace(",", "")) == sum(p.numel() for p in TinyCNN().parameters()) + 51

    [b for b in at.button if b.label == "Measure on this machine"][0].click().run()
    assert not at.exception
    labels = {m.label for m in at.metric}
    assert {"Time per epoch", "Extra memory"} <= labels

    [b for b in at.button if b.label == "Use the recommendation"][0].click().run()
    assert state.frozen_groups == 3 and at.slider[0].value == 3


def test_freezing_page_needs_a_backbone(tmp_path: Path) -> None:
    state = StudioState(dataset=make_colour_dataset(tmp_path / "colours", per_class=3))
    at = start("pages/3_freezing.py", state)
    assert "choose a backbone" in "\n".join(str(i.value) for i in at.info)
