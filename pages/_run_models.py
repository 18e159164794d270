"""A run's saved models, loaded once per file version for the pages that show or inspect them."""
from __future__ import annotations

import streamlit as st

from core.errors import UserError
from core.training import runs
from core.workflow import CLASSES_FILE, load_run_model


def has_model(run: runs.Run, kind: str) -> bool:
    """Whether the run has saved its `kind` model ("head", "final", "best") and its class names."""
    return (run.path / CLASSES_FILE).is_file() and run.model_path(kind).is_file()


def model_version(run: runs.Run, kind: str) -> int:
    """The `kind` model file's modification time (ns): it changes whenever the file is
    rewritten, so caches keyed on it stay current."""
    return run.model_path(kind).stat().st_mtime_ns


@st.cache_resource(max_entries=4, show_spinner="Loading the model...")
def cached_model(path: str, kind: str, version: int):
    """The run's `kind` model ("head", "final", "best") and its class names, loaded
    (Keras safe mode) once per model file version; the UserError of `load_run_model`."""
    return load_run_model(runs.Run(path), kind)


def check_classes(run: runs.Run, classes: list[str], data_classes: list[str]) -> None:
    """Raise UserError when the run's dataset, as loaded now (`data_classes`), has other
    classes than its model was trained on (`classes`)."""
    if data_classes != classes:
        raise UserError(f"The dataset of run {run.id} now has the classes {', '.join(data_classes)}, "
                        f"but its model was trained on {', '.join(classes)}.",
                        "Restore the data the run was trained on, or train a new run on this data.")
