"""Data: pick a source and its split, then look at samples, class counts and skipped files."""
import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from core import settings
from core.config import GUIDE_TFDS_SPLITS, DataConfig
from core.data import datasets
from core.data.images import count_by_reason
from core.data.tfds_source import SUGGESTED, describe
from pages._common import current_data, image_grid, state, user_errors
from pages._corrections import use_marked_corrections

SOURCES = {
    "demo": "Built-in demo (shapes, no download)",
    "tfds": "TensorFlow Datasets",
    "folder": "Folder on the server",
    "zip": "Upload a .zip",
}
IMAGE_SIZES = [96, 128, 160, 192, 224, 299]
BATCH_SIZES = [8, 16, 32, 64, 128]
#: Duplicate pairs shown as thumbnails (all of them are in the run's data report).
MAX_PAIRS = 12


def keep_upload(upload) -> Path:
    """Store an uploaded zip in the cache, in a folder named by its content, under the
    name the user gave it (made safe), so that messages about it name their file."""
    content = upload.getvalue()
    folder = settings.cache_dir() / "uploads" / "archives" / hashlib.sha256(content).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (re.sub(r"[^\w.-]", "_", Path(upload.name.replace("\\", "/")).name).lstrip(".") or "upload.zip")
    path.write_bytes(content)
    return path


st.title("Data")
st.caption("Pick the images to learn from. Every later step uses this dataset and image size.")

config = state("data_config")
source = st.radio("Source", list(SOURCES), format_func=SOURCES.get, index=list(SOURCES).index(config.source), horizontal=True)

name = config.name if source == config.source else ""
splits = config.tfds_splits
if source == "tfds":
    # Outside the form, so that picking a dataset fills in its suggested splits at once.
    options = list(SUGGESTED) + ([name] if name and name not in SUGGESTED else [])
    name = st.selectbox("Dataset", options, index=options.index(name) if name else 0,
                        accept_new_options=True, help="Any TFDS image classification dataset name.")

with st.form("data_form"):
    if source == "tfds":
        defaults = splits if (source, name) == (config.source, config.name) else SUGGESTED.get(name, GUIDE_TFDS_SPLITS)
        cols = st.columns(3)
        splits = tuple(
            col.text_input(f"{split} split", value=value, help="TFDS split syntax, e.g. train[:40%]")
            for col, split, value in zip(cols, datasets.SPLITS, defaults)
        )
        with user_errors():
            st.caption(f"{describe(name)}. Offline, only a prepared copy works.")
    elif source == "folder":
        root = settings.data_root()
        st.caption(f"Data root on the server: `{root}` (set `TL_DATA_ROOT` before starting the dashboard to use"
                   " another folder). Paths outside it are refused.")
        if not root.is_dir():
            st.warning(f"{root} does not exist: create it and put your dataset folders in it, or restart the"
                       " dashboard with TL_DATA_ROOT set to the folder that holds them.")
        name = st.text_input("Folder (relative to the data root)", value=name,
                             help="Either <folder>/<class>/images or <folder>/{train,validation[,test]}/<class>/images.")
    elif source == "zip":
        upload = st.file_uploader("Zip of class folders", type=["zip"],
                                  help="<class>/images or {train,validation[,test]}/<class>/images, optionally under one top folder.")
        if upload is not None:
            name = str(keep_upload(upload))
    cols = st.columns(4)
    val_fraction = cols[0].slider("Validation fraction", 0.05, 0.5, config.val_fraction, 0.05,
                                  help="Used when the folder has no split folders.")
    test_fraction = cols[1].slider("Test fraction", 0.0, 0.5, config.test_fraction, 0.05)
    image_size = cols[2].selectbox("Image size (px)", IMAGE_SIZES, index=IMAGE_SIZES.index(config.image_size))
    batch_size = cols[3].selectbox("Batch size", BATCH_SIZES, index=BATCH_SIZES.index(config.batch_size))
    seed = st.number_input("Seed", value=config.seed, step=1, help="Controls every random choice: split, shuffling, augmentation.")
    drop_duplicates = st.checkbox("Drop validation/test images that duplicate training images", config.drop_duplicates,
                                  help="Byte-, pixel- or near-identical copies of training images inflate every score.")
    if st.form_submit_button("Load dataset", type="primary"):
        if source in ("folder", "zip") and not name:
            st.warning("Choose a folder or upload a zip first.")
        else:
            chosen = DataConfig(
                source=source, name=name, tfds_splits=splits, val_fraction=val_fraction,
                test_fraction=test_fraction, image_size=image_size, batch_size=batch_size, seed=int(seed),
                drop_duplicates=drop_duplicates,
            )
            if current_data(chosen) is not None:  # a refused dataset (error shown) leaves the current one in place
                st.session_state["data_config"] = chosen
            else:
                st.caption("The dataset below is still the one loaded before.")

use_marked_corrections()
data = current_data()
st.session_state["data_loaded"] = data is not None
if data is not None:
    st.subheader(data.description)
    counts = data.counts()
    cols = st.columns(4)
    cols[0].metric("Classes", data.num_classes)
    for col, split in zip(cols[1:], datasets.SPLITS):
        col.metric(f"{split.capitalize()} images", f"{sum(counts[split]):,}")
    for note in data.notes:
        st.warning(note, icon=":material/warning:")

    st.markdown("#### Samples")
    images, labels = data.splits["train"]
    picked = np.random.default_rng(state("data_config").seed).choice(len(labels), min(9, len(labels)), replace=False)
    image_grid(images[picked], [data.class_names[label] for label in labels[picked]])

    left, right = st.columns(2)
    with left:
        st.markdown("#### Images per class")
        chart = px.bar(pd.DataFrame(datasets.class_counts_table(data)), x="class", y="images", color="split", barmode="group")
        st.plotly_chart(chart, width="stretch")
    with right:
        st.markdown("#### Original image sizes")
        stats = data.size_stats()
        if stats:
            st.dataframe(pd.DataFrame(
                {"width": [stats["min_width"], stats["median_width"], stats["max_width"]],
                 "height": [stats["min_height"], stats["median_height"], stats["max_height"]]},
                index=["min", "median", "max"],
            ))
        st.caption(f"Every image is resized to {state('data_config').image_size} x {state('data_config').image_size} px.")

    st.markdown(f"#### Skipped files ({len(data.skipped)})")
    if data.skipped:
        st.caption(" · ".join(f"{n} {reason}" for reason, n in count_by_reason(data.skipped).items()))
        st.dataframe(pd.DataFrame([{"file": s.path, "reason": s.reason} for s in data.skipped]), hide_index=True)
    else:
        st.caption("No file was skipped.")
    if data.ignored:
        st.caption(f"Hidden and tool folders ignored: {', '.join(data.ignored)}")

    st.markdown(f"#### Duplicates of training images in validation/test ({len(data.duplicates)})")
    if data.duplicates:
        st.caption("Each pair: the validation/test image, then the training image it copies.")
        shown = data.duplicates[:MAX_PAIRS]
        thumbs, captions = [], []
        for pair in shown:
            thumbs += [data.splits[pair.split][0][pair.index], data.splits["train"][0][pair.train_index]]
            captions += [f"{pair.split}: {Path(pair.source).name} ({pair.kind})", f"train: {Path(pair.train_source).name}"]
        image_grid(np.stack(thumbs), captions, columns=4)
        if len(data.duplicates) > MAX_PAIRS:
            st.caption(f"First {MAX_PAIRS} pairs of {len(data.duplicates)}.")
    else:
        st.caption("None found: no validation or test image copies a training image.")
