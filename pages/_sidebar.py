"""The shared sidebar: current choices and the state of the workflow."""
import streamlit as st

from pages._common import state


def render() -> None:
    data, model, augment = state("data_config"), state("model_config"), state("augment_config")
    with st.sidebar:
        st.subheader("Current choices")
        source = "shapes" if data.source == "demo" else data.name
        st.markdown(
            f"**Dataset:** {data.source} · {source}  \n"
            f"**Image size:** {data.image_size} px · batch {data.batch_size}  \n"
            f"**Backbone:** {model.backbone} ({model.weights} weights)"
        )
        from core.augmentation import to_spec

        st.caption(f"Augmentation: {to_spec(augment)}")
        st.subheader("Workflow")
        for step, done in workflow_steps():
            st.markdown(f"{':material/check_circle:' if done else ':material/radio_button_unchecked:'} {step}")


def workflow_steps() -> list[tuple[str, bool]]:
    """Each step of the workflow and whether the session has done it."""
    session = st.session_state
    return [
        ("Data loaded", bool(session.get("data_loaded"))),
        ("Augmentation previewed", bool(session.get("augmentation_previewed"))),
        ("Head trained", bool(session.get("head_run_id"))),
        ("Fine-tuned", bool(session.get("fine_tune_run_id"))),
    ]
