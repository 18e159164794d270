"""Quick tries, shared UI pieces: "features cached" before Start, the learning-rate finder,
"Try several" (a sweep over head settings) and the caches' size with a Clear button.

Each piece is one call from its page (Train head, Fine-tune, Runs). Long work runs
as a job on the server's worker (`core.workflow.lr_find_job`, `sweep_job`) and is
drawn from the run directory inside `st.fragment(run_every=...)` while it runs.
"""
from __future__ import annotations

import dataclasses
import functools

import pandas as pd
import plotly.express as px
import streamlit as st

from core import workflow
from core.config import TrainConfig
from core.data import image_cache
from core.training import feature_cache, runs, sweep
from pages._common import (
    POLL_SECONDS,
    RUN_PARAM,
    SWEEP_KEY,
    current_data,
    job_manager,
    live_job,
    lr_find_key,
    open_run,
    runs_dir,
    session_run_config,
    size_text,
    state,
    user_errors,
    with_fine_tune,
)
from pages._run_picker import run_status
from pages._training import failure_ui, progress_ui

CACHED = "Features cached: the frozen backbone will not run."


def cache_note_ui(head: TrainConfig) -> None:
    """Before Start: whether head training with `head` reads every feature from the cache."""
    data = current_data()
    if data is None or not head.fast_path:
        return
    if feature_cache.head_features_cached(session_run_config(head), data):
        st.success(CACHED, icon=":material/bolt:")
    else:
        st.caption(f"Features not cached yet: the frozen backbone runs once over {head.views} augmented view(s) "
                   "of every image and the validation images; runs with the same data, backbone, size, "
                   "augmentation, views and seed then read them from disk.")


def train_head_ui(head: TrainConfig) -> None:
    """The Train head page's quick tries: the cache note, the learning-rate finder and "Try several"."""
    cache_note_ui(head)
    lr_finder_ui("head", head=head)
    sweep_ui(head)


def lr_finder_ui(phase: str, head: TrainConfig | None = None, run: runs.Run | None = None,
                 fine_tune: TrainConfig | None = None) -> None:
    """The learning-rate finder for the head (`head`: the form's settings) or for
    fine-tuning `run` (with the form's `fine_tune` settings): a job, then loss
    against rate (log axis) with the suggestion marked and a button that puts the
    suggestion on the form."""
    key = lr_find_key(phase)
    with st.expander("Learning-rate finder", icon=":material/query_stats:",
                     expanded=st.session_state.get(key) is not None):
        st.caption("Trains a throwaway copy for a few hundred batches while the learning rate grows "
                   "exponentially (fastai's lr_find, on the cached features), and suggests the rate where "
                   "the loss falls fastest.")
        if st.button("Find the learning rate", key=f"lr_find_{phase}", icon=":material/query_stats:"):
            with user_errors():
                if phase == "head":
                    target = runs.Run.create(runs_dir(), session_run_config(head, name="learning-rate finder"))
                else:
                    target = with_fine_tune(run, fine_tune)
                job_manager().submit(target, functools.partial(workflow.lr_find_job, phase=phase))
                st.session_state[key] = target.id
        run_id = st.session_state.get(key)
        if run_id:
            _lr_finder_panel(run_id, phase)


def _lr_finder_panel(run_id: str, phase: str) -> None:
    @st.fragment(run_every=POLL_SECONDS if live_job(run_id) else None)
    def panel():
        found_run = open_run(run_id)
        if found_run is None:
            return
        live = live_job(run_id)
        if live is not None:
            progress_ui(live.progress.snapshot())
            return
        status = found_run.status()
        if status["status"] == runs.FAILED:
            failure_ui(status, "The learning-rate finder")
            return
        found = found_run.read_json(workflow.LR_FIND_FILE, default={}).get(phase)
        if not found:
            return
        suggestion = found["suggestion"]
        frame = pd.DataFrame({"learning rate": found["rates"], "loss (smoothed)": found["losses"]})
        figure = px.line(frame, x="learning rate", y="loss (smoothed)", log_x=True)
        figure.add_vline(x=suggestion, line_dash="dash", line_color="green",
                         annotation_text=f"suggested {suggestion:.1e}")
        figure.update_layout(height=300, margin=dict(t=30, b=10))
        st.plotly_chart(figure, width="stretch", key=f"lr-curve-{phase}-{run_id}")
        if st.button(f"Use {suggestion:.1e} on the form", key=f"lr_use_{phase}", icon=":material/check:"):
            form_key = "head_config" if phase == "head" else "fine_tune_config"
            current = st.session_state.get(form_key) or state(form_key)
            st.session_state[form_key] = dataclasses.replace(current, learning_rate=float(suggestion))
            st.rerun()

    panel()


def sweep_ui(head: TrainConfig) -> None:
    """"Try several": an Optuna search over head settings on the cached features, with a
    live table and chart; its best trial is trained as a normal run to fine-tune."""
    with st.expander("Try several (hyperparameter sweep)", icon=":material/tune:",
                     expanded=st.session_state.get(SWEEP_KEY) is not None):
        st.caption("Trains a fresh head per trial on the cached features with Optuna's TPE sampler, over learning "
                   "rate, dropout, hidden units, epochs, optimizer and class weights; the best trial (validation "
                   "accuracy) then becomes a normal run you can fine-tune.")
        trials = st.number_input("Trials", 2, 200, 20, key="sweep_trials")
        if st.button("Try several", icon=":material/tune:", key="sweep_start"):
            with user_errors():
                sweep_run = runs.Run.create(runs_dir(), session_run_config(head, name="sweep"))
                job_manager().submit(sweep_run, functools.partial(workflow.sweep_job, trials=int(trials)))
                st.session_state[SWEEP_KEY] = sweep_run.id
        run_id = st.session_state.get(SWEEP_KEY)
        if run_id:
            _sweep_panel(run_id)


