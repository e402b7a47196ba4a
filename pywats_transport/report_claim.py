"""Which process sends a report: an advisory lock on the report's file in ``sending/``, held while it is sent.

Processes sharing a queue folder (two services, a service and the outboxes of a station's test programs)
each list ``sending/``, where a crashed process leaves the report it was sending. A report being sent is
locked there, and the others pass it by; the kernel lets go of a dead process's locks, so a report left
by a crash is resumed by whichever process finds it next. The lock is POSIX ``flock`` (on NFS the kernel
maps it onto byte-range locks, which reach the server); where there is none (Windows), a claim always
succeeds, and a folder serves one process at a time.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

# The filesystem takes no locks at all (some FUSE and SMB mounts): claims then exclude nothing, as on Windows.
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class Claim:
    """The right to send one report file; :meth:`release` once it has left ``sending/``."""

    __slots__ = ("_fds",)

    def __init__(self, fds: list[int]) -> None:
        self._fds = fds

    @classmethod
    def take(cls, path: Path) -> Claim | None:
        """The claim on ``path``; None when another sender holds it, or the file is gone or was replaced."""
        if fcntl is None:
            return cls([])
        fd = _open(path)
        if fd is None:
            return None
        if not _lock(fd):
            os.close(fd)
            return None
        try:
            # The holder before us may have sent it and moved it on (or replaced it) before letting go.
            current = os.stat(path)
            held = os.fstat(fd)
            if (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
                return cls([fd])
        except FileNotFoundError:
            pass
        os.close(fd)
        return None

    def extend_to(self, fd: int) -> None:
        """Hold the file open as ``fd`` too: its replacement, written before it takes the report's name.

        The replaced file stays locked until :meth:`release`: a sender that opened it before the
        replacement and takes its lock after that finds the name another file's, and passes it by.
        """
        if fcntl is None:
            return
        own = os.dup(fd)
        if not _lock(own):  # cannot be held by another: nobody knows this file yet
            os.close(own)
            return
        self._fds.append(own)

    def release(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)


def _open(path: Path) -> int | None:
    """``path`` opened, writable where it can be (NFS carries the lock as a byte-range write lock, which
    needs it); None: it is gone. A file that cannot be read at all raises, as its read would."""
    try:
        try:
            return os.open(path, os.O_RDWR)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None


def _lock(fd: int) -> bool:
    """Whether the lock is ours (or the filesystem takes none); False: another holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno not in _NO_LOCKS:
            raise
    return True
