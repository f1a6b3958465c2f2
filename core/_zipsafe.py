"""Extract an uploaded zip without trusting it: no zip-slip, no zip bombs, no symlinks.

Every entry name is checked before a single byte is written; one bad name refuses the whole archive (a partly
extracted data set would be worse than none). Sizes are checked twice: the totals the archive declares, and the
bytes actually written, so a header that lies about its sizes cannot fill the disk either.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")


class UnsafeArchive(ValueError):
    """The archive was refused; the message says which entry or limit and what to do."""


@dataclass(frozen=True)
class ZipLimits:
    """How much an archive may unpack to.

    Attributes:
        max_total_bytes: the sum of all uncompressed entries.
        max_entries: the number of entries (files and folders).
        max_ratio: uncompressed / compressed size of the whole archive; checked only above `ratio_floor_bytes`,
            because tiny archives of text legitimately compress very well.
        ratio_floor_bytes: below this uncompressed total the ratio is not checked.
    """

    max_total_bytes: int = 4 * 1024**3
    max_entries: int = 100_000
    max_ratio: float = 100.0
    ratio_floor_bytes: int = 64 * 1024**2


def safe_member_path(name: str) -> PurePosixPath | None:
    """The relative path an entry may be written to, or None when the name escapes the target folder.

    Backslashes count as separators (archives made on Windows), so `..\\evil.png` is caught too.
    """
    normalised = name.replace("\\", "/")
    if normalised.startswith("/") or _DRIVE.match(normalised):
        return None
    parts = [part for part in normalised.split("/") if part not in ("", ".")]
    if any(part == ".." for part in parts):
        return None
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def check_archive(archive: zipfile.ZipFile, archive_name: str, compressed_bytes: int, limits: ZipLimits) -> None:
    """Refuse the archive (UnsafeArchive) when any entry name escapes or a size/count limit is exceeded."""
    infos = archive.infolist()
    if len(infos) > limits.max_entries:
        raise UnsafeArchive(
            f"`{archive_name}` holds {len(infos):,} entries, more than the limit of {limits.max_entries:,}. "
            "Split the data set into smaller archives or load it from a server folder."
        )
    for info in infos:
        if safe_member_path(info.filename) is None:
            raise UnsafeArchive(
                f"`{archive_name}` was refused: the entry `{info.filename}` points outside the archive's folder "
                "(an absolute path or `..`), which could overwrite files on the server. Re-create the zip from "
                "inside your data folder (e.g. select the class folders and choose 'Compress')."
            )
    total = sum(info.file_size for info in infos)
    if total > limits.max_total_bytes:
        raise UnsafeArchive(
            f"`{archive_name}` would unpack to {total / 1024**3:.1f} GB, more than the limit of "
            f"{limits.max_total_bytes / 1024**3:.1f} GB. Use fewer or smaller images (a few hundred per class is "
            "plenty for transfer learning)."
        )
    if total > limits.ratio_floor_bytes and total > limits.max_ratio * max(compressed_bytes, 1):
        raise UnsafeArchive(
            f"`{archive_name}` would unpack to {total / max(compressed_bytes, 1):.0f} times its own size, which is "
            "how zip bombs look; it was refused. Zip ordinary image files (PNG/JPEG barely compress)."
        )


def extract_archive(
    source: str | os.PathLike[str] | BinaryIO,
    target: Path,
    archive_name: str,
    compressed_bytes: int,
    limits: ZipLimits | None = None,
) -> int:
    """Check, then extract `source` into the new folder `target`; returns the number of files written.

    Symbolic links are skipped (never followed or created). On any failure the partly written folder is removed.

    Raises:
        UnsafeArchive: a bad entry name or a size/count limit.
        zipfile.BadZipFile: the archive is damaged (callers turn this into a user message).
    """
    limits = limits or ZipLimits()
    target.mkdir(parents=True, exist_ok=False)
    written_files = 0
    try:
        with zipfile.ZipFile(source) as archive:
            check_archive(archive, archive_name, compressed_bytes, limits)
            written_bytes = 0
            for info in archive.infolist():
                relative = safe_member_path(info.filename)
                if relative is None:  # checked above; kept so this loop is safe on its own
                    raise UnsafeArchive(f"`{archive_name}`: unsafe entry `{info.filename}`")
                if info.is_dir() or str(relative) == ".":
                    continue
                if _is_symlink(info):
                    logger.info("skipping symbolic link %s in %s", info.filename, archive_name)
                    continue
                destination = target.joinpath(*relative.parts)
                destination.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as reader, open(destination, "wb") as writer:
                    while chunk := reader.read(_CHUNK):
                        written_bytes += len(chunk)
                        if written_bytes > limits.max_total_bytes:
                            raise UnsafeArchive(
                                f"`{archive_name}` unpacks to more than its headers declare and past the "
                                f"{limits.max_total_bytes / 1024**3:.1f} GB limit; it was refused."
                            )
                        writer.write(chunk)
                written_files += 1
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return written_files
