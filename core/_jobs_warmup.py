"""The feature warm-up: a backbone's features for a small data set computed in the background, before Train."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from core._jobs_queue import running_count

log = logging.getLogger("core.jobs")  # the public module's name: what callers silence or watch (core.bench)

#: Data sets larger than this are not warmed up unasked: the user may well choose to fine-tune instead.
WARM_UP_MAX_EXAMPLES = 5000
_WARM_UPS: dict[tuple[str, str], threading.Thread] = {}
_WARM_UP_LOCK = threading.Lock()


def warm_up_features(dataset: Any, backbone_name: str) -> bool:
    """Start computing the backbone's features for `dataset` in the background, once per (data, backbone).

    Feature extraction is the default for small data, and the backbone pass over the data is most of its cost;
    doing it while the user reads the Freezing page means Train shows its first point within seconds. `fit`
    finds the result in the feature cache (or waits for a warm-up still in progress rather than computing twice).
    Nothing starts while a training job is running (it would slow that run), for large data sets, or with
    `TRANSFER_STUDIO_WARM_UP=0` (the unit tests set it, to keep their CPU use predictable). Returns True
    when a warm-up is running or has run for this pair.
    """
    if len(dataset.table) > WARM_UP_MAX_EXAMPLES or os.environ.get("TRANSFER_STUDIO_WARM_UP", "1") == "0":
        return False
    key = (dataset.fingerprint, backbone_name)
    with _WARM_UP_LOCK:
        if key in _WARM_UPS:
            return True
        if running_count() > 0:
            return False

        def work() -> None:
            from core.training import prepare_features

            try:
                prepare_features(dataset, backbone_name)
                log.info("Features of %s with %s are ready", dataset.name, backbone_name)
            except Exception:  # a warm-up is only a head start: training computes what is missing
                log.warning("Feature warm-up for %s failed; training will compute them", backbone_name, exc_info=True)

        thread = threading.Thread(target=work, name=f"warm-up-{backbone_name}", daemon=True)
        _WARM_UPS[key] = thread
        thread.start()
    return True


def warm_up_running(dataset: Any, backbone_name: str) -> bool:
    """Whether a background warm-up for this data and backbone is still computing."""
    thread = _WARM_UPS.get((dataset.fingerprint, backbone_name))
    return thread is not None and thread.is_alive()
