"""Folder scanning: which files of a dataset folder are images of which split and class.

One rule for every level, files and folders alike:
- a symbolic link that resolves inside the confinement root (the data root) is
  followed; one that resolves outside it, or nowhere, is skipped and reported;
- hidden and tool folders (`.anything`, `__MACOSX`, `.ipynb_checkpoints`, `@eaDir`,
  `__pycache__`, `.git`) are ignored at any depth and listed;
- OS junk files (`.DS_Store`, `Thumbs.db`, `._*`) and non-image files are skipped
  with their reason.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from core.data.files import is_ignored_folder, is_junk_file
from core.data.images import SkippedFile, is_image_file
from core.errors import UserError

SPLIT_ALIASES = {"train": "train", "validation": "validation", "val": "validation", "valid": "validation", "test": "test"}

LINK_OUT = "symbolic link that leads outside the data root"
LINK_BROKEN = "broken symbolic link"
NOT_IN_CLASS = "not inside a class folder"
NOT_IMAGE_TYPE = "not an image file type"
JUNK = "OS metadata file"


@dataclass
class Scan:
    """What `scan_folder` found.

    layout: {split: {class: [image files]}}, split "all" when the folder has no
        train/validation[/test] folders.
    skipped: files (and links) left out, with their reasons.
    ignored: hidden and tool folders left out, relative to the scanned folder.
    notes: sentences for the user (an unwrapped top folder, an empty class...).
    folder: the folder the layout was read from (one below the chosen one when
        that holds a single wrapper folder).
    """

    folder: Path
    layout: dict[str, dict[str, list[Path]]] = field(default_factory=dict)
    skipped: list[SkippedFile] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class _Walker:
    """Lists folders under one confinement root by the module's rule."""

    def __init__(self, top: Path, root: Path, scan: Scan):
        self.top, self.root, self.scan = top, root, scan

    def entries(self, folder: Path) -> tuple[list[Path], list[Path]]:
        """(files, subfolders) of `folder`, sorted; links out, junk and hidden folders are reported."""
        files, folders = [], []
        try:
            children = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError as error:
            raise UserError(f"Cannot read the folder {folder}: {error.strerror}.", "Check its permissions.") from None
        for entry in children:
            path = Path(entry.path)
            if entry.is_symlink() and not self._link_inside(path):
                continue
            if entry.is_dir():
                if is_ignored_folder(entry.name):
                    self.scan.ignored.append(self._relative(path))
                else:
                    folders.append(path)
            elif entry.is_file():
                if is_junk_file(entry.name):
                    self.scan.skipped.append(SkippedFile(str(path), JUNK))
                else:
                    files.append(path)
        return files, folders

    def images(self, folder: Path, seen: frozenset = frozenset()) -> list[Path]:
        """Image files anywhere under `folder` (nested folders and links inside the root followed)."""
        real = folder.resolve()
        if real in seen:  # a link loop: each real folder is read once per branch
            return []
        files, folders = self.entries(folder)
        found = []
        for path in files:
            if is_image_file(path):
                found.append(path)
            else:
                self.scan.skipped.append(SkippedFile(str(path), NOT_IMAGE_TYPE))
        for sub in folders:
            found += self.images(sub, seen | {real})
        return found

    def _link_inside(self, path: Path) -> bool:
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError):
            self.scan.skipped.append(SkippedFile(str(path), LINK_BROKEN))
            return False
        if target.is_relative_to(self.root):
            return True
        self.scan.skipped.append(SkippedFile(str(path), LINK_OUT))
        return False

    def _relative(self, path: Path) -> str:
        return str(path.relative_to(self.top)) if path.is_relative_to(self.top) else str(path)


def _not_a_folder(folder: Path) -> UserError:
    """The error for a dataset path that is not a folder, naming the folders beside it."""
    if folder.exists():
        return UserError(f"{folder} is a file, not a folder.", "Choose a folder that holds one subfolder per class.")
    parent = folder.parent
    siblings = sorted(p.name for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if parent.is_dir() else []
    hint = (f"Folders in {parent}: {', '.join(siblings[:10])}." if siblings
            else f"{parent} holds no folders." if parent.is_dir() else f"{parent} does not exist either.")
    return UserError(f"There is no folder {folder}.", hint + " Choose a folder that holds one subfolder per class.")


def scan_folder(folder: Path, root: Path | None = None) -> Scan:
    """Find image files by split and class under `folder`, confined to `root`.

    A folder whose subfolders are train/validation[/test] is used as given;
    otherwise its subfolders are classes. A folder that holds nothing but one
    wrapper folder (e.g. `flower_photos/` of a download) is read through it.

    Args:
        folder: the dataset folder.
        root: links resolving outside it are skipped (default: `folder` itself).

    Raises:
        UserError: `folder` is not a readable folder, or has train/ without validation/.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise _not_a_folder(folder)
    scan = Scan(folder)
    walker = _Walker(folder, Path(root or folder).resolve(), scan)
    files, subfolders = walker.entries(folder)
    while len(subfolders) == 1 and not files and subfolders[0].name.lower() not in SPLIT_ALIASES:
        reported = len(scan.skipped), len(scan.ignored)
        inner_files, inner_folders = walker.entries(subfolders[0])
        if not inner_folders:  # a single class: the class scan below reports its contents
            del scan.skipped[reported[0]:], scan.ignored[reported[1]:]
            break
        scan.notes.append(f"{scan.folder.name}/ holds only {subfolders[0].name}/: its contents were used as the dataset.")
        scan.folder, files, subfolders = subfolders[0], inner_files, inner_folders
    scan.skipped += [SkippedFile(str(path), NOT_IN_CLASS) for path in files]
    split_folders = {SPLIT_ALIASES[p.name.lower()]: p for p in subfolders if p.name.lower() in SPLIT_ALIASES}
    if "train" in split_folders:
        if "validation" not in split_folders:
            raise UserError(
                f"{scan.folder} has a train folder but no validation folder.",
                "Add validation/<class>/ images, or put the class folders directly in the top folder.",
            )
        for split, path in split_folders.items():
            split_files, class_dirs = walker.entries(path)
            scan.skipped += [SkippedFile(str(p), NOT_IN_CLASS) for p in split_files]
            scan.layout[split] = _classes(walker, class_dirs, scan, path.name)
    else:
        scan.layout["all"] = _classes(walker, subfolders, scan, scan.folder.name)
    return scan


def _classes(walker: _Walker, class_dirs: list[Path], scan: Scan, where: str) -> dict[str, list[Path]]:
    classes = {}
    for class_dir in class_dirs:
        images = walker.images(class_dir)
        if images:
            classes[class_dir.name] = images
        else:
            scan.notes.append(f"Class folder {class_dir.name!r} in {where} has no images and was left out.")
    return classes
