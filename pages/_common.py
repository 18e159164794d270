"""What every page shares: the user's choices in session state, cached data, error boxes.

Pages are thin views: they read and write the config dataclasses kept here and
call `core` for everything else.
"""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager

import numpy as np
import streamlit as st

from core import settings
from core.config import AugmentConfig, DataConfig, ModelConfig, TrainConfig
from core.data import datasets
from core.errors import UserError


def _use_the_app_shell() -> None:
    """Streamlit treats a folder named pages/ as an old-style multipage app until the
    first run of streamlit_app.py calls st.navigation; a deep link opened first on a
    fresh server would run a page without the shell. Switch that mode off and rerun,
    so the entry point (and its st.navigation) runs. See streamlit/streamlit#10276."""
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


_use_the_app_shell()

DEFAULTS = {
    "data_config": DataConfig(),
    "augment_config": AugmentConfig(),
    "model_config": ModelConfig(),
    "head_config": TrainConfig(),
}


def state(key: str):
    """The current value of one of the user's choices (see DEFAULTS)."""
    if key not in st.session_state:
        st.session_state[key] = DEFAULTS[key]
    return st.session_state[key]


def update(key: str, **changes) -> None:
    st.session_state[key] = dataclasses.replace(state(key), **changes)


def show_error(error: UserError) -> None:
    """An error box saying what was wrong, and what to do about it."""
    st.error(error.message, icon=":material/error:")
    if error.hint:
        st.info(error.hint, icon=":material/lightbulb:")


@contextmanager
def user_errors():
    """Show a UserError raised inside the block as an error box instead of a traceback."""
    try:
        yield
    except UserError as error:
        show_error(error)


def _load_data(config: DataConfig) -> datasets.ImageData:
    """Load through core's in-process cache, which the training jobs share."""
    first = (f"Downloading and preparing {config.name} with TensorFlow Datasets (once; it can take minutes)..."
             if config.source == "tfds" else "Reading images...")
    bar = st.progress(0.0, text=first)

    def progress(done: int, total: int) -> None:
        bar.progress(min(done / max(total, 1), 1.0), text=f"Reading images: {done:,} of {total:,}")

    try:
        return datasets.load_cached(config, progress=progress)
    finally:
        bar.empty()


def current_data() -> datasets.ImageData | None:
    """The dataset for the current data config, loaded once per server; None (with an
    error box shown) when it cannot be loaded."""
    try:
        return _load_data(state("data_config"))
    except UserError as error:
        show_error(error)
        return None


def image_grid(images: np.ndarray, captions: list[str], columns: int = 3) -> None:
    """Images in rows of `columns`, each with its caption (the references' 3x3 grid)."""
    for start in range(0, len(images), columns):
        cells = st.columns(columns)
        for cell, image, caption in zip(cells, images[start:start + columns], captions[start:start + columns]):
            cell.image(image, caption=caption, width="stretch")


@st.cache_resource
def job_manager():
    """The server's one background worker: it runs training jobs one at a time,
    outside any script run, so page switches and reloads do not touch them."""
    from core.training.jobs import JobManager

    return JobManager()


def runs_dir():
    return settings.runs_dir()
