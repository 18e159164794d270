"""Augmentation: configure Keras' random preprocessing layers and preview them on one image."""
import streamlit as st

from core.config import AugmentConfig
from core.model.augmentation import FLIP_MODES, preview
from pages._common import current_data, image_grid, state

st.title("Augmentation")
st.caption(
    "Random transformations applied to training images only, as layers inside the model: "
    "the model sees a slightly different image every epoch, which fights overfitting on small datasets."
)

config = state("augment_config")
cols = st.columns(3)
flip = cols[0].selectbox("RandomFlip mode", FLIP_MODES, index=FLIP_MODES.index(config.flip))
rotation = cols[1].slider("RandomRotation (fraction of a turn)", 0.0, 0.5, config.rotation, 0.01)
zoom = cols[2].slider("RandomZoom", 0.0, 0.5, config.zoom, 0.01)
cols = st.columns(3)
translation = cols[0].slider("RandomTranslation", 0.0, 0.5, config.translation, 0.01)
contrast = cols[1].slider("RandomContrast", 0.0, 1.0, config.contrast, 0.05)
brightness = cols[2].slider("RandomBrightness", 0.0, 1.0, config.brightness, 0.05)
config = AugmentConfig(flip, rotation, zoom, translation, contrast, brightness)
st.session_state["augment_config"] = config

data = current_data()
if data is not None:
    images, labels = data.splits["train"]
    cols = st.columns([2, 2, 1])
    class_name = cols[0].selectbox("Class", data.class_names)
    members = [i for i, label in enumerate(labels) if data.class_names[label] == class_name]
    position = cols[1].number_input(f"Image (1-{len(members)})", 1, len(members), 1) - 1
    if cols[2].button("New random views", icon=":material/casino:"):
        st.session_state["augment_draw"] = st.session_state.get("augment_draw", 0) + 1
    draw = st.session_state.get("augment_draw", 0)
    left, right = st.columns([1, 3])
    left.image(images[members[position]], caption="Original", width="stretch")
    with right:
        views = preview(images[members[position]], config, count=9, seed=state("data_config").seed + draw)
        image_grid(views, [f"Random view {i + 1}" for i in range(9)])
    st.session_state["augmentation_previewed"] = True
    st.caption("This configuration is kept for the model you build on the Model page.")
