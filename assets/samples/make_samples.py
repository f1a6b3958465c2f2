"""Build the sample image data set once: `python assets/samples/make_samples.py` writes `digits.zip`.

The images are a fixed subset of scikit-learn's bundled copy of the UCI "Optical Recognition of Handwritten
Digits" data (CC BY 4.0): 10 classes x 24 images. Each 8x8 scan is drawn dark-on-light and upscaled to 64x64
so a person can recognise it. The zip holds one folder per class inside a wrapping folder, exactly what a user
would upload, so loading the sample exercises the same code path as an upload. Re-running the script gives a
byte-identical zip (fixed seed, fixed timestamps).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

PER_CLASS = 24
SIZE = 64
SEED = 0
OUT = Path(__file__).resolve().parent / "digits.zip"
CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def digit_png(pixels: np.ndarray) -> bytes:
    """One 8x8 scan (values 0..16) as a 64x64 RGB PNG, dark ink on a light background."""
    grey = (255 - pixels * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(grey, mode="L").resize((SIZE, SIZE), Image.Resampling.BICUBIC).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def main() -> None:
    digits = load_digits()
    rng = np.random.default_rng(SEED)
    with zipfile.ZipFile(OUT, "w", compression=zipfile.ZIP_STORED) as archive:
        for digit, name in enumerate(CLASS_NAMES):
            indices = np.flatnonzero(digits.target == digit)
            chosen = np.sort(rng.choice(indices, size=PER_CLASS, replace=False))
            for number, index in enumerate(chosen):
                info = zipfile.ZipInfo(f"digits/{name}/{name}_{number:02d}.png", date_time=(2024, 1, 1, 0, 0, 0))
                archive.writestr(info, digit_png(digits.images[index]))
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
