"""Fine-tune: unfreeze the top of the backbone and continue training at a low learning rate."""
import dataclasses

import streamlit as st

from core import config as config_io
from core import workflow
from core.config import DEFAULT_FINE_TUNE, RunConfig, TrainConfig
from core.model.build import OPTIMIZERS, count_params
from core.model.classifier import Classifier
from core.training import runs
from pages import _quick_tries as quick_tries
from pages._common import follow, job_manager, open_run, runs_dir, state, user_errors
from pages._training import job_panel, name_differences, preset_of, within


def learning_rates(head: TrainConfig) -> dict[str, tuple[str, float]]:
    """The presets: the references' fixed rates, and 10x or 100x below the head's rate."""
    return {
        "Adam 1e-5 (Keras guide)": ("adam", 1e-5),
        "RMSprop 1e-5 (TF tutorial)": ("rmsprop", 1e-5),
        "1/10 of the head's rate": (head.optimizer, head.learning_rate / 10),
        "1/100 of the head's rate": (head.optimizer, head.learning_rate / 100),
    }


def tuned_results(run) -> None:
    """The fine-tuning phase's scores against the head's, once it has finished."""
    metrics = run.read_json("metrics.json", default={})
    if "fine_tune" not in metrics:
        return
    head_metrics, tuned = metrics.get("head", {}), metrics["fine_tune"]
    cols = st.columns(2)
    cols[0].metric("Validation accuracy after fine-tuning", f"{tuned.get('val_accuracy', 0):.3f}",
                   delta=f"{tuned.get('val_accuracy', 0) - head_metrics.get('val_accuracy', 0):+.3f} vs head")
    if tuned.get("test_accuracy") is not None:
        cols[1].metric("Test accuracy after fine-tuning", f"{tuned['test_accuracy']:.3f}",
                       delta=f"{tuned['test_accuracy'] - head_metrics.get('test_accuracy', 0):+.3f} vs head")


st.title("Fine-tune")
st.caption(
    "Unfreeze the top of the backbone and train it together with the head at a learning rate 10-100x lower, "
    "so the pretrained features adapt a little to your data without being destroyed. BatchNormalization "
    "stays in inference mode (the backbone runs with training=False)."
)


def head_runs() -> list[runs.Run]:
    """Runs with a trained head, newest first; the session's latest head run leads."""
    trained = [run for run in runs.list_runs(runs_dir()) if run.model_path("head").is_file()]
    mine = st.session_state.get("head_run_id")
    return sorted(trained, key=lambda run: run.id != mine)


def pick_head_run() -> runs.Run | None:
    """The head run to continue: this session's latest, or one picked from the list."""
    latest = open_run(st.session_state.get("head_run_id"))
    if latest is not None and not latest.model_path("head").is_file():
        status = latest.status()["status"]
        if status in runs.ACTIVE_STATUSES:
            st.info(f"The head of run `{latest.id}` is still {status}: fine-tuning can continue it once it has "
                    "finished (watch it on the Train head page), or pick a finished run below.",
                    icon=":material/hourglass_top:")
    candidates = head_runs()
    if not candidates:
        return None
    ids = [run.id for run in candidates]
    if st.session_state.get("_fine_tune_head_for") != st.session_state.get("head_run_id"):
        st.session_state.pop("fine_tune_head_run", None)  # a newer head run of this session leads again
        st.session_state["_fine_tune_head_for"] = st.session_state.get("head_run_id")
    labels = {run.id: run.id + ("  (this session's latest)" if run.id == st.session_state.get("head_run_id") else "")
              for run in candidates}
    chosen = st.selectbox("Head run to continue", ids, format_func=labels.get, key="fine_tune_head_run",
                          help="The latest head run of this session comes first; any run with a trained head "
                               "can be fine-tuned.")
    return candidates[ids.index(chosen)]


run = pick_head_run()
if run is None:
    st.warning("Train the head first (Train head page): fine-tuning with a random head sends large gradients "
               "through the backbone and wrecks its pretrained features.", icon=":material/warning:")
    if st.checkbox("I know: build a fresh model and fine-tune it with an untrained head anyway"):
        st.error("Expect the pretrained features to be damaged in the first epochs.", icon=":material/dangerous:")
        if st.button("Create the model and fine-tune it (all layers)"):
            with user_errors():
                base = RunConfig(data=state("data_config"), augment=state("augment_config"), model=state("model_config"),
                                 head=TrainConfig(epochs=0), fine_tune=dataclasses.replace(DEFAULT_FINE_TUNE, fine_tune_at="all"),
                                 seed=state("data_config").seed)
                created = runs.Run.create(runs_dir(), base)
                job_manager().submit(created, workflow.full_job)
                follow(created)
                st.session_state["head_run_id"] = st.session_state["fine_tune_run_id"] = created.id
                st.rerun()
    st.stop()

head = run.config.head
st.markdown(f"Continuing run `{run.id}` (head: {head.optimizer} at {head.learning_rate:g}, {head.epochs} epochs).")
name_differences(run)


