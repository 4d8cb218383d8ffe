"""Trained models shipped inside the package: weights in safetensors, a JSON model card each.

``NAME.safetensors`` holds the model's weights and buffers (float32) and ``NAME.json`` its
card: what it is, the full config it was trained with, data and digit source, steps, seed,
commit, licence, the figures ``indpred eval`` gave it, and a ``check`` (a small seeded
evaluation and its numbers, with tolerances) that the test suite repeats.

    model = indpred.load_pretrained("mmnist-cpu")         # FactoredVAE, eval mode
    run = indpred.pretrained.materialise("mmnist-cpu", "runs/shipped")  # a run folder for eval/encode
"""

from __future__ import annotations

import json
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from indpred.checkpoint import load_weights, read_latest_valid, save_checkpoint
from indpred.config import RunConfig
from indpred.errors import UserError
from indpred.fileio import file_digest, write_text_atomic
from indpred.model import FactoredVAE

__all__ = ["card", "card_figures", "card_path", "load_pretrained", "materialise", "names", "ship"]

FORMAT = "indpred-pretrained"
VERSION = 1
CARD_KEYS = ("name", "description", "preset", "config", "data", "steps", "seed", "commit", "licence",
             "metrics", "check", "sha256")


def _folder() -> Path:
    return Path(str(resources.files(__name__)))


def names() -> list[str]:
    """The shipped models' names, sorted."""
    return sorted(p.stem for p in _folder().glob("*.json"))


def card_path(name: str) -> Path:
    """Where a shipped model's card lies (its weights lie beside it, ``NAME.safetensors``)."""
    return _folder() / f"{name}.json"


def card(name: str) -> dict[str, Any]:
    """A shipped model's card; an unknown name is refused with the names there are."""
    path = card_path(name)
    if not isinstance(name, str) or "/" in name or not path.is_file():
        raise UserError(f"no pretrained model {name!r}; shipped: {', '.join(names()) or 'none'} "
                        "(indpred pretrained lists them)")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"the card of pretrained model {name!r} ({path}) is unreadable ({e}); "
                        "reinstall indpred") from None


def _weights(name: str) -> tuple[RunConfig, dict[str, torch.Tensor]]:
    c = card(name)
    path = _folder() / f"{name}.safetensors"
    if not path.is_file() or file_digest(path) != c["sha256"]:
        raise UserError(f"pretrained weights {path} are missing or corrupt (checksum mismatch); "
                        "reinstall indpred")
    return RunConfig.from_dict(c["config"]), load_file(str(path))


def load_pretrained(name: str, *, device: str = "cpu") -> FactoredVAE:
    """A shipped model, ready to encode, decode and roll out (eval mode, on ``device``)."""
    from indpred.run import resolve_device

    cfg, weights = _weights(name)
    model = FactoredVAE(cfg.model)
    load_weights(model, weights, _folder() / f"{name}.safetensors")
    return model.to(resolve_device(device)).eval()


def materialise(name: str, run_dir: str | Path) -> Path:
    """Write a shipped model as a run folder (its config and one weights-only checkpoint at its
    training step), so that every tool that reads runs (eval, encode, compare) takes it. An
    existing folder is reused if it holds this model, refused if it holds anything else."""
    from indpred.run import CHECKPOINTS, CONFIG

    run_dir = Path(run_dir)
    c = card(name)
    marker = run_dir / "pretrained.json"
    if run_dir.exists():
        if marker.is_file() and json.loads(marker.read_text()).get("sha256") == c["sha256"]:
            return run_dir
        if not run_dir.is_dir() or any(run_dir.iterdir()):
            raise UserError(f"--out {run_dir} already exists and does not hold the pretrained model "
                            f"{name!r}; choose a new folder")
    cfg, weights = _weights(name)
    model = FactoredVAE(cfg.model)
    load_weights(model, weights, _folder() / f"{name}.safetensors")
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir / CONFIG)
    save_checkpoint(run_dir / CHECKPOINTS, c["steps"], model, extra={"pretrained": name})
    write_text_atomic(marker, json.dumps({"name": name, "sha256": c["sha256"]}, indent=2) + "\n")
    return run_dir


def card_figures(m: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of an ``indpred eval`` metrics dictionary, as a card records them."""
    mi, al, mo = m["mutual_information"], m.get("alignment", {}), m.get("motion", {})
    tracking = m.get("layers", {}).get("tracking", {})
    one = mo.get("one_step", {})
    return {
        "sequences": m["sequences"], "eval_seed": m["seed"], "step": m["step"],
        "elbo": m["elbo"]["elbo"], "elbo_stderr": m["elbo"]["elbo_stderr"],
        "same_bits": mi["same_bits"], "cross_bits": mi["cross_bits"],
        "authors_same_bits": mi.get("authors", {}).get("same_bits"),
        "authors_cross_bits": mi.get("authors", {}).get("cross_bits"),
        "active_same_bits": mi.get("active", {}).get("same_bits"),
        "active_cross_bits": mi.get("active", {}).get("cross_bits"),
        "alignment": al.get("score"), "dominant_distinct": al.get("dominant_distinct"),
        "one_step_over_stay": one.get("prior_over_stay"),
        "tracking_error_px": tracking.get("error_px"), "tracking_within_3px": tracking.get("within"),
    }


def _commit() -> str | None:
    """The commit of the code shipping the model (with ``+dirty`` for uncommitted changes)."""
    here = Path(__file__).parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=here)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
                               capture_output=True, text=True,
                               timeout=10, cwd=here.parent)  # the package's own files
    except OSError:
        return None
    commit = head.stdout.strip()
    return (commit + ("+dirty" if dirty.stdout.strip() else "")) if commit else None


def ship(run_dir: str | Path, name: str, *, description: str, data: dict[str, Any], licence: str,
         metrics: dict[str, Any], check: dict[str, Any], out: str | Path | None = None,
         commit: str | None = None) -> Path:
    """Write a trained run's latest weights and its card into the package (or ``out``): used by
    ``experiments/ship_pretrained.py``. Returns the card's path."""
    from indpred.run import CHECKPOINTS, load_config

    run_dir = Path(run_dir)
    cfg = load_config(run_dir)
    found = read_latest_valid(run_dir / CHECKPOINTS, weights_only=True)
    if found is None:
        raise UserError(f"{run_dir} has no checkpoint to ship")
    _, state, weights, _ = found
    folder = Path(out) if out else _folder()
    weights_path = folder / f"{name}.safetensors"
    save_file({k: v.float().contiguous() if v.is_floating_point() else v.contiguous()
               for k, v in sorted(weights.items())}, str(weights_path))
    weights_path.chmod(0o644)  # safetensors writes 0600; a package's data must be readable by all
    entry = {"format": FORMAT, "version": VERSION, "name": name, "description": description,
             "preset": cfg.preset, "config": cfg.to_dict(), "data": data, "steps": state["step"],
             "seed": cfg.train.seed, "commit": commit or _commit(), "licence": licence,
             "metrics": metrics, "check": check, "sha256": file_digest(weights_path)}
    path = folder / f"{name}.json"
    write_text_atomic(path, json.dumps(entry, indent=2) + "\n")
    return path
