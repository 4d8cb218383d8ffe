"""What a training step needs, built from the config: the model, its objective, the optimiser.

Also torch's global settings (threads, determinism) and restoring a checkpoint's
optimiser and noise state.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from indpred import distributed
from indpred.checkpoint import optimizer_from_flat
from indpred.config import RunConfig
from indpred.distributed import SINGLE, Ranks
from indpred.model import FactoredVAE
from indpred.objective import ElboTerms, sequence_elbo
from indpred.train import graphs
from indpred.train.graphs import Capture
from indpred.train.restarts import attempt_seed


class ElboObjective(nn.Module):
    """The training objective as a module: what DDP wraps and ``torch.compile`` compiles.

    ``forward(frames (B, T, C, H, W), noise (B, T, K, d))`` returns the ELBO terms: the
    per-sequence log-likelihood (B,) and KL per factor (B, K), in nats per frame.
    """

    def __init__(self, model: FactoredVAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, frames: Tensor, noise: Tensor) -> ElboTerms:
        return sequence_elbo(self.model, frames, noise=noise)


@dataclass
class Trainer:
    """A model ready to train: itself (for checkpoints and evaluation), its objective
    (wrapped in DDP and compiled as configured) and its optimiser."""

    model: FactoredVAE
    objective: nn.Module
    optimizer: torch.optim.Optimizer
    compiled_graphs: bool = False  # compiled with CUDA graphs (compile=reduce-overhead): mark each step
    capture: type[Capture] | None = None  # train.cuda_graphs: how the loop records its step


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 convolutions natively (else bf16 is emulated, slower)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        capabilities = getattr(torch.cpu, "get_capabilities", None)  # absent from older torch: fp32
        if capabilities is None:
            return False
        found = capabilities()
        return bool(found.get("amx_bf16") or found.get("avx512_bf16"))
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``train.precision`` as it runs on ``device``: "auto" becomes "bf16" or "fp32"."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def make_model(cfg: RunConfig, device: torch.device, attempt: int = 0) -> FactoredVAE:
    """The model of start ``attempt``, initialised from its seed (see
    :func:`~indpred.train.restarts.attempt_seed`), on ``device``, executing as ``train`` says."""
    tc = cfg.train
    torch.manual_seed(attempt_seed(cfg, attempt))
    model = FactoredVAE(cfg.model).to(device)
    return model.configure(precision=resolve_precision(tc.precision, device),
                           channels_last=tc.channels_last,
                           activation_checkpointing=tc.activation_checkpointing)


def make_trainer(model: FactoredVAE, cfg: RunConfig, device: torch.device,
                 ranks: Ranks = SINGLE) -> Trainer:
    """Wrap ``model`` for training: global batch norm and DDP over several ranks, compilation or
    CUDA graphs, Adam."""
    tc = cfg.train
    # train.cuda_graphs: refused (one line) before anything is built where it cannot run
    capture = graphs.capture_for(device, ranks) if tc.cuda_graphs else None
    objective: nn.Module = ElboObjective(model)
    if ranks.active:
        distributed.sync_batch_norm(model, device)
        # Batch norm's statistics are global already: no broadcast of buffers at each step.
        no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
                          inspect.signature(nn.parallel.DistributedDataParallel).parameters
                          else {"broadcast_buffers": False})
        objective = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None, **no_buffer_sync)
    if tc.compile != "off":
        objective = torch.compile(objective, mode=None if tc.compile == "default" else tc.compile)
    # On a GPU Adam keeps its step count on the device (capturable), so that an update decided
    # there (indpred.train.update) never waits for the host; a CPU has no such wait.
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr, betas=(0.9, tc.adam_beta2),
                                 capturable=device.type == "cuda")
    return Trainer(model=model, objective=objective, optimizer=optimizer,
                   compiled_graphs=tc.compile in ("reduce-overhead", "max-autotune"),
                   capture=capture)


def setup_torch(cfg: RunConfig) -> None:
    """torch's process-wide settings for a training: CPU threads, determinism, cuDNN autotuning."""
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    if tc.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = not tc.deterministic  # fastest conv algorithms (GPU only)


def restore_training_state(trainer: Trainer, noise: torch.Generator, state: dict[str, Any],
                           train_tensors: dict[str, Tensor]) -> None:
    """Load a checkpoint's optimiser moments and noise generator (the weights are loaded already).

    Adam's ``capturable`` follows the device the run resumes on, not the one it was saved on
    (a GPU's update never waits for the host; a CPU's Adam cannot be capturable)."""
    saved = optimizer_from_flat(train_tensors, state["optimizer"])
    for group, own in zip(saved["param_groups"], trainer.optimizer.param_groups):
        if "capturable" in own:
            group["capturable"] = own["capturable"]
    trainer.optimizer.load_state_dict(saved)
    for p, slots in trainer.optimizer.state.items():  # moments in the parameter's memory layout
        for name, value in slots.items():
            if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                slots[name] = torch.empty_like(p).copy_(value)
    noise.set_state(train_tensors["rng.noise"])


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation that failed: on a GPU, in torch's CPU allocator, in NumPy."""
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error))


def out_of_memory_message(cfg: RunConfig, when: str, error: BaseException) -> str:
    """One line for a run that does not fit in memory: where, and which settings to lower."""
    m, t = cfg.model, cfg.train
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return (f"out of memory {when} ({first[:160]}); lower train.batch_size ({t.batch_size}), "
            f"model.width ({m.width:g}) or model.factor_dim ({m.factor_dim}), or use another --device")
