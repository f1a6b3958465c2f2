"""Sound clips as data: every file decoded fully and normalised once to a 16 kHz mono wav, so `Dataset` items
are always files `soundfile` reads. Damaged, truncated and silent files are named and skipped; mixed sample rates
or channels, and clips far shorter or longer than the rest, are pointed out."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from core import audio
from core._data_folders import _Entry, _folder_of, _normalised_dir, _report_problems
from core._data_report import _names, _Report, plural
from core._data_tables import TABLE_EXTENSIONS
from core.cpus import available_threads


@dataclass(frozen=True)
class _Clip:
    """What inspecting one sound file found: its content hash, the item to use, its problem, and its format."""

    digest: str
    item: Path | None
    problem: str | None
    sample_rate: int = 0
    channels: int = 0
    seconds: float = 0.0
    detail: str = ""


def inspect_clip(path: Path) -> _Clip:
    """Decode one sound file fully and make sure a 16 kHz mono wav copy of it exists.

    The content hash is taken over the normalised samples, so the same sound saved as wav and as flac (or at two
    rates) counts as a duplicate. A file that is already a 16 kHz mono wav is used in place; any other is
    converted once into the workspace (keyed by that hash), so Dataset items are always files `soundfile` reads.
    The problem is "not_audio" (no decoder recognises it), "damaged_audio" (cut off or corrupt) or "silent".
    """
    import soundfile

    try:
        samples, info = audio.read_audio(str(path))
    except audio.AudioReadError as error:
        text = str(error)
        problem = "damaged_audio" if ("truncated" in text or "no sound" in text or "invalid" in text) else "not_audio"
        if problem == "not_audio" and path.suffix.lower() in audio.AUDIO_EXTENSIONS:
            problem = "damaged_audio"  # a .wav that no decoder reads is a damaged sound file, not some other file
        return _Clip("", None, problem, detail=text)
    mono = audio.resample(audio.to_mono(samples), info.sample_rate, audio.MelSettings.sample_rate)
    pcm = np.clip(np.round(mono * 32767.0), -32768, 32767).astype(np.int16)
    digest = hashlib.sha256(pcm.tobytes()).hexdigest()
    if float(np.abs(mono).max()) < audio.SILENCE_PEAK:
        return _Clip(digest, None, "silent", info.sample_rate, info.channels, info.seconds)
    if path.suffix.lower() == ".wav" and info.sample_rate == audio.MelSettings.sample_rate and info.channels == 1:
        return _Clip(digest, path, None, info.sample_rate, info.channels, info.seconds)
    target = _normalised_dir() / f"{digest[:32]}.wav"
    if not target.exists():
        partial = target.with_name(f".{target.stem}.{uuid.uuid4().hex}.wav")
        soundfile.write(str(partial), pcm, audio.MelSettings.sample_rate, subtype="PCM_16")
        os.replace(partial, target)
    return _Clip(digest, target, None, info.sample_rate, info.channels, info.seconds)


_AUDIO_PROBLEM_TEXT = {
    "not_audio": ("{count} in `{folder}` {verb} not sound files and {was} skipped: {names}", "is", "are"),
    "damaged_audio": (
        "{count} in `{folder}` could not be read as sound (damaged or truncated) and {was} skipped: {names}",
        "is",
        "are",
    ),
    "silent": ("{count} in `{folder}` {verb} silent (no sample louder than -60 dB) and {was} skipped: {names}", "is",
               "are"),
}
#: A clip more than this many times shorter or longer than the median clip is pointed out.
LENGTH_RATIO = 3.0


def _check_clip_formats(report: _Report, relatives: Sequence[str], clips: Sequence[_Clip]) -> None:
    """Mixed rates or channels (normalised, said once) and clips far shorter or longer than the rest."""
    rates = pd.Series([clip.sample_rate for clip in clips]).value_counts().sort_index()
    channels = pd.Series([clip.channels for clip in clips]).value_counts().sort_index()
    target = audio.MelSettings.sample_rate
    report.info["sample_rates"] = {int(rate): int(count) for rate, count in rates.items()}
    report.info["channels"] = {int(channel): int(count) for channel, count in channels.items()}
    if len(rates) > 1 or len(channels) > 1:
        described = []
        if len(rates) > 1:
            described.append("sample rates " + ", ".join(f"{rate} Hz ({count})" for rate, count in rates.items()))
        if len(channels) > 1:
            described.append("channels " + ", ".join(
                f"{'mono' if channel == 1 else 'stereo' if channel == 2 else f'{channel} channels'} ({count})"
                for channel, count in channels.items()))
        report.warning(
            "mixed_formats",
            f"The clips were recorded differently ({'; '.join(described)}). All were converted to {target // 1000} "
            "kHz mono, which is what the models use; if one class was recorded with another device, the model may "
            "learn the device instead of the sound.",
        )
    seconds = np.asarray([clip.seconds for clip in clips], dtype=np.float64)
    if not len(seconds):
        return
    median = float(np.median(seconds))
    report.info["clip_seconds"] = {"median": round(median, 3), "min": round(float(seconds.min()), 3),
                                   "max": round(float(seconds.max()), 3)}
    short = [f"{relative} ({length:.2f} s)" for relative, length in zip(relatives, seconds, strict=True)
             if length < median / LENGTH_RATIO]
    long = [f"{relative} ({length:.2f} s)" for relative, length in zip(relatives, seconds, strict=True)
            if length > median * LENGTH_RATIO]
    if short:
        report.warning(
            "short_clips",
            f"{plural(len(short), 'clip')} {'is' if len(short) == 1 else 'are'} far shorter than the median clip "
            f"({median:.2f} s) and will be padded with silence: {_names(short)}. Check that they were not cut off.",
            short,
        )
    if long:
        report.warning(
            "long_clips",
            f"{plural(len(long), 'clip')} {'is' if len(long) == 1 else 'are'} far longer than the median clip "
            f"({median:.2f} s); the model hears only their loudest stretch of the clip length: {_names(long)}. "
            "Cut long recordings into one clip per example.",
            long,
        )


def _clip_rows(entries: Sequence[_Entry], others: Sequence[str], report: _Report) -> list[dict[str, str]]:
    """The table rows of the usable clips, each checked and normalised to 16 kHz mono.

    Files that are not clips (`others`, bar tables and readmes), damaged and silent ones go into the report, and
    so do mixed recording formats and clips far shorter or longer than the rest.
    """
    problems: dict[tuple[str, str], list[str]] = defaultdict(list)
    for relative in others:
        suffix = PurePosixPath(relative).suffix.lower()
        if len(PurePosixPath(relative).parts) == 1 and suffix in TABLE_EXTENSIONS | {".md", ".json", ".yaml", ".yml"}:
            continue
        if len(PurePosixPath(relative).parts) <= 2 and PurePosixPath(relative).stem.upper() in ("LICENSE", "README"):
            continue  # a licence or readme file next to the class folders is not a problem
        problems[("not_audio", _folder_of(relative))].append(relative)
    workers = max(1, min(4, available_threads()))
    with ThreadPoolExecutor(max_workers=workers) as pool:  # libsndfile and scipy release the GIL
        inspected = list(pool.map(lambda entry: inspect_clip(entry.path), entries))
    rows, kept_relatives, kept_clips = [], [], []
    normalised = 0
    for entry, clip in zip(entries, inspected, strict=True):
        if clip.problem is not None:
            problems[(clip.problem, _folder_of(entry.relative))].append(entry.relative)
            continue
        normalised += int(clip.item != entry.path)
        kept_relatives.append(entry.relative)
        kept_clips.append(clip)
        rows.append({"item": str(clip.item), "label": entry.label, "split": entry.split or "",
                     "source": entry.relative, "hash": clip.digest})
    _report_problems(report, problems, _AUDIO_PROBLEM_TEXT)
    _check_clip_formats(report, kept_relatives, kept_clips)
    report.info["normalised_clips"] = normalised
    return rows
