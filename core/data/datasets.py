"""Data sources -> train / validation / test splits of raw RGB images.

Every source (the built-in demo, TFDS, a folder on the server, an uploaded zip)
ends as an `ImageData`: uint8 images resized to the chosen size, integer labels,
class names, and the statistics the Data page shows. Training reads the splits
through `tf_dataset()` (tf.data: shuffle, batch, prefetch).
"""
from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np

from core import settings
from core.config import DataConfig
from core.data import demo_data, files, image_cache
from core.data.image_data import (  # noqa: F401 (re-exported)
    IMBALANCE_RATIO,
    SPLITS,
    ImageData,
    check_usable,
    class_counts_table,
)
from core.data.images import SkippedFile, is_image_file, load_images
from core.data.tfds_source import load_tfds
from core.errors import UserError

_SPLIT_ALIASES = {"train": "train", "validation": "validation", "val": "validation", "valid": "validation", "test": "test"}
#: Share of a given validation folder carved off as test when there is no test folder (the TF tutorial's 1/5).
CARVED_TEST_SHARE = 0.2

Progress = Callable[[int, int], None]




def load(config: DataConfig, root: Path | None = None, progress: Progress | None = None) -> ImageData:
    """Load the dataset `config` describes. `root` confines the folder source
    (defaults to `settings.data_root()`); the demo and zip sources live in the cache."""
    if config.source == "demo":
        data = load_folder(demo_data.ensure_demo_dataset(), config, progress, description="Built-in demo: shapes")
    elif config.source == "folder":
        data = load_folder(files.resolve_under_root(root or settings.data_root(), config.name), config, progress)
    elif config.source == "zip":
        data = load_folder(extract_zip(Path(config.name)), config, progress, description=f"Uploaded {Path(config.name).name}")
    elif config.source == "tfds":
        data = load_tfds(config, progress)
    else:
        raise UserError(f"Unknown data source {config.source!r}.", "Use demo, tfds, folder or zip.")
    if config.test_folder:
        replace_test_split(data, files.resolve_under_root(root or settings.data_root(), config.test_folder), config.image_size)
    return data


def replace_test_split(data: ImageData, folder: Path, image_size: int) -> None:
    """Use the images in `folder` as the test split (see `load_labelled`)."""
    images, labels, skipped = load_labelled(folder, data.class_names, image_size)
    data.splits["test"] = (images, labels)
    data.skipped += skipped
    data.notes.append(f"Test split: {len(labels)} images from {folder}.")


def load_labelled(folder: Path, class_names: list[str], image_size: int):
    """Images and labels of a held-out folder, labelled with known `class_names`.

    `folder` holds class folders, or split folders whose test (else validation)
    split is used. Returns (images, labels, skipped files).
    """
    layout, skipped, _ = scan_folder(Path(folder))
    classes = layout.get("test") or layout.get("validation") or layout["all"]
    unknown = sorted(set(classes) - set(class_names))
    if unknown:
        raise UserError(
            f"{folder} has classes the model does not know: {', '.join(unknown)}.",
            f"Its class folders must be among: {', '.join(class_names)}.",
        )
    paths = [str(p) for paths in classes.values() for p in paths]
    labels = np.asarray([class_names.index(name) for name, paths in classes.items() for _ in paths], "int32")
    loaded = load_images(paths, image_size)
    return loaded.images, labels[loaded.kept], skipped + loaded.skipped


_CACHE: OrderedDict = OrderedDict()
_CACHE_LOCK = threading.Lock()
CACHE_SIZE = 2


def load_cached(config: DataConfig, root: Path | None = None, progress: Progress | None = None) -> ImageData:
    """`load`, through the on-disk decoded-image cache (`core.data.image_cache`), and
    kept in-process for the last few configs: the dashboard's pages, its training
    jobs and other processes share one decoded, memory-mapped copy of the images.
    Raises what `load` raises."""
    identity = data_identity(config, root)
    key = repr(identity)
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    data = image_cache.load(identity, lambda: load(config, root=root, progress=progress))
    with _CACHE_LOCK:
        _CACHE[key] = data
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    return data


def data_identity(config: DataConfig, root: Path | None = None) -> dict:
    """What determines the images `load(config, root)` gives: the config and, for the
    folder sources, every file's path, size and modification time (`os.stat`), so an
    edited, added or removed file changes it. A TFDS dataset is named by its config
    (TFDS versions its datasets). Raises the UserErrors of an unusable folder."""
    identity = {"config": dataclasses.asdict(config)}
    folders = []
    if config.source == "demo":
        folders.append(demo_data.ensure_demo_dataset())
    elif config.source == "folder":
        folders.append(files.resolve_under_root(root or settings.data_root(), config.name))
    elif config.source == "zip":
        stat = Path(config.name).stat()
        identity["archive"] = [stat.st_size, stat.st_mtime_ns]
    if config.test_folder:
        folders.append(files.resolve_under_root(root or settings.data_root(), config.test_folder))
    identity["files"] = [_files_identity(folder) for folder in folders]
    return identity


def _files_identity(folder: Path) -> list:
    layout, skipped, _ = scan_folder(Path(folder))
    paths = [path for classes in layout.values() for class_files in classes.values() for path in class_files]
    rows = [str(folder)]
    for path in paths + [Path(s.path) for s in skipped]:
        try:
            stat = path.stat()
            rows.append([str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns])
        except (OSError, ValueError):
            rows.append([str(path), None, None])
    return rows


