"""What the Train head and Fine-tune pages share: the live job panel (status, progress, Stop, failure, curves).

Everything shown is read from the run folder (status.json, progress.json,
history.jsonl), which the job's worker process writes: a second browser, the CLI
and a restarted server show the same. Only the queue position comes from this
server's JobManager.
"""
from __future__ import annotations

import time

import streamlit as st

from core.config import RunConfig
from core.errors import UserError
from core.training import runs
from core.training.jobs import JOB_RUNNING
from core.training.progress import ProgressRecord
from pages._common import POLL_SECONDS, job_manager, state
from pages._curves import learning_curves

STOP_NOW_AFTER_S = 5.0  # "Stop now" is offered when a stop has not ended the job by then
BATCH_STAGES = ("training", "reading images")  # stages whose batch counter means something


def setting_differences(config: RunConfig) -> list[str]:
    """The settings `config` (a run's) used that differ from the session's current
    choices, in words: "image size 96 px (now 160 px)"."""
    data, model, augment = state("data_config"), state("model_config"), state("augment_config")
    differences = []
    if (config.data.source, config.data.name) != (data.source, data.name):
        differences.append(f"data {config.data.source} · {config.data.name or 'shapes'} (now {data.source} · "
                           f"{data.name or 'shapes'})")
    if config.data.image_size != data.image_size:
        differences.append(f"image size {config.data.image_size} px (now {data.image_size} px)")
    if (config.model.backbone, config.model.weights) != (model.backbone, model.weights):
        differences.append(f"backbone {config.model.backbone} with {config.model.weights} weights "
                           f"(now {model.backbone} with {model.weights} weights)")
    if config.augment != augment:
        differences.append("augmentation (changed since)")
    return differences


def name_differences(run: runs.Run) -> None:
    """Say which settings the shown run used where they differ from the current choices."""
    try:
        differences = setting_differences(run.config)
    except UserError:  # an unreadable config is reported by the panel itself
        return
    if differences:
        st.info(f"Run `{run.id}` used other settings than your current choices: {'; '.join(differences)}. "
                "Its results are for its own settings.", icon=":material/difference:")


def outcome_text(run: runs.Run, status: dict) -> str | None:
    """What a stop did, in words: "Stopped after epoch 3; best weights kept."."""
    if status["status"] != runs.STOPPED:
        return None
    history = run.history()
    if not history:
        return "Stopped before the first epoch ended; nothing was saved."
    last = history[-1]["epoch"]
    if status.get("stopped_now"):
        return (f"Stopped now: the job's process was ended during epoch {last + 1}; the history up to "
                f"epoch {last} and the last saved model are kept.")
    return f"Stopped after epoch {last}; best weights kept."


@st.cache_data(max_entries=16, show_spinner=False)
def _history(path: str, mtime_ns: int, size: int) -> list[dict]:
    """A run's history, read again only when history.jsonl changed."""
    return runs.Run(path).history()


@st.cache_resource(max_entries=16, show_spinner=False)
def _curves(path: str, mtime_ns: int, size: int, smoothing: float):
    """The curves figure of one version of a run's history: a poll that finds the same
    history reuses the figure instead of building it again."""
    return learning_curves(_history(path, mtime_ns, size), smoothing)


def job_panel(run: runs.Run, smoothing: float = 0.0, results=None) -> None:
    """Status, progress, Stop (and Stop now), live curves and then `results(run)` of one run.

    Polls while the run was active when the page was drawn; when its status changes
    (it starts, ends, fails), the whole page reruns once, so the sidebar and the
    results follow, and the polling stops with the job.
    """
    drawn = run.status()["status"]

    @st.fragment(run_every=POLL_SECONDS if drawn in runs.ACTIVE_STATUSES else None)
    def panel():
        status = run.status()
        if status["status"] != drawn:
            st.rerun()  # the page (and the sidebar) follow the new state
        _panel(run, status, smoothing)
        if results is not None and status["status"] not in runs.ACTIVE_STATUSES:  # not while saving, evaluating
            results(run)

    panel()


