"""Atomic writes: a file or folder is replaced whole, or not at all.

What is written goes to a hidden temporary path beside the target (same folder, so
same file system) and takes the target's place with one `os.replace` (POSIX
`rename(2)`: atomic) once it is complete. A crash, a kill or an exception before
that leaves the old target exactly as it was; readers never see half a file.
"""
from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path


@contextmanager
def replacing(target: Path | str, *, folder: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `target`; when the block ends normally, it replaces `target`.

    The temporary name is hidden (`.<name>-<8 hex>.tmp<suffix>`: it keeps the
    target's suffix, as `keras.Model.save` needs). With `folder=True` the temporary
    path is an empty folder, created here, and replaces `target` when `target` is
    missing or an empty folder (otherwise `os.replace` raises OSError: a folder
    someone else made first is kept). On an exception in the block, or from the
    replace, the temporary path is removed and the exception propagates. The target's
    folder must exist.
    """
    target = Path(target)
    temporary = target.parent / f".{target.name}-{secrets.token_hex(4)}.tmp{target.suffix}"
    if folder:
        temporary.mkdir()
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        if folder:
            shutil.rmtree(temporary, ignore_errors=True)
        else:
            with suppress(OSError):
                temporary.unlink()


def write_text(path: Path | str, text: str, encoding: str = "utf-8") -> None:
    """Write `text` to `path` atomically, flushed to disk (fsync) before it replaces the
    old file. Raises OSError when the folder is missing or not writable, or the disk is full."""
    with replacing(path) as temporary:
        with open(temporary, "w", encoding=encoding) as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
