"""The prepared folder's format: its layout, ``manifest.json`` (made and read back, checked).

Layout of a prepared folder (see ``docs/VIDEO.md`` for every manifest key)::

    OUT/manifest.json                       settings, per-video metadata, the split
    OUT/frames/<stem>-<sha8>.u8             (n, 64, 64, 3) uint8, row-major, no header
    OUT/frames/<stem>-<sha8>.times.npy      (n,) float64, seconds since the first frame
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import av

from indpred.errors import UserError

__all__ = ["FORMAT", "FRAMES_DIR", "MANIFEST", "VERSION", "frames_bytes", "load_manifest", "make_manifest"]

MANIFEST = "manifest.json"
FORMAT = "indpred-video"
VERSION = 1
FRAMES_DIR = "frames"


def frames_bytes(n: int, size: int) -> int:
    """Bytes of a frames file holding ``n`` frames of size x size x 3."""
    return n * size * size * 3


def make_manifest(settings: dict, split_rule: dict, entries: list[dict], skipped: list[dict],
                  notes: list[str]) -> dict[str, Any]:
    """The manifest of a prepared folder, from its videos' entries (their splits already set)."""
    libavcodec = av.library_versions["libavcodec"]

    def count(split: str) -> int:
        total = 0
        for e in entries:
            if e["split"] == split:
                total += e["frames"]
            elif e["split"] == "train+test":
                total += e["split_at"] if split == "train" else e["frames"] - e["split_at"]
        return total

    return {
        "format": FORMAT,
        "version": VERSION,
        "settings": settings,
        "frame_shape": [settings["size"], settings["size"], 3],
        "dtype": "uint8",
        "split": split_rule,
        "frames": {"train": count("train"), "test": count("test")},
        "videos": entries,
        "skipped": skipped,
        "notes": notes,
        "decoder": f"PyAV {av.__version__}, libavcodec {'.'.join(map(str, libavcodec))}",
    }


def load_manifest(data_dir: str | Path, *, check_files: bool = True) -> dict[str, Any]:
    """The manifest of a prepared video folder, checked; UserError if the folder is not one.

    With ``check_files`` every frames file must exist with the size the manifest gives.
    """
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST
    hint = f"prepare it first (indpred prepare-video SRC --out {data_dir})"
    if not path.is_file():
        raise UserError(f"{data_dir} is not a prepared video folder (no {MANIFEST}); {hint}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}; {hint}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{path} is not an indpred video manifest; {hint}")
    if manifest.get("version") != VERSION:
        raise UserError(f"{path} has version {manifest.get('version')!r}, this indpred reads {VERSION}; "
                        "prepare the videos again")
    if check_files:
        _check_frames_files(data_dir, manifest)
    return manifest


def _check_frames_files(data_dir: Path, manifest: dict[str, Any]) -> None:
    """Every frames file exists with the size the manifest gives, else UserError."""
    size = manifest["settings"]["size"]
    for e in manifest["videos"]:
        f = data_dir / e["file"]
        want = frames_bytes(e["frames"], size)
        got = f.stat().st_size if f.is_file() else None
        if got != want:
            state = "missing" if got is None else f"{got} bytes, expected {want}"
            raise UserError(f"{f} is {state}; prepare the videos again")
