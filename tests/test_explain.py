"""Why this prediction? (core.explain): Grad-CAM heat maps, word attributions, the refusals, the CLI and the page."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from core import evaluation, explain
from core.backbones import Classifier, get_spec
from core.dataset import Dataset
from tests.run_info import full_run_info
from tests.tiny import TINY_SPEC, TinyCNN

SQUARE = 8  # side of the bright square, in pixels of a 32 x 32 image


def _square_images(count: int, has_square: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, list]:
    """Noise images; where `has_square`, one bright square at a random place (the only evidence of class 1)."""
    images = rng.normal(0, 0.3, (count, 3, 32, 32)).astype(np.float32)
    corners = []
    for index in range(count):
        row, column = (int(value) for value in rng.integers(0, 32 - SQUARE, 2))
        if has_square[index]:
            images[index, :, row : row + SQUARE, column : column + SQUARE] = 2.0
        corners.append((row, column))
    return torch.from_numpy(images), corners


def test_the_heat_map_peaks_on_the_square_that_decides_the_class() -> None:
    rng = np.random.default_rng(0)
    labels = torch.from_numpy(rng.integers(0, 2, 256))
    images, _ = _square_images(256, labels.numpy(), rng)
    model = Classifier(TinyCNN(), 2)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(25):
        batch = torch.randint(0, 256, (16,))
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(images[batch]), labels[batch]).backward()
        optimiser.step()
    model.eval()

    tests, corners = _square_images(4, np.ones(4, dtype=int), rng)
    with torch.no_grad():
        assert (model(tests).argmax(1) == 1).all()
    for image, (row, column) in zip(tests, corners, strict=True):
        heat = explain.heatmap(model, image, target_class=1)
        assert heat.shape == (32, 32) and 0 <= heat.min() and heat.max() <= 1
        peak_row, peak_column = np.unravel_index(int(heat.argmax()), heat.shape)
        # the CAM is 8 x 8 (stride 4): its peak lands on the square, give or take one of its cells
        assert row - 2 <= peak_row < row + SQUARE + 2 and column - 2 <= peak_column < column + SQUARE + 2
        square = np.zeros_like(heat, dtype=bool)
        square[row : row + SQUARE, column : column + SQUARE] = True
        assert heat[square].mean() > 3 * heat[~square].mean()  # far above the rest of the picture
    assert all(parameter.grad is None for parameter in model.parameters())  # a shared model is left as it was


def test_vision_transformers_are_refused_plainly_and_cnns_are_offered() -> None:
    ok, reason = explain.supported(get_spec("vit_small"))
    assert not ok and "vision transformer" in reason and "mislead" in reason
    for name in ("efficientnet_lite0", "resnet18", "convnext_tiny", "mobilenetv3_small", "efficientnet_lite0_audio",
                 "all_minilm_l6_v2"):
        assert explain.supported(get_spec(name))[0], name
    assert "spectrogram" in explain.supported(get_spec("efficientnet_lite0_audio"))[1]

    backbone = TinyCNN()
    backbone.spec = dataclasses.replace(TINY_SPEC, family="vit", title="ViT-Tiny")
    with pytest.raises(explain.ExplanationUnsupported, match="vision transformer"):
        explain.heatmap(Classifier(backbone, 2), torch.zeros(3, 32, 32), 0)
    with pytest.raises(explain.ExplanationUnsupported, match="exported bundle"):
        explain.heatmap(nn.Sequential(nn.Conv2d(3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()),
                        torch.zeros(3, 32, 32), 0)


def test_grad_cam_looks_at_the_last_convolutional_block() -> None:
    from core.backbones import load_backbone

    lite = load_backbone("efficientnet_lite0", pretrained=False)
    assert explain.target_layers(lite) == [lite.network.bn2]
    lite.set_feature_taps(get_spec("efficientnet_lite0").feature_taps)  # multi-block features: still the last block
    assert explain.target_layers(lite) == [lite.network.bn2]
    resnet = load_backbone("resnet18", pretrained=False)
    assert explain.target_layers(resnet) == [resnet.network.layer4]

    model = Classifier(lite, 3).eval()
    heat = explain.heatmap(model, torch.randn(3, 96, 96), 2)  # any size: the CNN is fully convolutional
    assert heat.shape == (96, 96) and np.isfinite(heat).all() and 0 <= heat.min() and heat.max() <= 1


# ------------------------------------------------------------------------------------------------ text

_SENTENCES = ["I saw a {} near the old house this morning", "my neighbour talked about the {} again today",
              "there was a {} in the photo from yesterday", "we read a long story about a {} last night",
              "everyone at work kept mentioning the {}", "the children drew a {} on the wall"]
_DECISIVE = {"animal": ["dog", "cat"], "vehicle": ["truck", "bicycle"]}


@pytest.fixture(scope="module")
def text_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real all-MiniLM-L6-v2 run folder on texts that differ only in one word: the pretrained encoder with a linear
    head fitted on its pooled features, saved in the engine's format (model.safetensors + run.json), which is what
    feature extraction delivers (the logistic head is folded into that linear layer). Far cheaper than `fit`'s
    cross-validation, and the model is loaded back by the engine's own `load_trained`."""
    from safetensors.torch import save_file

    from core.backbones import load_backbone
    from core.preprocess import make_preprocessor

    texts = [sentence.format(word) for words in _DECISIVE.values() for word in words for sentence in _SENTENCES]
    labels = torch.tensor([index for index, words in enumerate(_DECISIVE.values()) for _ in words for _ in _SENTENCES])
    backbone = load_backbone("all_minilm_l6_v2")
    with torch.inference_mode():
        features = backbone(make_preprocessor(backbone.spec).batch(texts))
    model = Classifier(backbone, len(_DECISIVE))
    linear = model.head[-1]
    optimiser = torch.optim.LBFGS(linear.parameters(), max_iter=200)

    def loss() -> torch.Tensor:
        optimiser.zero_grad()
        value = nn.functional.cross_entropy(linear(features.clone()), labels) + 1e-3 * linear.weight.square().sum()
        value.backward()
        return value

    optimiser.step(loss)
    folder = tmp_path_factory.mktemp("runs") / "minilm-run"
    folder.mkdir()
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(folder / "model.safetensors"))
    info = full_run_info(run_id="minilm-run", backbone="all_minilm_l6_v2", modality="text", classes=list(_DECISIVE),
                         frozen_groups=7, num_groups=7, status="completed")
    (folder / "run.json").write_text(json.dumps(info), encoding="utf-8")
    return folder


