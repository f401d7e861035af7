"""Saving runs so that none is spoiled: one run at a time per storage, atomic files, incomplete runs set apart.

pytest-benchmark numbers autosaved runs ``NNNN_<name>.json`` and writes them in place; two runs saving into
one storage at once can pick the same number (one crashes, its data lost) or interleave into corrupt JSON,
and an interrupted run becomes the newest. The plugin therefore:

- holds :class:`StorageLock` on the storage for the whole run (a second run refuses to start, naming the
  first), released by the OS however the holder ends;
- saves with :func:`save_numbered`: a temporary file, then a link to the next free number (never replacing);
- saves an incomplete run as ``incomplete_<name>.json``, outside the numbered sequence, so that
  ``--benchmark-compare``, ``pytest-benchmark compare 0001 0002`` and ``attnbench report`` never take it
  for the newest run;
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from .record import write_json_atomically

LOCK_NAME = ".attnbench.lock"
INCOMPLETE_PREFIX = "incomplete_"
_NUMBERED = re.compile(r"^(\d{4})_")


class StorageBusy(Exception):
    """Another run holds the storage; the message names it."""


class StorageLock:
    """An exclusive lock on a storage directory, held until :meth:`release` or the process ends."""

    def __init__(self, directory: Path):
        import fcntl

        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / LOCK_NAME
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(self._fd)
            raise StorageBusy(
                f"another benchmark run is saving into {directory} ({holder}); two runs at once would each be "
                "slowed by the other and could spoil each other's saved files. Wait for it to finish, or save "
                "elsewhere with --benchmark-storage"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def save_numbered(directory: Path, name: str, data: dict, *, complete: bool) -> Path:
    """Write ``data`` as the next ``NNNN_<name>.json`` in ``directory`` (or ``incomplete_<name>.json``)."""
    directory.mkdir(parents=True, exist_ok=True)
    for _ in range(1000):
        if complete:
            numbers = [int(m.group(1)) for p in directory.glob("[0-9][0-9][0-9][0-9]_*.json")
                       if (m := _NUMBERED.match(p.name))]
            path = directory / f"{max(numbers, default=0) + 1:04d}_{name}.json"
        else:
            taken = len(list(directory.glob(f"{INCOMPLETE_PREFIX}*{name}.json")))
            path = directory / f"{INCOMPLETE_PREFIX}{f'{taken}_' if taken else ''}{name}.json"
        try:
            write_json_atomically(path, data, exclusive=True)
            return path
        except FileExistsError:
            continue  # another writer took that name between the listing and the link: take the next one
    raise RuntimeError(f"could not find a free run number in {directory}")
