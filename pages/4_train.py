"""Step 4 · Train: choose hyperparameters, train in the background with live charts, compare runs.

Training runs in a `core.jobs.TrainingJob` (a worker process of its own); this page only starts, stops, cancels,
resumes and polls it. The live panel is a fragment that reruns every second on its own, so the rest of the page
stays still and usable; it, the charts and the table of runs are drawn by `pages/_train_panels.py`.
A refreshed or reopened page (a new browser session) gets its workspace's latest job and runs back
(`core.session.restore`, called by `app.py`); another workspace's jobs are never shown.
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
from pathlib import Path
from typing import Any

import streamlit as st

from core import audio_augment, compare, devices, freezing, jobs, preprocess  # noqa: F401 - imported here so the worker starts training sooner
from core.backbones import get_spec
from core.data import random_split_source
from core.session import StudioState
from core.training import (
    AUGMENTATIONS,
    MAX_VIEWS,
    SOUND_VIEWS,
    TrainConfig,
    sentence_tuning_plan,
    suggested_settings,
    train_arguments,
)
from pages._train_panels import STATUS_ICONS, draw_finished, draw_runs, live_panel, queued_panel
from pages._ui import get_state, require

log = logging.getLogger(__name__)

_ENGINE_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


# --------------------------------------------------------------------------------------------------- helpers
def _augmentation_help(modality: str) -> str:
    """What the augmentation setting does for this kind of data (sound: the recipes' own numbers)."""
    cached = " 'none' lets frozen layers be cached (much faster)."
    if modality == "text":
        return "Texts train without augmentation."
    if modality == "audio":
        return (f"Training clips only. Light: {audio_augment.describe('light')}. Strong: "
                f"{audio_augment.describe('strong')}." + cached)
    return "Random flips/crops/colour for training images." + cached


def _group_count(backbone_name: str) -> int | None:
    """How many layer groups the backbone has, from its catalogue entry (no loading); None when unknown."""
    try:
        return get_spec(backbone_name).num_groups  # counted by the backbone's family: at least 2
    except (KeyError, ValueError) as exc:  # not in this installation's catalogue, or a clip length out of range
        log.info("No layer-group count for %s: %s", backbone_name, exc)
        return None


def _defaults(state: StudioState) -> dict[str, Any]:
    """The form's starting values: the engine's suggestion for this data and freezing (`suggested_settings`)."""
    groups = _group_count(state.backbone_name) if state.backbone_name else None
    return {
        **suggested_settings(state.dataset, groups, state.frozen_groups),
        "seed": 0,
        "device": "auto",
        # the engine's own defaults, which the command line uses too (it has no flags for these two)
        "warmup_fraction": float(_ENGINE_DEFAULTS["warmup_fraction"]),
        "grad_clip": float(_ENGINE_DEFAULTS["grad_clip"] or 0.0),
    }


#: The settings whose suggested value depends on the freezing choice, in the words the form uses.
_FREEZING_DEPENDENT = (("epochs", "epochs", "{:d}"), ("lr", "learning rate", "{:g}"),
                       ("label_smoothing", "label smoothing", "{:g}"), ("batch_size", "batch size", "{:d}"))


def _defaults_note(state: StudioState) -> str | None:
    """One plain line on which suggested settings follow the freezing choice, and what they would be otherwise."""
    groups = _group_count(state.backbone_name) if state.backbone_name else None
    if groups is None:
        return None
    frozen_all = suggested_settings(state.dataset, groups, groups)
    fine_tune = suggested_settings(state.dataset, groups, 0)
    keys = [item for item in _FREEZING_DEPENDENT if frozen_all[item[0]] != fine_tune[item[0]]]
    if not keys:
        return None

    def listed(values: dict[str, Any]) -> str:
        return ", ".join(f"{name} {fmt.format(values[key])}" for key, name, fmt in keys)

    if state.frozen_groups >= groups:
        return (f"Defaults for feature extraction (every group frozen): {listed(frozen_all)}; "
                f"fine-tuning would suggest {listed(fine_tune)}.")  # fmt: skip
    return (f"Defaults for fine-tuning ({state.frozen_groups} of {groups} groups frozen): {listed(fine_tune)}; "
            f"with every group frozen they would be {listed(frozen_all)}.")  # fmt: skip


def _make_config(values: dict[str, Any]) -> Any:
    """A `TrainConfig` from the form, passing only the fields the engine declares; checked before it starts."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in values.items() if k in names})
    config.validate()
    return config


def _data_argument(state: StudioState) -> tuple[str, list[str]]:
    """What `--data` is for this data set on the command line, plus any notes about it."""
    dataset = state.dataset
    info = (state.data_report or {}).get("info", {}) if isinstance(state.data_report, dict) else {}
    if info.get("sample"):  # written by core.data.load_sample
        return f"sample-{info['sample']}", []
    if dataset.modality in ("image", "audio") and dataset.root:
        return dataset.root, []
    return f"{dataset.name}", [f"`--data`: use the path of your file `{dataset.name}` on your computer."]


def cli_command(state: StudioState, config: Any, run_dir: str) -> tuple[str, list[str]]:
    """The `python -m core train ...` line that trains exactly this run, and notes about it."""
    data, notes = _data_argument(state)
    info = (state.data_report or {}).get("info", {}) if isinstance(state.data_report, dict) else {}
    columns = {}
    if state.dataset.modality == "text" and not data.startswith("sample-"):
        columns = {"text_column": info.get("text_column"), "label_column": info.get("label_column")}
    parts = ["python", "-m", "core", "train", *train_arguments(config, data, run_dir, **columns)]
    for name, flag in (("warmup_fraction", "warm-up fraction"), ("grad_clip", "gradient clipping")):
        value, default = getattr(config, name, None), _ENGINE_DEFAULTS.get(name)
        if (value or 0) != (default or 0):
            notes.append(f"The command line has no {flag} option and uses {default}; this run used {value}.")
    split, cli_split = str(info.get("split_source", "")), random_split_source()  # the CLI loads with the defaults
    if split.startswith("random") and split != cli_split:
        notes.append(f"The command line splits the data {cli_split.removeprefix('random, ')}; this data set was split "
                     f"{split}.")
    return shlex.join(parts), notes


# ---------------------------------------------------------------------------------------------------- resume
def _resumable_runs(state: StudioState) -> list[dict[str, Any]]:
    """This browser's runs that can continue from a checkpoint: stopped, failed, cancelled or interrupted ones
    (an interrupted run lost its training process to a server restart), newest first."""
    from core.store import RunStore

    try:
        store = RunStore()
        try:
            if state.owner:
                records = store.list_runs(limit=50, owner=state.owner)
            else:  # no browser id: only the runs this session started
                mine = {str(Path(d).resolve()) for d in state.scratch.get("train_run_dirs", [])}
                records = [r for r in store.list_runs(limit=200)
                           if r.get("run_dir") and str(Path(r["run_dir"]).resolve()) in mine]
        finally:
            store.close()
    except Exception as exc:  # noqa: BLE001 - the list is a convenience; training must not depend on it
        log.warning("Could not read the run store: %s", exc)
        return []
    return [r for r in records if r["status"] in jobs.RESUMABLE_STATUSES and jobs.can_resume(r.get("run_dir"))]


def _draw_resume(state: StudioState, active: bool) -> None:
    """A Resume button for this browser's stopped, failed, cancelled or interrupted runs: each continues from its
    last finished epoch, on the data and settings it was started with."""
    runs = _resumable_runs(state)
    if not runs:
        return
    by_id = {r["run_id"]: r for r in runs}
    left, right = st.columns([3, 1])
    chosen = left.selectbox(
        "Resume a run", list(by_id), key="train-resume-pick",
        format_func=lambda run_id: f"{STATUS_ICONS.get(by_id[run_id]['status'], '')} {run_id} · "
        f"{by_id[run_id]['status']} · {by_id[run_id].get('backbone')}",
        help="Continues from the run's last finished epoch with the data and settings it was started with; "
        "the result is the same as if it had never been interrupted.",
    )
    if right.button("▶️ Resume", key="train-resume", disabled=active or chosen is None,
                    help="Another run of yours is training; wait for it or stop it first." if active else None):
        try:
            job = jobs.resume(by_id[chosen]["run_dir"], owner=state.owner)
        except (ValueError, PermissionError, OSError) as exc:
            st.error(f"Cannot resume this run: {exc}")
            return
        _attach(state, job)
        state.scratch["train_click"] = (job.job_id, job.queued_at)
        st.rerun()


def _attach(state: StudioState, job: jobs.TrainingJob) -> None:
    """Make `job` this session's run; a session that has no data yet (a fresh one after a server restart) takes
    the run's data and choices, as a refreshed page does (`core.session.restore`)."""
    state.job = job
    state.scratch.setdefault("train_run_dirs", []).append(job.run_dir)
    if state.dataset is None:
        state.dataset = job.dataset
        state.backbone_name = str(getattr(job.config, "backbone", "")) or None
        state.frozen_groups = getattr(job.config, "frozen_groups", None)


# ------------------------------------------------------------------------------------------------------- page
st.title("4 · Train")
jobs.recover_once()  # after a server restart: adopt workers still training, mark the others resumable
state = get_state()
if state.job is None and state.owner:  # a worker of this browser that a restarted server adopted
    adopted = jobs.latest(owner=state.owner)
    if adopted is not None and adopted.is_running:
        _attach(state, adopted)
if not all(state.steps_done[step] for step in ("Data", "Backbone", "Freezing")):
    _draw_resume(state, active=False)  # a fresh session after a restart can go on with a run before new choices
state = require("Data", "Backbone", "Freezing")
dataset = state.dataset

st.caption(
    f"Data **{dataset.name}** ({len(dataset.table)} examples, {dataset.num_classes} classes) · backbone "
    f"**{state.backbone_name}** · **{state.frozen_groups}** layer group(s) frozen"
)
if state.scratch.pop("train_reattached", None):
    st.info("Reattached to the latest training job of this workspace (the page was reloaded or opened anew); "
            "your earlier runs on this data are listed below.", icon="🔗")

job: jobs.TrainingJob | None = state.job
if job is not None and not job.is_running and job.dataset.fingerprint != dataset.fingerprint:
    job = state.job = None  # a finished run on other data is not this page's business any more
active = job is not None and job.is_running
defaults = _defaults(state)
others_active = [j for j in jobs.all_jobs() if j.is_running and j is not job]

HEADS = {"logistic": "Logistic regression to its optimum (recommended)", "gradient": "Gradient descent, epoch by epoch"}
head = "gradient"
if defaults["feature_extraction"]:  # outside the form, so the settings below follow the choice at once
    head = st.radio(
        "How the new head learns", list(HEADS), format_func=HEADS.get, horizontal=True, key="train_head",
        help="Every layer group is frozen, so the head is a convex problem: logistic regression on the "
        "standardised features, solved by L-BFGS with its L2 strength chosen by cross-validation, reaches the "
        "optimum in seconds. Gradient descent trains it epoch by epoch with the settings you choose.",
    )
logistic = head == "logistic"
TUNINGS = {"auto": "Auto (recommended)", "on": "Always", "off": "Never"}
REFITS = {"auto": "Auto: for small data", "on": "Always", "off": "Never"}
sentence_tuning = "auto"
if logistic and dataset.modality == "text" and get_spec(state.backbone_name).sentence_encoder:
    sentence_tuning = st.radio(
        "Tune the encoder on your texts first (SetFit-style)", list(TUNINGS), format_func=TUNINGS.get,
        horizontal=True, key="train_sentence_tuning",
        help="Fine-tunes the sentence encoder so that texts with the same label embed close together (contrastive "
        "training on pairs of your texts, as SetFit does), then fits the logistic head on the new features. Each "
        "cross-validation fold tunes its own copy, so the score stays honest. Auto first scores the head on the "
        "frozen encoder (seconds) and tunes only if that scores under 90 %, with at least 20 texts in every class "
        "and a tuning estimated under 20 minutes.",
    )
    try:
        plan = sentence_tuning_plan(dataset, TrainConfig(
            backbone=state.backbone_name, frozen_groups=int(state.frozen_groups), sentence_tuning=sentence_tuning,
            protocol=state.scratch.get("protocol", "auto")))
    except ValueError as exc:
        st.warning(str(exc))
    else:
        cost = (f" About {max(1, round(plan.cpu_minutes()))} min on a 2-core CPU, far less on a GPU."
                if plan.steps and sentence_tuning != "off" else "")
        st.caption(("🎯 " if plan.on else "") + plan.reason + cost)

with st.form("train-settings"):
    if logistic:
        st.markdown("**Settings** — the logistic head is solved to its optimum: no epochs, batch size or learning "
                    "rate apply, and its L2 strength is chosen by cross-validation.")  # fmt: skip
        class_weights = st.checkbox(
            "Class weights", defaults["class_weights"],
            help=f"Weigh rare classes more (largest/smallest class here: {defaults['imbalance']:.1f}×).",
        )
        advanced = st.expander("Advanced")
        gradient_only = st.expander("Gradient-descent settings (not used by the logistic head)")
        front = gradient_only
    else:
        st.markdown("**Hyperparameters** — the defaults suit this data and freezing; change them only with a reason.")
        note = _defaults_note(state)
        if note:
            st.caption(note)
        front = st.container()
        advanced = gradient_only = st.expander("Advanced")
    c1, c2, c3 = front.columns(3)
    epochs = c1.number_input("Epochs", 1, 500, defaults["epochs"],
                             help="Passes over the training data; early stopping may end sooner.")
    lr = c2.number_input("Learning rate", 1e-6, 1.0, defaults["lr"], format="%.5f",
                         help="Step size of the new head (AdamW, warm-up then cosine decay).")
    batch_size = c3.number_input("Batch size", 1, 1024, defaults["batch_size"],
                                 help="Examples per step; lower it if memory runs out.")
    c1, c2, _ = front.columns(3)
    augmentation = c1.selectbox(
        "Augmentation", AUGMENTATIONS, index=AUGMENTATIONS.index(defaults["augmentation"]),
        disabled=dataset.modality == "text", help=_augmentation_help(dataset.modality),
    )
    if not logistic:
        class_weights = c2.checkbox(
            "Class weights", defaults["class_weights"],
            help=f"Weigh rare classes more in the loss (largest/smallest class here: {defaults['imbalance']:.1f}×).",
        )
    c1, c2, c3 = gradient_only.columns(3)
    patience = c1.number_input("Early-stopping patience", 0, 100, defaults["patience"],
                               help="Stop after this many epochs without a better validation loss (0: never).")
    weight_decay = c2.number_input("Weight decay", 0.0, 1.0, defaults["weight_decay"], format="%.4f",
                                   help="Pulls weights towards zero to fight over-fitting.")
    label_smoothing = c3.number_input("Label smoothing", 0.0, 0.5, defaults["label_smoothing"], step=0.05,
                                      help="Softens targets so the model is less over-confident.")
    c1, c2, c3 = gradient_only.columns(3)
    backbone_lr_factor = c1.number_input(
        "Backbone LR factor", 0.0, 1.0, defaults["backbone_lr_factor"], format="%.3f",
        disabled=defaults["feature_extraction"],
        help="Unfrozen backbone layers learn at this fraction of the head's rate, so pretraining is not forgotten "
        "(no effect when every group is frozen).",
    )
    warmup_fraction = c2.number_input("Warm-up fraction", 0.0, 0.5, defaults["warmup_fraction"], step=0.05,
                                      help="Share of steps over which the rate rises from zero.")
    grad_clip = c3.number_input("Gradient clipping", 0.0, 100.0, defaults["grad_clip"],
                                help="Largest gradient norm per step (0: no clipping); steadies fine-tuning.")
    c1, c2, c3 = advanced.columns(3)
    seed = c1.number_input("Seed", 0, 2**31 - 1, defaults["seed"], help="Same seed, same data, same result.")
    device = c2.selectbox("Device", devices.available(), help="'auto' uses a CUDA GPU, then Apple MPS, then the CPU.")
    refit = "auto"
    if not logistic:
        refit = c3.selectbox(
            "Retrain on train + validation", list(REFITS), format_func=REFITS.get, key="train_refit",
            help="Once early stopping has chosen the number of epochs on the validation split, train again from "
            "the pretrained weights on train + validation for that many epochs: the delivered model learns from "
            "every label but the test split's, and the test split scores that model. About doubles the training "
            "time. Auto does it for small data sets (the rule the Data page states).",
        )
    lexical = "auto"
    if logistic and dataset.modality == "text":
        lexical = "auto" if c3.checkbox(
            "Mix in a TF-IDF word model", True, key="train_lexical",
            help="Texts: the delivered probabilities are half the network's and half a TF-IDF n-gram model's "
            "(words or character n-grams, chosen by cross-validation). It sees the exact characters (names, "
            "hashtags, codes, misspellings) that a sentence encoder blurs; the estimate scores the mix on the same "
            "folds. On the benchmark's tweets it added 1-3 points.",
        ) else "off"
    views = 0
    if logistic and dataset.modality == "image":
        views = int(c3.number_input(
            "Augmented views per image", 0, MAX_VIEWS, 0, key="train_views",
            help="Images: the head also learns from this many randomly cropped and flipped copies of each labelled "
            "image, each run once through the frozen backbone and cached (one more feature pass per view). The "
            "estimate stays honest: a copy only ever joins its own image's fold. 0 = off (the default: on the "
            "accuracy benchmark 4 views gained 5.8 / 3.8 / 1.4 points at 8 / 20 / 64 digits per class and tied on "
            "the faces, at 2-6x the training time).",
        ))
    elif logistic and dataset.modality == "audio":
        views = int(c3.number_input(
            "Augmented views per clip", 0, MAX_VIEWS, int(defaults["views"]), key="train_views",
            help="Sound clips: the head also learns from this many copies of each labelled clip, each with the "
            f"light augmentation ({audio_augment.describe('light')}), each run once through the frozen backbone "
            "and cached (one more feature pass per view). The estimate stays honest: a copy only ever joins its own "
            f"clip's fold. 0 = off. Default {SOUND_VIEWS}: on the spoken-words sample two views gained 1.6 points on "
            "average (4 seeds) and made transfer's interval clear the MFCC baseline's more often, for about 1.7x "
            "the time.",
        ))
    label = "Train in the queue" if others_active and not active else "🚀 Train"
    submitted = st.form_submit_button(label, type="primary", disabled=active, key="train-submit")

if defaults["feature_extraction"]:
    st.caption("Every layer group is frozen: features are computed once and cached, so "
               + ("the fit takes seconds." if logistic else "epochs take seconds."))
if others_active and not active:
    at_once = jobs.max_running_jobs()
    st.caption("Another session is training on this machine; a new run waits in the queue "
               f"({'one run' if at_once == 1 else f'{at_once} runs'} at a time, people taking turns).")

values = {
    "backbone": state.backbone_name,
    "frozen_groups": int(state.frozen_groups),
    "epochs": int(epochs),
    "batch_size": int(batch_size),
    "lr": float(lr),
    "weight_decay": float(weight_decay),
    "warmup_fraction": float(warmup_fraction),
    "label_smoothing": float(label_smoothing),
    "class_weights": bool(class_weights),
    "backbone_lr_factor": float(backbone_lr_factor),
    "grad_clip": float(grad_clip),
    "augmentation": augmentation if dataset.modality != "text" else "none",
    "patience": int(patience),
    "seed": int(seed),
    "device": device,
    "pretrained": True,
    "head": head,
    "protocol": state.scratch.get("protocol", "auto"),  # chosen on the Data page
    "sentence_tuning": sentence_tuning,
    "refit": refit,
    "lexical": lexical,
    "views": views,
    "clip_seconds": state.scratch.get("clip_seconds", "auto") if dataset.modality == "audio" else "auto",
}

if submitted and not active:
    try:
        config = _make_config(values)
    except (TypeError, ValueError) as exc:
        st.error(f"Cannot train with these settings: {exc}")
    else:
        job = jobs.TrainingJob(dataset, config, label=f"{state.backbone_name}, {state.frozen_groups} frozen",
                               owner=state.owner)
        job.start()
        state.job = job
        state.scratch.setdefault("train_run_dirs", []).append(job.run_dir)
        state.scratch["train_click"] = (job.job_id, job.queued_at)
        active = True

if job is not None:
    st.divider()
    # Backbone and freezing are chosen on earlier pages; when they changed since this run, the caption above no
    # longer describes it: say so, so its panel is not read as the result of the settings shown.
    changed = [f"{name} {then} (now {now})" for name, then, now in (
        ("backbone", getattr(job.config, "backbone", None), state.backbone_name),
        ("frozen groups", getattr(job.config, "frozen_groups", None), state.frozen_groups)) if then != now]  # fmt: skip
    if changed:
        st.markdown(f"**{'Run' if active else 'Previous run'} `{job.job_id}`**, with other settings than above: "
                    + "; ".join(changed) + ("." if active else ". Press Train for a run with the settings above."))
    else:
        st.markdown(f"**Run `{job.job_id}`**")
    clicked = state.scratch.get("train_click")
    if clicked and clicked[0] == job.job_id:  # what the Train click did, said once per run and kept in view
        if clicked[1] is None:
            st.caption(f"▶️ Started: your click began run `{job.job_id}` at once.")
        else:
            st.caption(f"⏳ Queued at place {clicked[1]}: your click queued run `{job.job_id}`; it starts by itself "
                       "when the runs ahead of it end.")
    if active and job.status == jobs.QUEUED:
        queued_panel(job.job_id)
    elif active:
        live_panel(job.job_id)
    else:
        draw_finished(state, job)
    command, notes = cli_command(state, job.config, job.run_dir)
    with st.expander("The same run from the command line", expanded=False):
        st.code(command, language="bash")
        for note in notes:
            st.caption(note)

_draw_resume(state, active)
draw_runs(state)

if state.run_dir and not active:
    st.page_link("pages/5_evaluate.py", label="Next: test your model", icon="🎯")
