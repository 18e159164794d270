"""Every environment variable the project reads, in one place.

Each function reads its variable when called (not at import), so tests and a
server's environment can set them late. Keras reads `KERAS_HOME` itself, once,
when it is first imported; `keras_models_dir` only says where that is.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from core.errors import UserError


def data_root() -> Path:
    """The only folder the "folder" source may read from: `$TL_DATA_ROOT`, else `./data`."""
    return Path(os.environ.get("TL_DATA_ROOT") or "data").resolve()


def runs_dir() -> Path:
    """Where run directories are written: `$TL_RUNS_DIR`, else `./runs`."""
    return Path(os.environ.get("TL_RUNS_DIR") or "runs").expanduser().absolute()


def cache_dir() -> Path:
    """Generated demo data and extracted uploads: `$TL_CACHE_DIR`, else `~/.cache/tl-dashboard`."""
    return Path(os.environ.get("TL_CACHE_DIR") or Path.home() / ".cache" / "tl-dashboard")


def keras_models_dir() -> Path:
    """The folder Keras caches downloaded weights in: `$KERAS_HOME/models` (default `~/.keras/models`)."""
    return Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser() / "models"


def tfds_data_dir() -> Path:
    """TensorFlow Datasets' download and prepare folder: `$TFDS_DATA_DIR`, else `~/tensorflow_datasets`."""
    return Path(os.environ.get("TFDS_DATA_DIR") or Path.home() / "tensorflow_datasets")


def cuda_visible_devices() -> list[str] | None:
    """The GPU ids (or UUIDs) `$CUDA_VISIBLE_DEVICES` lets CUDA see, in order: [] when it
    hides them all ("" or "-1"), None when unset (every GPU is visible)."""
    text = os.environ.get("CUDA_VISIBLE_DEVICES")
    if text is None:
        return None
    visible = []
    for device in (part.strip() for part in text.split(",")):
        if not device or device == "-1":  # CUDA ignores everything from an invalid entry on
            break
        visible.append(device)
    return visible


def tf_config() -> dict | None:
    """`$TF_CONFIG` parsed: TensorFlow's cluster description for training across machines
    ({"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": i}}),
    which `tf.distribute.MultiWorkerMirroredStrategy` reads itself; None when unset.

    Raises UserError when it is not a JSON object.
    """
    text = (os.environ.get("TF_CONFIG") or "").strip()
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        value, reason = None, f"not valid JSON ({error.msg})"
    else:
        reason = "not a JSON object"
    if not isinstance(value, dict):
        raise UserError(f"TF_CONFIG is {reason}.",
                        'Set it to {"cluster": {"worker": ["host1:port", "host2:port"]}, '
                        '"task": {"type": "worker", "index": 0}} (this machine\'s index), or unset it.')
    return value


def feature_cache_dir() -> Path:
    """The feature cache (frozen-part outputs): `<cache dir>/features`."""
    return cache_dir() / "features"


def image_cache_dir() -> Path:
    """The decoded-image cache: `<cache dir>/images`."""
    return cache_dir() / "images"


def feature_cache_bytes() -> int:
    """Bound of the feature cache in bytes: `$TL_FEATURE_CACHE_GB` gigabytes (10**9 bytes), else 10 GB."""
    return _gigabytes("TL_FEATURE_CACHE_GB", 10.0)


def image_cache_bytes() -> int:
    """Bound of the decoded-image cache in bytes: `$TL_IMAGE_CACHE_GB` gigabytes, else 20 GB."""
    return _gigabytes("TL_IMAGE_CACHE_GB", 20.0)


def _gigabytes(variable: str, default: float) -> int:
    text = os.environ.get(variable) or ""
    try:
        value = float(text) if text else default
    except ValueError:
        raise UserError(f"{variable}={text!r} is not a number.",
                        f"Set {variable} to a size in gigabytes, e.g. {variable}={default:g}.") from None
    return int(max(value, 0.0) * 1e9)

def workers() -> int:
    """How many training jobs run at once, each in its own worker process: `$TL_WORKERS`, else 1.

    Raises ValueError when it is not a whole number of at least 1.
    """
    text = os.environ.get("TL_WORKERS") or "1"
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"TL_WORKERS must be a whole number of at least 1, not {text!r}.")
    return count
