"""Label corrections: images the user excludes or relabels, kept beside the dataset's settings.

The user's files are never moved, renamed or deleted. A correction names an image
by `image_key`, a hash of its decoded pixels at the dataset's image size, so it
works for every source (folders, zips, TFDS) and survives re-splitting. The
corrections marked for a dataset live in one small JSON file in the cache
(`corrections_file`), written atomically on every mark, so nothing marked is lost
across a reload or a server restart. A run takes them into its
`DataConfig.corrections` (and so its config.json); `load` applies them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from core import atomic, settings
from core.config import DataConfig
from core.data.array_store import row_blocks
from core.data.image_data import ImageData
from core.errors import UserError

EXCLUDE, RELABEL = "exclude", "relabel"
Correction = tuple[str, str, str]


def image_key(image: np.ndarray) -> str:
    """16 hex digits of the SHA-256 of an image's uint8 pixels (H, W, 3): identical images share a key."""
    return hashlib.sha256(np.ascontiguousarray(image, dtype="uint8").tobytes()).hexdigest()[:16]


def dataset_identity(config: DataConfig) -> DataConfig:
    """The settings that decide which images a dataset holds and their pixels (not how they are split)."""
    return DataConfig(source=config.source, name=config.name, tfds_splits=config.tfds_splits,
                      test_folder=config.test_folder, image_size=config.image_size)


def corrections_file(config: DataConfig) -> Path:
    """`$TL_CACHE_DIR/corrections/<hash of the dataset's identity>.json`."""
    identity = json.dumps(dataclasses.asdict(dataset_identity(config)), sort_keys=True)
    return settings.cache_dir() / "corrections" / f"{hashlib.sha256(identity.encode()).hexdigest()[:16]}.json"


def read(config: DataConfig) -> tuple[Correction, ...]:
    """The corrections marked for `config`'s dataset, sorted by key; () when none.
    Raises UserError when the file is unreadable."""
    path = corrections_file(config)
    if not path.is_file():
        return ()
    try:
        entries = json.loads(path.read_text())["corrections"]
        return tuple(sorted((str(e["key"]), str(e["action"]), str(e.get("label", ""))) for e in entries))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"The corrections file {path} cannot be read ({error}).",
                        "Fix or delete that file; the images themselves are untouched.") from error


def mark(config: DataConfig, key: str, action: str | None, label: str = "") -> tuple[Correction, ...]:
    """Record `action` ("exclude", "relabel" as class `label`, or None to forget the
    image's correction) for the image `key`; returns the dataset's corrections."""
    if action not in (EXCLUDE, RELABEL, None):
        raise UserError(f"Unknown correction {action!r}.", f"Use {EXCLUDE!r} or {RELABEL!r}.")
    kept = {entry[0]: entry for entry in read(config)}
    kept.pop(key, None)
    if action is not None:
        kept[key] = (key, action, label if action == RELABEL else "")
    corrections = tuple(sorted(kept.values()))
    _write(corrections_file(config), corrections, dataset_identity(config))
    return corrections


def _write(path: Path, corrections: tuple[Correction, ...], identity: DataConfig) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"dataset": dataclasses.asdict(identity),
                       "corrections": [{"key": k, "action": a, "label": lab} for k, a, lab in corrections]}, indent=1)
    atomic.write_text(path, text)


def apply(data: ImageData, corrections: tuple[Correction, ...]) -> ImageData:
    """Drop excluded images and relabel relabelled ones in every split of `data` (in place;
    returned for chaining), and add a note saying how many corrections applied.
    Raises UserError for a relabel to a class the data does not have, and when no
    training image of a class is left."""
    if not corrections:
        return data
    actions = {key: (action, label) for key, action, label in corrections}
    unknown = sorted({label for action, label in actions.values() if action == RELABEL} - set(data.class_names))
    if unknown:
        raise UserError(f"Corrections relabel images as {', '.join(unknown)}, which is not a class of this data.",
                        f"Mark them again on the Label issues page; the classes are {', '.join(data.class_names)}.")
    excluded = relabelled = 0
    found: set[str] = set()
    for split, (images, labels) in data.splits.items():
        keys = [image_key(image) for _, block in row_blocks(images) for image in block]
        keep = np.ones(len(keys), dtype=bool)
        labels = labels.copy()
        for i, key in enumerate(keys):
            action, label = actions.get(key, (None, ""))
            if action == EXCLUDE:
                keep[i], excluded = False, excluded + 1
            elif action == RELABEL:
                labels[i], relabelled = data.class_names.index(label), relabelled + 1
            if action:
                found.add(key)
        data.splits[split] = (images, labels)
        data.keep(split, keep)  # the images, labels, sources and digests alike
    emptied = [name for name, count in zip(data.class_names, data.counts()["train"]) if count == 0]
    if emptied:
        raise UserError(f"The label corrections leave no training image of class(es) {', '.join(emptied)}.",
                        "Keep some of their images on the Label issues page (set them back to 'keep').")
    missing = len(actions) - len(found)
    data.notes.append(f"Label corrections: {excluded} image(s) excluded, {relabelled} relabelled"
                      + (f"; {missing} marked image(s) are not in this data." if missing else "."))
    return data
