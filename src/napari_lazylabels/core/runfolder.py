"""Output folders that are safe to write: checked before work, one writer at a time, no
temporary files left behind, nothing a user made replaced without being asked.

* :func:`check_writable` creates a folder and writes a test file into it, so a read-only
  folder, a full disk or an ``--out`` that is a file fail before hours of training, not after.
* :func:`folder_lock` takes an exclusive lock (``.lazylabels.lock``, ``flock``) on a folder
  for a whole run: a second training or prediction into the same folder is refused at once
  instead of mixing its files with the first one's. The kernel drops the lock when the
  process dies, even by ``kill -9``, so a killed run never blocks the next one. The holder
  removes the lock file when it ends.
* Taking the lock removes the temporary files that a killed run left in the folder
  (:func:`remove_stale_temps`): the atomic writers' ``.NAME.XXXXXXXX.tmp`` and the
  prediction memory maps ``.STEM_NAME.XXXXXXXX.f32.tmp``. Under the lock no other run of
  ours can be writing them.
* :func:`prepare_model_folder` refuses to train a new model into a folder that holds one,
  unless asked to replace it (``overwrite``), and then removes the old model's files first,
  so a stale ``best.pt`` never sits beside a new ``config.json``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_NAME = ".lazylabels.lock"
STALE_TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}(\.f32)?\.tmp$")
"""Names of our temporary files: ``tempfile.mkstemp`` adds 8 random characters between the
prefix ``.NAME.`` and the suffix ``.tmp`` or ``.f32.tmp``."""

MODEL_FILES = ("best.pt", "latest.pt", "config.json", "history.json", "calibration.json")


class FolderBusyError(RuntimeError):
    """Another run holds the folder's lock."""


class OutputExistsError(FileExistsError):
    """The output folder holds a user's annotations or model and replacing them was not asked."""


def check_writable(folder: str | os.PathLike, option: str = "--out") -> Path:
    """Create ``folder`` (and its parents) and write and remove a test file in it.

    Raises:
        NotADirectoryError: ``folder`` is a file (the message says which option to change).
        OSError: the folder cannot be created or written (read-only, full, no permission);
            the error's ``filename`` is the folder.
    """
    p = Path(folder)
    if p.exists() and not p.is_dir():
        raise NotADirectoryError(
            errno.ENOTDIR, f"{option} must be a folder, and this is a file; choose a folder name", str(p)
        )
    p.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".lazylabels-write-test.", suffix=".tmp", dir=p)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(p)) from e
    try:
        os.write(fd, b"0")
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):  # a lock holder may have swept it
            os.unlink(tmp)
    return p


def check_free_space(folder: str | os.PathLike, needed: int, what: str) -> None:
    """Raise ``OSError(ENOSPC)`` naming ``folder`` when it has less than ``needed`` bytes free."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise OSError(
            errno.ENOSPC,
            f"No space left for {what}: it needs about {needed / 2**20:.0f} MB, "
            f"{free / 2**20:.1f} MB are free; free some space or choose another folder",
            str(folder),
        )


def remove_stale_temps(folder: str | os.PathLike, subfolders: Iterable[str] = ()) -> int:
    """Remove our temporary files (see :data:`STALE_TEMP`) from ``folder`` and its
    ``subfolders``; call only while holding the folder's lock. Returns the bytes freed."""
    freed, n = 0, 0
    for d in [Path(folder), *(Path(folder) / s for s in subfolders)]:
        if not d.is_dir():
            continue
        for p in d.iterdir():
            if STALE_TEMP.match(p.name) and p.is_file():
                with contextlib.suppress(OSError):
                    size = p.stat().st_size
                    p.unlink()
                    freed, n = freed + size, n + 1
    if n:
        log.warning("Removed %d temporary files (%.1f MB) left by an interrupted run in %s", n, freed / 2**20, folder)
    return freed


_held: dict[str, list] = {}  # real path -> [fd, count]: re-entrant within one process
_held_guard = threading.Lock()


def _acquire(folder: Path, what: str) -> int:
    path = folder / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # no flock (Windows): no lock, as before
            return fd
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            holder = ""
            with contextlib.suppress(OSError):
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
            os.close(fd)
            raise FolderBusyError(
                f"{folder} is being written by another lazylabels run ({holder or 'unknown'}); "
                "wait for it to end or choose another folder."
            ) from None
        # The holder before us removes the file when it ends: lock the file that is there now.
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()}, {what}, since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
    return fd


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str, subfolders: Iterable[str] = ()) -> Iterator[Path]:
    """Hold ``folder``'s lock for the block (creating the folder); re-entrant in one process.

    The first acquisition also removes stale temporary files in ``folder`` and ``subfolders``.

    Raises:
        FolderBusyError: another process holds the lock.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(folder)
    with _held_guard:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
        else:
            entry = _held[key] = [_acquire(folder, what), 1]
            try:
                remove_stale_temps(folder, subfolders)
            except BaseException:
                _held.pop(key)
                os.close(entry[0])
                raise
    try:
        yield folder
    finally:
        with _held_guard:
            entry[1] -= 1
            if entry[1] == 0:
                _held.pop(key, None)
                with contextlib.suppress(OSError):
                    os.unlink(folder / LOCK_NAME)
                os.close(entry[0])


def prepare_model_folder(
    out_dir: str | os.PathLike, resume: str | os.PathLike | None, overwrite: bool
) -> list[str]:
    """Check that a training may write ``out_dir`` before any work; call under its lock.

    A folder that already holds a model is continued only by resuming from it; a new model
    replaces it only with ``overwrite``, and then the old model's files are removed now.

    Returns:
        the model files removed.

    Raises:
        OutputExistsError: the folder holds a model that this run would replace unasked.
    """
    out = Path(out_dir)
    there = [n for n in MODEL_FILES[:2] if (out / n).exists()]
    if not there:
        return []
    if resume is not None:
        r = Path(resume)
        if os.path.realpath(r if r.is_dir() else r.parent) == os.path.realpath(out):
            return []
    if not overwrite:
        raise OutputExistsError(
            f"{out} already holds a model ({', '.join(there)}): continue it with --resume {out}, "
            "choose another --out, or replace it with --overwrite."
        )
    removed = [n for n in MODEL_FILES if (out / n).exists()]
    for n in removed:
        (out / n).unlink()
    log.warning("Replacing the model in %s (removed %s)", out, ", ".join(removed))
    return removed


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Make ``dst`` the same file as ``src`` atomically: a hard link when the filesystem has
    them (no bytes written), else a copy; through a temporary name that then replaces ``dst``."""
    src, dst = Path(src), Path(dst)
    tmp = dst.parent / f".{dst.name}.{os.getpid() % 10**8:08d}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return dst


DATASET_PARTS = ("images", "detection", "separation", "segmentation")


def refuse_existing_dataset(out_dir: str | os.PathLike, overwrite: bool, verb: str = "simulate") -> None:
    """Raise :class:`OutputExistsError` when ``out_dir`` holds a dataset (its description or
    any image or label map) and ``overwrite`` is false: its annotations may be hand-drawn."""
    out = Path(out_dir)
    if overwrite or not out.is_dir():
        return
    held = [n for n in DATASET_PARTS if (out / n).is_dir() and any(
        not p.name.startswith(".") for p in (out / n).iterdir())]
    if (out / "lazylabels.json").exists() or held:
        raise OutputExistsError(
            f"{out} already holds a dataset ({', '.join(held) or 'lazylabels.json'}) whose "
            f"annotations {verb} would replace: choose another --out, or replace them with --overwrite."
        )
