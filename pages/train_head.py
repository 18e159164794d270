"""Train head: train a new classifier on top of the frozen pretrained backbone, in the background."""
import dataclasses

import streamlit as st

from core import workflow
from core.data.image_data import IMBALANCE_RATIO
from core.data.report import REPORT_FILE
from core.results.chance import chance_level_warning
from core.training import runs
from pages import _quick_tries as quick_tries
from pages._common import (
    current_data,
    follow,
    followed_run,
    job_manager,
    known_missing_weights,
    runs_dir,
    session_run_config,
    show_error,
    state,
    user_errors,
)
from pages._train_form import training_form_ui
from pages._training import job_panel, name_differences


def head_results(run) -> None:
    """The head phase's scores, once it has saved its model."""
    if not run.model_path("head").is_file():
        return
    metrics = run.read_json("metrics.json", default={})
    cols = st.columns(4)
    initial, head_metrics = metrics.get("initial", {}), metrics.get("head", {})
    if initial:
        cols[0].metric("Validation accuracy before training", f"{initial.get('accuracy', 0):.3f}")
    if head_metrics.get("val_accuracy") is not None:
        cols[1].metric("Best validation accuracy", f"{head_metrics['val_accuracy']:.3f}")
    if head_metrics.get("test_accuracy") is not None:
        cols[2].metric("Test accuracy", f"{head_metrics['test_accuracy']:.3f}")
    if head_metrics:
        cols[3].metric("Training path", "features" if head_metrics.get("path") == "features" else "full model",
                       help=f"{head_metrics.get('seconds', 0):.1f} s")
    validation = run.read_json(REPORT_FILE, default={}).get("counts", {}).get("validation", {})
    warning = chance_level_warning(head_metrics.get("val_accuracy"), list(validation.values()))
    if warning:
        st.warning(warning, icon=":material/warning:")
    else:
        st.success("Head trained. Next: Fine-tune, at a much lower learning rate.", icon=":material/check_circle:")


st.title("Train head")
st.caption(
    "The backbone stays frozen: only the new head learns, so its large early gradients cannot wreck the "
    "pretrained features. Train it to convergence before fine-tuning."
)

missing_weights = known_missing_weights()
head, start = training_form_ui(dataclasses.replace(state("head_config"), fine_tune_at=None), key="head_form",
                               start_label="Start head training", disabled=missing_weights is not None)
if missing_weights is not None:  # the run would fail at once: say so now, with the way out
    show_error(missing_weights)
    st.page_link("pages/model.py", label="Model page: continue from random weights", icon=":material/casino:")
st.session_state["head_config"] = head

data = current_data()
if data is not None and data.imbalance() > IMBALANCE_RATIO and not head.class_weights:
    st.warning("Classes are unbalanced: consider class weights.", icon=":material/balance:")
quick_tries.train_head_ui(head)

if start and data is not None:
    with user_errors():
        run = runs.Run.create(runs_dir(), session_run_config(head))
        job_manager().submit(run, workflow.head_job)
        follow(run)
        st.session_state["head_run_id"] = run.id  # Fine-tune continues this run, even before it ends
        st.session_state.pop("fine_tune_run_id", None)

shown = followed_run()
if shown is not None:
    name_differences(shown)
    job_panel(shown, results=head_results)
else:
    st.info("Press Start: training runs in the background, so you can switch pages and come back.")
