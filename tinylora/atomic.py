"""Atomic writes of single files and of whole directories, so a reader never sees a half-written result.

A file is written to a temporary file in the same directory, flushed with fsync and moved into place with
`os.replace`, which POSIX makes atomic within one file system. A directory is written the same way: its files
go into a staging directory next to the target, which is then renamed onto the target path. Temporary names
start with a dot and end in `.tmp`, and every failure removes them before the error propagates.
"""

import os
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path

TEMP_SUFFIX = ".tmp"


def write_file_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` so that readers see either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_name(path)
    try:
        write_file_synced(temp, data)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


def write_directory_atomic(path: str | os.PathLike, files: Mapping[str, bytes], overwrite: bool = False) -> Path:
    """Create directory `path` holding `files` (file name -> contents) in one rename.

    Raises FileExistsError when `path` exists and `overwrite` is False. With `overwrite`, the old directory is
    renamed aside, the new one renamed into place and the old one deleted. Between those two renames `path`
    is briefly missing, but at no moment does it name a partly written directory.
    """
    path = Path(path)
    for name in files:
        if not name or Path(name).name != name or name in (".", ".."):
            raise ValueError(f"file name {name!r} must be a plain name without a directory part")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; choose another path or pass overwrite=True")
    path.parent.mkdir(parents=True, exist_ok=True)

    staging = _temp_name(path)
    os.mkdir(staging)  # mode 0o777 minus the umask, which the final directory keeps
    try:
        for name, data in files.items():
            write_file_synced(staging / name, data)
        _fsync_directory(staging)
        if path.exists():
            _swap_directory(staging, path)
        else:
            os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _fsync_directory(path.parent)
    return path


def write_file_synced(path: Path, data: bytes) -> None:
    """Create `path` (which must not exist), write `data` and fsync it before returning."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _swap_directory(staging: Path, path: Path) -> None:
    old = _temp_name(path)
    os.replace(path, old)
    try:
        os.replace(staging, path)
    except BaseException:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}")


def _fsync_directory(path: Path) -> None:
    """Flush a directory entry so a completed rename survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
