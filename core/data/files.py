"""Safe handling of user-supplied paths and uploaded zip archives.

Folder data sources are confined to a configured data root, and uploaded
archives are checked member by member before anything is written, then
streamed out with the size limits enforced on the bytes actually written.
"""

from __future__ import annotations

import os
import re
import stat
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO, NoReturn

from core import atomic
from core.errors import UserError

MiB = 1024**2
GiB = 1024**3

#: Tool and OS folders that never hold data (any folder whose name starts with "." too).
TOOL_FOLDERS = frozenset({"__MACOSX", ".ipynb_checkpoints", "@eaDir", "__pycache__", ".git"})
#: OS metadata files: Finder's, Explorer's (macOS' `._*` resource forks are hidden files).
JUNK_FILES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
_DRIVE = re.compile(r"^[A-Za-z]:")
_ENCRYPTED_FLAG = 0x1
_CHUNK_BYTES = MiB
# Below this total the compression ratio is not checked: small archives cannot be bombs.
_RATIO_CHECK_MIN_BYTES = MiB
_ZIP_HINT = (
    "Create the archive again (for example with your file manager's 'Compress') and upload it."
)


def resolve_under_root(root: str | os.PathLike, user_path: str | os.PathLike) -> Path:
    """Resolve `user_path` (relative to `root`, or absolute) inside the data root.

    Symbolic links are followed, so the returned path is where the data
    really is, and it is refused unless that lies inside `root`.

    Raises:
        UserError: the path escapes the root (`..`, an absolute path
            elsewhere, or a symbolic link pointing out) or is malformed.
    """
    root_path = Path(root).resolve()
    hint = (f"Choose a folder inside the data root {root_path}, given relative to it, or start the dashboard"
            " with TL_DATA_ROOT set to the folder that holds your datasets.")
    try:
        candidate = root_path / user_path
        resolved = candidate.resolve()
    except (OSError, RuntimeError, ValueError) as error:  # null bytes, symlink loops
        raise UserError(f"Cannot use the path {str(user_path)!r}: {error}.", hint) from None
    if resolved.is_relative_to(root_path):
        return resolved
    if Path(os.path.normpath(candidate)).is_relative_to(root_path):
        message = (
            f"{user_path} leads outside the data root {root_path} through a symbolic link"
            f" (to {resolved})."
        )
    else:
        message = f"{user_path} is outside the data root {root_path}."
    raise UserError(message, hint)


def safe_extract_zip(
    archive: str | os.PathLike | BinaryIO,
    dest_dir: str | os.PathLike,
    *,
    max_archive_bytes: int = 200 * MiB,
    max_total_bytes: int = GiB,
    max_files: int = 20_000,
    max_ratio: float = 200,
) -> Path:
    """Extract an uploaded zip archive into `dest_dir` and return its data root.

    Every member is checked before anything is written; an archive is refused
    whole (UserError) when it is too big, not a zip or corrupt, or holds a
    member with an absolute path, a drive letter, a `..` component, a symbolic
    link or encryption, more than `max_files` files, more than
    `max_total_bytes` declared or actually written, or a compression ratio
    above `max_ratio`. Backslashes count as folder separators. Junk such as
    hidden and tool folders (`__MACOSX/`, `.git/`...), `.DS_Store`, `._*` and `Thumbs.db` is skipped.

    Args:
        archive: path of the archive, or a seekable binary file object
            (such as Streamlit's UploadedFile).
        dest_dir: a folder that does not exist yet or is empty. It is only
            filled once extraction has succeeded; on refusal it is left as it was.

    Returns:
        The single top-level folder when everything sits in one, else `dest_dir`.
    """
    name = _archive_name(archive)
    _check_archive_size(archive, name, max_archive_bytes)
    dest = Path(dest_dir)
    _require_empty_folder(dest)
    try:
        with zipfile.ZipFile(archive) as zip_file:
            members = _checked_members(zip_file, name, max_files, max_total_bytes, max_ratio)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with atomic.replacing(dest, folder=True) as staging:  # replaces the empty (or missing) dest
                _stream_members(zip_file, members, staging, name, max_total_bytes)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as error:
        raise UserError(f"{name} is not a valid zip archive ({error}).", _ZIP_HINT) from None
    return _data_root(dest)


def _archive_name(archive: str | os.PathLike | BinaryIO) -> str:
    if isinstance(archive, (str, os.PathLike)):
        return Path(archive).name
    return Path(str(getattr(archive, "name", "") or "the uploaded archive")).name


