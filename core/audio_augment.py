"""Augmentation for sound clips: how a training clip is varied each time it is loaded, and by how much.

The training views of a clip, never its evaluation view (`core.preprocess.Preprocessor.load(train=True)`):

    light:  the cut window moves by up to +-10 % of the clip length around the loudest part, silence where it runs
            past the recording's ends; the loudness changes by up to +-6 dB.
    strong: light, then white or pink noise at 10-30 dB signal-to-noise ratio; for the spectrogram backbone also
            SpecAugment's masks on the log-mel picture: 2 bands of mel rows (each up to 1/8 of the bands) and 2
            stretches of time (each up to 10 % of the frames), filled with the picture's mean.

The hub models that hear through their own feature extractor (AST, wav2vec 2.0, HuBERT) get the waveform parts only
(shift, gain, noise): their extractor makes the features, so there is no picture of ours to mask.

Every number is relative to the clip (its length, its mel bands, its own loudness), so it holds for any
`clip_seconds`. Randomness comes from torch's global generator, one draw per clip (`random_source`), as the image
transforms take theirs: a run's seed (`_seed_everything`) and a loader worker's seed decide every view, so the same
seed gives the same run.

Not copied into export bundles (`core/audio.py` is): prediction never augments.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core import audio


@dataclass(frozen=True)
class SoundAugmentation:
    """One recipe of random changes to a training clip; each draw is uniform over its range.

    Attributes:
        shift_fraction: the cut window moves by up to this share of its length, either way. 0.1: the +-100 ms of
            TensorFlow's speech-commands recipe (`time_shift_ms=100` on 1 s clips), the data the spoken-words
            sample imitates; fastai's audio `SignalShifter` goes to 0.2, audiomentations' `Shift` to 0.5 with
            rollover (for sound that repeats, unlike a word).
        gain_db: the loudness changes by up to this many dB, either way: half audiomentations' `Gain` default
            (+-12 dB), since a spoken word's level varies less than a whole recording's. No clipping: the samples
            stay floats, nothing is written. The spectrogram picture is measured from each clip's loudest bin, so
            gain leaves it unchanged; it matters to the hub models that hear absolute level (AST's fbank, HuBERT's
            unnormalised waveform).
        snr_db: (lowest, highest) signal-to-noise ratio of added noise, or None for none. audiomentations'
            `AddColorNoise` draws 5-40 dB; 10-30 dB keeps a word intelligible at the low end and, at the high
            end, the noise above the spectrogram's -50 dB floor (quieter noise would not show in the picture).
            Signal power is the mean over the cut window, as audiomentations' `AddGaussianSNR` measures it.
        frequency_masks: SpecAugment frequency masks on the spectrogram backbone's picture.
        frequency_mask_fraction: each frequency mask spans 0 to this share of the mel bands: PANNs' CNN14 drops 2
            stripes of up to 8 of its 64 bands (1/8).
        time_masks: SpecAugment time masks on the spectrogram backbone's picture.
        time_mask_fraction: each time mask spans 0 to this share of the frames: the two together stay within
            SpecAugment's bound p = 0.2 on the share of time one mask may take (its SwitchBoard policies, whose
            T = 70 frames would blank most of a 1 s word), and 10 % of a 1 s word is about a syllable.
    """

    shift_fraction: float = 0.1
    gain_db: float = 6.0
    snr_db: tuple[float, float] | None = None
    frequency_masks: int = 0
    frequency_mask_fraction: float = 0.0
    time_masks: int = 0
    time_mask_fraction: float = 0.0


RECIPES: dict[str, SoundAugmentation] = {
    "light": SoundAugmentation(),
    "strong": SoundAugmentation(snr_db=(10.0, 30.0), frequency_masks=2, frequency_mask_fraction=1 / 8, time_masks=2,
                                time_mask_fraction=0.1),
}
NOISE_COLOURS = ("white", "pink")  # drawn with equal odds: flat hiss, and the 1/f noise of many rooms and machines


def describe(name: str) -> str:
    """What an augmentation ("none", "light", "strong") does to a sound clip, in words, from the recipe's numbers."""
    recipe = RECIPES.get(name)
    if recipe is None:
        return "no changes: every epoch hears the same cut of each clip"
    said = (f"the cut window moves by up to ±{recipe.shift_fraction * 100:g} % of the clip and the loudness by up to "
            f"±{recipe.gain_db:g} dB")
    if recipe.snr_db is not None:
        said += f", white or pink noise at {recipe.snr_db[0]:g}-{recipe.snr_db[1]:g} dB signal-to-noise"
    if recipe.frequency_masks or recipe.time_masks:
        said += (f"; on the spectrogram {recipe.frequency_masks} bands of up to "
                 f"{recipe.frequency_mask_fraction * 100:g} % of the mel rows and {recipe.time_masks} stretches of up "
                 f"to {recipe.time_mask_fraction * 100:g} % of the time are masked (hub models: waveform changes only)")
    return said


