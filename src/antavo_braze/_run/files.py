"""Files that hold member data (dead letters, state, spools, checkpoints): owner-only, no links.

Created ``0600`` whatever the umask, opened without following a symlink at the final path
component (an attacker's link cannot redirect member data), replaced atomically. A file that
exists already is used only when it is ours and private: one that belongs to another user (who
could read what we write, or plant rows we would send under our key) or that others can read
or write is refused — it may have leaked already, so it is not quietly chmod-ed.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import IO

from ..exceptions import ConfigurationError

__all__ = [
    "PRIVATE_MODE",
    "check_private",
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


def check_private(path: str | os.PathLike[str]) -> None:
    """Refuse an existing file that is not ours alone (another owner, or any access for the
    group or others); a missing file is fine (we create it ``0600``)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigurationError(f"cannot use {path}: {exc.strerror}") from None
    if stat.S_ISLNK(info.st_mode):
        raise ConfigurationError(f"{path} is a symbolic link; refusing to write member data there")
    if info.st_uid != os.geteuid():
        raise ConfigurationError(
            f"{path} belongs to another user (uid {info.st_uid}); refusing to use it for member "
            "data or secrets: remove it, or give a path of your own"
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise ConfigurationError(
            f"{path} is open to other users (mode {stat.S_IMODE(info.st_mode):o}); it holds "
            f"member data or secrets: chmod 600 {path} if nobody else read it, else remove it"
        )


def open_private(path: str | os.PathLike[str], *, append: bool) -> IO[str]:
    """Open ``path`` for writing text (appending, or truncated), creating it ``0600``."""
    file = Path(path)
    check_private(file)
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | _NOFOLLOW | (0 if append else os.O_TRUNC)
    try:
        fd = os.open(file, flags, PRIVATE_MODE)
    except OSError as exc:
        raise ConfigurationError(f"cannot write {file}: {exc.strerror}") from None
    with contextlib.suppress(OSError):  # not ours to change (another owner): leave it
        if stat.S_IMODE(os.fstat(fd).st_mode) != PRIVATE_MODE:
            os.fchmod(fd, PRIVATE_MODE)
    return os.fdopen(fd, "a", encoding="utf-8")


def ensure_private_file(path: str | os.PathLike[str], *, refuse_shared: bool = True) -> Path:
    """Create ``path`` empty and ``0600`` if it does not exist (before a database opens it;
    SQLite gives its journal files the database's mode); refuse a symlink, and (unless
    ``refuse_shared`` is false: a log file, which holds no member data) an existing file
    that is not ours alone — that one is made ``0600`` instead."""
    file = Path(path)
    if refuse_shared:
        check_private(file)
    else:
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
    check_private(file)
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
