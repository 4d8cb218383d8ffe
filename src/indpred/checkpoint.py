"""Checkpoints that never execute code: tensors in safetensors, everything else in JSON.

A checkpoint is a folder ``step-NNNNNNNN/`` holding ``model.safetensors`` (weights and
buffers), ``train_state.safetensors`` (optimiser moments, RNG states) and ``state.json``
(step, optimiser hyper-parameters, SHA-256 of both tensor files, free-form extras).
It is written under a temporary name, flushed to disk, then renamed into place, so a
folder with the final name is always complete; older ones are pruned only afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from indpred.errors import UserError
from indpred.fileio import file_digest, fsync_path

FORMAT = "indpred-checkpoint"
VERSION = 1
PREFIX = "step-"


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimiser's state dict into tensors (for safetensors) and JSON-able rest."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """Rebuild an optimiser state dict from :func:`optimizer_to_flat`'s two halves."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, entry in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(entry)
    return {"state": dict(sorted(state.items())), "param_groups": meta["param_groups"]}


def save_checkpoint(
    checkpoints_dir: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    rng: dict[str, torch.Tensor] | None = None,
    extra: dict[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` atomically into ``checkpoints_dir``; keep the newest ``keep``."""
    final = checkpoints_dir / f"{PREFIX}{step:08d}"
    tmp = checkpoints_dir / f".{final.name}.tmp-{os.getpid()}"
    try:
        checkpoints_dir.mkdir(parents=True, exist_ok=True)
        _write(tmp, final, model, optimizer, rng, extra, step)
    except (OSError, SafetensorError) as e:  # safetensors reports a full disk as its own error
        shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(checkpoints_dir)
        kept = f"; {previous.name} is intact (the last good checkpoint)" if previous else ""
        reason = getattr(e, "strerror", None) or str(e)
        raise UserError(f"cannot write checkpoint {final.name} into {checkpoints_dir}: {reason} "
                        f"(disk full or not writable?){kept}; make room, then continue with "
                        "--resume") from None
    for old in list_checkpoints(checkpoints_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _write(tmp: Path, final: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
           rng: dict[str, torch.Tensor] | None, extra: dict[str, Any] | None, step: int) -> None:
    """Write every file into ``tmp``, flush it to disk, then rename ``tmp`` to ``final``."""
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(tmp / "model.safetensors"))
    train_tensors: dict[str, torch.Tensor] = {}
    optim_meta: dict[str, Any] | None = None
    if optimizer is not None:
        train_tensors, optim_meta = optimizer_to_flat(optimizer)
    for name, value in (rng or {}).items():
        train_tensors[f"rng.{name}"] = value.detach().cpu().contiguous()
    save_file(train_tensors, str(tmp / "train_state.safetensors"))
    state = {
        "format": FORMAT,
        "version": VERSION,
        "step": step,
        "sha256": {n: file_digest(tmp / n) for n in ("model.safetensors", "train_state.safetensors")},
        "optimizer": optim_meta,
        "extra": extra or {},
    }
    (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    for name in ("model.safetensors", "train_state.safetensors", "state.json"):
        fsync_path(tmp / name)
    if final.exists():  # the same step written twice (e.g. a resumed run ending where it began)
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_path(final.parent)


def clean_stale_temporaries(checkpoints_dir: Path) -> None:
    """Remove half-written checkpoint folders left by a killed writer (call under the run lock)."""
    if checkpoints_dir.is_dir():
        for p in checkpoints_dir.glob(f".{PREFIX}*.tmp-*"):
            shutil.rmtree(p, ignore_errors=True)


def list_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders are never listed)."""
    if not checkpoints_dir.is_dir():
        return []
    found = [
        p for p in checkpoints_dir.iterdir()
        if p.is_dir() and p.name.startswith(PREFIX) and (p / "state.json").is_file()
    ]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(checkpoints_dir: Path) -> Path | None:
    found = list_checkpoints(checkpoints_dir)
    return found[-1] if found else None


def latest_step(checkpoints_dir: Path) -> int | None:
    """The step of the newest complete checkpoint (read from its folder's name), if any."""
    last = latest_checkpoint(checkpoints_dir)
    return int(last.name.removeprefix(PREFIX)) if last else None


def read_checkpoint(path: Path, *, weights_only: bool = False
                    ) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Verified contents of a checkpoint folder: (state, weights, train tensors).

    ``weights_only``: read and verify the weights alone (train tensors empty), so that a
    model shared or copied without its training state still loads for inference.
    """
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"checkpoint {path} is unreadable ({e}); resume from an earlier one") from None
    if state.get("format") != FORMAT or state.get("version") != VERSION:
        raise UserError(
            f"checkpoint {path} has format {state.get('format')!r} version {state.get('version')!r}; "
            f"this indpred reads {FORMAT!r} version {VERSION}"
        )
    loaded = {"train_state.safetensors": {}}
    for name, digest in state["sha256"].items():
        if weights_only and name != "model.safetensors":
            continue
        file = path / name
        if not file.is_file() or file_digest(file) != digest:
            raise UserError(f"checkpoint file {file} is missing or corrupt (checksum mismatch)")
        try:
            loaded[name] = load_file(str(file))
        except SafetensorError as e:
            raise UserError(f"checkpoint file {file} is not valid safetensors: {e}") from None
    return state, loaded["model.safetensors"], loaded["train_state.safetensors"]


def read_latest_valid(
    checkpoints_dir: Path, *, weights_only: bool = False,
) -> tuple[Path, dict, dict[str, torch.Tensor], dict[str, torch.Tensor]] | None:
    """The newest checkpoint that verifies, falling back (with a warning) past broken ones."""
    problems = []
    for path in reversed(list_checkpoints(checkpoints_dir)):
        try:
            return (path, *read_checkpoint(path, weights_only=weights_only))
        except UserError as e:
            problems.append(str(e))
            warnings.warn(f"skipping checkpoint {path.name}: {e}", stacklevel=2)
    if problems:
        raise UserError(f"no usable checkpoint in {checkpoints_dir}: {problems[0]}")
    return None


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor], source: Path) -> None:
    """Load weights, refusing (one line) any mismatch with the model the config builds."""
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    wrong = sorted(k for k in set(own) & set(weights) if own[k].shape != weights[k].shape)
    if missing or unexpected or wrong:
        detail = (missing[:2] and f"missing {missing[:2]}") or (
            unexpected[:2] and f"unexpected {unexpected[:2]}") or f"shape mismatch in {wrong[:2]}"
        raise UserError(f"checkpoint {source} does not match its config ({detail})")
    model.load_state_dict(weights)