def random_source() -> np.random.Generator:
    """A numpy generator for one clip, seeded by one draw from torch's global generator (see the module's note)."""
    import torch

    return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))


def shifted(samples: np.ndarray, length: int, recipe: SoundAugmentation, rng: np.random.Generator) -> np.ndarray:
    """The clip cut to `length` samples like `audio.fix_length`, with the window moved by a random shift."""
    largest = int(recipe.shift_fraction * length)
    shift = int(rng.integers(-largest, largest + 1)) if largest else 0
    return audio.window(samples, audio.loudest_start(samples, length) + shift, length)


def with_gain(samples: np.ndarray, recipe: SoundAugmentation, rng: np.random.Generator) -> np.ndarray:
    """The clip louder or quieter by a random number of dB within +-`gain_db`."""
    decibels = rng.uniform(-recipe.gain_db, recipe.gain_db)
    return (samples * np.float32(10.0 ** (decibels / 20.0))).astype(np.float32)


def noise(count: int, colour: str, rng: np.random.Generator) -> np.ndarray:
    """`count` samples of white or pink (1/f power) noise with unit mean power; silence when too short to shape."""
    white = rng.standard_normal(count)
    if colour == "pink":
        spectrum = np.fft.rfft(white)
        spectrum[1:] /= np.sqrt(np.arange(1, len(spectrum)))
        spectrum[0] = 0.0
        white = np.fft.irfft(spectrum, n=count)
    power = float(np.mean(white**2))
    return white / np.sqrt(power) if power > 0 else np.zeros(count)


def with_noise(samples: np.ndarray, recipe: SoundAugmentation, rng: np.random.Generator) -> np.ndarray:
    """The clip with noise of a random colour at a random signal-to-noise ratio within `snr_db` (none if silent)."""
    if recipe.snr_db is None:
        return samples
    signal_power = float(np.mean(samples.astype(np.float64) ** 2))
    colour = NOISE_COLOURS[int(rng.integers(len(NOISE_COLOURS)))]
    ratio_db = rng.uniform(*recipe.snr_db)
    if signal_power == 0.0:
        return samples
    scale = np.sqrt(signal_power / 10.0 ** (ratio_db / 10.0))
    return (samples + scale * noise(len(samples), colour, rng)).astype(np.float32)


def augmented_clip(samples: np.ndarray, length: int, recipe: SoundAugmentation,
                   rng: np.random.Generator) -> np.ndarray:
    """The waveform parts of a recipe, in order: the shifted cut, the gain, the noise (relative to the gained clip,
    so the ratio holds whatever the gain)."""
    return with_noise(with_gain(shifted(samples, length, recipe, rng), recipe, rng), recipe, rng)


def _mask(picture: np.ndarray, axis: int, masks: int, fraction: float, fill: float, rng: np.random.Generator) -> None:
    size = picture.shape[axis]
    widest = int(fraction * size)
    for _ in range(masks if widest else 0):
        width = int(rng.integers(0, widest + 1))
        start = int(rng.integers(0, size - width + 1))
        if axis == 0:
            picture[start : start + width] = fill
        else:
            picture[:, start : start + width] = fill


def masked(unit: np.ndarray, recipe: SoundAugmentation, rng: np.random.Generator) -> np.ndarray:
    """SpecAugment's frequency and time masks on a [0, 1] spectrogram [n_mels, frames] (`audio.spectrogram_unit`).

    A mask's width is drawn from 0 to its fraction of the axis, its start uniformly where it fits (Park et al. 2019;
    no time warping). Masked cells take the picture's mean, as in SpecAugment, whose zero fill is the mean of its
    normalised log-mel spectrograms (black would be silence here).
    """
    picture = unit.copy()
    fill = float(unit.mean())
    _mask(picture, 0, recipe.frequency_masks, recipe.frequency_mask_fraction, fill, rng)
    _mask(picture, 1, recipe.time_masks, recipe.time_mask_fraction, fill, rng)
    return picture


__all__ = [
    "NOISE_COLOURS",
    "RECIPES",
    "SoundAugmentation",
    "augmented_clip",
    "describe",
    "masked",
    "noise",
    "random_source",
    "shifted",
    "with_gain",
    "with_noise",
]
