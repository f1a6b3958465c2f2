"""The checks a project file gets before anything in it is used: it is opened like an upload from a stranger.

Every entry name and size is checked before anything is written (`core._zipsafe`), any entry the format
(`CONTRACT`) does not name is refused, weights must be safetensors, images and sound clips must decode as the ones a
loaded data set holds, and a manifest-only project may name only files inside this server's data folders.
"""

from __future__ import annotations

import io
import json
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

from core import audio
from core._project_format import (
    CONTRACT,
    FORMAT,
    FORMAT_VERSION,
    MB,
    PROJECT_SUFFIX,
    ProjectError,
    max_project_bytes,
)
from core._zipsafe import UnsafeArchive, ZipLimits, check_archive
from core.data import inspect_clip, inspect_image
from core.paths import data_root, workspace_subdir

_CODE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt", ".joblib", ".npy", ".npz", ".py", ".pyc")


def zip_limits() -> ZipLimits:
    """What a project zip may unpack to: twice the largest project file plus 64 MB, compressed at most 1000:1."""
    return ZipLimits(max_total_bytes=2 * max_project_bytes() + 64 * MB, max_ratio=1000.0)


def check_entries(payload: bytes, name: str) -> None:
    """Refuse the file before anything is written: not a zip, an unsafe name, an entry outside the format, or an
    entry larger than its kind allows."""
    if not zipfile.is_zipfile(io.BytesIO(payload)):
        kind = "a text file" if payload[:1] in (b"{", b"[") or payload[:64].isascii() else "some other file"
        raise ProjectError(f"`{name}` is not a Transfer Studio project: it is {kind}, not a zip. Choose the "
                           f"`{PROJECT_SUFFIX}` file that 'Save project' downloaded.")
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        try:
            check_archive(archive, name, len(payload), zip_limits())
        except UnsafeArchive as error:
            raise ProjectError(str(error)) from error
        names = {info.filename for info in archive.infolist() if not info.is_dir()}
        if "project.json" not in names:
            raise ProjectError(f"`{name}` is a zip but not a Transfer Studio project (it has no project.json). To "
                               "load a zip of images or sound clips, choose 'Upload a zip of class folders' instead.")
        for info in archive.infolist():
            if info.is_dir():
                continue
            kind = next((k for k in CONTRACT if re.fullmatch(k.pattern, info.filename)), None)
            if kind is None:
                if info.filename.lower().endswith(_CODE_SUFFIXES):
                    raise ProjectError(
                        f"`{name}` was refused: it holds `{info.filename}`, a pickle or code file. Such files can "
                        "run programs when opened, so Transfer Studio never opens them; projects carry weights as "
                        "safetensors only. Save the project again from Transfer Studio.")
                raise ProjectError(f"`{name}` was refused: `{info.filename}` is not part of a Transfer Studio "
                                   "project. Save the project again from Transfer Studio, and do not add files to it.")
            if info.file_size > kind.max_bytes:
                raise ProjectError(f"`{name}` was refused: `{info.filename}` would unpack to "
                                   f"{info.file_size / MB:,.0f} MB, more than the {kind.max_bytes / MB:,.0f} MB a "
                                   f"{kind.name} may hold.")


def read_json(folder: Path, member: str, name: str) -> Any:
    path = folder / member
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise ProjectError(f"`{name}` lacks `{member}`, which the project needs; the file is incomplete.") from error
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ProjectError(f"`{name}`: `{member}` is not valid JSON ({error}); the file is damaged.") from error


def check_format(manifest: Any, name: str) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ProjectError(f"`{name}` is not a Transfer Studio project: its project.json does not say "
                           f"`\"format\": \"{FORMAT}\"`.")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ProjectError(f"`{name}` was saved by a newer Transfer Studio (project format {version}); this one "
                           f"reads format {FORMAT_VERSION} and older. Update Transfer Studio to open it.")


def check_images(paths: list[Path], name: str) -> list[str]:
    """Each image decodes fully, within Pillow's decompression-bomb limit, as the RGB PNG or JPEG that a loaded data
    set holds (the same check an uploaded image gets, `core.data.inspect_image`); returns their SHA-256."""
    inspected = [(path, inspect_image(path)) for path in paths]
    bad = [path for path, (_, usable, problem) in inspected if usable != path or problem is not None]
    if bad:
        raise ProjectError(f"`{name}` was refused: {len(bad)} of its images are not images, are damaged, are over "
                           f"the image-size safety limit or are not stored as Transfer Studio saves them (e.g. "
                           f"`data/files/{bad[0].name}`). Save the project again from Transfer Studio.")
    return [digest for _, (digest, _, _) in inspected]


def check_clips(paths: list[Path], name: str) -> list[str]:
    """Each clip is a 16 kHz mono wav, as loading normalised it, that decodes fully, whole and not silent (the same
    check an uploaded clip gets, `core.data.inspect_clip`); returns the SHA-256 of their samples.

    The header is read first, so a clip at another rate or with more channels is refused before it is decoded or
    converted (a refused file leaves nothing behind, not even a converted copy)."""
    import soundfile

    def as_saved(path: Path) -> bool:
        try:
            header = soundfile.info(str(path))
        except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError, OSError):
            return False
        return (header.samplerate, header.channels) == (audio.MelSettings.sample_rate, 1)

    inspected = [(path, inspect_clip(path) if as_saved(path) else None) for path in paths]
    bad = [path for path, clip in inspected if clip is None or clip.item != path or clip.problem is not None]
    if bad:
        raise ProjectError(f"`{name}` was refused: {len(bad)} of its sound clips are not sound, are damaged, cut off "
                           f"or silent, or are not stored as Transfer Studio saves them (16 kHz mono wav; e.g. "
                           f"`data/files/{bad[0].name}`). Save the project again from Transfer Studio.")
    return [clip.digest for _, clip in inspected if clip is not None]


def existing_paths(paths: list[str], name: str, kind: str = "images") -> list[str]:
    """A manifest-only project names image or clip files (`kind`) on disk: allowed only inside this workspace's data
    sets or the operator's data root (an untrusted file must not make the server read anything else), and all must
    exist."""
    allowed = [workspace_subdir("datasets").resolve()] + ([data_root()] if data_root() else [])
    resolved = [Path(p).resolve() for p in paths]
    outside = [str(p) for p in resolved if not any(p.is_relative_to(folder) for folder in allowed)]
    if outside:
        raise ProjectError(f"`{name}` carries only the list of its {kind}, and {len(outside)} of them lie outside "
                           f"this server's data folders (e.g. `{outside[0]}`). Open it on the machine it was saved "
                           "on, or save it again with the data included.")
    missing = [str(p) for p in resolved if not p.is_file()]
    if missing:
        raise ProjectError(f"`{name}` carries only the list of its {kind}, and {len(missing)} of them are not on "
                           f"this machine (e.g. `{missing[0]}`). Open it where the data is, or save it again with "
                           "the data included.")
    return [str(p) for p in resolved]


def check_safetensors(path: Path, member: str, name: str) -> None:
    """A weights file must be safetensors (a JSON header, then raw tensor bytes), never a pickle in disguise."""
    size = path.stat().st_size
    with open(path, "rb") as file:
        head = file.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        header = file.read(length) if 0 < length <= min(size - 8, 100 * MB) else b""
    try:
        tensors = json.loads(header)
    except ValueError:
        tensors = None
    if not isinstance(tensors, dict) or not tensors:
        raise ProjectError(f"`{name}` was refused: `{member}` is not a safetensors file (projects carry weights as "
                           "safetensors only). Save the project again from Transfer Studio.")