def _sweep_panel(run_id: str) -> None:
    @st.fragment(run_every=POLL_SECONDS if live_job(run_id) else None)
    def panel():
        sweep_run = open_run(run_id)
        if sweep_run is None:
            return
        live = live_job(run_id)
        if live is not None:
            progress_ui(live.progress.snapshot())
            if st.button("Stop the sweep", key=f"sweep-stop-{run_id}", icon=":material/stop_circle:"):
                job_manager().stop(run_id)
        status = sweep_run.status()
        failure_ui(status, "The sweep")
        record = sweep_run.read_json(workflow.SWEEP_FILE, default={})
        rows = record.get("trials", [])
        if not rows:
            return
        frame = pd.DataFrame(rows)
        figure = px.scatter(frame, x="trial", y="val_accuracy", color="optimizer",
                            hover_data=["learning_rate", "dropout", "hidden_units", "epochs", "class_weights"])
        figure.update_layout(height=280, margin=dict(t=20, b=10), yaxis_title="validation accuracy")
        st.plotly_chart(figure, width="stretch", key=f"sweep-chart-{run_id}")
        scores = ["trial", "val_accuracy", "val_loss", "epoch"]
        table = frame[scores + [column for column in frame.columns if column not in scores]]
        st.dataframe(table.rename(columns={"epoch": "best epoch"}), hide_index=True, width="stretch",
                     column_config={"learning_rate": st.column_config.NumberColumn(format="%.1e"),
                                    "best epoch": st.column_config.NumberColumn(
                                        help="The epoch with the best validation accuracy, of the trial's epochs")})
        best_run = record.get("best_run")
        if not best_run:
            if live is None and status["status"] == runs.STOPPED:
                _stopped_sweep_ui(rows)
            return
        best = f"Best {_trial_text(record['best'])}"
        if live is not None:
            st.info(f"{best}: training it as run `{best_run}`...", icon=":material/hourglass_top:")
            return
        trained = open_run(best_run)
        best_status = run_status(trained) if trained is not None else "deleted"
        if best_status != runs.FINISHED:
            st.warning(f"{best}: its run `{best_run}` did not finish ({best_status}).", icon=":material/stop_circle:")
            _use_settings_button(record["best"])
            return
        st.success(f"{best} trained as run `{best_run}`.", icon=":material/emoji_events:")
        # A link, not a button that switches page: this panel reruns on a timer while the sweep
        # runs, and a page switch from inside it once left a trial's browser on a blank page.
        # The page it opens follows the run named in its URL (`sync_url`), with its settings.
        st.page_link("pages/fine_tune.py", label="Fine-tune the best trial", icon=":material/arrow_forward:",
                     query_params={RUN_PARAM: best_run})

    panel()


def _stopped_sweep_ui(rows: list[dict]) -> None:
    """A sweep stopped before its best trial became a run: say so, and offer the best
    trial so far's settings on the form."""
    best = sweep.best_row(rows)
    st.warning(f"The sweep was stopped after {len(rows)} trial(s), so no run was trained from them. "
               f"The best so far is {_trial_text(best)}.", icon=":material/stop_circle:")
    _use_settings_button(best)


def _trial_text(row: dict) -> str:
    """'trial N (validation accuracy A; ...)', with how `sweep.best_row` breaks ties."""
    return f"trial {row['trial']} (validation accuracy {row['val_accuracy']:.3f}; a tie goes to the lower validation loss)"


def _use_settings_button(row: dict) -> None:
    """A button that puts a trial's settings on the head form (and the Model page's dropout and hidden units)."""
    if st.button(f"Put trial {row['trial']}'s settings on the form", key="sweep_use_best", icon=":material/check:"):
        chosen = sweep.apply(session_run_config(), row)
        st.session_state["head_config"], st.session_state["model_config"] = chosen.head, chosen.model
        st.rerun()


def cache_section_ui() -> None:
    """The on-disk caches' sizes against their bounds, and a Clear button (refused while a job runs)."""
    st.subheader("Caches")
    features, images = feature_cache.store(), image_cache.store()
    cols = st.columns(3)
    cols[0].metric("Cached features", size_text(features.size_bytes()),
                   help=f"Bound: {features.limit_bytes / 1e9:g} GB (TL_FEATURE_CACHE_GB); least recently used first.")
    cols[1].metric("Decoded images", size_text(images.size_bytes()),
                   help=f"Bound: {images.limit_bytes / 1e9:g} GB (TL_IMAGE_CACHE_GB).")
    if cols[2].button("Clear the caches", icon=":material/delete_sweep:", key="clear_caches"):
        if job_manager().current() is not None:
            st.warning("A job is running and may be reading or writing the caches: clear them when it ends.",
                       icon=":material/schedule:")
        else:
            features.clear()
            images.clear()
            st.toast("Caches cleared: the next run decodes the images and runs the frozen backbone again.")
            st.rerun()
