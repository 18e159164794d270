"""Train head: train a new classifier on top of the frozen pretrained backbone, in the background."""
import dataclasses

import streamlit as st

from core import workflow
from core.config import RunConfig
from core.data.report import REPORT_FILE
from core.model.build import OPTIMIZERS
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
    show_error,
    state,
    user_errors,
)
from pages._training import job_panel, name_differences, preset_of, within

LEARNING_RATES = {"Adam 1e-3 (Keras guide)": ("adam", 1e-3), "Adam 1e-4 (TF tutorial)": ("adam", 1e-4)}

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

config = state("head_config")
with st.form("head_form"):
    presets = [*LEARNING_RATES, "Custom"]
    preset = st.radio("Learning rate preset", presets, horizontal=True,
                      index=presets.index(preset_of(LEARNING_RATES, config.optimizer, config.learning_rate)))
    cols = st.columns(4)
    optimizer = cols[0].selectbox("Optimizer", OPTIMIZERS, index=OPTIMIZERS.index(config.optimizer))
    learning_rate = cols[1].number_input("Learning rate (Custom)", 1e-6, None, within(config.learning_rate, 1e-6),
                                         format="%.6f", help="Too high a rate diverges: the job then stops and says so.")
    epochs = cols[2].number_input("Epochs", 1, 200, within(config.epochs, 1, 200))
    patience = cols[3].number_input("Early stopping patience (0 = off)", 0, 50,
                                    within(config.early_stopping_patience, 0, 50))
    cols = st.columns(4)
    restore_best = cols[0].checkbox("Restore best epoch", config.restore_best)
    reduce_lr = cols[1].checkbox("ReduceLROnPlateau", config.reduce_lr_on_plateau)
    weighted = cols[2].checkbox("Class weights", config.class_weights, help="Weigh rare classes up on unbalanced data.")
    fast_path = cols[3].checkbox("Fast path (cached features)", config.fast_path,
                                 help="Run the frozen backbone once over several augmented views of each image "
                                      "instead of every epoch. Same model, much faster.")
    views = st.slider("Augmented views stored per image (fast path)", 1, 8, within(config.views, 1, 8))
    missing_weights = known_missing_weights()
    start = st.form_submit_button("Start head training", type="primary", icon=":material/play_arrow:",
                                  disabled=missing_weights is not None)
if missing_weights is not None:  # the run would fail at once: say so now, with the way out
    show_error(missing_weights)
    st.page_link("pages/model.py", label="Model page: continue from random weights", icon=":material/casino:")

if preset != "Custom":
    optimizer, learning_rate = LEARNING_RATES[preset]
head = dataclasses.replace(
    config, optimizer=optimizer, learning_rate=float(learning_rate), epochs=int(epochs),
    early_stopping_patience=int(patience), restore_best=restore_best, reduce_lr_on_plateau=reduce_lr,
    class_weights=weighted, fast_path=fast_path, views=int(views), fine_tune_at=None,
)
st.session_state["head_config"] = head

data = current_data()
if data is not None and data.imbalance() > 3 and not head.class_weights:
    st.warning("Classes are unbalanced: consider class weights.", icon=":material/balance:")
quick_tries.train_head_ui(head)

if start and data is not None:
    with user_errors():
        run_config = RunConfig(data=state("data_config"), augment=state("augment_config"),
                               model=state("model_config"), head=head, seed=state("data_config").seed)
        run = runs.Run.create(runs_dir(), run_config)
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
