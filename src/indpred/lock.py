"""One writer per run folder: an advisory lock that a killed process cannot leave stuck.

The lock is ``fcntl.flock`` on ``RUN_DIR/.lock``; the kernel releases it when the
holding process exits, however it exits, so a SIGKILLed training never blocks the
next one. The file itself may stay behind; it only records who held it last.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from indpred.errors import UserError

LOCK_FILE = ".lock"


@contextmanager
def run_lock(run_dir: Path, purpose: str) -> Iterator[None]:
    """Hold the run folder's lock for ``purpose`` (e.g. "train"), or refuse at once."""
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(f"cannot create lock file {path}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise UserError(f"{run_dir} is in use ({holder}); wait for it to finish, or stop it "
                        "and run again") from None
    try:
        os.ftruncate(fd, 0)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        os.pwrite(fd, f"pid {os.getpid()} running {purpose} since {stamp}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
