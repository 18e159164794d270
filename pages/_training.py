"""What the Train head and Fine-tune pages share: the live job panel and the curves."""
from __future__ import annotations

import math

import pandas as pd
import plotly.express as px
import streamlit as st

from core.results.curves import curve_rows, fine_tune_start
from core.training import runs
from pages._common import job_manager, runs_dir

POLL_SECONDS = 1.0


def attached_run_id(key: str = "run_id") -> str | None:
    """The run this session follows; a new session re-attaches to the live job, and
    keeps following it after it ends."""
    run_id = st.session_state.get(key)
    if run_id is None:
        current = job_manager().current()
        if current is not None:
            run_id = st.session_state[key] = current.run_id
    return run_id


def preset_of(presets: dict[str, tuple[str, float]], optimizer: str, learning_rate: float) -> str:
    """The preset giving this optimizer and rate, else "Custom": settings loaded from a
    run keep their rate instead of being replaced by the first preset."""
    for name, (preset_optimizer, rate) in presets.items():
        if preset_optimizer == optimizer and math.isclose(rate, learning_rate):
            return name
    return "Custom"


def within(value, low, high=None):
    """`value` moved into [low, high], for a widget's default: settings loaded from a
    run (one made with the CLI, say) may lie outside the form's range."""
    value = max(value, low)
    return value if high is None else min(value, high)


def open_run(run_id: str) -> runs.Run | None:
    path = runs_dir() / run_id
    return runs.Run(path) if (path / runs.CONFIG_FILE).is_file() else None


def learning_curves(history: list[dict], smoothing: float = 0.0):
    """Loss and accuracy for train and validation, epochs continuing across phases,
    with the tutorial's "start fine-tuning" marker."""
    frame = pd.DataFrame(curve_rows(history, smoothing))
    figure = px.line(frame, x="epoch", y="value", color="split", facet_col="metric", markers=True,
                     color_discrete_map={"train": "#1f77b4", "validation": "#e8590c"})
    figure.update_yaxes(matches=None, showticklabels=True)
    figure.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1].capitalize()))
    marker = fine_tune_start(history)
    if marker is not None:
        figure.add_vline(x=marker + 0.5, line_dash="dash", line_color="green",
                         annotation_text="Start fine-tuning", annotation_position="bottom right")
    figure.update_layout(height=360, margin=dict(t=40, b=10), legend_title_text="")
    if len({record["epoch"] for record in history}) <= 20:
        figure.update_xaxes(dtick=1)  # whole epochs
    return figure


def job_panel(run_id: str, smoothing: float = 0.0, results=None) -> None:
    """Status, progress, Stop, live curves and then `results(run)` of one run.

    Polls while the job was active when the page was drawn, so what the job ends
    with appears by itself; no full-page rerun, which could swallow a click on
    another page. The next interaction redraws the page and the polling stops.
    """
    manager = job_manager()
    job = manager.get(run_id)
    active = job is not None and job.state != "done"

    @st.fragment(run_every=POLL_SECONDS if active else None)
    def panel():
        run = open_run(run_id)
        if run is None:
            st.warning(f"Run {run_id} no longer exists.")
            return
        status = run.status()
        live = manager.get(run_id)
        state = live.state if live is not None else status["status"]
        st.markdown(f"**Run** `{run_id}` — **{status['status']}**")
        if state == "queued":
            waiting = [j.run_id for j in manager.queued()]
            position = waiting.index(run_id) + 1 if run_id in waiting else "?"
            current = manager.current()
            st.info(f"Queued: number {position} in line; one job runs at a time per server"
                    + (f" (now running: {current.run_id})." if current else "."), icon=":material/schedule:")
        if state == "running":
            _progress(live.progress.snapshot())
            if st.button("Stop", icon=":material/stop_circle:", key=f"stop-{run_id}"):
                manager.stop(run_id)
                st.toast("Stopping after the current batch; the best weights so far are kept.")
        if state == "queued" and st.button("Remove from queue", key=f"unqueue-{run_id}"):
            manager.stop(run_id)
        if status["status"] == runs.FAILED:
            st.error(status.get("error") or "The job failed.", icon=":material/error:")
            if status.get("hint"):
                st.info(status["hint"], icon=":material/lightbulb:")
        if status["status"] == runs.INTERRUPTED:
            st.warning(f"{status.get('error', 'Interrupted.')} The history so far and the last saved model are kept.")
        history = run.history()
        if history:
            st.plotly_chart(learning_curves(history, smoothing), width="stretch", key=f"curves-{run_id}")
        elif state == "running":
            st.caption("Curves appear after the first epoch.")
        if results is not None:
            results(run)

    panel()


def _progress(snapshot: dict) -> None:
    stage = snapshot.get("stage", "starting")
    initial = snapshot.get("initial")
    if initial:
        st.caption(f"Before training (untrained head on validation): loss {initial.get('loss', 0):.3f}, "
                   f"accuracy {initial.get('accuracy', 0):.3f}")
    epochs = snapshot.get("epochs")
    if stage == "training" and epochs:
        done = snapshot.get("epoch_in_phase", 0)
        st.progress(min(done / epochs, 1.0), text=f"{snapshot.get('phase', '')}: epoch {done} of {epochs}")
    batches = snapshot.get("batches") or 0
    if batches:
        batch = snapshot.get("batch", 0)
        eta = snapshot.get("eta_seconds", 0.0)
        st.progress(min(batch / batches, 1.0),
                    text=f"{stage}: batch {batch} of {batches} · {snapshot.get('images_per_second', 0):.0f} images/s"
                         f" · ETA {eta:.0f} s")
    else:
        st.progress(0.0, text=f"{stage}...")
    metrics = snapshot.get("metrics") or {}
    if metrics:
        st.caption(" · ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
