"""The training-settings form of the Train head and Fine-tune pages.

`training_form_ui` draws one form for either phase (the head, or fine-tuning that
continues a head) and returns the user's settings as a `TrainConfig` and whether
Start was pressed; the learning-rate presets of both phases live here.
"""
from __future__ import annotations

import dataclasses
import math

import streamlit as st

from core.config import TrainConfig
from core.model.build import OPTIMIZERS

CUSTOM = "Custom"
#: The head's presets: the Keras guide's and the TF tutorial's rates.
HEAD_PRESETS = {"Adam 1e-3 (Keras guide)": ("adam", 1e-3), "Adam 1e-4 (TF tutorial)": ("adam", 1e-4)}
MIN_LEARNING_RATE = 1e-7
MAX_EPOCHS = 200
MAX_PATIENCE = 50
MAX_VIEWS = 8
#: Fine-tuning wants a rate 10-100x below the head's; one less than this many times lower gets a warning.
FINE_TUNE_RATE_DROP = 5


def fine_tune_presets(head: TrainConfig) -> dict[str, tuple[str, float]]:
    """The fine-tuning presets: the references' fixed rates, and 10x or 100x below the head's rate."""
    return {
        "Adam 1e-5 (Keras guide)": ("adam", 1e-5),
        "RMSprop 1e-5 (TF tutorial)": ("rmsprop", 1e-5),
        "1/10 of the head's rate": (head.optimizer, head.learning_rate / 10),
        "1/100 of the head's rate": (head.optimizer, head.learning_rate / 100),
    }


def preset_of(presets: dict[str, tuple[str, float]], optimizer: str, learning_rate: float) -> str:
    """The preset giving this optimizer and rate, else "Custom": settings loaded from a
    run keep their rate instead of being replaced by the first preset."""
    for name, (preset_optimizer, rate) in presets.items():
        if preset_optimizer == optimizer and math.isclose(rate, learning_rate):
            return name
    return CUSTOM


def within(value, low, high=None):
    """`value` moved into [low, high], for a widget's default: settings loaded from a
    run (one made with the CLI, say) may lie outside the form's range."""
    value = max(value, low)
    return value if high is None else min(value, high)


def rate_warning(fine_tune: TrainConfig, head: TrainConfig) -> str | None:
    """A warning when fine-tuning's rate is less than FINE_TUNE_RATE_DROP times below the head's."""
    if fine_tune.learning_rate > head.learning_rate / FINE_TUNE_RATE_DROP:
        return (f"{fine_tune.learning_rate:g} is close to the head's {head.learning_rate:g}: fine-tuning usually "
                "wants a 10-100x lower rate.")
    return None


def training_form_ui(config: TrainConfig, *, key: str, start_label: str, head: TrainConfig | None = None,
                     disabled: bool = False) -> tuple[TrainConfig, bool]:
    """The settings of one training phase, started at `config`, in the form `key`.

    head: the head settings a fine-tuning continues (its presets derive from them, and
        the form offers a separate head learning rate); None for the head's own form
        (which offers ReduceLROnPlateau, class weights and the fast path's views).
    Returns `config` with the form's values (a preset other than Custom sets the
    optimizer and rate) and whether `start_label` was pressed (never while `disabled`).
    """
    presets = HEAD_PRESETS if head is None else fine_tune_presets(head)
    with st.form(key, enter_to_submit=False):  # Enter in a field must not start a run
        names = [*presets, CUSTOM]
        preset = st.radio("Learning rate preset", names, horizontal=True,
                          index=names.index(preset_of(presets, config.optimizer, config.learning_rate)))
        cols = st.columns(4)
        optimizer = cols[0].selectbox("Optimizer", OPTIMIZERS, index=OPTIMIZERS.index(config.optimizer))
        learning_rate = cols[1].number_input("Learning rate (Custom)", MIN_LEARNING_RATE, None,
                                             within(config.learning_rate, MIN_LEARNING_RATE), format="%.7f",
                                             help="Too high a rate diverges: the job then stops and says so.")
        epochs = cols[2].number_input("Epochs", 1, MAX_EPOCHS, within(config.epochs, 1, MAX_EPOCHS))
        patience = cols[3].number_input("Early stopping patience (0 = off)", 0, MAX_PATIENCE,
                                        within(config.early_stopping_patience, 0, MAX_PATIENCE))
        cols = st.columns(4)
        restore_best = cols[0].checkbox("Restore best epoch", config.restore_best)
        fast_path = cols[1].checkbox("Fast path (cached features)", config.fast_path,
                                     help="Run the frozen layers once over several augmented views of each image "
                                          "instead of every epoch, and train on their cached outputs. Same model, "
                                          "much faster.")
        if head is None:
            changes = dict(
                reduce_lr_on_plateau=cols[2].checkbox("ReduceLROnPlateau", config.reduce_lr_on_plateau),
                class_weights=cols[3].checkbox("Class weights", config.class_weights,
                                               help="Weigh rare classes up on unbalanced data."),
                views=int(st.slider("Augmented views stored per image (fast path)", 1, MAX_VIEWS,
                                    within(config.views, 1, MAX_VIEWS))),
            )
        else:
            separate = cols[2].checkbox("Separate head learning rate", config.head_learning_rate is not None)
            head_rate = cols[3].number_input("Head learning rate (when separate)", MIN_LEARNING_RATE, None,
                                             within(config.head_learning_rate or head.learning_rate,
                                                    MIN_LEARNING_RATE), format="%.7f")
            changes = dict(head_learning_rate=float(head_rate) if separate else None)
        start = st.form_submit_button(start_label, type="primary", icon=":material/play_arrow:", disabled=disabled)
    if preset != CUSTOM:
        optimizer, learning_rate = presets[preset]
    settings = dataclasses.replace(config, optimizer=optimizer, learning_rate=float(learning_rate), epochs=int(epochs),
                                   early_stopping_patience=int(patience), restore_best=restore_best,
                                   fast_path=fast_path, **changes)
    return settings, start
