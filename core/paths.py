"""Where Transfer Studio keeps things on disk.

The workspace folder holds extracted uploads, feature caches, the run database and checkpoints; it defaults to
`~/.transfer-studio` and `TRANSFER_STUDIO_HOME` moves it. The data root is the only server folder a browser
user may load data from; an operator opts in by setting `TRANSFER_STUDIO_DATA_ROOT`.

On a shared server each person works in a named workspace (`core.workspaces`). What is a workspace's own lives
in its folder, `workspaces/<name>/` (`PRIVATE_FOLDERS`: runs, opened projects, exports, files sent for a
prediction); what is keyed by content stays at the top and is shared: the feature cache (a hash of the data,
backbone and weights, so 30 people on the same sample compute its features once), extracted uploads (a hash of
the upload's bytes), and the run database (each record names its workspace, and pages read it filtered by that).
Code that runs without a workspace (the CLI, scripts) keeps everything at the top, as before.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

#: The folder under the workspace folder that holds one folder per named workspace.
WORKSPACES_FOLDER = "workspaces"
#: The folders each named workspace keeps to itself; every other folder is shared (see the module docstring).
PRIVATE_FOLDERS = frozenset({"runs", "projects", "exports", "predict"})
#: A workspace name: lower-case words or numbers joined by hyphens ("blue-otter-427"), so that it is a safe
#: folder name and a code that can be read out in a classroom.
WORKSPACE_NAME = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
MAX_WORKSPACE_NAME = 40


def workspace_dir() -> Path:
    """The workspace folder, created on first use."""
    path = Path(os.environ.get("TRANSFER_STUDIO_HOME", Path.home() / ".transfer-studio")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def workspace_subdir(name: str, workspace: str | None = None) -> Path:
    """A named folder ("datasets", "features", "runs", ...), created on first use.

    Args:
        name: the folder.
        workspace: the named workspace asking; a private folder (`PRIVATE_FOLDERS`) is then that workspace's own.
            None (the CLI, scripts) and shared folders give the folder at the top of `workspace_dir()`.
    """
    base = named_workspace_dir(workspace) if workspace is not None and name in PRIVATE_FOLDERS else workspace_dir()
    path = base / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def is_workspace_name(name: str) -> bool:
    """Whether `name` can name a workspace (see `WORKSPACE_NAME`)."""
    return len(name) <= MAX_WORKSPACE_NAME and WORKSPACE_NAME.fullmatch(name) is not None


def named_workspace_dir(workspace: str) -> Path:
    """The folder of one named workspace (not created here).

    Raises:
        ValueError: `workspace` is not a workspace name, so it could not be a safe folder name either.
    """
    if not is_workspace_name(workspace):
        raise ValueError(f"{workspace!r} is not a workspace name: use lower-case letters, digits and hyphens "
                         f"(at most {MAX_WORKSPACE_NAME} characters), like blue-otter-427.")
    return workspace_dir() / WORKSPACES_FOLDER / workspace


def is_runs_folder(folder: str | os.PathLike[str]) -> bool:
    """Whether `folder` is a folder that holds runs: the top `runs/` or a named workspace's `runs/`."""
    folder = Path(folder).resolve()
    top = workspace_dir().resolve()
    return folder == top / "runs" or (folder.name == "runs" and folder.parent.parent == top / WORKSPACES_FOLDER)


def check_in_workspace(path: str | os.PathLike[str], workspace: str | None) -> None:
    """Refuse a path (a run folder, say) that lies in another named workspace's folder.

    Paths outside every workspace's folder (the CLI's runs at the top, a folder a test made) are not this check's
    business: the run store records whose each run is, and pages only list their own workspace's.

    Raises:
        PermissionError: `path` is inside the folder of a workspace other than `workspace`.
    """
    if workspace is None:
        return
    resolved = Path(path).resolve()
    everyone = (workspace_dir() / WORKSPACES_FOLDER).resolve()
    if resolved.is_relative_to(everyone) and not resolved.is_relative_to(named_workspace_dir(workspace).resolve()):
        raise PermissionError(f"{resolved.name} belongs to another workspace; only that workspace can open it. "
                              "Join that workspace (its code is in the sidebar of whoever made it) to use it.")


def data_root() -> Path | None:
    """The operator-configured folder that server-side data may be loaded from, or None when not configured."""
    value = os.environ.get("TRANSFER_STUDIO_DATA_ROOT")
    return Path(value).expanduser().resolve() if value else None


def assets_dir() -> Path:
    """The repository's `assets/` folder (sample data sets, screenshots)."""
    return Path(__file__).resolve().parent.parent / "assets"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks: what uploads, bundles and copies are keyed or checked by."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
