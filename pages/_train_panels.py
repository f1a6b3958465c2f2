"""What the Train page draws about runs: the live and queued panels, the finished run's headline, the charts and
the table of this session's runs.

The page starts, stops and resumes jobs; this module only polls and draws them. The panels are fragments that
redraw on their own beat (`core.jobs` owns the worker), so the rest of the page stays still and usable.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from core import compare, jobs
from core.evaluation import has_model, read_run_info
from core.session import StudioState

log = logging.getLogger(__name__)

STATUS_ICONS = {"queued": "⏳", "running": "🏃", "completed": "✅", "stopped": "⏹️", "failed": "❌", "cancelled": "🛑",
                "interrupted": "⚡"}


def _format_eta(seconds: float | None) -> str:
    """The job's smoothed estimate (`core.eta.TimeLeft`: measured epochs with their validation) in words."""
    if seconds is None:
        return "estimating time left…"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"about {seconds} s left"
    return f"about {seconds // 60} min {seconds % 60:02d} s left"


# ----------------------------------------------------------------------------------------------------- charts
def step_chart(snapshot: jobs.JobSnapshot) -> go.Figure:
    """Training loss at every step; the retraining on train + validation (a refit) as a line of its own."""
    figure = go.Figure()
    for phase, name in (("train", "train loss"), ("refit", "retraining on train + validation")):
        steps = [m for m in snapshot.steps if m.get("train_loss") is not None and m.get("phase", "train") == phase]
        if steps or phase == "train":
            figure.add_trace(go.Scatter(x=[m["step"] for m in steps], y=[m["train_loss"] for m in steps],
                                        mode="lines", name=name))
    figure.update_layout(title="Training loss per step", xaxis_title="step", yaxis_title="loss", height=300,
                         margin={"t": 40, "b": 30, "l": 40, "r": 10})
    return figure


def epoch_chart(epochs: list[dict[str, Any]], best_epoch: int | None, title: str = "") -> go.Figure:
    """Training vs validation loss and accuracy per epoch, with the kept (best) epoch marked."""
    figure = make_subplots(rows=1, cols=2, subplot_titles=("Loss", "Accuracy"))
    x = [m.get("epoch") for m in epochs]
    for col, metric in ((1, "loss"), (2, "accuracy")):
        for split, dash in (("train", "solid"), ("val", "dash")):
            key = f"{split}_{metric}"
            name = f"{'training' if split == 'train' else 'validation'} {metric}"
            figure.add_trace(
                go.Scatter(x=x, y=[m.get(key) for m in epochs], mode="lines+markers", name=name,
                           line={"dash": dash}, legendgroup=split),
                row=1, col=col,
            )
    if best_epoch is not None and epochs:
        for col in (1, 2):
            figure.add_vline(x=best_epoch, line_dash="dot", line_color="green", row=1, col=col,
                             annotation_text=f"best epoch {best_epoch}", annotation_position="bottom left",
                             annotation_font_color="green")
    figure.update_xaxes(title_text="epoch")
    figure.update_layout(title=title or "Per epoch", height=330, margin={"t": 60, "b": 30, "l": 40, "r": 10})
    return figure


def overlay_chart(runs: list[dict[str, Any]]) -> go.Figure:
    """Validation loss and accuracy of up to two runs on one chart, each named by its `label` (else its id)."""
    figure = make_subplots(rows=1, cols=2, subplot_titles=("Validation loss", "Validation accuracy"))
    for run, colour in zip(runs[:2], ("#1f77b4", "#d62728"), strict=False):
        history = run["history"]
        x = [m.get("epoch") for m in history]
        for col, key in ((1, "val_loss"), (2, "val_accuracy")):
            figure.add_trace(
                go.Scatter(x=x, y=[m.get(key) for m in history], mode="lines+markers",
                           name=run.get("label") or run["run_id"], line={"color": colour},
                           legendgroup=run["run_id"], showlegend=col == 1),
                row=1, col=col,
            )
    figure.update_xaxes(title_text="epoch")
    figure.update_layout(height=330, margin={"t": 40, "b": 30, "l": 40, "r": 10})
    return figure


