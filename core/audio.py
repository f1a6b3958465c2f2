"""Sound as a picture: reading clips, making them one length and rate, and the log-mel spectrogram a CNN sees.

ImageNet CNNs transfer to sound when the sound is shown to them as a spectrogram image (the line of work of PANNs
and AST). This module holds the whole recipe in plain numbers, with no dependency on the rest of Transfer Studio:

    read any wav / flac / ogg / mp3 (soundfile) -> mono float32 -> resample to `sample_rate` (polyphase, scipy)
    -> cut the loudest `clip_seconds` window, or pad shorter clips with silence on both sides
    -> power spectrogram (Hann window, reflect-padded frames) -> mel filterbank (HTK mel scale) -> dB relative to
    the clip's loudest bin, floored at -`top_db` -> [0, 1] -> bilinear resize to the backbone's input size
    -> the backbone's mean / std -> the same picture in all three channels.

It is copied as is into every exported audio bundle (as `audio_features.py`), so `predict.py` computes exactly the
features the app trained on: keep it free of `core` imports. Its only dependencies are numpy, scipy, soundfile and
torch (for the resize). The MFCC statistics of the no-transfer baseline live here too, as a second use of the mel
filterbank. Audio foundation models (AST, wav2vec 2.0, HuBERT) take the clip before the spectrogram step
(`clip_waveform`): their own Hugging Face feature extractor does the rest.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".mp3"})
_TRUNCATED_DATA = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
SILENCE_PEAK = 1e-3  # a clip whose loudest sample stays under this (-60 dBFS) holds no usable sound


class AudioReadError(ValueError):
    """A file that cannot be decoded as sound (damaged, truncated, or not audio); the message names the file."""


@dataclass(frozen=True)
class MelSettings:
    """How a clip becomes a spectrogram image; written into a bundle's preprocessing.json as plain numbers.

    Attributes:
        sample_rate: every clip is resampled to this rate (Hz).
        clip_seconds: every clip is cut or padded to this length.
        n_fft: FFT size of each frame (samples).
        win_length: Hann window length inside each frame (samples, <= n_fft).
        hop_length: step between frames (samples).
        n_mels: mel bands (rows of the spectrogram before resizing).
        fmin, fmax: the frequency range the mel bands cover (Hz).
        top_db: the quietest level kept below the clip's loudest bin (dB); quieter is floored, so a clip's
            background hiss turns black and the sound itself stands out.
        image_size: (height, width) of the picture handed to the backbone.
        mean, std: per-channel normalisation of the backbone (applied after scaling to [0, 1]).
    """

    sample_rate: int = 16000
    clip_seconds: float = 1.0
    n_fft: int = 1024
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 64
    fmin: float = 20.0
    fmax: float = 8000.0
    top_db: float = 50.0  # at 80 dB the background noise fills the picture: 88.9 % on the spoken words, 94.4 % at 50
    image_size: tuple[int, int] = (224, 224)
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)

    @property
    def clip_samples(self) -> int:
        return int(round(self.sample_rate * self.clip_seconds))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able numbers (tuples as lists)."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MelSettings:
        """The settings a `to_dict` wrote (other keys, such as a bundle's `modality`, are ignored)."""
        known = {field.name for field in fields(cls)}
        kept = {key: tuple(value) if isinstance(value, list) else value
                for key, value in values.items() if key in known}
        return cls(**kept)


# ------------------------------------------------------------------------------------------------------ reading


@dataclass(frozen=True)
class ClipInfo:
    """What a file holds before normalisation: its own rate, channels and length."""

    sample_rate: int
    channels: int
    seconds: float


def read_audio(path: str) -> tuple[np.ndarray, ClipInfo]:
    """Decode a whole file: samples [frames, channels] as float32 in [-1, 1], and what the file declared.

    A file whose header promises more frames than it holds (cut off in a copy or upload) is refused, because what
    is left is not the recording the label describes.

    Raises:
        AudioReadError: not audio, damaged, truncated, or empty.
    """
    import soundfile

    try:
        with soundfile.SoundFile(path) as handle:
            declared = int(handle.frames)
            rate, channels = int(handle.samplerate), int(handle.channels)
            samples = handle.read(dtype="float32", always_2d=True)
            header_log = str(handle.extra_info)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as error:
        raise AudioReadError(f"cannot be read as sound: {error}") from error
    if samples.shape[0] == 0:
        raise AudioReadError("holds no sound (0 samples)")
    cut = _TRUNCATED_DATA.search(header_log)  # libsndfile reads what a cut-off wav still holds, and notes it
    if cut is not None:
        raise AudioReadError(
            f"is truncated: its header promises {cut.group(1)} bytes of sound, the file holds {cut.group(2)}"
        )
    if declared > 0 and samples.shape[0] < declared:
        raise AudioReadError(f"is truncated: its header promises {declared} samples, the file holds {samples.shape[0]}")
    if not np.isfinite(samples).all():
        raise AudioReadError("holds invalid sample values (NaN or infinity)")
    return samples, ClipInfo(rate, channels, samples.shape[0] / rate)


def to_mono(samples: np.ndarray) -> np.ndarray:
    """The channels averaged into one (a 1-D float32 array)."""
    return samples.mean(axis=1).astype(np.float32) if samples.ndim == 2 else samples.astype(np.float32)


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Polyphase resampling (scipy's `resample_poly`, Kaiser-windowed anti-aliasing), float32 out."""
    if from_rate == to_rate:
        return samples.astype(np.float32)
    from scipy.signal import resample_poly

    divisor = math.gcd(int(from_rate), int(to_rate))
    return resample_poly(samples, int(to_rate) // divisor, int(from_rate) // divisor).astype(np.float32)


def load_clip(path: str, sample_rate: int) -> np.ndarray:
    """A file as mono float32 at `sample_rate`, at its own length.

    Raises:
        AudioReadError: the file cannot be decoded (see `read_audio`).
    """
    samples, info = read_audio(path)
    return resample(to_mono(samples), info.sample_rate, sample_rate)


def loudest_start(samples: np.ndarray, length: int) -> int:
    """Where `fix_length` cuts a clip to `length` samples: the start of its loudest window, or, for a clip no longer
    than that, minus the silence put before it (a shorter clip is centred)."""
    count = len(samples)
    if count <= length:
        return -((length - count) // 2)
    energy = np.concatenate([[0.0], np.cumsum(samples.astype(np.float64) ** 2)])
    window_energy = energy[length:] - energy[:-length]
    return int(np.argmax(window_energy))


def window(samples: np.ndarray, start: int, length: int) -> np.ndarray:
    """`length` samples of a clip from `start` on (which may be negative), silence wherever that runs past its ends."""
    cut = np.zeros(length, dtype=np.float32)
    first, last = max(start, 0), min(start + length, len(samples))
    if last > first:
        cut[first - start : last - start] = samples[first:last]
    return cut


def fix_length(samples: np.ndarray, length: int) -> np.ndarray:
    """Exactly `length` samples: the loudest window of a longer clip, a shorter one centred in silence.

    The loudest window keeps the word of a clip with silence around it wherever the speaker started; it is
    deterministic, so training and prediction see the same cut.
    """
    return window(samples, loudest_start(samples, length), length)


def clip_waveform(path: str, settings: MelSettings, pad: bool = True) -> np.ndarray:
    """The waveform an audio foundation model hears: mono float32 at `sample_rate`, cut to `clip_seconds`.

    The loudest window of a longer clip, as for spectrograms; a shorter clip is centred in silence when `pad`,
    else left at its own length (AST's feature extractor pads its fbank frames itself, the way it was trained).

    Raises:
        AudioReadError: the file cannot be decoded (see `read_audio`).
    """
    samples = load_clip(path, settings.sample_rate)
    return fix_length(samples, cut_length(len(samples), settings, pad))


def cut_length(count: int, settings: MelSettings, pad: bool = True) -> int:
    """How long a clip of `count` samples is once cut: `clip_samples`, or its own length if shorter and not `pad`."""
    return count if not pad and count <= settings.clip_samples else settings.clip_samples


# ------------------------------------------------------------------------------------------------- spectrograms


def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(settings: MelSettings) -> np.ndarray:
    """Triangular filters on the HTK mel scale, [n_mels, n_fft // 2 + 1], each normalised to unit area (Slaney)."""
    frequencies = np.linspace(0.0, settings.sample_rate / 2.0, settings.n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(settings.fmin), _hz_to_mel(settings.fmax), settings.n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (frequencies[None, :] - lower) / (centre - lower)
    falling = (upper - frequencies[None, :]) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float64)


def power_spectrogram(samples: np.ndarray, settings: MelSettings) -> np.ndarray:
    """|STFT|^2, [n_fft // 2 + 1, frames]: reflect-padded, centred frames with a centred Hann window."""
    padding = settings.n_fft // 2
    mode = "reflect" if len(samples) > padding else "constant"
    padded = np.pad(samples.astype(np.float64), (padding, padding), mode=mode)
    frames = 1 + (len(padded) - settings.n_fft) // settings.hop_length
    index = np.arange(settings.n_fft)[None, :] + settings.hop_length * np.arange(frames)[:, None]
    window = np.zeros(settings.n_fft)
    offset = (settings.n_fft - settings.win_length) // 2
    window[offset : offset + settings.win_length] = np.hanning(settings.win_length + 1)[:-1]  # periodic Hann
    spectrum = np.fft.rfft(padded[index] * window[None, :], axis=1)
    return (np.abs(spectrum) ** 2).T


def log_mel(samples: np.ndarray, settings: MelSettings) -> np.ndarray:
    """The log-mel spectrogram in dB relative to its loudest bin, floored at -top_db: [n_mels, frames]."""
    mel = mel_filterbank(settings) @ power_spectrogram(samples, settings)
    decibels = 10.0 * np.log10(np.maximum(mel, 1e-10))
    return np.maximum(decibels - decibels.max(), -settings.top_db)


def spectrogram_unit(samples: np.ndarray, settings: MelSettings) -> np.ndarray:
    """The log-mel spectrogram scaled to [0, 1] with low frequencies at the bottom (as people draw them)."""
    scaled = (log_mel(samples, settings) + settings.top_db) / settings.top_db
    return scaled[::-1].astype(np.float32)


def spectrogram_pixels(samples: np.ndarray, settings: MelSettings) -> Any:
    """The backbone's input for one clip already at `sample_rate`: a float32 tensor [3, height, width]."""
    return unit_pixels(spectrogram_unit(fix_length(samples, settings.clip_samples), settings), settings)


def unit_pixels(unit: np.ndarray, settings: MelSettings) -> Any:
    """A [0, 1] spectrogram (`spectrogram_unit`) as the backbone's input: resized, normalised, in every channel."""
    import torch

    picture = torch.from_numpy(np.ascontiguousarray(unit))[None, None]
    height, width = settings.image_size
    resized = torch.nn.functional.interpolate(picture, size=(height, width), mode="bilinear", align_corners=False)
    mean = torch.tensor(settings.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(settings.std, dtype=torch.float32).view(-1, 1, 1)
    return (resized[0].expand(len(settings.mean), height, width) - mean) / std


def file_pixels(path: str, settings: MelSettings) -> Any:
    """`spectrogram_pixels` of a file on disk (any rate and channels).

    Raises:
        AudioReadError: the file cannot be decoded.
    """
    return spectrogram_pixels(load_clip(path, settings.sample_rate), settings)


def spectrogram_thumbnail(samples: np.ndarray, settings: MelSettings) -> np.ndarray:
    """A greyscale uint8 picture [n_mels, frames] of a clip's spectrogram, for galleries (loud = bright)."""
    return np.round(spectrogram_unit(samples, settings) * 255).astype(np.uint8)


def file_thumbnail(path: str, settings: MelSettings | None = None) -> np.ndarray:
    """`spectrogram_thumbnail` of a whole file on disk (default settings: 16 kHz, 64 mel bands).

    Raises:
        AudioReadError: the file cannot be decoded.
    """
    settings = settings or MelSettings()
    return spectrogram_thumbnail(load_clip(path, settings.sample_rate), settings)


# ------------------------------------------------------------------------------------------------ MFCC baseline


def mfcc_statistics(samples: np.ndarray, settings: MelSettings, coefficients: int = 20) -> np.ndarray:
    """A clip summarised without any learning: mean and standard deviation over time of its MFCCs and their deltas.

    The classic hand-made speech features (DCT of the log-mel spectrogram, first `coefficients` kept), the input of
    the no-transfer baseline. Levels are absolute (not relative to the clip's peak), so loudness is a feature too.
    Returns a float64 vector of 4 x `coefficients`.
    """
    from scipy.fft import dct

    fixed = fix_length(samples, settings.clip_samples)
    mel = mel_filterbank(settings) @ power_spectrogram(fixed, settings)
    decibels = 10.0 * np.log10(np.maximum(mel, 1e-10))
    cepstra = dct(decibels, type=2, axis=0, norm="ortho")[:coefficients]
    deltas = np.diff(cepstra, axis=1) if cepstra.shape[1] > 1 else np.zeros_like(cepstra)
    return np.concatenate([cepstra.mean(axis=1), cepstra.std(axis=1), deltas.mean(axis=1), deltas.std(axis=1)])


__all__ = [
    "AUDIO_EXTENSIONS",
    "AudioReadError",
    "ClipInfo",
    "MelSettings",
    "clip_waveform",
    "cut_length",
    "file_pixels",
    "file_thumbnail",
    "fix_length",
    "load_clip",
    "log_mel",
    "loudest_start",
    "mel_filterbank",
    "mfcc_statistics",
    "read_audio",
    "resample",
    "spectrogram_pixels",
    "spectrogram_thumbnail",
    "spectrogram_unit",
    "to_mono",
    "unit_pixels",
    "window",
]
