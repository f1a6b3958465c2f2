"""Audio foundation models from the Hugging Face hub (AST, wav2vec 2.0, HuBERT): the catalogue cards, loading from
the operator's weights folder, layer groups and freezing, the feature-extractor preprocessing, and a real run of the
engine (train, predict, export with parity) on generated tones.

No weights can be downloaded here, so each model is a tiny random-weight copy of its architecture, saved with a
feature extractor by `save_pretrained` into `$TRANSFER_STUDIO_WEIGHTS_DIR/<catalogue name>/`: the same folder an
operator would copy the real model into, read by the app's own loader.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from core import backbones, export
from core.backbones import Classifier, availability, catalogue_rows, get_spec, input_summary, load_backbone
from core.freezing import freeze_first
from core.preprocess import make_preprocessor
from tests.test_audio import tone, tones_dataset, wav_bytes

SMALL_SPEECH = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                    num_conv_pos_embedding_groups=2)


def save_tiny(name: str, folder: Path) -> torch.nn.Module:
    """A tiny random-weight model of the catalogue entry `name`'s architecture, with its feature extractor, saved
    in `folder / name` the way `save_pretrained` writes a hub model."""
    from transformers import (
        ASTConfig,
        ASTFeatureExtractor,
        ASTModel,
        HubertConfig,
        HubertModel,
        Wav2Vec2Config,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2Model,
    )

    torch.manual_seed(0)
    if name == "ast_audioset":
        network = ASTModel(ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                     num_mel_bins=16, max_length=64, frequency_stride=8, time_stride=8))
        extractor = ASTFeatureExtractor(num_mel_bins=16, max_length=64)
    else:
        config, model = (Wav2Vec2Config, Wav2Vec2Model) if name == "wav2vec2_base" else (HubertConfig, HubertModel)
        network = model(config(**SMALL_SPEECH))
        extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                             do_normalize=True, return_attention_mask=False)
    network.eval().save_pretrained(folder / name)
    extractor.save_pretrained(folder / name)
    return network


@pytest.fixture
def weights_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setenv("TRANSFER_STUDIO_WEIGHTS_DIR", str(folder))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return folder


HUB_AUDIO = ("ast_audioset", "wav2vec2_base", "hubert_base")


# ------------------------------------------------------------------------------------------------ the catalogue


def test_the_catalogue_offers_the_audio_foundation_models_with_honest_cards(weights_dir: Path) -> None:
    ast, wav2vec2, hubert = (get_spec(name) for name in HUB_AUDIO)
    assert (ast.model_id, wav2vec2.model_id, hubert.model_id) == (
        "MIT/ast-finetuned-audioset-10-10-0.4593", "facebook/wav2vec2-base", "facebook/hubert-base-ls960")
    assert (ast.licence, wav2vec2.licence, hubert.licence) == ("BSD-3-Clause", "Apache-2.0", "Apache-2.0")
    assert all(spec.modality == "audio" and spec.source == "transformers" and spec.num_groups == 13
               for spec in (ast, wav2vec2, hubert))
    assert ast.gmacs > 10 * wav2vec2.gmacs, "AST reads 1,214 tokens whatever the clip: the card must say it is slow"
    assert input_summary(ast) == "10.24 s clip as 1024 fbank frames of 128 mel bands"
    assert input_summary(wav2vec2) == "1 s clip as its raw 16 kHz waveform (16000 samples)"
    rows = {row["name"]: row for row in catalogue_rows("audio")}
    assert set(HUB_AUDIO) | {"efficientnet_lite0_audio"} <= set(rows)
    assert rows["efficientnet_lite0_audio"]["available"], "the shipped spectrogram CNN stays available offline"
    for name in HUB_AUDIO:
        if rows[name]["weights"] == "cache":
            continue  # downloaded into this machine's Hugging Face cache earlier: honestly available
        assert not rows[name]["available"] and rows[name]["weights"] == "missing"
        assert f"$TRANSFER_STUDIO_WEIGHTS_DIR/{name}/" in rows[name]["detail"]
        assert "feature extractor" in rows[name]["detail"]
    assert backbones.default_backbone("audio") == "efficientnet_lite0_audio"


def test_a_folder_without_the_feature_extractor_is_not_offered(weights_dir: Path) -> None:
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    if availability("wav2vec2_base").source == "cache":
        pytest.skip("wav2vec2-base is in this machine's Hugging Face cache; the cache comes first")
    Wav2Vec2Model(Wav2Vec2Config(**SMALL_SPEECH)).save_pretrained(weights_dir / "wav2vec2_base")
    assert availability("wav2vec2_base").source == "missing"  # weights without preprocessor_config.json
    save_tiny("wav2vec2_base", weights_dir)
    assert availability("wav2vec2_base").source == "folder"


def test_no_heat_map_is_offered_for_the_audio_transformers_and_the_reason_says_why() -> None:
    from core import explain

    for name in HUB_AUDIO:
        ok, reason = explain.supported(get_spec(name))
        assert not ok and "feature extractor" in reason and "heat map" in reason, name
    assert explain.supported(get_spec("efficientnet_lite0_audio"))[0]


# ----------------------------------------------------------------------------------- loading, groups, freezing


@pytest.mark.parametrize("name", HUB_AUDIO)
def test_loads_from_the_weights_folder_with_groups_that_reproduce_the_library_model(
    name: str, weights_dir: Path, tmp_path: Path
) -> None:
    if availability(name).source == "cache":
        pytest.skip(f"{name} is in this machine's Hugging Face cache; the cache comes first")
    saved = save_tiny(name, weights_dir)
    assert availability(name).source == "folder"
    backbone = load_backbone(name)
    first = "patch embedding" if name == "ast_audioset" else "feature encoder"
    assert backbone.group_names[0] == first and len(backbone.group_names) == 3 and backbone.num_features == 32
    groups = backbone.groups()
    owned = [id(parameter) for group in groups for parameter in group.parameters()]
    assert len(owned) == len(set(owned)) and set(owned) == {id(p) for p in backbone.parameters()}
    for (key, value), (saved_key, saved_value) in zip(backbone.network.state_dict().items(),
                                                      saved.state_dict().items(), strict=True):
        assert key == saved_key and torch.equal(value, saved_value), key

    clip = tmp_path / "stereo44k.wav"  # another rate, two channels: resampled and mixed down first
    samples = tone(880.0, seconds=0.6, rate=44100, seed=3)
    clip.write_bytes(wav_bytes(np.stack([samples, samples], axis=1), rate=44100))
    preprocessor = make_preprocessor(backbone.spec)
    batch = preprocessor.batch([str(clip), str(clip)])
    if name == "ast_audioset":
        assert batch.shape == (2, 64, 16)  # the saved extractor's max_length x num_mel_bins
    else:
        assert batch.shape == (2, 16000)  # 0.6 s centred in 1 s of silence, then normalised by the extractor
        assert abs(float(batch[0].mean())) < 1e-3 and float(batch[0].std()) == pytest.approx(1.0, abs=1e-2)
    with torch.no_grad():
        pooled = backbone(batch)
        library = saved(batch).last_hidden_state.mean(dim=1)
        staged = backbone.forward_groups(backbone.forward_groups(batch, 0, 1), 1, 3)
    torch.testing.assert_close(pooled, library)
    torch.testing.assert_close(staged, pooled)

    model = Classifier(backbone, 3)
    summary = freeze_first(model, 2)
    assert [p.requires_grad for p in groups[0].parameters()] == [False] * len(list(groups[0].parameters()))
    assert all(p.requires_grad for p in groups[2].parameters())
    assert summary.trainable_params == sum(p.numel() for p in groups[2].parameters()) + sum(
        p.numel() for p in model.head.parameters())


def test_the_ast_input_is_its_feature_extractor_on_the_loudest_window(weights_dir: Path, tmp_path: Path) -> None:
    """A clip longer than 10.24 s is cut to its loudest window; the fbank is the published extractor's own."""
    from transformers import ASTFeatureExtractor

    if availability("ast_audioset").source == "cache":
        pytest.skip("AST is in this machine's Hugging Face cache; the cache comes first")
    save_tiny("ast_audioset", weights_dir)
    quiet, loud = tone(440.0, seconds=6.0, level=0.01), tone(1760.0, seconds=10.24, seed=2)
    long_clip = tmp_path / "long.wav"
    long_clip.write_bytes(wav_bytes(np.concatenate([quiet, loud])))
    values = make_preprocessor(get_spec("ast_audioset")).load(str(long_clip))
    read, _ = soundfile.read(str(long_clip), dtype="float32")
    expected = ASTFeatureExtractor(num_mel_bins=16, max_length=64)(read[len(quiet):], sampling_rate=16000,
                                                                  return_tensors="np")["input_values"][0]
    np.testing.assert_allclose(values.numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("name", ["wav2vec2_base", "ast_audioset"])
def test_hub_models_hear_the_waveform_augmentation_only(
    name: str, weights_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """"strong" shifts, changes the gain of and adds noise to a training clip before the model's own extractor; no
    spectrogram masks (the extractor makes the features); evaluation stays the extractor on the plain cut."""
    from core import audio_augment

    if availability(name).source == "cache":
        pytest.skip(f"{name} is in this machine's Hugging Face cache; the cache comes first")
    save_tiny(name, weights_dir)
    clip = tmp_path / "word.wav"
    clip.write_bytes(wav_bytes(tone(880.0, seconds=0.8)))  # shorter than either model's clip length
    strong, plain = make_preprocessor(get_spec(name), "strong"), make_preprocessor(get_spec(name))

    def no_masks(*args: object) -> None:
        raise AssertionError("a hub model's input was masked")

    monkeypatch.setattr(audio_augment, "masked", no_masks)
    torch.manual_seed(3)
    first, second = strong.load(str(clip), train=True), strong.load(str(clip), train=True)
    torch.manual_seed(3)
    again = strong.load(str(clip), train=True)
    evaluation = plain.load(str(clip))
    assert first.shape == evaluation.shape
    assert not torch.equal(first, evaluation) and not torch.equal(first, second) and torch.equal(first, again)
    assert torch.equal(strong.load(str(clip)), evaluation)


# ------------------------------------------------------------------------------- the engine, predict, export


def _train_predict_export(name: str, tmp_path: Path, frozen: int, capsys: pytest.CaptureFixture) -> dict:
    from core.__main__ import main

    dataset_dir = tmp_path / "tones"
    tones_dataset(dataset_dir, per_class=6)
    run = tmp_path / "run"
    assert main(["train", "--data", str(dataset_dir), "--backbone", name, "--frozen-groups", str(frozen),
                 "--epochs", "2", "--protocol", "test split", "--out", str(run)]) == 0
    recorded = json.loads((run / "run.json").read_text())
    assert recorded["backbone"] == name and recorded["frozen_groups"] == frozen

    clip = str(dataset_dir / "high" / "0.wav")
    capsys.readouterr()
    assert main(["predict", "--model", str(run), "--json", clip]) == 0
    predicted = json.loads(capsys.readouterr().out)[0]["prediction"]
    assert predicted in ("high", "low", "mid")

    assert main(["export", "--model", str(run), "--out", str(tmp_path / "bundle")]) == 0
    out = capsys.readouterr().out
    assert "Parity PASSED" in out, out
    bundle = tmp_path / "bundle"
    assert main(["predict", "--model", str(bundle), "--json", clip]) == 0
    assert json.loads(capsys.readouterr().out)[0]["prediction"] == predicted
    return {"bundle": bundle, "clip": clip, "predicted": predicted}


@pytest.mark.parametrize(("name", "frozen"), [("wav2vec2_base", 1), ("ast_audioset", 3)])
def test_trains_predicts_and_exports_a_bundle_that_hears_as_the_app_does(
    name: str, frozen: int, weights_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """wav2vec 2.0 fine-tunes its last layer on cached feature-encoder states; AST extracts features (all frozen).
    The bundle carries the feature extractor; ONNX, TorchScript and predict.py agree with the app."""
    if availability(name).source == "cache":
        pytest.skip(f"{name} is in this machine's Hugging Face cache; the cache comes first")
    save_tiny(name, weights_dir)
    result = _train_predict_export(name, tmp_path, frozen, capsys)
    bundle = result["bundle"]
    config = json.loads((bundle / "preprocessing.json").read_text())
    assert config["feature_extractor_dir"] == "feature_extractor" and (bundle / "feature_extractor").is_dir()
    assert config["pad_clips"] is (name != "ast_audioset")
    architecture = json.loads((bundle / "architecture.json").read_text())
    assert architecture["inputs"] == ["input_values"]
    assert architecture["rebuild"]["pooling"] == "time mean", architecture["rebuild_detail"]
    parity = json.loads((bundle / "parity.json").read_text())
    assert {row["artefact"] for row in parity["rows"]} >= {"onnx", "torchscript", "predict.py"}
    assert "pip install torch numpy scipy soundfile transformers" in (bundle / "README.md").read_text()

    from core.bundle_predict import BundlePredictor

    app_side = export.load_bundle(bundle)
    rebuilt = BundlePredictor(bundle, engine="safetensors")([result["clip"]])
    scripted = BundlePredictor(bundle, engine="torchscript")([result["clip"]])
    torch.testing.assert_close(rebuilt, scripted, atol=1e-4, rtol=1e-4)
    assert app_side[2]["modality"] == "audio"


def test_the_backbone_page_marks_hub_models_missing_and_offers_one_once_its_folder_is_here(
    weights_dir: Path, tmp_path: Path
) -> None:
    from streamlit.testing.v1 import AppTest

    from core.session import StudioState

    if availability("wav2vec2_base").source == "cache" or availability("ast_audioset").source == "cache":
        pytest.skip("a hub audio model is in this machine's Hugging Face cache")
    save_tiny("wav2vec2_base", weights_dir)
    state = StudioState(dataset=tones_dataset(tmp_path / "tones", per_class=3))
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"), default_timeout=60)
    at.session_state["studio"] = state
    at.switch_page("pages/2_backbone.py")
    at.run()
    table = at.dataframe[0].value.set_index("Backbone")
    assert table.loc["wav2vec 2.0 base", ["Weights from", "Available here"]].tolist() == ["folder", True]
    assert table.loc["AST (AudioSet)", ["Weights from", "Available here"]].tolist() == ["missing", False]
    at.selectbox[0].set_value("ast_audioset").run()
    assert not at.exception, at.exception
    assert any("$TRANSFER_STUDIO_WEIGHTS_DIR/ast_audioset/" in error.value for error in at.error)
    assert state.backbone_name == "efficientnet_lite0_audio", "a missing backbone cannot be chosen"
    at.selectbox[0].set_value("wav2vec2_base").run()
    assert not at.exception, at.exception
    assert state.backbone_name == "wav2vec2_base"
    assert any(metric.label == "Input" and metric.value == "1 s clip" for metric in at.metric)


def test_the_feature_pass_of_an_audio_foundation_model_takes_small_batches() -> None:
    from core._train_cache import CACHE_BATCH, cache_batch_size

    assert cache_batch_size(get_spec("ast_audioset")) == cache_batch_size(get_spec("wav2vec2_base")) == 8
    assert CACHE_BATCH["foundation audio"] < CACHE_BATCH["other"]
    # the others keep their batches: spectrogram pictures and texts 128, images 64
    assert cache_batch_size(get_spec("efficientnet_lite0_audio")) == 128
    assert cache_batch_size(get_spec("all_minilm_l6_v2")) == 128
    assert cache_batch_size(get_spec("efficientnet_lite0")) == 64
