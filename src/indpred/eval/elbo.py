"""Test-set lower bounds: the ELBO per frame and its terms over a fixed set of sequences, and the
importance-weighted bound beside it (with the ELBO on the same sequences)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset

from indpred.model import FactoredVAE
from indpred.objective import gaussian_log_likelihood, sequence_elbo

if TYPE_CHECKING:
    from indpred.eval.context import EvalContext


@torch.no_grad()
def dataset_elbo(
    model: FactoredVAE,
    dataset: Dataset,
    *,
    batch_size: int = 64,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, float | list[float] | int]:
    """Mean ELBO per frame over every sequence of ``dataset`` (with its standard error).

    Runs in eval mode (batch-norm running statistics) with reparameterisation noise
    from a generator seeded by ``seed``, so repeated calls give the same figure.
    """
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    elbos, lls, kls = [], [], []
    n = len(dataset)
    for start in range(0, n, batch_size):
        indices = list(range(start, min(n, start + batch_size)))
        frames = dataset.get_batch(indices)["frames"].to(device)  # (b, T, C, H, W)
        terms = sequence_elbo(model, frames, generator=generator)
        elbos.append(terms.elbo.cpu())
        lls.append(terms.log_likelihood.cpu())
        kls.append(terms.kl.cpu())
    model.train(was_training)
    elbo = torch.cat(elbos).double()
    return {
        "elbo": elbo.mean().item(),
        "elbo_stderr": (elbo.std().item() / math.sqrt(len(elbo))) if len(elbo) > 1 else 0.0,
        "log_likelihood": torch.cat(lls).double().mean().item(),
        "kl": torch.cat(kls).double().mean(0).tolist(),
        "sequences": len(elbo),
    }


@torch.no_grad()
def importance_weighted_bound(
    model: FactoredVAE,
    frames: torch.Tensor,
    *,
    samples: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Importance-weighted bound on log p(x_{1:T}) per frame, one value per sequence (B,).

    Draws ``samples`` trajectories from the filtering posterior and averages the
    weights p(x, z) / q(z | x) inside the log (Burda et al. 2016); with one sample
    it is the ELBO, and it tightens towards log p(x) as ``samples`` grows.
    frames: (B, T, C, H, W).
    """
    B, T = frames.shape[:2]
    repeated = frames.repeat_interleave(samples, dim=0)  # (B·S, T, C, H, W)
    f = model.filter(repeated, generator=generator)
    x_mean = model.decode(f.z)  # (B·S, T, C, H, W)
    log_px = gaussian_log_likelihood(repeated, x_mean, math.log(model.config.obs_var))
    log_px = log_px.flatten(1).sum(1)  # (B·S,)
    log_prior = gaussian_log_likelihood(f.z, f.prior_mean, f.prior_logvar).flatten(1).sum(1)
    log_post = gaussian_log_likelihood(f.z, f.post_mean, f.post_logvar).flatten(1).sum(1)
    log_w = (log_px + log_prior - log_post).view(B, samples)  # (B, S)
    return (torch.logsumexp(log_w.double(), dim=1) - math.log(samples)).float() / T  # (B,)


def _mean_and_stderr(values: torch.Tensor) -> tuple[float, float]:
    """Mean of (n,) values and its standard error (0 for one value)."""
    n = len(values)
    return values.mean().item(), (values.std().item() / math.sqrt(n)) if n > 1 else 0.0


def lower_bound_metrics(ctx: EvalContext, *, iw_samples: int, iw_sequences: int,
                        batch_size: int = 8) -> dict[str, Any]:
    """``elbo``: :func:`dataset_elbo` over every evaluation sequence; ``iwae``: the
    importance-weighted bound with ``iw_samples`` trajectories on the first ``iw_sequences``,
    with the ELBO on those sequences and the paired gain. Both draw from ``ctx.noise``."""
    elbo = dataset_elbo(ctx.model, ctx.data, seed=ctx.seed, device=ctx.device)
    n_iw = min(iw_sequences, len(ctx.data))
    iw, elbo_same = [], []
    for s in range(0, n_iw, batch_size):
        frames = ctx.data.get_batch(range(s, min(n_iw, s + batch_size)))["frames"].to(ctx.device)
        iw.append(importance_weighted_bound(ctx.model, frames, samples=iw_samples,
                                            generator=ctx.noise).cpu())
        with torch.no_grad():
            elbo_same.append(sequence_elbo(ctx.model, frames, generator=ctx.noise).elbo.cpu())
    iw_t = torch.cat(iw).double()
    gap = iw_t - torch.cat(elbo_same).double()  # paired: the same sequences
    bound, stderr = _mean_and_stderr(iw_t)
    gain, gain_stderr = _mean_and_stderr(gap)
    return {"elbo": elbo, "iwae": {
        "samples": iw_samples, "sequences": n_iw, "bound": bound, "stderr": stderr,
        "elbo_same_sequences": bound - gain, "gain_over_elbo": gain, "gain_stderr": gain_stderr,
    }}
