"""One live run per output folder: an OS-level lock held for a run's whole life.

`acquire(folder, command)` takes an exclusive, non-blocking `flock` on `FOLDER/.geomkit.lock`
and writes the holder's pid into it; a second run on the same folder fails at once with one line
naming that pid. The lock belongs to the open file: it is released by `release()` (which also
removes the file), when the `RunLock` object is garbage-collected, or by the operating system when
the process ends in any way (`kill -9` included, which leaves the unlocked file behind), so a dead
run never blocks its folder. A run that locks a file that was removed meanwhile notices (the path
no longer names the file it locked) and tries again, so two runs never hold two different files.

Several processes (`torchrun`, `accelerate launch`): only the main process (RANK 0) takes the
lock; the others run under it.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import Optional

from geomkit.errors import GeomkitError

LOCK_NAME = ".geomkit.lock"
# this process's live locks (weakly: a lock nobody refers to is still released by garbage collection),
# so that a refused command can drop them at once
_HELD: "weakref.WeakSet[RunLock]" = weakref.WeakSet()


def release_held() -> None:
    """Release every lock this process holds. The CLI calls it when a command is refused, before it
    removes the output folders that command created (a lock kept alive by the error's traceback would
    otherwise keep its folder non-empty)."""
    for lock in list(_HELD):
        lock.release()


class RunLock:
    def __init__(self, path: Path, fd: Optional[int], handle=None):
        self.path, self._fd, self._handle = path, fd, handle

    @property
    def held(self) -> bool:
        return self._fd is not None or self._handle is not None

    def release(self) -> None:
        _HELD.discard(self)
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                if _same_file(fd, self.path):
                    os.unlink(self.path)
            except OSError:
                pass
            try:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        if self._handle is not None:
            handle, self._handle = self._handle, None
            handle.release()

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):
        try:
            self.release()
        except Exception:
            pass


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _holder(path: Path) -> str:
    """What the lock file says about its holder ("geomkit train, pid 1234")."""
    try:
        text = path.read_text().split()
    except OSError:
        text = []
    if text and text[0].isdigit():
        return (f"geomkit {text[1]}, " if len(text) > 1 else "") + f"pid {text[0]}"
    return "pid unknown"


def acquire(folder, command: str, flag: str = "--out") -> RunLock:
    """Lock `folder` for this run, or raise GeomkitError naming the live run that holds it."""
    folder = Path(folder)
    path = folder / LOCK_NAME
    if int(os.environ.get("RANK", "0") or 0) != 0:  # several processes: the main one holds the lock
        return RunLock(path, None)
    try:
        import fcntl
    except ImportError:  # not POSIX: the filelock package (no pid to report)
        from filelock import FileLock, Timeout

        handle = FileLock(str(path))
        try:
            handle.acquire(timeout=0)
        except Timeout:
            raise GeomkitError(f"{flag} {folder}: another geomkit run is still working in this folder; "
                               "wait for it to finish or stop it, or choose another folder") from None
        lock = RunLock(path, None, handle)
        _HELD.add(lock)
        return lock
    for _attempt in range(50):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise GeomkitError(f"{flag} {folder}: cannot create the run lock {path.name} ({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            holder = _holder(path)
            for _ in range(20):  # the holder may be between taking the lock and writing its pid
                if holder != "pid unknown":
                    break
                import time

                time.sleep(0.05)
                holder = _holder(path)
            raise GeomkitError(f"{flag} {folder}: another run ({holder}) is still working in this folder; "
                               "wait for it to finish or stop it, or choose another folder") from None
        if _same_file(fd, path):
            break
        os.close(fd)  # the previous holder removed the file as we locked it: lock the new one
    else:
        raise GeomkitError(f"{flag} {folder}: could not take the run lock {path.name}; try again")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {command}\n".encode(), 0)
    lock = RunLock(path, fd)
    _HELD.add(lock)
    return lock
