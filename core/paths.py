"""Where Transfer Studio keeps things on disk.

The workspace holds extracted uploads, feature caches, the run database and checkpoints; it defaults to
`~/.transfer-studio` and `TRANSFER_STUDIO_HOME` moves it. The data root is the only server folder a browser
user may load data from; an operator opts in by setting `TRANSFER_STUDIO_DATA_ROOT`.
"""

from __future__ import annotations

import os
from pathlib import Path


def workspace_dir() -> Path:
    """The workspace folder, created on first use."""
    path = Path(os.environ.get("TRANSFER_STUDIO_HOME", Path.home() / ".transfer-studio")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def workspace_subdir(name: str) -> Path:
    """A named folder inside the workspace ("datasets", "features", "runs", ...), created on first use."""
    path = workspace_dir() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_root() -> Path | None:
    """The operator-configured folder that server-side data may be loaded from, or None when not configured."""
    value = os.environ.get("TRANSFER_STUDIO_DATA_ROOT")
    return Path(value).expanduser().resolve() if value else None


def assets_dir() -> Path:
    """The repository's `assets/` folder (sample data sets, screenshots)."""
    return Path(__file__).resolve().parent.parent / "assets"
