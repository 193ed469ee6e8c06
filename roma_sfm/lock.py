"""One writer per output folder: a lock file naming the process that writes the folder.

Two runs writing into one folder would overwrite each other's files halfway. ``output_lock(folder)``
(a context manager) or ``@writes_into(folder_of)`` (a function that holds the lock of the folder
its arguments name while it runs) takes ``folder/.roma-sfm.lock``; a second process that asks for
it gets :class:`OutputLocked`, whose message names the holder: "another roma-sfm process (pid N,
started T) is writing OUT; wait for it or choose another output".

The lock is an ``flock`` on that file, which the kernel drops when its process ends, ``kill -9``
included; the file itself holds the holder's pid and start time for the message. A file that is
there but not locked was left by a process that died: the next writer takes it over with a warning
naming that process. Within one process the lock is re-entrant (``reconstruct`` holds its folder
while its match step asks again). Where ``fcntl`` does not exist (Windows) nothing is locked.
"""
from __future__ import annotations

import errno
import functools
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Optional, TypeVar, Union

try:
    import fcntl
except ImportError:  # pragma: no cover (Windows)
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".roma-sfm.lock"
F = TypeVar("F", bound=Callable[..., Any])
logger = logging.getLogger("roma_sfm.lock")

# (pid, real path of the folder) -> [file descriptor holding the flock, re-entry count]
_held: dict[tuple[int, str], list[int]] = {}
_mutex = threading.Lock()


class OutputLocked(RuntimeError):
    """Another live process holds the folder's lock."""

    def __init__(self, folder: Path, pid: Union[int, str], started: str):
        super().__init__(f"another roma-sfm process (pid {pid}, started {started}) is writing {folder}; "
                         "wait for it or choose another output")
        self.folder, self.pid, self.started = Path(folder), pid, started


@dataclass
class Holder:
    """What a lock file says about the process that took it."""

    pid: Union[int, str]
    started: str
    host: str = ""


def read_holder(path: Path) -> Optional[Holder]:
    """The holder written in a lock file; None when the file is missing, empty or not ours."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return Holder(data["pid"], str(data["started"]), str(data.get("host", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (POSIX)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return isinstance(pid, int)
    return True


def _wait_for_holder(path: Path, tries: int = 20) -> Holder:
    """The holder of a locked file; its writer may not have written it yet (a few ms), so retry."""
    for _ in range(tries):
        holder = read_holder(path)
        if holder is not None:
            return holder
        time.sleep(0.025)
    return Holder("?", "?")


def _take(path: Path) -> int:
    """flock ``path`` (created if missing) and write this process in it; returns the descriptor."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = _wait_for_holder(path)
            raise OutputLocked(path.parent, holder.pid, holder.started) from None
        try:  # the holder before us may have removed the file between our open and our flock
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    previous = read_holder(path)
    if previous is not None and previous.pid != os.getpid():
        gone = "is no longer running" if not pid_alive(previous.pid) else "no longer holds it"
        logger.warning("taking over a stale lock of %s: roma-sfm process pid %s (started %s) %s (killed?)",
                       path.parent, previous.pid, previous.started, gone)
    data = json.dumps({"pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                       "host": socket.gethostname()})
    os.ftruncate(fd, 0)
    os.pwrite(fd, data.encode(), 0)
    return fd


class OutputLock:
    """The lock of one output folder (see the module docstring); ``with OutputLock(folder):``."""

    def __init__(self, folder: Union[str, os.PathLike]):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.key: Optional[tuple[int, str]] = None

    def acquire(self) -> "OutputLock":
        """Take the lock (the folder is created if needed); raises :class:`OutputLocked`."""
        if self.key is not None or fcntl is None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        key = (os.getpid(), os.path.realpath(self.folder))
        with _mutex:
            if key in _held:
                _held[key][1] += 1
            else:
                _held[key] = [_take(self.path), 1]
        self.key = key
        return self

    def release(self) -> None:
        """Give the lock back (the last release of this process removes the file)."""
        key, self.key = self.key, None
        if key is None:
            return
        with _mutex:
            entry = _held.get(key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del _held[key]
            if key[0] != os.getpid():  # a forked child: the descriptor is its parent's lock
                return
            try:
                os.unlink(self.path)  # before unlocking: a waiting process then finds a fresh file
            except FileNotFoundError:
                pass
            os.close(entry[0])

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, exc_type: Optional[type], exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        self.release()

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # never raise from a finaliser (e.g. at interpreter exit)
            pass


def output_lock(folder: Union[str, os.PathLike]) -> OutputLock:
    """``with output_lock(folder):`` the caller is the one writer of ``folder`` inside the block."""
    return OutputLock(folder)


def writes_into(folder_of: Callable[..., Union[str, os.PathLike]]) -> Callable[[F], F]:
    """Decorator: each call holds the lock of ``folder_of(*args, **kwargs)`` (called with the
    function's own arguments) while it runs, and gives it back however the call ends."""
    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with output_lock(folder_of(*args, **kwargs)):
                return func(*args, **kwargs)
        return wrapper  # type: ignore[return-value]
    return decorate