# ----------------------------------------------------------------------------------------------- run records
def _run_records(run_dirs: list[str]) -> list[dict[str, Any]]:
    """This session's runs, newest first, from the run store (falling back to each folder's run.json)."""
    by_dir: dict[str, dict[str, Any]] = {}
    try:
        from core.store import RunStore

        store = RunStore()
        wanted = {str(Path(d).resolve()) for d in run_dirs}
        for run in store.list_runs():
            run_dir = run.get("run_dir")
            if run_dir and str(Path(run_dir).resolve()) in wanted:
                summary = run.get("summary") or {}
                by_dir[str(Path(run_dir).resolve())] = {
                    "run_id": run["run_id"],
                    "status": run["status"],
                    "config": run.get("config") or {},
                    "best_epoch": summary.get("best_epoch"),
                    "val_accuracy": summary.get("val_accuracy"),
                    "history": store.history(run["run_id"]),
                    "run_dir": run_dir,
                    "estimate": (read_run_info(run_dir).get("metrics") or {}).get("estimate"),
                }
    except Exception as exc:  # noqa: BLE001 - the list is a convenience; training must not depend on it
        log.warning("Could not read the run store: %s", exc)
    records = []
    for run_dir in reversed(run_dirs):
        record = by_dir.get(str(Path(run_dir).resolve())) or _record_from_folder(run_dir)
        if record is not None:
            records.append(record)
    return records


def _record_from_folder(run_dir: str) -> dict[str, Any] | None:
    run_info = read_run_info(run_dir)
    if not run_info:
        return None
    metrics = run_info["metrics"]
    return {
        "run_id": run_info["run_id"],
        "status": run_info["status"],
        "config": run_info["config"],
        "best_epoch": metrics.get("best_epoch"),
        "val_accuracy": metrics.get("val_accuracy"),
        "history": metrics.get("history") or [],
        "run_dir": run_dir,
        "estimate": metrics.get("estimate"),
    }


def _best_val_accuracy(record: dict[str, Any]) -> float | None:
    if record.get("val_accuracy") is not None:
        return float(record["val_accuracy"])
    best = record.get("best_epoch")
    for m in record["history"]:
        if m.get("epoch") == best and m.get("val_accuracy") is not None:
            return float(m["val_accuracy"])
    values = [m["val_accuracy"] for m in record["history"] if m.get("val_accuracy") is not None]
    return max(values) if values else None


# --------------------------------------------------------------------------------------------------- panels
def _draw_progress(snapshot: jobs.JobSnapshot) -> None:
    if snapshot.status == "queued":
        place = f" (place {snapshot.queue_position} in the queue)" if snapshot.queue_position else ""
        if snapshot.expected_start_seconds is not None:
            place += f", expected to start in {_format_eta(snapshot.expected_start_seconds).removesuffix(' left')}"
        st.info(
            f"⏳ Queued{place}: this machine trains one model at a time, and another session's run is training. "
            "Yours starts by itself when that one ends; you can leave this page open or come back later.",
        )
        return
    if snapshot.phase in ("starting", "features") and not snapshot.steps:
        share = snapshot.info.get("cache_progress")
        text = (
            "Computing features (cached for later runs)…"
            if snapshot.phase == "features"
            else "Loading the backbone and preparing the data…"
        )
        if share:
            text += f" {share:.0%}"
        if snapshot.phase == "features" and snapshot.eta_seconds is not None:
            text += f" · {_format_eta(snapshot.eta_seconds)} for this pass"
        st.progress(float(share or 0.0), text=text)
        return
    text = f"{snapshot.progress:.0%} done · {_format_eta(snapshot.eta_seconds)}"
    last_step = snapshot.steps[-1] if snapshot.steps else {}
    note, refitting = last_step.get("note"), last_step.get("phase") == "refit"
    if note and (refitting or not snapshot.epochs):  # a phase without epochs: CV folds, tuning, the refit
        text += f" · {note}"
    if snapshot.epochs and not refitting:
        last = snapshot.epochs[-1]
        accuracy = last.get("val_accuracy")
        text += f" · epoch {last.get('epoch')}" + (f", validation accuracy {accuracy:.1%}" if accuracy else "")
    st.progress(min(1.0, max(0.0, snapshot.progress)), text=text)


def _draw_charts(snapshot: jobs.JobSnapshot, key: str) -> None:
    left, right = st.columns([2, 3])
    with left:
        st.plotly_chart(step_chart(snapshot), width="stretch", key=f"steps-{key}")
    with right:
        st.plotly_chart(epoch_chart(snapshot.epochs, snapshot.best_epoch), width="stretch",
                        key=f"epochs-{key}")


def _draw_cache_note(snapshot: jobs.JobSnapshot) -> None:
    if snapshot.cache_mode == "none" and snapshot.cache_note:
        st.caption(f"🐢 Caching is off: {snapshot.cache_note}")
    elif snapshot.cache_note:
        st.caption(f"⚡ {snapshot.cache_note}")


