"""Model: the backbone, its new head, which layers are frozen and how many parameters train."""
import threading

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from core.config import AugmentConfig, ModelConfig
from core.errors import UserError
from core.model.augmentation import build_augmentation
from core.model.backbones import BACKBONES, WeightsUnavailableError
from core.model.build import (
    POOLING_LAYERS,
    build_model,
    compile_model,
    count_params,
    layer_table,
    summary_text,
)
from core.model.trainable_api import trainable_api_demo
from pages._common import (
    WEIGHTS_UNAVAILABLE,
    current_data,
    seed_widget,
    show_error,
    state,
)
from pages._cut import cut_ui

PREPROCESSING = {
    "tf": "scales pixels to [-1, 1]",
    "caffe": "RGB to BGR, then subtracts the ImageNet mean",
    "torch": "scales to [0, 1], then normalises by the ImageNet mean and std",
    "none": "takes raw [0, 255] pixels (preprocesses inside itself)",
}
WEIGHTS = {"imagenet": "ImageNet (pretrained)", "none": "None (random init)", "file": "Weights file"}
COLOURS = {"trainable": "#e8590c", "frozen": "#adb5bd"}


def describe(name: str) -> str:
    spec = BACKBONES[name]
    return f"{name} · {spec.params / 1e6:.1f}M params · {spec.download_mb:g} MB"


def backbones_table(image_size: int) -> pd.DataFrame:
    return pd.DataFrame([
        {
            "backbone": spec.name,
            "params": spec.params,
            "download (MB)": spec.download_mb,
            "preprocessing": f"{spec.preprocessing}: {PREPROCESSING[spec.preprocessing]}",
            "default size": spec.default_size,
            "ImageNet sizes": spec.allowed_sizes(),
            f"cached at {image_size} px": spec.weights_cached(image_size),
        }
        for spec in BACKBONES.values()
    ])


def choose_weights(current: str) -> str | None:
    """The weights setting; None while a weights file is chosen but its path is empty."""
    seed_widget("model_weights", current if current in ("imagenet", "none") else "file")
    seed_widget("model_weights_path", "" if current in ("imagenet", "none") else current)
    choice = st.radio("Weights", list(WEIGHTS), format_func=WEIGHTS.get, key="model_weights")
    if choice != "file":
        return choice
    path = st.text_input("Weights file (.h5 / .weights.h5)", key="model_weights_path").strip()
    return path or None


def use_random_weights() -> None:
    st.session_state["model_weights"] = "none"


@st.cache_resource(show_spinner="Building the model...", max_entries=4)
def built_model(config: ModelConfig, image_size: int, num_classes: int, augment: AugmentConfig):
    """The model for these choices (a `Classifier`), and the lock that guards its `trainable` flags.

    Sessions share the cached model: each one sets the freezing it wants and reads
    the counts while holding the lock, so it never reports another session's state.
    """
    model = build_model(config, num_classes, image_size, build_augmentation(augment))
    return model, threading.Lock()


@st.cache_data(show_spinner="Running the experiments...")
def api_demo() -> list[dict]:
    return trainable_api_demo()


def inspect_freezing(classifier, lock, fine_tune_at: str | None, freeze_batchnorm: bool, num_classes: int) -> dict:
    """Freeze, recompile and measure in one step, so the numbers are this session's truth."""
    with lock:
        start = classifier.freeze(fine_tune_at, freeze_batchnorm)
        compile_model(classifier.model, num_classes=num_classes)
        return {
            "start": start,
            "counts": count_params(classifier.model),
            "layers": layer_table(classifier),
            "summary": summary_text(classifier, expand_nested=True),
        }


def depth_figure(layers: list[dict], start: int, backbone_depth: int):
    """A bar per layer (its params, log scale) coloured by whether it trains, with the cut marked."""
    frame = pd.DataFrame(layers)
    frame["state"] = np.where(frame["trainable"], "trainable", "frozen")
    figure = px.bar(
        frame, x="index", y="params", color="state", log_y=True, color_discrete_map=COLOURS,
        hover_data=["name", "type", "part"], labels={"index": "layer index", "params": "parameters"},
    )
    figure.add_vrect(x0=backbone_depth - 0.5, x1=len(frame) - 0.5, fillcolor="#e8590c", opacity=0.08,
                     line_width=0, annotation_text="head", annotation_position="top left")
    if start < backbone_depth:
        figure.add_vline(x=start - 0.5, line_dash="dash", annotation_text=f"cut: layer {start}")
    figure.update_yaxes(dtick=1)  # a tick per power of ten
    figure.update_layout(bargap=0.05, height=320, margin=dict(t=30, b=10), legend_title_text="")
    return figure


def show_api_demo() -> None:
    with st.expander("Trainable API, live", key="model_api_demo", on_change="rerun",
                     icon=":material/science:") as panel:
        st.caption("The Keras guide's experiments with `trainable`, run here on this server: the code, then what it measured.")
        if not panel.open:
            return
        for experiment in api_demo():
            st.markdown(f"**{experiment['title']}**")
            code, measured = st.columns([3, 2])
            code.code(experiment["code"], language="python")
            measured.json(experiment["measured"])


