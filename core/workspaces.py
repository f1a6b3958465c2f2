"""Named workspaces: who sees which data, runs and models on a shared server.

Every browser works in a workspace, named by a short code such as `blue-otter-427` that a teacher can write on
the board. By default each browser gets a fresh private one (`claim_new`); typing another's code joins it (a
student going on on another computer, a team sharing one), and an operator can put every browser in one team
workspace with `TRANSFER_STUDIO_WORKSPACE` (`shared_workspace`). A code is a name, not a password: anyone who
knows it can join, which is what a classroom needs and not what secrets need.

The workspace name is the `owner` that jobs, run records and opened projects are kept under (`core.jobs`,
`core.store`, `core.project`), and it names the workspace's folder (`core.paths.workspace_subdir`), so a
refresh, another computer or a teammate with the code finds the same runs, and nobody else does.
"""

from __future__ import annotations

import os
import random
import re

from core.paths import WORKSPACES_FOLDER, is_workspace_name, named_workspace_dir, workspace_dir

#: The operator's setting that puts every browser in one shared workspace of this name.
SHARED_WORKSPACE_ENV = "TRANSFER_STUDIO_WORKSPACE"

_COLOURS = (
    "amber", "azure", "black", "blue", "bronze", "brown", "coral", "cream", "crimson", "cyan", "gold", "green",
    "grey", "indigo", "ivory", "jade", "lemon", "lilac", "lime", "magenta", "maroon", "mint", "navy", "olive",
    "orange", "peach", "pink", "plum", "purple", "red", "rose", "ruby", "rust", "sand", "silver", "teal", "violet",
    "white", "yellow",
)
_ANIMALS = (
    "badger", "bat", "bear", "beaver", "bison", "camel", "cat", "crane", "crow", "deer", "dog", "dolphin", "duck",
    "eagle", "ferret", "finch", "fox", "frog", "gecko", "goat", "goose", "hare", "hawk", "heron", "horse", "koala",
    "lemur", "lion", "lynx", "mole", "moose", "mouse", "newt", "otter", "owl", "panda", "parrot", "puffin", "rabbit",
    "raven", "robin", "seal", "shark", "sheep", "snail", "swan", "tiger", "toad", "trout", "turtle", "whale", "wolf",
    "wren", "yak", "zebra",
)


class WorkspaceError(ValueError):
    """A workspace code that cannot be used; the message says why and what one looks like."""


def new_name(rng: random.Random | None = None) -> str:
    """A fresh workspace code: a colour, an animal and a number from 10 to 999 ("blue-otter-427")."""
    rng = rng or random.SystemRandom()
    return f"{rng.choice(_COLOURS)}-{rng.choice(_ANIMALS)}-{rng.randint(10, 999)}"


def exists(name: str) -> bool:
    """Whether a workspace of this name was handed out or used on this server (it has a folder)."""
    return is_workspace_name(name) and named_workspace_dir(name).is_dir()


def claim_new(rng: random.Random | None = None) -> str:
    """Hand out a fresh private workspace: a code no one on this server has yet, its folder made at once so that
    two browsers arriving together never get the same one."""
    (workspace_dir() / WORKSPACES_FOLDER).mkdir(exist_ok=True)
    for _ in range(1000):
        name = new_name(rng)
        try:
            named_workspace_dir(name).mkdir()
        except FileExistsError:
            continue
        return name
    raise RuntimeError("No free workspace code was found in 1000 tries; the server holds too many workspaces.")


def parse_code(typed: str) -> str:
    """The workspace a typed code names: case, spaces and underscores are forgiven ("Blue Otter 427").

    Raises:
        WorkspaceError: what is left is not a workspace name.
    """
    name = re.sub(r"[\s_]+", "-", typed.strip().lower()).strip("-")
    if not name:
        raise WorkspaceError("Type the code of the workspace to join, like blue-otter-427.")
    if not is_workspace_name(name):
        raise WorkspaceError(f"“{typed.strip()}” is not a workspace code: a code has letters, digits and hyphens "
                             "only (at most 40), like blue-otter-427.")
    return name


def shared_workspace() -> str | None:
    """The one workspace every browser works in when the operator set `TRANSFER_STUDIO_WORKSPACE`; else None.

    Raises:
        WorkspaceError: the setting is not a workspace name (the server should not start on it).
    """
    value = os.environ.get(SHARED_WORKSPACE_ENV, "").strip()
    if not value:
        return None
    if not is_workspace_name(value):
        raise WorkspaceError(f"{SHARED_WORKSPACE_ENV}={value!r} is not a workspace name: use lower-case letters, "
                             "digits and hyphens (at most 40), like team-vision.")
    return value


def join(name: str) -> bool:
    """Enter the workspace `name`, making its folder when it is new; returns whether it was there before (someone
    was handed it or used it), so the page can say "new, nothing in it yet" to someone who mistyped a code."""
    folder = named_workspace_dir(name)
    existed = folder.is_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return existed