@st.fragment(run_every=3.0)
def queued_panel(job_id: str) -> None:
    """A queued job's place, redrawn every 3 s on its own; the whole page switches to the live panel once it starts.

    Cheap on purpose: in a class most sessions wait here at once, and the server redraws every waiting panel (no
    charts, a slower beat than the live panel's).
    """
    job = jobs.get(job_id)
    if job is None:
        st.warning("This training job is no longer known to the server (it was restarted). Its record is kept.")
        return
    snapshot = job.snapshot()
    if snapshot.status != jobs.QUEUED:
        st.rerun()  # it started (or ended): the whole page redraws with the live panel
    _draw_progress(snapshot)
    if st.button("🛑 Cancel", key="train-cancel", help="Takes the run out of the queue: it never starts."):
        job.cancel()
        st.toast("Cancelled.")


@st.fragment(run_every=1.0)
def live_panel(job_id: str) -> None:
    """Redrawn every second on its own: progress, live charts and the Stop button while the job is active."""
    job = jobs.get(job_id)
    if job is None:
        st.warning("This training job is no longer known to the server (it was restarted). Its record is kept.")
        return
    snapshot = job.snapshot()
    _draw_progress(snapshot)
    _draw_cache_note(snapshot)
    stop, cancel, _ = st.columns([1, 1, 3])
    if stop.button("⏹️ Stop training", key="train-stop", help="Stops within one batch; the best epoch so far is kept."):
        job.stop()
        st.toast("Stopping after the current batch…")
    if cancel.button("🛑 Cancel", key="train-cancel",
                     help="Ends the training process at once, mid-batch: no model is kept from this run, but Resume "
                     "continues it from its last finished epoch."):
        job.cancel()
        st.toast("Cancelled.")
    _draw_charts(snapshot, "live")
    if not snapshot.is_active:
        st.rerun()  # the whole page redraws once with the results


def _adopt_finished_run(state: StudioState, job: jobs.TrainingJob) -> None:
    """A finished run with a saved model becomes the session's model for step 5 (once)."""
    if job.status not in ("completed", "stopped") or not has_model(job.run_dir):
        return
    if job.status == "stopped" and job.snapshot().best_epoch is None:
        return  # stopped before a first epoch ended: the head is untrained
    if job.run_dir not in state.runs:
        state.runs.append(job.run_dir)
        state.run_dir = job.run_dir
        st.rerun()  # once more, so the sidebar (drawn before this page) shows the trained model


def draw_finished(state: StudioState, job: jobs.TrainingJob) -> None:
    snapshot = job.snapshot()
    _adopt_finished_run(state, job)
    if snapshot.status == "failed":
        st.error(f"Training failed: {snapshot.error}", icon="❌")
        st.caption("The run is recorded as failed. Change the settings above (a smaller batch size, another "
                   "device) or the data, and train again.")
    elif snapshot.status in ("cancelled", "interrupted"):
        st.warning(f"{snapshot.status.capitalize()}: {snapshot.error or 'the training process was ended at once'}. "
                   "No model is kept from this run; Resume continues it from its last finished epoch.", icon="🛑")
    elif snapshot.status == "stopped":
        if job.run_dir in state.runs:
            st.warning(f"Stopped. The best epoch so far ({snapshot.best_epoch}) is kept as the model.", icon="⏹️")
        else:
            st.warning("Stopped before a first epoch finished, so there is no model from this run.", icon="⏹️")
    else:
        estimate = (read_run_info(job.run_dir).get("metrics") or {}).get("estimate")
        if estimate:
            _draw_estimate(snapshot, estimate)
        else:
            accuracy = next(
                (m.get("val_accuracy") for m in snapshot.epochs if m.get("epoch") == snapshot.best_epoch), None
            )
            best = f" Best epoch: {snapshot.best_epoch}" if snapshot.best_epoch is not None else ""
            acc = f", validation accuracy {accuracy:.1%}." if accuracy is not None else "."
            st.success(f"Training finished in {snapshot.elapsed_seconds:.0f} s.{best}{acc}", icon="✅")
    _draw_cache_note(snapshot)
    if snapshot.steps or snapshot.epochs:
        _draw_charts(snapshot, "done")


def _draw_estimate(snapshot: Any, estimate: dict[str, Any]) -> None:
    """The finished run's headline: accuracy with its 95 % interval and n, and a plain word when that interval
    does not rule out guessing (always answering the largest class)."""
    low, high = estimate["accuracy_interval95"]
    where = f"{estimate['folds']}-fold cross-validated" if estimate["protocol"] == "cross-validation" else "Test"
    best = next((m for m in snapshot.epochs if m.get("epoch") == snapshot.best_epoch), {})
    chosen = f" L2 strength {best['l2']:g} chosen by cross-validation." if best.get("l2") is not None else ""
    sentence = (f"Training finished in {snapshot.elapsed_seconds:.0f} s. {where} accuracy {estimate['accuracy']:.1%} "
                f"(95 % interval {low:.1%}–{high:.1%}, n = {estimate['n']}).{chosen}")  # fmt: skip
    supports = [row["support"] for row in estimate.get("per_class", [])]
    guessing = max(supports) / max(sum(supports), 1) if supports else 0.0
    if low <= guessing:
        st.warning(f"{sentence} That is **no better than guessing**: always answering the largest class scores "
                   f"{guessing:.0%}, inside the interval. More or clearer examples, or another backbone, may help.",
                   icon="⚠️")  # fmt: skip
    else:
        st.success(sentence, icon="✅")


