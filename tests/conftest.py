"""Shared test setup.

Keras reads KERAS_HOME once, at import, so it is pointed at a writable cache
that links the real ImageNet weights from ../shared before anything imports keras.
"""
import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SHARED_WEIGHTS = SHARED / "keras" / "models"
SHARED_DATASETS = SHARED / "datasets"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _scratch(prefix: str) -> str:
    """A temporary folder removed when the test session's process exits (the caches take GBs)."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, True)
    return path


_keras_home = Path(_scratch("keras-home-"))
(_keras_home / "models").mkdir()
if SHARED_WEIGHTS.is_dir():
    for weights_file in SHARED_WEIGHTS.glob("*.h5"):
        (_keras_home / "models" / weights_file.name).symlink_to(weights_file)
os.environ["KERAS_HOME"] = str(_keras_home)
# Generated demo data, extracted uploads and runs go to temp dirs, not the user's home.
os.environ["TL_CACHE_DIR"] = _scratch("tl-cache-")
os.environ["TL_RUNS_DIR"] = _scratch("tl-runs-")


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The real image datasets in ../shared (required: CI provides them)."""
    assert SHARED_DATASETS.is_dir(), f"missing {SHARED_DATASETS}: tests need ../shared"
    return SHARED_DATASETS


@pytest.fixture(scope="session")
def keras_home() -> Path:
    return _keras_home


@pytest.fixture(scope="session")
def colour_data_root(tmp_path_factory) -> Path:
    """A data root holding `colours/<class>/*.png` (see tests/helpers.py)."""
    from tests.helpers import make_colour_folders

    return make_colour_folders(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def _trained_colours_run(colour_data_root, tmp_path_factory):
    """The session's one training of `helpers.COLOURS_RUN_CONFIG`; tests use `colours_run`, never this."""
    from tests.helpers import COLOURS_RUN_CONFIG, train_run

    return train_run(COLOURS_RUN_CONFIG, tmp_path_factory.mktemp("colours-run-source"), colour_data_root)


@pytest.fixture(scope="module")
def colours_run(_trained_colours_run, tmp_path_factory):
    """The colours run, trained once per session, copied into a runs folder of this module's own:
    what a module's tests write (exports, other runs, deletions) stays in that module."""
    from tests.helpers import copy_run

    return copy_run(_trained_colours_run, tmp_path_factory.mktemp("runs"))
