"""Images as data: every file decoded fully, and anything that is not an RGB PNG/JPEG in upright orientation
normalised once to an RGB PNG in the workspace (keyed by content hash), so `Dataset` items are always paths that
PIL opens. Files that are not images, damaged or truncated, or over PIL's decompression-bomb limit are named and
skipped."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import uuid
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

from PIL import Image, ImageOps, UnidentifiedImageError

from core._data_folders import _Entry, _folder_of, _normalised_dir, _report_problems
from core._data_report import _Report
from core._data_tables import TABLE_EXTENSIONS
from core.cpus import available_threads


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with transparency composited on white (a black background would change what the picture shows)."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def inspect_image(path: Path) -> tuple[str, Path | None, str | None]:
    """Decode one file fully and make sure a loadable RGB copy exists.

    Returns:
        (sha256 of the file's bytes, the path to use as the Dataset item or None, the problem or None). The
        problem is "not_image", "damaged" or "too_large" (over PIL's decompression-bomb limit).
    """
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only; PIL raises above twice its pixel limit
        width, height = image.size
        if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
            return digest, None, "too_large"
        image.load()
    except Image.DecompressionBombError:
        return digest, None, "too_large"
    except UnidentifiedImageError:
        return digest, None, "not_image"
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error):
        return digest, None, "damaged"
    try:
        orientation = image.getexif().get(0x0112, 1)
    except (OSError, ValueError, SyntaxError):
        orientation = 1
    if image.format in ("PNG", "JPEG") and image.mode == "RGB" and orientation in (1, None):
        return digest, path, None
    target = _normalised_dir() / f"{digest[:32]}.png"
    if not target.exists():
        try:
            upright = ImageOps.exif_transpose(image) or image
            rgb = _to_rgb(upright)
        except (OSError, ValueError, SyntaxError):
            return digest, None, "damaged"
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
        rgb.save(partial, format="PNG")
        os.replace(partial, target)
    return digest, target, None


_INSPECTED: dict[tuple[str, int, int, int | None, str], tuple[str, Path | None, str | None]] = {}
_INSPECTED_MAX = 200_000


def _inspect_cached(path: Path, workspace: str) -> tuple[str, Path | None, str | None]:
    """`inspect_image`, remembered per file version so loading the same data again (another seed) is quick."""
    try:
        status = path.stat()
    except OSError:
        return "", None, "damaged"
    key = (str(path), status.st_size, status.st_mtime_ns, Image.MAX_IMAGE_PIXELS, workspace)
    known = _INSPECTED.get(key)
    if known is not None and (known[1] is None or known[1].exists()):
        return known
    result = inspect_image(path)
    if len(_INSPECTED) >= _INSPECTED_MAX:
        _INSPECTED.clear()
    _INSPECTED[key] = result
    return result


_PROBLEM_TEXT = {
    "not_image": ("{count} in `{folder}` {verb} and {was} skipped: {names}", "is not an image", "are not images"),
    "damaged": (
        "{count} in `{folder}` could not be read as images (damaged or truncated) and {was} skipped: {names}",
        "is",
        "are",
    ),
    "too_large": (
        "{count} in `{folder}` {verb} larger than the image-size safety limit "
        f"({Image.MAX_IMAGE_PIXELS / 1e6:.0f} million pixels) and {{was}} skipped: {{names}}",
        "is",
        "are",
    ),
}


def _image_rows(entries: Sequence[_Entry], non_images: Sequence[str], report: _Report) -> list[dict[str, str]]:
    """The table rows of the usable images, each decoded and (where needed) normalised to an RGB PNG.

    Files that are not images (`non_images`, bar tables and readmes at the top), damaged and oversized ones go
    into the report.
    """
    problems: dict[tuple[str, str], list[str]] = defaultdict(list)
    for relative in non_images:
        if PurePosixPath(relative).suffix.lower() in TABLE_EXTENSIONS | {".md", ".json", ".yaml", ".yml"} and (
            len(PurePosixPath(relative).parts) == 1
        ):
            continue  # a README or metadata file next to the class folders is not a problem
        problems[("not_image", _folder_of(relative))].append(relative)
    rows = []
    normalised = 0
    workers = max(1, min(8, available_threads()))
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL decodes without the GIL: threads speed this up
        workspace = str(_normalised_dir())
        inspected = list(pool.map(lambda entry: _inspect_cached(entry.path, workspace), entries))
    for entry, (digest, item, problem) in zip(entries, inspected, strict=True):
        if problem is not None:
            problems[(problem, _folder_of(entry.relative))].append(entry.relative)
            continue
        normalised += int(item != entry.path)
        rows.append(
            {
                "item": str(item),
                "label": entry.label,
                "split": entry.split or "",
                "source": entry.relative,
                "hash": digest,
            }
        )
    _report_problems(report, problems, _PROBLEM_TEXT)
    report.info["normalised_images"] = normalised
    return rows
