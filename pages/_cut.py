"""The unfreeze-point chooser (the cut) of the Model and Fine-tune pages.

`cut_ui` draws the "Unfreeze" radio, the layer index slider or layer name picker and
the BatchNormalization checkbox, and returns what the user chose as `TrainConfig`
takes it (`fine_tune_at`, `freeze_batchnorm`; see `core.model.classifier.Classifier.freeze`).
"""
from __future__ import annotations

import streamlit as st

from core.config import DEFAULT_FINE_TUNE, TUTORIAL_CUT
from core.errors import UserError
from core.model.backbones import get_backbone_spec
from pages._common import seed_widget

UNFREEZE = {
    "frozen": "Backbone frozen (train the head)",
    "all": "Unfreeze all",
    "index": "Unfreeze from layer index",
    "name": "Unfreeze from layer name",
}


def default_cut(backbone_name: str, classifier) -> int:
    """The backbone's default cut (`core.model.backbones.Backbone.fine_tune_at`), as a layer index."""
    return classifier.cut_at(get_backbone_spec(backbone_name).fine_tune_at)


def stored_cut(classifier, fine_tune_at: str | None) -> int | None:
    """The backbone layer index `fine_tune_at` points to, if it names one of the backbone's layers."""
    if fine_tune_at in (None, "all"):
        return None
    try:
        index = classifier.cut_at(fine_tune_at)
    except UserError:
        return None
    return index if index < classifier.depth else None


def mode_of(fine_tune_at: str | None) -> str:
    """The radio option (a key of UNFREEZE) that `fine_tune_at` is written in."""
    if fine_tune_at is None:
        return "frozen"
    if fine_tune_at == "all":
        return "all"
    return "index" if str(fine_tune_at).isdigit() else "name"


def cut_ui(backbone_name: str, classifier, fine_tune_at: str | None, freeze_batchnorm: bool, *, key: str,
           frozen: bool = True) -> tuple[str | None, bool]:
    """The unfreeze control for `classifier` (a `core.model.classifier.Classifier`), started at `fine_tune_at` and `freeze_batchnorm` (the stored
    choice) unless the user has changed it; widget keys start with `key` ("model" gives
    "model_unfreeze", "model_unfreeze_index:<backbone>", ...). `frozen`: offer "Backbone
    frozen" (the Model page); without it (Fine-tune) a frozen stored choice starts at the cut.

    Returns (fine_tune_at, freeze_batchnorm): None (backbone frozen), "all", a layer index
    as digits or a layer name; and whether BatchNormalization layers stay frozen.
    """
    modes = list(UNFREEZE) if frozen else [mode for mode in UNFREEZE if mode != "frozen"]
    mode_key = f"{key}_unfreeze"
    seed_widget(mode_key, mode_of(fine_tune_at) if mode_of(fine_tune_at) in modes else "index")
    mode = st.radio("Unfreeze", modes, format_func=UNFREEZE.get, key=mode_key, horizontal=True)
    if mode == "frozen":
        chosen = None
    elif mode == "all":
        chosen = "all"
    else:
        chosen = _layer_ui(backbone_name, classifier, fine_tune_at, mode, key)
    batchnorm_key = f"{key}_freeze_batchnorm"
    seed_widget(batchnorm_key, freeze_batchnorm)
    freeze = st.checkbox("Keep BatchNormalization frozen", key=batchnorm_key, disabled=chosen is None,
                         help="Also stops training their scale and offset (gamma, beta).")
    return chosen, freeze


def _layer_ui(backbone_name: str, classifier, fine_tune_at: str | None, mode: str, key: str) -> str:
    """The first trainable layer, by index (digits) or by name."""
    names = [layer.name for layer in classifier.backbone.layers]
    start = stored_cut(classifier, fine_tune_at)
    start = default_cut(backbone_name, classifier) if start is None else start
    if mode == "index":
        index_key = f"{key}_unfreeze_index:{backbone_name}"
        seed_widget(index_key, start)
        index = st.slider(f"First trainable layer (of {len(names)})", 0, len(names) - 1, key=index_key,
                          help=f"Layers from this index on train. For MobileNetV2 the default is "
                               f"{DEFAULT_FINE_TUNE.fine_tune_at} (its last three blocks); the TF tutorial "
                               f"unfreezes from {TUTORIAL_CUT}, for about twice the fine-tuning time.")
        st.caption(f"Layer {index} is `{names[index]}`.")
        return str(index)
    name_key = f"{key}_unfreeze_name:{backbone_name}"
    seed_widget(name_key, names[start])
    layer_name = st.selectbox("First trainable layer", names, key=name_key,
                              help="This layer and those after it train; the book unfreezes VGG16 from block5_conv1.")
    st.caption(f"`{layer_name}` is layer {names.index(layer_name)}.")
    return layer_name