def _estimate_words(estimate: dict[str, Any] | None) -> tuple[float | None, str, str]:
    """A run's recorded estimate as (accuracy in %, its 95 % interval, how and on how many examples)."""
    if not estimate or estimate.get("accuracy") is None:
        return None, "", ""
    low, high = estimate.get("accuracy_interval95") or (None, None)
    interval = f"{100 * low:.1f}–{100 * high:.1f} %" if low is not None and high is not None else ""
    how = (f"{estimate.get('folds')}-fold cross-validation" if estimate.get("protocol") == "cross-validation"
           else "test split")  # fmt: skip
    return round(100 * float(estimate["accuracy"]), 1), interval, f"{how}, n = {estimate.get('n')}"


def draw_runs(state: StudioState) -> None:
    """Every run this session started (failed and stopped ones too), named by what sets it apart and compared by
    its recorded accuracy with its interval; the chosen model goes to step 5."""
    started = state.scratch.get("train_run_dirs", [])
    records = _run_records(list(dict.fromkeys([*state.runs, *started])))
    if not records:
        return
    st.subheader("Runs in this session")
    labels = compare.differing_labels([r["config"] for r in records], [r["run_id"] for r in records])
    for record, run_label in zip(records, labels, strict=True):
        record["label"] = run_label
    rows = []
    for record in records:
        config = record["config"]
        accuracy, interval, how = _estimate_words(record.get("estimate"))
        best = _best_val_accuracy(record)
        rows.append({
            "settings": record["label"],
            "accuracy": accuracy,
            "95 % interval": interval,
            "estimated by": how,
            "status": f"{STATUS_ICONS.get(record['status'], '')} {record['status']}",
            "model for step 5": "◀" if str(record["run_dir"]) == str(state.run_dir) else "",
            "backbone": config.get("backbone"),
            "frozen groups": config.get("frozen_groups"),
            "head": config.get("head"),
            "epochs": config.get("epochs"),
            "batch size": config.get("batch_size"),
            "learning rate": config.get("lr"),
            "augmentation": config.get("augmentation"),
            "best epoch": record["best_epoch"],
            "best val. accuracy": None if best is None else round(100 * best, 1),
            "run": record["run_id"],
        })
    st.dataframe(rows, hide_index=True, width="stretch", column_config={
        # what names a run and how well it did stay in view when the table scrolls sideways
        "settings": st.column_config.TextColumn(pinned=True, help="What sets this run apart from the others"),
        "accuracy": st.column_config.NumberColumn(
            format="%.1f %%", pinned=True, help="Cross-validated or test accuracy, as the run recorded it"),
        "best val. accuracy": st.column_config.NumberColumn(format="%.1f %%"),
    })  # fmt: skip
    ids = [r["run_id"] for r in records]
    by_id = {r["run_id"]: r for r in records}
    chosen = st.multiselect("Compare two runs", ids, default=ids[:2], max_selections=2,
                            format_func=lambda run_id: f"{by_id[run_id]['label']} · {run_id}",
                            key=f"train-compare-{len(ids)}",  # a new run resets the choice to the newest two
                            help="Their accuracy side by side, and their validation curves overlaid.")
    if chosen:
        for column, run_id in zip(st.columns(len(chosen)), chosen, strict=True):
            accuracy, interval, how = _estimate_words(by_id[run_id].get("estimate"))
            column.metric(by_id[run_id]["label"], "—" if accuracy is None else f"{accuracy:.1f} %",
                          help=f"Run {run_id}")
            column.caption(f"95 % interval {interval} · {how}" if accuracy is not None
                           else "No accuracy recorded (the run did not finish).")  # fmt: skip
        st.plotly_chart(overlay_chart([by_id[run_id] for run_id in chosen]), width="stretch", key="train-overlay")
    models = [r for r in records if str(r["run_dir"]) in state.runs]
    if len(models) > 1:
        model_ids = [r["run_id"] for r in models]
        current = next((r["run_id"] for r in models if str(r["run_dir"]) == str(state.run_dir)), model_ids[0])
        pick = st.selectbox("Model to test in step 5", model_ids, index=model_ids.index(current),
                            key=f"train-pick-{len(model_ids)}",  # a new model starts out as the chosen one
                            help="Step 5 tests and exports this run's best checkpoint.")
        state.run_dir = str(by_id[pick]["run_dir"])
