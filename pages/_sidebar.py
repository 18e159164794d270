"""The shared sidebar: current choices and the state of the workflow of the followed run."""
from pathlib import Path

import streamlit as st

from core.model.augmentation import to_spec
from core.training import runs
from pages._common import TOOL_KEYS, followed_run, job_manager, open_run, state
from pages._run_picker import run_status


def render(container) -> None:
    data, model, augment = state("data_config"), state("model_config"), state("augment_config")
    with container:
        st.subheader("Current choices")
        source = "shapes" if data.source == "demo" else _data_name(data)
        st.markdown(
            f"**Dataset:** {data.source} · {source}  \n"
            f"**Image size:** {data.image_size} px · batch {data.batch_size}  \n"
            f"**Backbone:** {model.backbone} ({model.weights} weights)"
        )
        st.caption(f"Augmentation: {to_spec(augment)}")
        st.subheader("Workflow")
        for step, done in workflow_steps():
            st.markdown(f"{':material/check_circle:' if done else ':material/radio_button_unchecked:'} {step}")
        st.caption(job_status())


def _data_name(data) -> str:
    """An uploaded zip by its file name, not the path of its extracted copy in the cache."""
    return Path(data.name).name if data.source == "zip" else data.name


def workflow_steps() -> list[tuple[str, bool]]:
    """Each step of the workflow and whether the session has done it; the steps follow
    the run the session follows (read from its run folder): a run that trained had its
    data loaded and its augmentation chosen, also in a session reopened from its link."""
    session = st.session_state
    run = followed_run() or open_run(session.get("head_run_id"))
    metrics = run.read_json("metrics.json", default={}) if run is not None else {}
    trained = "head" in metrics
    return [
        ("Data loaded", bool(session.get("data_loaded")) or trained),
        ("Augmentation previewed", bool(session.get("augmentation_previewed")) or trained),
        ("Head trained", "head" in metrics),
        ("Fine-tuned", "fine_tune" in metrics),
    ]


def job_status() -> str:
    """One line on the run this session follows, read from its folder, and the server's queue."""
    run = followed_run()
    status = run_status(run) if run is not None else None
    manager = job_manager()
    waiting = len(manager.queued())
    queue = f" {waiting} queued on this server." if waiting else ""
    if status in runs.ACTIVE_STATUSES:
        return f"Run `{run.id}` is {status}." + queue
    # A job whose run has ended may still be running for a moment (its process exiting): not counted.
    active = [job for job in manager.running()
              if job.run_id != (run.id if run else None) and run_status(job.run) in runs.ACTIVE_STATUSES]
    tools = {st.session_state.get(key): name for key, name in TOOL_KEYS.items()}
    own = [tools[job.run_id] for job in active if job.run_id in tools]
    if own:
        return f"Your {own[0]} is running." + queue
    if active:
        return f"None of your runs is training; this server is training {len(active)} other run(s)." + queue
    return "Nothing is training on this server." + queue
