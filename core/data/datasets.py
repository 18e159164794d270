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
from core.data import corrections, demo_data, files, image_cache, leakage
from core.data.array_store import take_rows
from core.data.image_data import (  # noqa: F401 (re-exported)
    IMBALANCE_RATIO,
    SPLITS,
    ImageData,
    check_usable,
    class_counts_table,
)
from core.data.images import SkippedFile, count_by_reason, decode_images
from core.data.scanning import scan_folder
from core.data.tfds_source import load_tfds
from core.errors import UserError

#: Share of a given validation folder carved off as test when there is no test folder (the TF tutorial's 1/5).
CARVED_TEST_SHARE = 0.2

Progress = Callable[[int, int], None]
#: `allocate(shape, dtype)` -> a new array to fill (see `ImageData.allocate`).
Allocate = Callable[[tuple, str], np.ndarray]


def in_memory(shape: tuple, dtype: str) -> np.ndarray:
    """The default `Allocate`: `np.empty`."""
    return np.empty(shape, dtype)




def load(config: DataConfig, root: Path | None = None, progress: Progress | None = None,
         allocate: Allocate | None = None) -> ImageData:
    """Load the dataset `config` describes, then look for leakage between its splits.

    `root` confines the folder source (defaults to `settings.data_root()`): the
    chosen folder and every link inside it must stay under it. The demo and zip
    sources live in the cache and are confined to their own folder. `allocate`
    gives the arrays the folder sources decode into (default: memory); with memory
    maps the images stream from the files to disk in chunks (`decode_images`), so a
    dataset larger than memory loads (the TFDS source decodes into memory).

    Raises:
        UserError: the data cannot be used (its message names the cause and what was found).
    """
    root = Path(root or settings.data_root())
    if config.source == "demo":
        data = load_folder(demo_data.ensure_demo_dataset(), config, progress, description="Built-in demo: shapes",
                           allocate=allocate)
    elif config.source == "folder":
        data = load_folder(files.resolve_under_root(root, config.name), config, progress, root=root,
                           allocate=allocate)
    elif config.source == "zip":
        data = load_folder(extract_zip(Path(config.name)), config, progress,
                           description=f"Uploaded {Path(config.name).name}", allocate=allocate)
    elif config.source == "tfds":
        data = load_tfds(config, progress)
    else:
        raise UserError(f"Unknown data source {config.source!r}.", "Use demo, tfds, folder or zip.")
    data.allocate = allocate
    if config.test_folder:
        replace_test_split(data, files.resolve_under_root(root, config.test_folder), config.image_size, root)
    data = corrections.apply(data, config.corrections)
    data.duplicates = leakage.find_duplicates(data)
    if data.duplicates and config.drop_duplicates:
        dropped = len(data.duplicates)
        leakage.drop_duplicates(data, data.duplicates)
        if not len(data.splits["validation"][1]):
            raise UserError(
                f"Dropping the {dropped} validation/test images that copy training images leaves no validation "
                "image: every validation image duplicates a training image.",
                "Keep them (untick the drop option; scores on them are inflated) or add validation images "
                "that are not in the training split.")
        check_usable(data)
    elif data.duplicates:
        data.notes.append(leakage.summary(data.duplicates))
    return data


def replace_test_split(data: ImageData, folder: Path, image_size: int, root: Path | None = None) -> None:
    """Use the images in `folder` as the test split (see `load_labelled`), decoded into
    arrays from `data.allocate`."""
    images, labels, skipped, paths, digests = _labelled(folder, data.class_names, image_size, root, data.allocate)
    data.splits["test"] = (images, labels)
    data.sources["test"], data.digests["test"] = paths, digests
    data.skipped += skipped
    data.notes.append(f"Test split: {len(labels)} images from {folder}.")


def load_labelled(folder: Path, class_names: list[str], image_size: int, root: Path | None = None):
    """Images and labels of a held-out folder, labelled with known `class_names`.

    `folder` holds class folders, or split folders whose test (else validation)
    split is used; links leading outside `root` (default: `folder`) are skipped.
    Returns ((N, size, size, 3) uint8 images, (N,) int32 labels, skipped files).

    Raises:
        UserError: `folder` has classes outside `class_names`.
    """
    return _labelled(folder, class_names, image_size, root)[:3]


