"""Files that hold member data (dead letters, state, spools, checkpoints): owner-only, no links.

Created ``0600`` whatever the umask, opened without following a symlink at the final path
component (an attacker's link cannot redirect member data), replaced atomically.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import IO

from .exceptions import ConfigurationError

__all__ = [
    "PRIVATE_MODE",
    "ensure_private_file",
    "open_private",
    "refuse_link",
    "replace_private",
]

PRIVATE_MODE = 0o600
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def refuse_link(path: Path) -> None:
    """Refuse to write member data through a symbolic link."""
    if path.is_symlink():
        raise ConfigurationError(f"{path} is a symbolic link; refusing to write member data there")


def open_private(path: str | os.PathLike[str], *, append: bool) -> IO[str]:
    """Open ``path`` for writing text (appending, or truncated), creating it ``0600``."""
    file = Path(path)
    refuse_link(file)
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | _NOFOLLOW | (0 if append else os.O_TRUNC)
    try:
        fd = os.open(file, flags, PRIVATE_MODE)
    except OSError as exc:
        raise ConfigurationError(f"cannot write {file}: {exc.strerror}") from None
    with contextlib.suppress(OSError):  # not ours to change (another owner): leave it
        if stat.S_IMODE(os.fstat(fd).st_mode) != PRIVATE_MODE:
            os.fchmod(fd, PRIVATE_MODE)
    return os.fdopen(fd, "a", encoding="utf-8")


def ensure_private_file(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` empty and ``0600`` if it does not exist (before a database opens it;
    SQLite gives its journal files the database's mode); refuse a symlink."""
    file = Path(path)
    refuse_link(file)
    try:
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | _NOFOLLOW, PRIVATE_MODE)
    except OSError as exc:
        raise ConfigurationError(f"cannot create {file}: {exc.strerror}") from None
    with contextlib.suppress(OSError):
        if stat.S_IMODE(os.fstat(fd).st_mode) != PRIVATE_MODE:
            os.fchmod(fd, PRIVATE_MODE)
    os.close(fd)
    return file


def replace_private(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (a ``0600`` temporary file renamed over it)."""
    file = Path(path)
    refuse_link(file)
    fd, temporary = tempfile.mkstemp(dir=file.parent or ".", prefix=f".{file.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, file)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
