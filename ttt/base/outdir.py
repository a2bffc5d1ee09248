"""One run per output directory: up-front checks of ``--out`` and an OS lock while a run lives.

A cell writes ``.<name>.tmp<pid>`` and (with snapshots) ``.<name>.replay`` beside its output
``<name>``. Two runs with the same ``--out`` would delete or resume each other's files, so a run
holds an exclusive ``flock`` on ``.<name>.lock`` for its whole life; the kernel releases it when
the process dies, however it dies. Only the lock holder cleans up temporaries, so cleanup only
ever removes files of dead runs. Names are matched literally (no glob: ``run[1]`` is not
``run1``). flock works on local filesystems and on NFSv4/Lustre mounts that support locks.
"""
from __future__ import annotations

import fcntl
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class OutputError(ValueError):
    """An unusable output directory, or one another live run is writing."""


def check_output(out: Path) -> None:
    """Fail before any heavy work when ``out`` cannot be written as a fresh directory."""
    if os.path.islink(out) and not out.exists():
        raise OutputError(f"{out}: is a dangling symbolic link (to {os.readlink(out)})")
    if out.exists():
        raise FileExistsError(f"{out}: exists already (a cell never shares a directory)")
    check_parent(out)


def check_parent(path: Path, error: type[Exception] = OutputError) -> None:
    """Fail up front when the folder of ``path`` cannot be created: a file or a dangling link on
    the way (the write would fail after the work, with a traceback)."""
    ancestor = Path(path).parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        if os.path.islink(ancestor):
            raise error(f"{ancestor}: is a dangling symbolic link (to {os.readlink(ancestor)})")
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise error(f"{path}: cannot be created, {ancestor} is a file, not a directory")


@contextmanager
def claim_output(out: Path) -> Iterator[Path]:
    """Check ``out``, create its parent, and hold the lock of ``out`` while the block runs;
    refused with :class:`OutputError` while another process holds it."""
    out = Path(out)
    check_output(out)
    with lock_output(out) as lock:
        check_output(out)  # a run that finished while we waited for nothing: still refused
        yield lock


@contextmanager
def lock_output(out: Path) -> Iterator[Path]:
    """Hold the lock of ``out`` while the block runs, whether or not ``out`` exists (``ttt
    train`` resumes in its own ``--out``); its parent is created. Refused with
    :class:`OutputError` while another process holds it, or when ``out`` is not a directory."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: is a file, not a directory")
    if not out.exists():
        check_output(out)  # dangling links, a file on the way
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{out.parent}: cannot create the output's parent ({exc.strerror})") from None
    lock = out.with_name(f".{out.name}.lock")
    fd = _lock(lock, out)
    try:
        yield lock
    finally:
        try:
            lock.unlink()  # before closing: a waiter on the old inode sees it is gone
        except OSError:
            pass
        os.close(fd)


@contextmanager
def build_lock(target: Path) -> Iterator[Path]:
    """Wait for, then hold, the lock of a shared cache entry ``target`` (a model checkpoint
    built on first use). Whoever holds it is the only builder, so it may remove every
    ``.<name>.tmp<pid>`` beside ``target``: the leftovers of builds that were killed."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{target.parent}: cannot create the cache folder ({exc.strerror})") from None
    lock = target.with_name(f".{target.name}.lock")
    fd = _lock(lock, target, wait=True)
    try:
        yield lock
    finally:
        try:
            lock.unlink()
        except OSError:
            pass
        os.close(fd)


def _lock(lock: Path, out: Path, wait: bool = False) -> int:
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(f"{out.parent}: cannot write there ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise OutputError(f"{out}: another run{holder} is writing it; wait for it to end or "
                              "choose another --out") from None
        except OSError as exc:
            os.close(fd)
            raise OutputError(f"{lock}: cannot lock ({exc.strerror})") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:  # else the previous holder removed the file between our open and lock: retry
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


def _read_holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
        return f" (pid {int(pid)})" if pid else ""
    except (OSError, ValueError):
        return ""


def check_writable_dir(path: Path, key: str) -> Path:
    """``path`` as a directory this process can write (created when absent), or one line naming
    ``key``: a file in the way, a read-only disk, no permission, a full disk."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{key} {path}: is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(path) else ""
        raise OutputError(f"{key} {path}: not a writable directory: "
                          f"{exc.strerror or type(exc).__name__}{where}") from None
    return path


def remove_dead_temporaries(out: Path) -> list[Path]:
    """Remove ``.<name>.tmp<pid>`` left beside ``out`` by killed runs. Call it only while holding
    the lock: then no live run owns such a file. Returns what was removed."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.tmp\d+")
    removed = []
    for entry in out.parent.iterdir():
        if pattern.fullmatch(entry.name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


__all__ = ["OutputError", "build_lock", "check_output", "check_parent", "check_writable_dir", "claim_output", "lock_output", "remove_dead_temporaries"]
