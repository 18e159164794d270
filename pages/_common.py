"""What every page shares: the user's choices in session state, cached data, error boxes.

Pages are thin views: they read and write the config dataclasses kept here and
call `core` for everything else.
"""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import streamlit as st

from core import config as config_io
from core import settings
from core.config import AugmentConfig, DataConfig, ModelConfig, RunConfig, TrainConfig
from core.data import datasets
from core.errors import UserError
from core.training import runs
from core.training.jobs import JOB_DONE, Job, JobManager, default_backbone


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

#: Seconds between redraws of a panel that follows a queued or running job.
POLL_SECONDS = 1.0

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


def seed_widget(key: str, value) -> None:
    """Start the widget `key` at `value` unless the user has already set it (Streamlit's
    documented way to give a keyed widget a default without a second `value=`)."""
    if key not in st.session_state:
        st.session_state[key] = value


def session_run_config(head: TrainConfig | None = None, fine_tune: TrainConfig | None = None,
                       name: str = "") -> RunConfig:
    """The run the session's choices describe: its data, augmentation and model, `head`
    (default: the session's head settings), `fine_tune` (None: no fine-tuning phase), and
    the data's seed."""
    data = state("data_config")
    return RunConfig(data=data, augment=state("augment_config"), model=state("model_config"),
                     head=state("head_config") if head is None else head, fine_tune=fine_tune,
                     seed=data.seed, name=name)


def size_text(size: int) -> str:
    """Bytes as "12.3 MB" below a gigabyte, else "1.23 GB" (decimal units)."""
    return f"{size / 1e6:.1f} MB" if size < 1e9 else f"{size / 1e9:.2f} GB"


def metric_delta(change: float, fmt: str, suffix: str = "", color: str = "normal") -> dict:
    """`st.metric`'s delta arguments for `change` shown as `fmt` (e.g. "+.3f") plus `suffix`:
    a change that shows as zero gets no arrow and no colour (not a green "up")."""
    text = f"{change:{fmt}}"
    flat = float(text) == 0
    return {"delta": text + suffix, "delta_color": "off" if flat else color, "delta_arrow": "off" if flat else "auto"}


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


def current_data(config: DataConfig | None = None) -> datasets.ImageData | None:
    """The dataset for `config` (default: the session's data config), loaded once per
    server; None (with an error box shown) when it cannot be loaded."""
    try:
        return _load_data(config or state("data_config"))
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
def job_manager() -> JobManager:
    """The server's job queue: jobs run in worker processes ($TL_WORKERS at once),
    outside any script run, so page switches and reloads do not touch them. Its first warm
    worker builds the default model's backbone ahead (when its weights are cached), so a
    first run on the defaults does not wait for it."""
    return JobManager(prebuild=default_backbone())


def live_job(run_id: str | None) -> Job | None:
    """This server's job for `run_id` while it is queued or running; None otherwise
    (no such job, or it has ended: the run folder then says how)."""
    job = job_manager().get(run_id) if run_id else None
    return job if job is not None and job.state != JOB_DONE else None


def runs_dir():
    return settings.runs_dir()


# --- the run a session follows ----------------------------------------------------
# A session follows the runs it started or opened, never whatever the server runs.
# The followed run is in the URL (?run=<id>), so a reload, a bookmark or a shared
# link reopens it, with its settings.

RUN_PARAM = "run"


SWEEP_KEY = "sweep_run_id"  # the session's "Try several" run


def lr_find_key(phase: str) -> str:
    """The session key of the session's learning-rate finder run for `phase`."""
    return f"lr_find_run_{phase}"


#: The session keys of the runs the quick tries (pages/_quick_tries.py) start, and what a user
#: calls them (the sidebar names them).
TOOL_KEYS = {lr_find_key("head"): "learning-rate finder", lr_find_key("fine_tune"): "learning-rate finder",
             SWEEP_KEY: "sweep (Try several)"}


def open_run(run_id: str | None) -> runs.Run | None:
    """The run `run_id` in the runs folder, or None when there is no such run."""
    if not run_id:
        return None
    path = runs_dir() / run_id
    return runs.Run(path) if Path(run_id).name == run_id and (path / runs.CONFIG_FILE).is_file() else None


def with_fine_tune(run: runs.Run, fine_tune: TrainConfig) -> runs.Run:
    """Write `fine_tune` as the fine-tuning phase into the run's config.json (before a job
    continues the run) and return the run read afresh. Raises UserError when it cannot be written."""
    run.write_json(runs.CONFIG_FILE, config_io.to_dict(dataclasses.replace(run.config, fine_tune=fine_tune)))
    return runs.Run(run.path)


def follow(run: runs.Run) -> None:
    """Make `run` the one this session follows: in session state and in the URL."""
    st.session_state["run_id"] = run.id
    session_runs = st.session_state.setdefault("session_runs", [])
    if run.id not in session_runs:
        session_runs.append(run.id)
    st.query_params[RUN_PARAM] = run.id


def followed_run() -> runs.Run | None:
    """The run this session follows, if it still exists."""
    return open_run(st.session_state.get("run_id"))


def load_into_session(run: runs.Run) -> None:
    """Make the run's configs the session's and follow it, so the workflow pages continue from it."""
    config = run.config
    st.session_state.update(data_config=config.data, augment_config=config.augment,
                            model_config=config.model, head_config=config.head)
    st.session_state["head_run_id"] = run.id
    if config.fine_tune is not None:
        st.session_state.update(fine_tune_config=config.fine_tune, fine_tune_at=config.fine_tune.fine_tune_at,
                                freeze_batchnorm=config.fine_tune.freeze_batchnorm)
    follow(run)


def sync_url() -> None:
    """Before each page: a session opened on a URL naming a run (a reload, a bookmark, a
    shared link) follows that run with its settings; otherwise the URL names the run
    the session follows (a page switch drops query parameters)."""
    url_run_id = st.query_params.get(RUN_PARAM)
    if url_run_id and url_run_id != st.session_state.get("run_id"):
        run = open_run(url_run_id)
        if run is None:
            del st.query_params[RUN_PARAM]
            st.toast(f"There is no run {url_run_id!r}: the link names a run that was deleted or lives on "
                     "another server.", icon=":material/link_off:")
            return
        with user_errors():
            load_into_session(run)
    elif not url_run_id and st.session_state.get("run_id") and followed_run() is not None:
        st.query_params[RUN_PARAM] = st.session_state["run_id"]


#: session_state key: the (backbone, image size) whose ImageNet weights the Model page found unavailable.
WEIGHTS_UNAVAILABLE = "weights_unavailable"


def known_missing_weights() -> UserError | None:
    """The Model page's error when it found the ImageNet weights of the current backbone and
    image size unavailable (not cached, no download), so a run would fail at once; else None."""
    known = st.session_state.get(WEIGHTS_UNAVAILABLE)
    model, size = state("model_config"), state("data_config").image_size
    if known is None or model.weights != "imagenet" or known[0] != (model.backbone, size):
        return None
    return known[1]