def _panel(run: runs.Run, status: dict, smoothing: float) -> None:
    manager = job_manager()
    job = manager.get(run.id)
    st.markdown(f"**Run** `{run.id}` — **{status['status']}**")
    if status["status"] == runs.QUEUED:
        waiting = [j.run_id for j in manager.queued()]
        if run.id not in waiting:  # handed to a worker process that has not reported yet
            st.info("Starting: a worker process is taking the job.", icon=":material/hourglass_top:")
        else:
            running = [j.run_id for j in manager.running()]
            at_once = "one job runs" if manager.workers == 1 else f"{manager.workers} jobs run"
            st.info(f"Queued: number {waiting.index(run.id) + 1} in line; {at_once} at a time per server"
                    + (f" (now running: {', '.join(running)})." if running else "."), icon=":material/schedule:")
            if st.button("Remove from queue", key=f"unqueue-{run.id}"):
                manager.stop(run.id)
    if status["status"] == runs.RUNNING:
        progress_ui(ProgressRecord.from_dict(run.progress()))
        _stop_buttons(run, job)
    failure_ui(status)
    outcome = outcome_text(run, status)
    if outcome:
        st.info(outcome, icon=":material/stop_circle:")
    if status["status"] == runs.INTERRUPTED:
        st.warning(f"{status.get('error', 'Interrupted.')} The history so far and the last saved model are kept.")
    stat = _history_stat(run)
    if stat is not None:
        st.plotly_chart(_curves(str(run.path), *stat, smoothing), width="stretch", key=f"curves-{run.id}")
    elif status["status"] == runs.RUNNING:
        st.caption("Curves appear after the first epoch.")


def _history_stat(run: runs.Run) -> tuple[int, int] | None:
    try:
        stat = (run.path / runs.HISTORY_FILE).stat()
    except FileNotFoundError:
        return None
    return (stat.st_mtime_ns, stat.st_size) if stat.st_size else None


def _stop_buttons(run: runs.Run, job) -> None:
    asked = run.stop_requested_at()
    if asked is None:
        if st.button("Stop", icon=":material/stop_circle:", key=f"stop-{run.id}"):
            run.request_stop()
            st.toast("Stopping after the current batch; the best weights so far are kept.")
        return
    waited = time.time() - asked
    st.caption(f"Stopping after the current batch (asked {waited:.0f} s ago)...")
    can_kill = waited >= STOP_NOW_AFTER_S and job is not None and job.state == JOB_RUNNING
    if can_kill and st.button("Stop now", icon=":material/cancel:", key=f"stop-now-{run.id}", type="primary",
                              help="End the job's process at once: the history so far and the last saved model "
                                   "are kept."):
        job_manager().kill(run.id)


def failure_ui(status: dict, what: str = "The job") -> None:
    """A failed run's error box and its hint (from status.json); nothing for other statuses."""
    if status["status"] != runs.FAILED:
        return
    st.error(status.get("error") or f"{what} failed.", icon=":material/error:")
    if status.get("hint"):
        st.info(status["hint"], icon=":material/lightbulb:")


#: How the progress names a phase (`ProgressRecord.phase`).
PHASE_NAMES = {"head": "Head", "fine_tune": "Fine-tuning"}


def progress_ui(record: ProgressRecord) -> None:
    """A job's progress record (stage, epoch, batch, rate, ETA, metrics) as progress bars and captions."""
    stage = record.stage or "starting"
    initial = record.initial
    if initial:
        st.caption(f"Before training (untrained head on validation): loss {initial.get('loss', 0):.3f}, "
                   f"accuracy {initial.get('accuracy', 0):.3f}")
    epochs = record.epochs
    if stage == "training" and epochs:
        done = record.epoch_in_phase or 0
        st.progress(min(done / epochs, 1.0),
                    text=f"{PHASE_NAMES.get(record.phase, record.phase or '')}: {done} of {epochs} epochs done")
    batches = record.batches or 0
    if stage == "sweep" and batches:
        st.progress(min((record.batch or 0) / batches, 1.0),
                    text=f"Try several: {record.batch or 0} of {batches} trials done · ETA {record.eta_seconds or 0:.0f} s")
    elif batches and (stage in BATCH_STAGES or stage.startswith("extracting features")):
        batch = record.batch or 0
        rate = (f"{record.images_per_second or 0:.0f} images/s · ETA {record.eta_seconds or 0.0:.0f} s" if batch
                else "measuring speed...")  # no rate or ETA before the first batch has ended
        st.progress(min(batch / batches, 1.0), text=f"{stage}: batch {batch} of {batches} · {rate}")
    else:
        st.progress(0.0, text=f"{stage}...")
    metrics = record.metrics or {}
    if metrics and stage == "training":
        st.caption(" · ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
