"""Files a user would upload, made on the fly: a good image zip, a zip-slip archive, a zip with a broken JPEG, a
sample scan or clip on its own."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from PIL import Image

from tests.e2e.studio import REPO_ROOT

SAMPLE_IMAGES_ZIP = REPO_ROOT / "assets" / "samples" / "digits.zip"
SAMPLE_TEXTS_CSV = REPO_ROOT / "assets" / "samples" / "support_messages.csv"
SAMPLE_AUDIO_ZIP = REPO_ROOT / "assets" / "samples" / "spoken_words.zip"


def _jpeg_bytes(colour: tuple[int, int, int], size: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def sample_digit(folder: Path, digit: str = "seven", index: int = 3) -> Path:
    """One scan from the image sample, saved as its own file: a "new" image to ask the trained model about."""
    name = f"digits/{digit}/{digit}_{index:02d}.png"
    path = folder / f"new_{digit}.png"
    with zipfile.ZipFile(SAMPLE_IMAGES_ZIP) as archive:
        path.write_bytes(archive.read(name))
    return path


def microphone_wav(folder: Path, word: str = "left", index: int = 5) -> Path:
    """What Chromium's fake microphone plays (`--use-file-for-fake-audio-capture`): one word of the sound sample,
    as the 48 kHz 16-bit WAV that option reads, between half-seconds of silence; the browser loops it."""
    import numpy as np
    import soundfile
    from scipy.signal import resample_poly

    with zipfile.ZipFile(SAMPLE_AUDIO_ZIP) as archive:
        clip, rate = soundfile.read(io.BytesIO(archive.read(f"spoken_words/{word}/{word}_{index:03d}.flac")))
    clip = clip.mean(axis=1) if clip.ndim > 1 else clip
    silence = np.zeros(24_000)
    path = folder / f"microphone_{word}.wav"
    soundfile.write(path, np.concatenate([silence, resample_poly(clip, 48_000, rate), silence]), 48_000, "PCM_16")
    return path


def sample_clip(folder: Path, word: str = "left", index: int = 5) -> Path:
    """One clip from the spoken-words sample, saved as its own file: a "new" clip to ask the trained model about."""
    path = folder / f"new_{word}.flac"
    with zipfile.ZipFile(SAMPLE_AUDIO_ZIP) as archive:
        path.write_bytes(archive.read(f"spoken_words/{word}/{word}_{index:03d}.flac"))
    return path


def zip_slip_archive(folder: Path) -> Path:
    """A zip whose entries climb out of the extraction folder (`../`), among ordinary class folders."""
    path = folder / "zip_slip.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for i in range(3):
            archive.writestr(f"red/red_{i}.jpg", _jpeg_bytes((200 + 5 * i, 30 + 3 * i, 30)))
            archive.writestr(f"blue/blue_{i}.jpg", _jpeg_bytes((30, 30 + 3 * i, 200 + 5 * i)))
        archive.writestr("../../escaped.jpg", _jpeg_bytes((0, 0, 0)))
    return path


def corrupt_image_archive(folder: Path) -> Path:
    """Two classes of good JPEGs and one truncated JPEG (a file cut off half-way, as a broken download is)."""
    path = folder / "broken_jpeg.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for i in range(10):
            archive.writestr(f"red/red_{i}.jpg", _jpeg_bytes((200 + 5 * i, 30 + 3 * i, 30)))
            archive.writestr(f"blue/blue_{i}.jpg", _jpeg_bytes((30, 30 + 3 * i, 200 + 5 * i)))
        whole = _jpeg_bytes((30, 220, 30), size=64)
        archive.writestr("red/truncated.jpg", whole[: len(whole) // 2])
    return path


def not_a_zip(folder: Path) -> Path:
    """A file named `.zip` that is not an archive at all (a half-finished download, a renamed photo)."""
    path = folder / "photos.zip"
    path.write_bytes(b"PK\x03\x04 this is not really a zip archive" + bytes(range(256)) * 4)
    return path
