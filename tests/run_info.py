"""A complete run record (`run.json`) for tests that write a run folder or hand the Test page a run by hand.

Readers read what the engine writes (`core._train_record.write_run_json`, keys declared in
`core._run_folder.RUN_INFO_KEYS`), so a test's record holds every one of those keys too; a test names only the
values it cares about.
"""

from __future__ import annotations

from typing import Any

from core._run_folder import RUN_INFO_KEYS

#: run.json's `metrics`, as the engine writes it (no epochs yet, no estimate).
METRICS = {"history": [], "best_epoch": None, "val_accuracy": None, "val_loss": None, "test_accuracy": None,
           "estimate": None}

_DEFAULTS: dict[str, Any] = {
    "run_id": "tiny-run", "backbone": "tiny_cnn", "modality": "image", "classes": [], "frozen_groups": 0,
    "num_groups": 3, "feature_taps": [], "config": {"backbone": "tiny_cnn", "frozen_groups": 0}, "dataset_name": "",
    "dataset_fingerprint": "", "status": "completed", "error": None, "metrics": METRICS, "sentence_tuning": None,
    "updated_at": "2025-01-01T00:00:00Z",
}
if set(_DEFAULTS) != set(RUN_INFO_KEYS):  # the contract changed: so must this record
    raise RuntimeError(f"tests/run_info.py does not match RUN_INFO_KEYS: {sorted(set(_DEFAULTS) ^ set(RUN_INFO_KEYS))}")


def full_run_info(metrics: dict[str, Any] | None = None, **values: Any) -> dict[str, Any]:
    """A run record with every key the engine writes: `values` replace the defaults, `metrics` those of `METRICS`."""
    unknown = set(values) - set(RUN_INFO_KEYS)
    if unknown:
        raise KeyError(f"Not keys of run.json: {sorted(unknown)}")
    return {**_DEFAULTS, **values, "metrics": {**METRICS, **(metrics or {})}}