@st.cache_resource(max_entries=2, show_spinner="Loading the trained model...")
def _head_model(path: str, mtime: float):
    """The run's head model (cached per file version), for counting what an unfreeze point trains."""
    model, _ = workflow.load_run_model(runs.Run(path), "head")
    return model


config = st.session_state.get("fine_tune_config") or dataclasses.replace(
    DEFAULT_FINE_TUNE, fine_tune_at=st.session_state.get("fine_tune_at") or DEFAULT_FINE_TUNE.fine_tune_at)
with user_errors():
    classifier = Classifier.from_keras(_head_model(str(run.path), run.model_path("head").stat().st_mtime))
    backbone_layers = [layer.name for layer in classifier.backbone.layers]

    mode = st.radio("Unfreeze", ["all", "from layer index", "from layer name"], horizontal=True,
                    index=0 if config.fine_tune_at == "all" else 2 if not str(config.fine_tune_at).isdigit() else 1)
    if mode == "all":
        fine_tune_at = "all"
    elif mode == "from layer index":
        default = int(config.fine_tune_at) if str(config.fine_tune_at).isdigit() else len(backbone_layers) * 2 // 3
        fine_tune_at = str(st.slider("First trainable layer (fine_tune_at)", 0, len(backbone_layers) - 1,
                                     min(default, len(backbone_layers) - 1)))
    else:
        name = config.fine_tune_at if config.fine_tune_at in backbone_layers else backbone_layers[len(backbone_layers) * 2 // 3]
        fine_tune_at = st.selectbox("First trainable layer", backbone_layers, index=backbone_layers.index(name))
    freeze_bn = st.checkbox("Keep BatchNormalization layers frozen", config.freeze_batchnorm)

    start = classifier.freeze(fine_tune_at, freeze_bn)
    counts = count_params(classifier.model)
    classifier.freeze(None)
    cols = st.columns(3)
    cols[0].metric("Trainable parameters", f"{counts['trainable_params']:,}")
    cols[1].metric("Non-trainable parameters", f"{counts['non_trainable_params']:,}")
    cols[2].metric("Trainable backbone layers", f"{len(backbone_layers) - start} of {len(backbone_layers)}")

    with st.form("fine_tune_form"):
        presets = learning_rates(head)
        names = [*presets, "Custom"]
        preset = st.radio("Learning rate preset", names, horizontal=True,
                          index=names.index(preset_of(presets, config.optimizer, config.learning_rate)))
        cols = st.columns(4)
        optimizer = cols[0].selectbox("Optimizer", OPTIMIZERS, index=OPTIMIZERS.index(config.optimizer))
        learning_rate = cols[1].number_input("Learning rate (Custom)", 1e-7, None, within(config.learning_rate, 1e-7),
                                             format="%.7f")
        epochs = cols[2].number_input("Epochs", 1, 200, within(config.epochs, 1, 200))
        separate = cols[3].checkbox("Separate head learning rate", config.head_learning_rate is not None)
        head_lr = st.number_input("Head learning rate (when separate)", 1e-7, None,
                                  within(config.head_learning_rate or head.learning_rate, 1e-7), format="%.7f")
        cols = st.columns(3)
        patience = cols[0].number_input("Early stopping patience (0 = off)", 0, 50,
                                        within(config.early_stopping_patience, 0, 50))
        restore_best = cols[1].checkbox("Restore best epoch", config.restore_best)
        fast_path = cols[2].checkbox("Fast path (cache the frozen layers' outputs)", config.fast_path)
        go = st.form_submit_button("Start fine-tuning", type="primary", icon=":material/play_arrow:")

    if preset != "Custom":
        optimizer, learning_rate = presets[preset]
    fine_tune = TrainConfig(
        optimizer=optimizer, learning_rate=float(learning_rate), epochs=int(epochs), fine_tune_at=fine_tune_at,
        freeze_batchnorm=freeze_bn, head_learning_rate=float(head_lr) if separate else None,
        early_stopping_patience=int(patience), restore_best=restore_best, fast_path=fast_path, views=config.views,
    )
    st.session_state["fine_tune_config"] = fine_tune
    if learning_rate > head.learning_rate / 5:
        st.warning(f"{learning_rate:g} is close to the head's {head.learning_rate:g}: fine-tuning usually wants "
                   "a 10-100x lower rate.", icon=":material/warning:")
    quick_tries.lr_finder_ui("fine_tune", run=run, fine_tune=fine_tune)

    if go:
        updated: RunConfig = dataclasses.replace(run.config, fine_tune=fine_tune)
        run.write_json("config.json", config_io.to_dict(updated))
        job_manager().submit(open_run(run.id), workflow.fine_tune_job)
        follow(run)
        st.session_state["fine_tune_run_id"] = run.id

smoothing = 0.8 if st.toggle("Smoothed curves (exponential moving average, as in Deep Learning with Python)") else 0.0
job_panel(run, smoothing, results=tuned_results)