def _labelled(folder: Path, class_names: list[str], image_size: int, root: Path | None,
              allocate: Allocate | None = None):
    scan = scan_folder(Path(folder), root)
    classes = scan.layout.get("test") or scan.layout.get("validation") or scan.layout["all"]
    unknown = sorted(set(classes) - set(class_names))
    if unknown:
        raise UserError(
            f"{folder} has classes the model does not know: {', '.join(unknown)}.",
            f"Its class folders must be among: {', '.join(class_names)}.",
        )
    paths = [str(p) for paths in classes.values() for p in paths]
    labels = np.asarray([class_names.index(name) for name, paths in classes.items() for _ in paths], "int32")
    loaded = _decode(paths, image_size, allocate)
    images = loaded.images
    if len(loaded.kept) < len(paths):
        images = take_rows(images, loaded.kept, (allocate or in_memory)((len(loaded.kept), *images.shape[1:]), "uint8"))
    return (images, labels[loaded.kept], scan.skipped + loaded.skipped,
            [paths[i] for i in loaded.kept], loaded.digests)


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
    data = image_cache.load(identity, lambda allocate: load(config, root=root, progress=progress, allocate=allocate))
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
    root = root or settings.data_root()
    folders = []  # (folder, the root its links must stay under)
    if config.source == "demo":
        folders.append((demo_data.ensure_demo_dataset(), None))
    elif config.source == "folder":
        folders.append((files.resolve_under_root(root, config.name), root))
    elif config.source == "zip":
        stat = Path(config.name).stat()
        identity["archive"] = [stat.st_size, stat.st_mtime_ns]
    if config.test_folder:
        folders.append((files.resolve_under_root(root, config.test_folder), root))
    identity["files"] = [_files_identity(folder, confined_to) for folder, confined_to in folders]
    return identity


def _files_identity(folder: Path, root: Path | None) -> list:
    scan = scan_folder(Path(folder), root)
    paths = [path for classes in scan.layout.values() for class_files in classes.values() for path in class_files]
    rows = [str(folder)]
    for path in paths + [Path(s.path) for s in scan.skipped]:
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


def load_folder(folder: Path, config: DataConfig, progress: Progress | None = None, description: str = "",
                root: Path | None = None, allocate: Allocate | None = None) -> ImageData:
    """Load `folder` in either layout (see `core.data.scanning.scan_folder`), decode and split it.

    Links that resolve outside `root` (default: `folder`) are skipped and reported.
    The files are decoded in chunks into one staging array from `allocate` (default:
    memory), then each split's rows are copied block by block into an array of its
    own (`take_rows`); with memory maps no split is ever in memory whole.

    Raises:
        UserError: fewer than two classes with images, a class too small for the
            split, or a class none of whose files could be read; each message
            says what was found instead (files skipped, counted by reason).
    """
    scan = scan_folder(Path(folder), root)
    skipped, notes = scan.skipped, scan.notes
    if scan.ignored:
        notes.append(f"Ignored {len(scan.ignored)} hidden or tool folder(s): {_listing(scan.ignored)}.")
    class_names = sorted({name for classes in scan.layout.values() for name in classes})
    if len(class_names) < 2:
        found = f"only {class_names[0]!r}" if class_names else "none"
        raise UserError(
            f"{scan.folder} needs at least two classes with images; found {found}.{_found_instead(skipped)}",
            "Put each class's images in its own subfolder (e.g. cats/, dogs/).",
        )
    index = {name: i for i, name in enumerate(class_names)}
    paths, labels, groups = [], [], []
    for split, classes in scan.layout.items():
        for name, class_files in classes.items():
            paths += class_files
            labels += [index[name]] * len(class_files)
            groups += [split] * len(class_files)

    loaded = _decode([str(p) for p in paths], config.image_size, allocate, progress)
    skipped += loaded.skipped
    labels_kept = np.asarray(labels, dtype="int32")[loaded.kept]
    groups_kept = np.asarray(groups)[loaded.kept]
    _check_classes(class_names, labels, labels_kept, skipped)
    if "all" in scan.layout:
        _check_split_sizes(class_names, labels_kept, config.test_fraction)
        assignment = stratified_split(labels_kept, config.val_fraction, config.test_fraction, config.seed)
    else:
        assignment = groups_kept.copy()
        if "test" not in scan.layout:
            assignment = _carve_test(assignment, labels_kept, config.seed)
            notes.append(f"No test folder: {CARVED_TEST_SHARE:.0%} of validation was held out as the test split.")
        _note_missing_classes(class_names, assignment, labels_kept, notes)
    kept_paths = np.asarray([str(p) for p in paths], dtype=object)[loaded.kept]
    digests = np.asarray(loaded.digests, dtype=object)
    splits, sources, split_digests = {}, {}, {}
    for split in SPLITS:
        chosen = np.flatnonzero(assignment == split)
        rows = np.asarray(loaded.kept, dtype=np.int64)[chosen]
        images = take_rows(loaded.images, rows, (allocate or in_memory)((len(rows), *loaded.images.shape[1:]), "uint8"))
        splits[split] = (images, labels_kept[chosen])
        sources[split], split_digests[split] = kept_paths[chosen].tolist(), digests[chosen].tolist()
    data = ImageData(
        class_names=class_names,
        splits=splits,
        description=description or f"Folder {scan.folder}",
        skipped=skipped,
        image_sizes=loaded.sizes,
        notes=notes,
        sources=sources,
        digests=split_digests,
        ignored=scan.ignored,
    )
    check_usable(data)
    return data


