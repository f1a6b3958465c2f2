"""CPU cores this process may use: one answer for worker counts, thread counts and loader pools.

A leaf module (nothing of `core`, no torch), so the server, the data loaders and the training engine all ask it
cheaply without importing one another.
"""

from __future__ import annotations

import os


def available_threads() -> int:
    """CPU cores this process may use (respects affinity / container limits where the OS reports them)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
