"""The shared sidebar: current choices and the state of the workflow."""
import streamlit as st

from core.training import runs
from pages._common import job_manager, runs_dir, state


def render(container) -> None:
    data, model, augment = state("data_config"), state("model_config"), state("augment_config")
    with container:
        st.subheader("Current choices")
        source = "shapes" if data.source == "demo" else data.name
        st.markdown(
            f"**Dataset:** {data.source} · {source}  \n"
            f"**Image size:** {data.image_size} px · batch {data.batch_size}  \n"
            f"**Backbone:** {model.backbone} ({model.weights} weights)"
        )
        from core.model.augmentation import to_spec

        st.caption(f"Augmentation: {to_spec(augment)}")
        st.subheader("Workflow")
        for step, done in workflow_steps():
            st.markdown(f"{':material/check_circle:' if done else ':material/radio_button_unchecked:'} {step}")
        st.caption(job_status())


def workflow_steps() -> list[tuple[str, bool]]:
    """Each step of the workflow and whether the session has done it (read from its run on disk)."""
    session = st.session_state
    run = runs.Run(runs_dir() / session["head_run_id"]) if session.get("head_run_id") else None
    metrics = run.read_json("metrics.json", default={}) if run is not None else {}
    return [
        ("Data loaded", bool(session.get("data_loaded"))),
        ("Augmentation previewed", bool(session.get("augmentation_previewed"))),
        ("Head trained", "head" in metrics),
        ("Fine-tuned", "fine_tune" in metrics),
    ]


def job_status() -> str:
    """One line on the server's background worker: what runs, how many wait."""
    manager = job_manager()
    current, queued = manager.current(), len(manager.queued())
    if current is None:
        return "No training job running."
    stage = current.progress.snapshot().get("stage", "starting")
    return f"Running `{current.run_id}` ({stage})" + (f", {queued} queued." if queued else ".")