st.title("Model")
st.caption(
    "A pretrained backbone with a new head on top. Which layers are frozen decides "
    "what training can change, and how much it costs."
)

previous = state("model_config")
image_size = state("data_config").image_size

st.subheader("Backbone and head")
seed_widget("model_backbone", previous.backbone)
backbone_name = st.selectbox("Backbone", list(BACKBONES), format_func=describe, key="model_backbone")
spec = BACKBONES[backbone_name]
cached = "cached" if spec.weights_cached(image_size) else f"not cached, {spec.download_mb:g} MB to download"
st.caption(
    f"Preprocessing (a layer inside the model): **{spec.preprocessing}**, {PREPROCESSING[spec.preprocessing]}. "
    f"ImageNet input sizes: {spec.allowed_sizes()}. Weights at {image_size} px: {cached}."
)
with st.expander("Compare backbones"):
    st.dataframe(backbones_table(image_size), hide_index=True)

columns = st.columns(4)
with columns[0]:
    weights = choose_weights(previous.weights)
seed_widget("model_pooling", previous.pooling)
pooling = columns[1].radio("Pooling", list(POOLING_LAYERS), key="model_pooling",
                           help="avg: GlobalAveragePooling2D; flatten: the book's VGG16 head.")
seed_widget("model_hidden_units", previous.hidden_units)
hidden_units = columns[2].number_input("Hidden units", 0, 4096, step=32, key="model_hidden_units",
                                       help="A hidden Dense(relu) layer before the logits (0 = none).")
seed_widget("model_dropout", previous.dropout)
dropout = columns[3].slider("Dropout", 0.0, 0.9, step=0.05, key="model_dropout")
if weights is None:
    st.info("Enter the path of a weights file for the backbone.", icon=":material/upload_file:")
    st.stop()

config = ModelConfig(backbone_name, weights, pooling, int(hidden_units), float(dropout))
st.session_state["model_config"] = config
if backbone_name != previous.backbone:
    st.session_state.pop("fine_tune_at", None)  # a cut belongs to the backbone it was chosen on
if weights == "none":
    st.warning("Random weights: the backbone has learned nothing yet, so this trains from scratch "
               "and needs far more data and epochs than transfer learning.", icon=":material/warning:")

data = current_data()
if data is None:
    st.stop()
try:
    model, lock = built_model(config, image_size, data.num_classes, state("augment_config"))
    st.session_state.pop(WEIGHTS_UNAVAILABLE, None)
except WeightsUnavailableError as error:
    st.session_state[WEIGHTS_UNAVAILABLE] = ((config.backbone, image_size), error)
    show_error(error)
    st.button("Continue from random weights (weights: none)", key="model_use_random_weights",
              on_click=use_random_weights, icon=":material/casino:", type="primary")
    st.stop()
except UserError as error:
    show_error(error)
    st.stop()

st.subheader("What trains")
if weights == "none":
    st.info("With random weights a frozen backbone only computes random features: "
            "unfreeze all to train the whole network from scratch.", icon=":material/lightbulb:")
else:
    st.info(
        "Train the head first, with the backbone frozen: the new head starts random, and its large "
        "gradients would wreck the pretrained features. Unfreeze only once the head has converged.",
        icon=":material/lightbulb:",
    )
fine_tune_at, freeze_batchnorm = cut_ui(backbone_name, model, st.session_state.get("fine_tune_at"),
                                        st.session_state.get("freeze_batchnorm", False), key="model")
st.session_state["fine_tune_at"] = fine_tune_at
st.session_state["freeze_batchnorm"] = freeze_batchnorm
if fine_tune_at is not None:
    st.caption(
        "Fine-tune at a learning rate 10-100x lower than the head's (e.g. 1e-5 after 1e-3): big steps "
        "would erase what the backbone learned. BatchNormalization stays in inference mode (the backbone "
        "is called with training=False), so its moving mean and variance never update, even when unfrozen."
    )

truth = inspect_freezing(model, lock, fine_tune_at, freeze_batchnorm, data.num_classes)
counts = truth["counts"]
columns = st.columns(4)
columns[0].metric("Total params", f"{counts['total_params']:,}")
columns[1].metric("Trainable params", f"{counts['trainable_params']:,}")
columns[2].metric("Non-trainable params", f"{counts['non_trainable_params']:,}")
columns[3].metric("Trainable weight tensors", f"{counts['trainable_weight_tensors']:,}")
st.caption(f"{counts['trainable_params'] / counts['total_params']:.2%} of the parameters train, "
           f"as the compiled model reports them.")

st.plotly_chart(depth_figure(truth["layers"], truth["start"], model.depth), width="stretch")
st.dataframe(pd.DataFrame(truth["layers"]), hide_index=True, width="stretch", height=300)
with st.expander("Keras summary (compiled)"):
    st.code(truth["summary"], language=None)

show_api_demo()