def extract_zip(archive: Path, cache_dir: Path | None = None) -> Path:
    """Extract an uploaded zip once into the cache (keyed by its content) and return its data root."""
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()[:16]
    target = Path(cache_dir or settings.cache_dir()) / "uploads" / digest
    marker = target / ".root"
    if marker.is_file():
        return target / marker.read_text()
    target.mkdir(parents=True, exist_ok=True)
    data = files.safe_extract_zip(archive, target / "data")
    marker.write_text(str(data.relative_to(target)))
    return data


def scan_folder(folder: Path) -> tuple[dict[str, dict[str, list[Path]]], list[SkippedFile], list[str]]:
    """Find image files by split and class.

    Returns ({split: {class: [files]}}, skipped files, notes). A folder whose
    subfolders are train/validation[/test] is used as given (split key per
    folder); otherwise its subfolders are classes (split key "all").
    """
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder.", "Choose a folder that holds one subfolder per class.")
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    split_folders = {_SPLIT_ALIASES[p.name.lower()]: p for p in subfolders if p.name.lower() in _SPLIT_ALIASES}
    skipped: list[SkippedFile] = []
    notes: list[str] = []
    if "train" in split_folders:
        skipped += _loose_files(folder)
        if "validation" not in split_folders:
            raise UserError(
                f"{folder} has a train folder but no validation folder.",
                "Add validation/<class>/ images, or put the class folders directly in the top folder.",
            )
        layout = {split: _scan_classes(path, skipped, notes) for split, path in split_folders.items()}
    else:
        layout = {"all": _scan_classes(folder, skipped, notes)}
    return layout, skipped, notes


def _loose_files(folder: Path) -> list[SkippedFile]:
    return [SkippedFile(str(p), "not inside a class folder") for p in sorted(folder.iterdir()) if p.is_file()]


def _scan_classes(folder: Path, skipped: list[SkippedFile], notes: list[str]) -> dict[str, list[Path]]:
    skipped += _loose_files(folder)
    classes: dict[str, list[Path]] = {}
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = []
        for path in sorted(class_dir.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                if is_image_file(path):
                    images.append(path)
                else:
                    skipped.append(SkippedFile(str(path), "not an image file type"))
        if images:
            classes[class_dir.name] = images
        else:
            notes.append(f"Class folder {class_dir.name!r} in {folder.name} has no images and was left out.")
    return classes


def load_folder(folder: Path, config: DataConfig, progress: Progress | None = None, description: str = "") -> ImageData:
    """Load `folder` in either layout (see `scan_folder`), decode and split it."""
    layout, skipped, notes = scan_folder(Path(folder))
    class_names = sorted({name for classes in layout.values() for name in classes})
    if len(class_names) < 2:
        found = f"only {class_names[0]!r}" if class_names else "none"
        raise UserError(
            f"{folder} needs at least two classes with images; found {found}.",
            "Put each class's images in its own subfolder (e.g. cats/, dogs/).",
        )
    index = {name: i for i, name in enumerate(class_names)}
    paths, labels, groups = [], [], []
    for split, classes in layout.items():
        for name, class_files in classes.items():
            paths += class_files
            labels += [index[name]] * len(class_files)
            groups += [split] * len(class_files)

    loaded = load_images([str(p) for p in paths], config.image_size, progress=progress)
    skipped += loaded.skipped
    labels_kept = np.asarray(labels, dtype="int32")[loaded.kept]
    groups_kept = np.asarray(groups)[loaded.kept]
    if "all" in layout:
        assignment = stratified_split(labels_kept, config.val_fraction, config.test_fraction, config.seed)
    else:
        assignment = groups_kept.copy()
        if "test" not in layout:
            assignment = _carve_test(assignment, labels_kept, config.seed)
            notes.append(f"No test folder: {CARVED_TEST_SHARE:.0%} of validation was held out as the test split.")
    splits = {}
    for split in SPLITS:
        chosen = np.flatnonzero(assignment == split)
        splits[split] = (loaded.images[chosen], labels_kept[chosen])
    data = ImageData(
        class_names=class_names,
        splits=splits,
        description=description or f"Folder {folder}",
        skipped=skipped,
        image_sizes=loaded.sizes,
        notes=notes,
    )
    check_usable(data)
    return data


def stratified_split(labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """Assign each index to train/validation/test, per class, reproducibly for a seed."""
    if val_fraction <= 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise UserError(
            f"Split fractions validation={val_fraction}, test={test_fraction} leave no training data.",
            "Use a validation fraction above 0 and keep validation + test below 1.",
        )
    rng = np.random.default_rng(seed)
    assignment = np.full(len(labels), "train", dtype=object)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = max(1, round(len(members) * val_fraction))
        n_test = round(len(members) * test_fraction) if test_fraction else 0
        if test_fraction and n_test == 0:
            n_test = 1
        assignment[members[:n_val]] = "validation"
        assignment[members[n_val:n_val + n_test]] = "test"
    return assignment.astype(str)


def _carve_test(assignment: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    result = assignment.astype(object)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero((assignment == "validation") & (labels == label)))
        result[members[: int(round(len(members) * CARVED_TEST_SHARE))]] = "test"
    return result.astype(str)