def _check_archive_size(archive, name: str, max_archive_bytes: int) -> None:
    try:
        if isinstance(archive, (str, os.PathLike)):
            size = os.stat(archive).st_size
        else:
            position = archive.tell()
            size = archive.seek(0, os.SEEK_END)
            archive.seek(position)
    except OSError as error:
        raise UserError(
            f"Cannot read {name}: {error.strerror or error}.", "Upload the archive again."
        ) from None
    if size > max_archive_bytes:
        raise UserError(
            f"{name} is {_human_size(size)}, over the limit of {_human_size(max_archive_bytes)}.",
            "Upload a smaller archive, or put the images in a folder under the data root.",
        )


def _require_empty_folder(dest: Path) -> None:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UserError(
            f"{dest} already exists and is not an empty folder.", "Extract into a new folder."
        )


def _checked_members(
    zip_file: zipfile.ZipFile, name: str, max_files: int, max_total_bytes: int, max_ratio: float
) -> list[tuple[zipfile.ZipInfo, tuple[str, ...]]]:
    """The files to extract with their safe relative path parts; refuses hostile archives."""
    members = []
    for info in zip_file.infolist():
        parts = _safe_parts(info.filename, name)
        if stat.S_ISLNK(info.external_attr >> 16):
            _refuse(name, f"{info.filename!r} is a symbolic link")
        if info.flag_bits & _ENCRYPTED_FLAG:
            _refuse(
                name, f"{info.filename!r} is encrypted", "Upload an archive without a password."
            )
        if parts and not info.is_dir() and not _is_junk(parts):
            members.append((info, parts))
    if not members:
        _refuse(name, "it contains no files", "Upload a zip of class folders of images.")
    if len(members) > max_files:
        _refuse(name, f"it holds {len(members):,} files, over the limit of {max_files:,}")
    declared = sum(info.file_size for info, _ in members)
    if declared > max_total_bytes:
        limit = _human_size(max_total_bytes)
        _refuse(name, f"it expands to {_human_size(declared)}, over the limit of {limit}")
    compressed = sum(info.compress_size for info, _ in members)
    if declared > _RATIO_CHECK_MIN_BYTES and declared > max_ratio * compressed:
        ratio = declared / max(compressed, 1)
        _refuse(name, f"its compression ratio {ratio:.0f}:1 is suspicious (zip bomb?)")
    return members


def _safe_parts(member_name: str, name: str) -> tuple[str, ...]:
    """Path parts of a member, refusing absolute paths, drive letters and `..`."""
    normalized = member_name.replace("\\", "/")
    if normalized.startswith("/"):
        _refuse(name, f"{member_name!r} has an absolute path")
    parts = tuple(part for part in normalized.split("/") if part not in ("", "."))
    if any(_DRIVE.match(part) for part in parts):
        _refuse(name, f"{member_name!r} has a drive letter")
    if ".." in parts:
        _refuse(name, f"{member_name!r} points outside the archive with '..'")
    return parts


def is_ignored_folder(name: str) -> bool:
    """Whether a folder named `name` is a hidden or tool folder (`TOOL_FOLDERS`, `.anything`),
    never data: the folder scan and the zip extraction both leave these out."""
    return name in TOOL_FOLDERS or name.startswith(".")


def is_junk_file(name: str) -> bool:
    """OS metadata that is not data: macOS resource forks (`._*`), Finder and Explorer files."""
    return name in JUNK_FILES or name.startswith("._")


def _is_junk(parts: tuple[str, ...]) -> bool:
    return any(is_ignored_folder(part) for part in parts[:-1]) or is_junk_file(parts[-1])


def _refuse(
    name: str, reason: str, hint: str = "Upload an ordinary zip of image folders."
) -> NoReturn:
    raise UserError(f"Refused {name}: {reason}.", hint)


def _stream_members(
    zip_file: zipfile.ZipFile,
    members: list[tuple[zipfile.ZipInfo, tuple[str, ...]]],
    staging: Path,
    name: str,
    max_total_bytes: int,
) -> None:
    """Write the members under `staging`, counting the bytes really written."""
    written = 0
    for info, parts in members:
        target = staging.joinpath(*parts)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with zip_file.open(info) as source, open(target, "wb") as sink:
                while chunk := source.read(_CHUNK_BYTES):
                    written += len(chunk)
                    if written > max_total_bytes:
                        _refuse(name, f"it expands to more than {_human_size(max_total_bytes)}")
                    sink.write(chunk)
        except OSError as error:
            raise UserError(
                f"Cannot extract {info.filename!r} from {name}: {error.strerror or error}.",
                "Check the free disk space and that no two members share a name.",
            ) from None


def _human_size(size: int) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{size} bytes"


def _data_root(folder: Path) -> Path:
    entries = list(folder.iterdir())
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return folder
