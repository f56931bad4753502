"""The output's creation lock and process liveness, portable to systems without ``fcntl`` or ``/proc``.

One job: tell whether another process is creating an output or still runs a
run, on Linux, macOS and Windows alike.

- :func:`creation_lock` is the exclusive lock on ``<out>.lock`` under which a
  writer creates an output or adds layers to it. Where ``fcntl`` exists (Linux,
  macOS) it is ``fcntl.flock``; on Windows it is ``msvcrt.locking`` on one byte
  of the lock file. Both are released by the operating system when the holder
  dies, so a killed run never leaves a lock that blocks the next one. Where
  neither exists, the lock is the file's existence (``O_CREAT | O_EXCL``) with
  the holder's pid in it; a lock whose process is gone is taken over.
- :func:`process_alive` and :func:`holders` ask psutil (no ``/proc`` reads, no
  ``os.kill(pid, 0)``, which on Windows would send a console control event).

Platform modules are imported only in the branch that uses them.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import socket
import time
import uuid
from datetime import datetime
from pathlib import Path

from geors.errors import OutputError

log = logging.getLogger(__name__)

__all__ = ["creation_lock", "process_alive", "process_start", "holders"]

#: how long a creator waits for another one by default (the writer passes its own).
LOCK_WAIT_S = 120.0
#: the byte ``msvcrt.locking`` locks: far past the holder's line, so other processes can still read that line
#: (Windows byte-range locks are mandatory) - locking past the end of a file is allowed there.
_MSVCRT_LOCK_OFFSET = 1 << 30
_HOLDER_RE = re.compile(r"pid (\d+) on (\S+)")


def _read_small(path: Path) -> str:
    try:
        return path.read_text()[:200]
    except OSError:
        return ""


def _lock_module():
    """("fcntl", module), ("msvcrt", module) or (None, None) where neither can be imported."""
    try:
        import fcntl
        return "fcntl", fcntl
    except ImportError:
        pass
    try:
        import msvcrt
        return "msvcrt", msvcrt
    except ImportError:
        return None, None


def _try_lock(kind: str, mod, fd: int, path: Path) -> bool:
    """Lock ``fd`` without waiting: True when locked (or locks do not work here), False when held elsewhere."""
    try:
        if kind == "fcntl":
            mod.flock(fd, mod.LOCK_EX | mod.LOCK_NB)
        else:
            os.lseek(fd, _MSVCRT_LOCK_OFFSET, os.SEEK_SET)
            mod.locking(fd, mod.LK_NBLCK, 1)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:
        if kind == "msvcrt" and exc.errno in (errno.EACCES, errno.EDEADLK):
            return False  # msvcrt's "region locked by another process"
        log.warning("%s: file locks are not supported here (%s); two geors processes must not create "
                    "this output at the same time", path, exc.strerror)  # some network mounts
        return True


def _unlock(kind: str, mod, fd: int) -> None:
    if kind == "msvcrt":
        with contextlib.suppress(OSError):
            os.lseek(fd, _MSVCRT_LOCK_OFFSET, os.SEEK_SET)
            mod.locking(fd, mod.LK_UNLCK, 1)
    # flock: closing the file releases it


def _timeout(path: Path, lock_path: Path, wait_s: float) -> OutputError:
    holder = _read_small(lock_path)
    return OutputError(
        f"{path}: another geors process ({holder or 'unknown'}) has been creating this output for more than "
        f"{wait_s:.0f} s (lock {lock_path}). Wait for it, or write to another output.")


def _cannot_create(path: Path, lock_path: Path, exc: OSError) -> OutputError:
    return OutputError(f"{path}: cannot create the lock file {lock_path} ({exc.strerror}). "
                       "Make the directory writable or choose another output.")


def _write_holder(fd: int) -> None:
    os.lseek(fd, 0, os.SEEK_SET)
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())


@contextlib.contextmanager
def creation_lock(path: Path, wait_s: float | None = None):
    """Exclusive lock for creating ``path`` or adding layers to it (``<path>.lock``).

    The lock file holds the holder's ``pid N on HOST`` and is removed when
    released. A waiter that then holds a lock on the removed file notices (its
    inode is no longer the path's) and retries, so exactly one process at a
    time holds a lock on the live lock file.

    Raises:
        OutputError: another process held it for more than ``wait_s`` seconds, or the lock file cannot be made.
    """
    path = Path(path)
    lock_path = path.with_name(path.name + ".lock")
    wait_s = LOCK_WAIT_S if wait_s is None else wait_s
    kind, mod = _lock_module()
    if kind is None:
        with _exclusive_file_lock(path, lock_path, wait_s):
            yield
        return
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _cannot_create(path, lock_path, exc) from None
        try:
            while not _try_lock(kind, mod, fd, path):
                if time.monotonic() > deadline:
                    raise _timeout(path, lock_path, wait_s)
                time.sleep(0.05)
            try:
                same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        _unlock(kind, mod, fd)
        os.close(fd)  # the holder before us removed that file: lock the new one
    try:
        _write_holder(fd)
        yield
    finally:
        if kind == "msvcrt":  # Windows cannot remove a file that is open: unlock and close first
            _unlock(kind, mod, fd)
            os.close(fd)
            with contextlib.suppress(OSError):  # fails while a waiter has it open; that waiter then holds it
                os.unlink(lock_path)
        else:
            with contextlib.suppress(OSError):
                os.unlink(lock_path)
            os.close(fd)


def _stale(lock_path: Path) -> bool:
    """Whether the lock file names a process of this host that is gone (or a younger process with its pid)."""
    text = _read_small(lock_path)
    m = _HOLDER_RE.match(text)
    if not m or m.group(2) != socket.gethostname():
        return False  # being written, or another host's: cannot tell, so it is held
    try:
        made = os.stat(lock_path).st_mtime
    except OSError:
        return False
    started = datetime.fromtimestamp(made).astimezone().isoformat()
    return not process_alive(int(m.group(1)), started)


def _take_over(lock_path: Path) -> None:
    """Remove a stale lock file, unless another waiter replaced it meanwhile (then it is put back)."""
    try:
        ino = os.stat(lock_path).st_ino
        aside = lock_path.with_name(f"{lock_path.name}.stale-{uuid.uuid4().hex[:8]}")
        os.rename(lock_path, aside)
    except OSError:
        return  # gone already: another waiter took it over
    if os.stat(aside).st_ino == ino:
        log.info("%s: took over the lock of a process that no longer runs", lock_path)
        with contextlib.suppress(OSError):
            os.unlink(aside)
        return
    with contextlib.suppress(OSError):  # a live holder's fresh file: back under its name, unless a new one is there
        os.link(aside, lock_path)
    with contextlib.suppress(OSError):
        os.unlink(aside)


@contextlib.contextmanager
def _exclusive_file_lock(path: Path, lock_path: Path, wait_s: float):
    """The lock where the system offers no file locks: the lock file's existence, taken over from a dead pid."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:
            pass
        except OSError as exc:
            raise _cannot_create(path, lock_path, exc) from None
        if _stale(lock_path):
            _take_over(lock_path)
            continue
        if time.monotonic() > deadline:
            raise _timeout(path, lock_path, wait_s)
        time.sleep(0.05)
    try:
        _write_holder(fd)
        ino = os.fstat(fd).st_ino
    finally:
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if os.stat(lock_path).st_ino == ino:  # still ours (not taken over by someone who thought us dead)
                os.unlink(lock_path)


def process_start(pid: int) -> float | None:
    """Start time (Unix seconds) of process ``pid``, None where unknown."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError, ValueError):
        return None


def process_alive(pid: int, started_iso: str | None) -> bool:
    """Whether ``pid`` on this host still is the process that started something at ``started_iso``."""
    import psutil

    try:
        if not psutil.pid_exists(pid):
            return False
    except (psutil.Error, OSError, ValueError):
        return True  # cannot tell: do not call a live run dead
    start = process_start(pid)
    if start is not None and started_iso:
        try:
            run_started = datetime.fromisoformat(started_iso).timestamp()
        except ValueError:
            return True
        if start > run_started + 2:  # the pid was reused by a younger process
            return False
    return True


def holders(path: Path) -> str:
    """' (pid 123 qgis, ...)': other processes of this machine that have ``path`` open (best effort, '' when
    unknown: psutil may not see other users' processes)."""
    import psutil

    try:
        target = os.path.realpath(path)
        found = []
        for proc in psutil.process_iter(["name"]):
            if proc.pid == os.getpid():
                continue
            try:
                if any(os.path.realpath(f.path) == target for f in proc.open_files()):
                    found.append(f"pid {proc.pid} {proc.info.get('name') or ''}".strip())
            except (psutil.Error, OSError):
                continue
            if len(found) >= 3:
                break
    except (psutil.Error, OSError):
        return ""
    return f" ({', '.join(found)})" if found else ""
