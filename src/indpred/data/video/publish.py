"""Publishing a prepared folder whole: written aside, then moved into place with ``os.replace``.

``OUT`` is the prepared folder and ``TAG`` is ``<pid>-<8 random hex digits>``, one per run.

1. :func:`staging` makes the hidden sibling ``.OUT.tmp-TAG``. Everything is written
   there, the manifest last, and flushed to disk; whatever happens, the context
   removes it on leaving (after a publication it is already gone).
2. :func:`publish` moves it into place:

   * no ``OUT`` yet: ``os.replace(.OUT.tmp-TAG, OUT)``, one atomic rename;
   * an existing ``OUT`` (a folder cannot be renamed onto a folder that is not empty):

     a. ``os.replace(OUT, .OUT.old-TAG)``: the complete old folder steps aside;
     b. ``os.replace(.OUT.tmp-TAG, OUT)``: the complete new folder takes its place (if
        this fails, ``os.replace(.OUT.old-TAG, OUT)`` puts the old one back);
     c. ``.OUT.old-TAG`` is removed.

   At every moment a complete folder, old or new, is on disk: ``OUT`` itself, except
   between a and b, two renames in the same folder, when the old one is ``.OUT.old-TAG``
   (and the new one ``.OUT.tmp-TAG``).
3. A run that is killed leaves its hidden siblings. The next run's :func:`sweep`
   removes those of processes that no longer exist, and where ``OUT`` is missing and
   such a ``.OUT.old-TAG`` is there (a run killed between a and b), renames it back to
   ``OUT`` first: the interrupted update is undone, as a failed one is.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from indpred.fileio import fsync_path

__all__ = ["publish", "staging", "sweep"]


@contextlib.contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A new, empty hidden folder beside ``out`` to write into; removed on leaving, whatever happens."""
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # already gone when it was published


def publish(tmp: Path, out: Path) -> None:
    """Make the finished folder ``tmp`` (from :func:`staging`) ``out``, replacing an existing ``out``
    whole, by the sequence of renames in the module docstring."""
    if not out.exists():
        os.replace(tmp, out)
    else:
        prefix, _, tag = tmp.name.rpartition(".tmp-")
        old = tmp.with_name(f"{prefix}.old-{tag}")
        os.replace(out, old)
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    with contextlib.suppress(OSError):
        fsync_path(out.parent)


def sweep(out: Path) -> None:
    """Clear what killed runs left beside ``out``: put back an old folder that was stepping aside
    (when ``out`` is missing), delete the rest."""
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(tmp|old)-(\d+)-[0-9a-f]+$")
    stale = []
    for p in out.parent.glob(f".{out.name}.*"):
        m = pattern.match(p.name)
        if m and p.is_dir() and not _pid_alive(int(m.group(2))):
            stale.append((m.group(1), p))
    for kind, p in sorted(stale):  # "old" before "tmp"
        if kind == "old" and not os.path.lexists(out):
            os.replace(p, out)  # killed between steps a and b: undo the update
        else:
            shutil.rmtree(p, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: an existence check, nothing is sent
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