def _decode(paths: list[str], image_size: int, allocate: Allocate | None, progress: Progress | None = None):
    """`decode_images` of `paths` into a staging array from `allocate` (all rows; see `LoadedImages.kept`)."""
    staging = (allocate or in_memory)((len(paths), image_size, image_size, 3), "uint8")
    return decode_images(paths, image_size, staging, progress=progress)


def _listing(items: list[str], shown: int = 5) -> str:
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def _found_instead(skipped: list[SkippedFile]) -> str:
    """' Found instead: 3 files skipped (2 not an image, 1 ...).' or ''."""
    if not skipped:
        return " The folder holds no image files."
    reasons = ", ".join(f"{n} {reason}" for reason, n in count_by_reason(skipped).items())
    return f" Found instead {len(skipped)} skipped file(s): {reasons}."


def _check_classes(class_names: list[str], labels: list[int], kept: np.ndarray, skipped: list[SkippedFile]) -> None:
    """Refuse a class whose every image file failed to decode, saying why they failed."""
    files = np.bincount(np.asarray(labels, "int32"), minlength=len(class_names))
    usable = np.bincount(kept, minlength=len(class_names))
    unreadable = [name for name, n_files, n in zip(class_names, files, usable) if n_files and not n]
    if unreadable:
        raise UserError(
            f"None of the image files of class(es) {', '.join(map(repr, unreadable))} could be read."
            f"{_found_instead(skipped)}",
            "Replace those files with readable JPEG/PNG images (see the skipped-file list).",
        )


def _check_split_sizes(class_names: list[str], labels: np.ndarray, test_fraction: float) -> None:
    """Refuse a class with too few images for one in each of train, validation (and test)."""
    needed = 3 if test_fraction > 0 else 2
    counts = np.bincount(labels, minlength=len(class_names))
    small = [f"{name!r} has {n} image{'s' * (n != 1)}" for name, n in zip(class_names, counts.tolist()) if n < needed]
    if small:
        splits = "train/validation/test" if needed == 3 else "train/validation"
        lower = " or set the test fraction to 0 (then 2 per class suffice)" if needed == 3 else ""
        raise UserError(
            f"Class {'; '.join(small)}: a {splits} split needs at least {needed} images per class (one per split).",
            f"Add images to that class, remove its folder{lower}.",
        )


def _note_missing_classes(class_names: list[str], assignment: np.ndarray, labels: np.ndarray, notes: list[str]) -> None:
    """Given split folders: name the classes that have no validation or no test images."""
    for split in ("validation", "test"):
        present = set(labels[assignment == split].tolist())
        missing = [name for i, name in enumerate(class_names) if i not in present]
        if missing and (assignment == split).any():
            notes.append(f"Class(es) {', '.join(map(repr, missing))} have no {split} images: "
                         f"their {split} scores are not measured.")


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
