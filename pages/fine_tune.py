"""Fine-tune: unfreeze the top of the backbone and continue training at a low learning rate."""
import dataclasses

import streamlit as st

from core import workflow
from core.config import DEFAULT_FINE_TUNE, TrainConfig, default_fine_tune
from core.model.backbones import get_backbone_spec
from core.model.build import count_params
from core.model.classifier import Classifier
from core.training import runs
from pages import _quick_tries as quick_tries
from pages._common import (
    follow,
    job_manager,
    metric_delta,
    open_run,
    runs_dir,
    session_run_config,
    user_errors,
    with_fine_tune,
)
from pages._cut import cut_ui
from pages._run_models import cached_model, has_model, model_version
from pages._run_picker import run_picker_ui, run_status
from pages._train_form import rate_warning, training_form_ui
from pages._training import job_panel, name_differences


def tuned_results(run) -> None:
    """The fine-tuning phase's scores against the head's, once it has finished."""
    metrics = run.read_json("metrics.json", default={})
    if "fine_tune" not in metrics:
        return
    head_metrics, tuned = metrics.get("head", {}), metrics["fine_tune"]
    cols = st.columns(2)
    cols[0].metric("Validation accuracy after fine-tuning", f"{tuned.get('val_accuracy', 0):.3f}",
                   **metric_delta(tuned.get('val_accuracy', 0) - head_metrics.get('val_accuracy', 0), "+.3f",
                                  " vs head"))
    if tuned.get("test_accuracy") is not None:
        cols[1].metric("Test accuracy after fine-tuning", f"{tuned['test_accuracy']:.3f}",
                       **metric_delta(tuned['test_accuracy'] - head_metrics.get('test_accuracy', 0), "+.3f",
                                      " vs head"))


st.title("Fine-tune")
st.caption(
    "Unfreeze the top of the backbone and train it together with the head at a learning rate 10-100x lower, "
    "so the pretrained features adapt a little to your data without being destroyed. BatchNormalization "
    "stays in inference mode (the backbone runs with training=False)."
)


def pick_head_run() -> runs.Run | None:
    """The head run to continue: this session's latest, or one picked from the runs with a trained head."""
    latest = open_run(st.session_state.get("head_run_id"))
    if latest is not None and not latest.model_path("head").is_file():
        status = run_status(latest)
        if status in runs.ACTIVE_STATUSES:
            st.info(f"The head of run `{latest.id}` is still {status}: fine-tuning can continue it once it has "
                    "finished (watch it on the Train head page), or pick a finished run below.",
                    icon=":material/hourglass_top:")
    candidates = [run for run in runs.list_runs(runs_dir()) if has_model(run, "head")]
    if not candidates:
        return None
    return run_picker_ui(candidates, key="fine_tune_head_run", preferred=st.session_state.get("head_run_id"),
                         label="Head run to continue",
                         help="The latest head run of this session is picked first; any run with a trained head "
                              "can be fine-tuned.")


run = pick_head_run()
if run is None:
    st.warning("Train the head first (Train head page): fine-tuning with a random head sends large gradients "
               "through the backbone and wrecks its pretrained features.", icon=":material/warning:")
    if st.checkbox("I know: build a fresh model and fine-tune it with an untrained head anyway"):
        st.error("Expect the pretrained features to be damaged in the first epochs.", icon=":material/dangerous:")
        if st.button("Create the model and fine-tune it (all layers)"):
            with user_errors():
                base = session_run_config(TrainConfig(epochs=0),
                                          fine_tune=dataclasses.replace(DEFAULT_FINE_TUNE, fine_tune_at="all"))
                created = runs.Run.create(runs_dir(), base)
                job_manager().submit(created, workflow.full_job)
                follow(created)
                st.session_state["head_run_id"] = st.session_state["fine_tune_run_id"] = created.id
                st.rerun()
    st.stop()

head = run.config.head
st.markdown(f"Continuing run `{run.id}` (head: {head.optimizer} at {head.learning_rate:g}, {head.epochs} epochs).")
name_differences(run)


config = st.session_state.get("fine_tune_config") or default_fine_tune(
    head, st.session_state.get("fine_tune_at") or get_backbone_spec(run.config.model.backbone).fine_tune_at)
with user_errors():
    classifier = Classifier.from_keras(cached_model(str(run.path), "head", model_version(run, "head"))[0])
    fine_tune_at, freeze_bn = cut_ui(run.config.model.backbone, classifier, config.fine_tune_at,
                                     config.freeze_batchnorm, key="fine_tune", frozen=False)

    start = classifier.freeze(fine_tune_at, freeze_bn)
    counts = count_params(classifier.model)
    classifier.freeze(None)
    depth = classifier.depth
    cols = st.columns(3)
    cols[0].metric("Trainable parameters", f"{counts['trainable_params']:,}")
    cols[1].metric("Non-trainable parameters", f"{counts['non_trainable_params']:,}")
    cols[2].metric("Trainable backbone layers", f"{depth - start} of {depth}")

    fine_tune, go = training_form_ui(
        dataclasses.replace(config, fine_tune_at=fine_tune_at, freeze_batchnorm=freeze_bn),
        key="fine_tune_form", start_label="Start fine-tuning", head=head)
    st.session_state["fine_tune_config"] = fine_tune
    if warning := rate_warning(fine_tune, head):
        st.warning(warning, icon=":material/warning:")
    quick_tries.lr_finder_ui("fine_tune", run=run, fine_tune=fine_tune)

    if go:
        job_manager().submit(with_fine_tune(run, fine_tune), workflow.fine_tune_job)
        follow(run)
        st.session_state["fine_tune_run_id"] = run.id

smoothing = 0.8 if st.toggle("Smoothed curves (exponential moving average, as in Deep Learning with Python)") else 0.0
job_panel(run, smoothing, results=tuned_results)