@pytest.mark.integration
def test_the_decisive_word_gets_the_highest_score(text_run: Path) -> None:
    model, preprocessor, info = evaluation.load_model(text_run)
    found = explain.explain(model, preprocessor, "yesterday my neighbour mentioned the truck", info["classes"])
    assert found.class_name == "vehicle"
    words = dict(found.words)
    assert list(words) == ["yesterday", "my", "neighbour", "mentioned", "the", "truck"]  # words, not word pieces
    assert max(words, key=words.get) == "truck" and words["truck"] == 1.0
    assert found.heat is None and "integrated gradients" in found.method and not found.flat


@pytest.mark.integration
def test_the_cli_prints_the_prediction_and_the_word_scores_as_json(text_run: Path, capsys) -> None:
    from core.__main__ import main

    assert main(["explain", "--model", str(text_run), "--input", "a cat sat in the garden", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["prediction"] == "animal" and 0.5 < record["probability"] <= 1
    assert record["note"] == explain.APPROXIMATE_NOTE
    scores = {token["word"]: token["score"] for token in record["tokens"]}
    assert max(scores, key=scores.get) == "cat"


# ------------------------------------------------------------------------------------------------ images: CLI, page


@pytest.fixture
def tiny_run(tmp_path: Path, colour_dataset: Dataset, monkeypatch: pytest.MonkeyPatch) -> Path:
    from tests.test_evaluation import load_tiny_run, train_tiny, write_run

    monkeypatch.setattr(evaluation, "load_model", load_tiny_run)
    return write_run(tmp_path / "runs" / "tiny-run", train_tiny(colour_dataset), colour_dataset)


def test_the_cli_prints_a_small_heat_grid_as_json(tiny_run: Path, colour_dataset: Dataset, capsys) -> None:
    from core.__main__ import main

    image = colour_dataset.split("test")[0][0]
    assert main(["explain", "--model", str(tiny_run), "--input", image, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["prediction"] in colour_dataset.classes and 0 < record["probability"] <= 1
    grid = np.array(record["heatmap"]["grid"])
    assert grid.shape == (7, 7) and 0 <= grid.min() and grid.max() <= 1

    assert main(["explain", "--model", str(tiny_run), "--input", image]) == 0
    assert "not proof of why" in capsys.readouterr().out
    assert main(["explain", "--model", str(tiny_run), "--input", "missing.png"]) == 2
    assert "not found" in capsys.readouterr().err


def test_the_test_page_explains_a_gallery_example_and_says_it_is_approximate(
    tiny_run: Path, colour_dataset: Dataset
) -> None:
    from streamlit.testing.v1 import AppTest

    from core.session import StudioState

    state = StudioState(dataset=colour_dataset, backbone_name="tiny_cnn", frozen_groups=0, run_dir=str(tiny_run))
    state.runs.append(str(tiny_run))
    app = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "pages" / "5_evaluate.py"), default_timeout=60)
    app.session_state["studio"] = state
    app.run()
    assert not app.exception, app.exception
    images_before = len(app.image)
    app.button(key="test_explain_gallery_button").click().run()
    assert not app.exception, app.exception
    assert len(app.image) == images_before + 2  # the picture as seen, and the heat map over it
    assert any(explain.APPROXIMATE_NOTE in caption.value.lower() for caption in app.caption)
    assert any("The model answers" in block.value for block in app.markdown)
