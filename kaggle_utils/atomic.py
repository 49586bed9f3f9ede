"""Atomic file writes: a kill at any moment leaves either the old file or the new one, never half.

Kept free of torch so light modules (submission writer workers, synthetic data, folds) can use it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_json", "atomic_write_text"]


def atomic_write(
    path: str | os.PathLike, writer: Callable[[IO[bytes]], Any], *, fsync: bool = True
) -> Path:
    """Call `writer(fileobj)` on a temp file beside `path`, then rename it over `path`.

    `fsync=False` skips the flush to disk (still atomic against a killed process, not against a
    power cut): for many small files that can be regenerated, such as synthetic data.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            writer(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise_if_disk_full(path, exc)
        raise
    return path


def raise_if_disk_full(path: str | os.PathLike, exc: BaseException) -> None:
    """Re-raise a failed write of `path` as one line naming it when the disk was full (ENOSPC or
    EDQUOT anywhere in `exc`'s chain); return quietly otherwise, for the caller to re-raise."""
    full = _disk_full(exc)
    if full is not None:
        raise OSError(full.errno, _disk_full_message(Path(path), full)) from exc


_FULL = (errno.ENOSPC, errno.EDQUOT)


def _disk_full(exc: BaseException) -> OSError | None:
    """The "no space left" OSError in ``exc`` or its chain: torch.save, for one, reports it as a
    RuntimeError from its C++ writer with the OSError only in ``__context__``."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in _FULL:
            return cur
        cur = cur.__cause__ or cur.__context__
    return None


def _disk_full_message(path: Path, err: OSError) -> str:
    """One line: the file, the fault, the space left, what to do; the old file is untouched."""
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    return (
        f"{os.strerror(err.errno)} writing {path} ({free} on its filesystem): free disk space or "
        "write to another disk, then run again (any previous version of the file is intact)"
    )


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> Path:
    return atomic_write(path, lambda f: f.write(data), fsync=fsync)


def atomic_write_text(path: str | os.PathLike, text: str, *, fsync: bool = True) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, fsync: bool = True) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    return atomic_write_text(path, text, fsync=fsync)
